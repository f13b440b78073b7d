"""The stand-in clouds' console proxy in a process of its own: ``python -m bench.vncproxy --port N --servers N``.

It serves the demo console proxy (``broker.demo.consoleproxy.handle``: Nova's token and Origin
checks, the demo VNC server behind them) for the tokens of every ``broker.demo.serve`` cloud
of the same size (they all sign with the same secret and make the same servers), with Nova's
``enforce_session_timeout`` on: a session ends at its token's expiry, so a cloud started with a
short ``--console-ttl`` closes the relay's upstream under it. The cursor does not blink, so
nothing is sent but what a keystroke or a request causes.

Being its own process, its CPU and memory are not charged to the relay. Each close at token
expiry is printed as ``expired <time.monotonic()>`` (one clock for every process of the machine),
so the bench can time the relay's resume from the moment the proxy closed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import time

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve
from websockets.frames import CloseCode

from broker.demo import consoleproxy
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import make_servers

# What broker.demo.serve signs console tokens with.
SECRET = "stand-in"
# The demo proxy's own reason for a close at token expiry.
EXPIRED = "Target closed"


def lookup_for(cloud: FakeCloud, token: str, kind: str = "vnc") -> consoleproxy.Grant | None:
    """The grant of a console token of ``kind`` any stand-in cloud of this size signed (its expiry enforced)."""
    server = cloud.check_console_token(token, kind)
    return consoleproxy.Grant(server.name, cloud.console_token_expiry(token)) if server else None


def noting_expiry(connection: ServerConnection) -> None:
    """Print the moment the proxy closes this connection at its token's expiry, just before the close frame."""
    close = connection.close

    async def close_and_note(code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        if code == CloseCode.NORMAL_CLOSURE and reason == EXPIRED:
            print(f"expired {time.monotonic():.6f}", flush=True)
        await close(code, reason)

    connection.close = close_and_note


async def main_async(port: int, servers: int) -> None:
    cloud = FakeCloud(secret=SECRET, servers=make_servers(servers))
    handle = functools.partial(
        consoleproxy.handle,
        lookup=functools.partial(lookup_for, cloud),
        enforce_session_timeout=True,
        blink=None,
    )

    async def serve_one(connection: ServerConnection) -> None:
        noting_expiry(connection)
        await handle(connection)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # As websockify: a console of any size in one message stream; no compression.
    async with serve(
        serve_one,
        "127.0.0.1",
        port,
        select_subprotocol=consoleproxy.select_subprotocol,
        compression=None,
        max_size=1 << 20,
    ):
        print(f"ready {port}", flush=True)
        await stopping.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--servers", type=int, default=24, help="as the clouds' --servers")
    args = parser.parse_args()
    asyncio.run(main_async(args.port, args.servers))


if __name__ == "__main__":
    main()
