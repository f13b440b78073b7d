"""``python -m broker.relay`` (the Procfile's ``relay:`` line): the relay process, until SIGTERM or SIGINT.

Its host (``broker.relayhost``) builds the same app as the web process, from the same
environment, for its settings, database, services and audit; it serves no pages. It listens on ``RELAY_BIND``, else on
127.0.0.1:``RELAY_PORT`` (default 5001).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from broker import relayhost
from broker.config import ConfigError
from broker.config import relay_bind
from broker.config import relay_bind_setting
from broker.config import stop
from broker.relay.server import Relay

log = logging.getLogger("broker.relay")

# Worker threads for the synchronous service calls (tickets, mints, live-console rows). asyncio's
# default (CPUs + 4) would make a burst of resumes (a cloud's proxy restarting under many
# consoles) wait for each other's mints; more than the database pool holds would only queue there.
SERVICE_THREADS = 16
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def bind_address(env: Mapping[str, str]) -> tuple[str, int]:
    """(host, port) from ``RELAY_BIND`` or ``RELAY_PORT``; a bad one stops start-up."""
    try:
        return relay_bind(env)
    except ConfigError as exc:
        stop(str(exc))


# Why an address cannot be listened on, and what to change, by errno; others give the system's words.
LISTEN_ERRORS = {
    errno.EADDRINUSE: (
        "the address is already in use (by another relay or program: ss -ltnp 'sport = :{port}'); "
        "stop that one or set {setting} to a free {what}"
    ),
    errno.EADDRNOTAVAIL: "{host} is not an address of this host; set {setting} to one of its addresses",
    errno.EACCES: "ports below 1024 need privileges the relay should not have; set {setting} to a port above 1023",
}


def cannot_listen(exc: OSError, host: str, port: int, setting: str) -> str:
    """One line naming the address, why it cannot be had, and the variable that chose it."""
    where = f"the relay cannot listen on {host}:{port}"
    why = LISTEN_ERRORS.get(exc.errno)
    if why is None:
        return f"{where}: {exc.strerror or exc}; check {setting}"
    what = "host:port" if setting == "RELAY_BIND" else "port"
    return f"{where}: " + why.format(host=host, port=port, setting=setting, what=what)


async def serve(relay: Relay, host: str, port: int, setting: str = "RELAY_BIND") -> None:
    """Serve until SIGTERM or SIGINT, then close every browser (1001) and wait for their records.

    An address it cannot listen on stops it (exit 3), naming ``setting``, the variable that chose it.
    """
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(SERVICE_THREADS, thread_name_prefix="relay-service"))
    try:
        await relay.start(host, port)
    except OSError as exc:
        stop(cannot_listen(exc, host, port, setting))
    log.info("relay listening on %s:%d, path %s (instance %s)", host, relay.port, relay.path, relay.instance)
    stopping = asyncio.Event()
    for signum in SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
    log.info("relay stopping: closing %d consoles", len(relay.consoles))
    await relay.stop()


def main() -> None:
    app = relayhost.broker_app()
    # websockets' DEBUG lines hold request paths, and so tickets: never those, whatever the root level.
    logging.getLogger("websockets").setLevel(logging.INFO)
    host, port = bind_address(os.environ)
    relay = relayhost.relay_process(app, host, port)
    relayhost.settle()
    asyncio.run(serve(relay, host, port, relay_bind_setting(os.environ)))


if __name__ == "__main__":
    main()
