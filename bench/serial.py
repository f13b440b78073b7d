"""Serial consoles in the relay bench: a typed byte's round trip through the relay against straight to the
serial proxy, and the relay's memory per idle serial console (and per extra browser on a shared one).

The figures run on a relay process of their own (the Procfile's ``relay:`` line again, on another
port), so its memory holds nothing the graphical figures left behind, and theirs nothing of these.

``python -m bench.serial --port N --proxy-port N --servers N`` is the stand-in cloud they run
against, in a process of its own: Keystone and Nova (``broker.demo.cloud``) whose serial console
URLs are ``ws://127.0.0.1:<proxy-port>/?token=``, as nova-serialproxy's are, and behind that port
the demo's serial proxy (``broker.demo.serialproxy``: Nova's token and Origin checks, one client
per server at a time, a line shell that echoes what is typed). Every server runs, so any N of them
are N serial consoles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import signal
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from keystoneauth1.adapter import Adapter
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.protocol import State

from bench import clients
from bench import procs
from bench import relay
from bench import relaystack
from bench.relaystack import SERIAL_CLOUD
from bench.relaystack import RelayStack
from bench.report import Row
from bench.report import verdict
from bench.stats import Samples
from bench.vncproxy import SECRET
from bench.vncproxy import lookup_for
from broker.demo import consoleproxy
from broker.demo import serialproxy
from broker.demo import serve as demo_serve
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import Server
from broker.demo.cloud import make_servers
from broker.relay.upstream import serial_target

KEY = b"a"
ERASE = b"\x7f"
# What the shell prints for ERASE after a character: back, blank it, back again.
ERASED = b"\b \b"
# The round trip's consoles, one server each: the proxy lets one client at a time reach a serial port.
ROUND_TRIP_SERVERS = 2
# Browsers sharing one server's serial console: people on one incident, not a crowd (each joining is
# announced to all, so the announcements grow with the square of their number).
SHARED = 100
SERIAL_BODY = {"remote_console": {"protocol": "serial", "type": "serial"}}


def servers_needed(args: argparse.Namespace) -> int:
    """Servers the serial cloud needs: the round trip's two, then one per idle console."""
    return ROUND_TRIP_SERVERS + args.relay_idle


# -- a terminal ----------------------------------------------------------------------------------


class Terminal:
    """A serial console's websocket as the page (or the relay, straight to the proxy) opens it: bytes each way."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.buffer = bytearray()
        self.people: list[str] = []

    @classmethod
    async def open(cls, url: str, *, origin: str, cookie: str = "", ticket: str = "") -> Terminal:
        """Open ``url`` with subprotocol binary (and ``ticket.<ticket>`` when given), no compression; read
        without limit, as a browser does, so the relay never waits on the bench."""
        websocket = await connect(
            url,
            origin=origin,
            additional_headers=[("Cookie", cookie)] if cookie else [],
            subprotocols=["binary"] + ([f"ticket.{ticket}"] if ticket else []),
            compression=None,
            max_queue=None,
            user_agent_header="console-broker bench terminal",
        )
        return cls(websocket)

    async def next(self) -> None:
        """One more message: the server's bytes into the buffer, or the relay's news (who is connected)."""
        message = await self.websocket.recv()
        if isinstance(message, bytes):
            self.buffer += message
        elif "people" in (news := json.loads(message)):
            self.people = news["people"]

    async def until(self, data: bytes) -> float:
        """Read until ``data`` has arrived, and drop what came up to its end; when it had (time.monotonic())."""
        while (at := self.buffer.find(data)) < 0:
            await self.next()
        del self.buffer[: at + len(data)]
        return time.monotonic()

    async def live(self) -> None:
        """Through the relay: wait until it says who is connected, which it does once the console is open."""
        while not self.people:
            await self.next()

    async def close(self) -> None:
        await self.websocket.close()


async def through_relay(running: RelayStack, port: int, server: str, client: clients.BrokerClient) -> Terminal:
    """A serial console page's websocket to the relay on ``port``: a serial ticket, the cookie, the page's Origin;
    returned once the relay has the console open."""
    url, ticket = await asyncio.to_thread(running.ticket, SERIAL_CLOUD, client, server, "serial")
    url = urlsplit(url)._replace(netloc=f"127.0.0.1:{port}").geturl()
    terminal = await Terminal.open(url, origin=running.origin, cookie=running.cookie(client), ticket=ticket)
    try:
        await terminal.live()
    except BaseException:
        await terminal.close()
        raise
    return terminal


async def straight(running: RelayStack, server: str) -> Terminal:
    """The baseline: a serial URL minted straight from the cloud, its websocket opened as the relay opens it."""
    adapter = clients.direct_adapter(running.clouds[SERIAL_CLOUD].os_env)
    url = await asyncio.to_thread(mint, adapter, server)
    target = serial_target(url)
    return await Terminal.open(target.url, origin=target.origin)


def mint(adapter: Adapter, server: str) -> str:
    """The serial mint the broker makes: remote-consoles at microversion 2.6."""
    response = adapter.post(f"/servers/{server}/remote-consoles", json=SERIAL_BODY, microversion="2.6")
    return response.json()["remote_console"]["url"]


async def echo(terminal: Terminal) -> float:
    """Seconds from a typed byte to its echo; then erased again (untimed), so the shell's line never fills."""
    start = time.monotonic()
    await terminal.websocket.send(KEY)
    arrived = await terminal.until(KEY)
    await terminal.websocket.send(ERASE)
    await terminal.until(ERASED)
    return arrived - start


# -- the rows ------------------------------------------------------------------------------------


async def rows(running: RelayStack, args: argparse.Namespace, step: Callable[[str], None]) -> list[Row]:
    """Every serial figure asked for, on a relay started for them and stopped after."""
    servers = await asyncio.to_thread(serial_servers, running.client, servers_needed(args))
    step("relay: starting a relay process for the serial figures")
    proc, port = await asyncio.to_thread(start_relay, running)
    try:
        found = []
        if args.relay_keys:
            step(f"relay: {args.relay_keys} serial bytes each way, interleaved")
            through, direct = await round_trips(running, port, servers[:ROUND_TRIP_SERVERS], args.relay_keys)
            found += relay.keystroke_rows(through, direct, "serial byte to echo")
        if args.relay_idle:
            step(f"relay: {args.relay_idle:,} idle serial consoles, then {min(SHARED, args.relay_idle)} on one")
            found += await idle(running, proc, port, servers[ROUND_TRIP_SERVERS:])
        return found
    finally:
        await asyncio.to_thread(proc.stop)


def serial_servers(client: clients.BrokerClient, count: int) -> list[str]:
    """``count`` server IDs of the serial cloud, as the broker lists them (once its list has them all)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [s["id"] for s in client.servers(cloud=SERIAL_CLOUD) if s["status"] == "ACTIVE"]
        if len(found) >= count:
            return found[:count]
        time.sleep(0.2)
    raise RuntimeError(f"the serial cloud's list did not reach {count} running servers in 60 s")


def start_relay(running: RelayStack) -> tuple[procs.Proc, int]:
    """The Procfile's ``relay:`` line again, for the same broker, on a port of its own."""
    port = procs.free_port()
    env = running.env | {"RELAY_BIND": f"127.0.0.1:{port}"}
    argv = ["sh", "-c", "exec " + relaystack.procfile_line("relay")]
    proc = procs.spawn("relay-serial", argv, env, running.relay.log.parent)
    relaystack.wait_for_port(proc, port, "the serial figures' relay")
    return proc, port


async def round_trips(running: RelayStack, port: int, servers: list[str], count: int) -> tuple[Samples, Samples]:
    """``count`` echoes through the relay on one server and as many straight to the proxy on another, in turn."""
    through = await through_relay(running, port, servers[0], running.client)
    try:
        direct = await straight(running, servers[1])
        try:
            return await relay.keystrokes(through, direct, count, echo)
        finally:
            await direct.close()
    finally:
        await through.close()


async def open_all(running: RelayStack, port: int, servers: list[str]) -> list[Terminal]:
    """A terminal on each of ``servers`` (repeats share a console), relay.OPENERS at a time, each on a ticket of
    its own; all closed again on a failure."""
    terminals: list[Terminal] = []
    tabs = [running.client.clone() for _ in range(relay.OPENERS)]
    left = list(reversed(servers))

    async def opener(tab: clients.BrokerClient) -> None:
        while left:
            terminals.append(await through_relay(running, port, left.pop(), tab))

    try:
        async with asyncio.TaskGroup() as group:
            for tab in tabs:
                group.create_task(opener(tab))
    except BaseException:
        await relay.close_all(terminals)
        raise
    finally:
        for tab in tabs:
            tab.close()
    return terminals


async def idle(running: RelayStack, proc: procs.Proc, port: int, servers: list[str]) -> list[Row]:
    """The relay's RSS before and after one idle serial console on each of ``servers``, then after SHARED more
    browsers join the first of them."""
    before, start = relaystack.rss(proc.popen.pid), time.monotonic()
    terminals = await open_all(running, port, servers)
    try:
        opened = time.monotonic() - start
        alone = await settled(proc, terminals)
        shared = min(SHARED, len(servers))
        start = time.monotonic()
        joined = await open_all(running, port, [servers[0]] * shared)
        terminals += joined
        joining = time.monotonic() - start
        together = await settled(proc, joined)
    finally:
        await relay.close_all(terminals)
    return [idle_row(before, alone, len(servers), opened), shared_row(alone, together, shared, joining)]


async def settled(proc: procs.Proc, terminals: list[Terminal]) -> tuple[int, int, float]:
    """After relay.SETTLE s idle: the relay's RSS, how many of ``terminals`` are still open, its CPU meanwhile."""
    cpu = relay.cpu_seconds(proc.popen.pid)
    await asyncio.sleep(relay.SETTLE)
    busy = (relay.cpu_seconds(proc.popen.pid) - cpu) / relay.SETTLE
    still = sum(t.websocket.state is State.OPEN for t in terminals)
    return relaystack.rss(proc.popen.pid), still, busy


def idle_row(before: int, after: tuple[int, int, float], count: int, opened: float) -> Row:
    rss, still, busy = after
    per = (rss - before) / count
    return Row(
        f"{count:,} idle serial consoles, one per server, on one relay process: RSS before / after, per console",
        f"{before / relay.MB:.0f} MB / {rss / relay.MB:.0f} MB, {per / 1024:.0f} KiB per console (its browser "
        f"and the cloud's side); opened in {opened:.1f} s ({count / opened:.0f} per s); {still:,} still open "
        f"after {relay.SETTLE:g} s idle, relay CPU meanwhile {busy:.0%} of a core",
        "whole process < 200 MB",
        verdict(rss < relay.BUDGET and still == count, f"{rss / relay.BUDGET:.0%} of budget"),
    )


def shared_row(alone: tuple[int, int, float], together: tuple[int, int, float], count: int, joining: float) -> Row:
    before, after, still = alone[0], together[0], together[1]
    return Row(
        f"{count} more browsers on one server's serial console (beside the idle ones): RSS before / after, "
        "per extra browser",
        f"{before / relay.MB:.0f} MB / {after / relay.MB:.0f} MB, {(after - before) / count / 1024:.0f} KiB per "
        f"browser; joined in {joining:.1f} s; {still} still open after {relay.SETTLE:g} s",
        "",
        "",
    )


# -- the stand-in cloud's process ----------------------------------------------------------------


def running_servers(count: int) -> list[Server]:
    """``count`` servers, every one running (the demo's fleet has some stopped, which have no console)."""
    servers = make_servers(count)
    for server in servers:
        server.status = "ACTIVE"
    return servers


async def serve_proxy(cloud: FakeCloud, port: int) -> None:
    """The serial proxy on ``port`` until SIGTERM; ``ready <port>`` once it listens."""
    proxy = serialproxy.SerialProxy(functools.partial(lookup_for, cloud, kind="serial"))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with serve(
        proxy.handle, "127.0.0.1", port, select_subprotocol=consoleproxy.select_subprotocol, compression=None
    ):
        print(f"ready {port}", flush=True)
        await stopping.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="Keystone and Nova")
    parser.add_argument("--proxy-port", type=int, required=True, help="the serial proxy")
    parser.add_argument("--servers", type=int, default=24)
    parser.add_argument("--console-ttl", type=int, default=600)
    args = parser.parse_args()
    cloud = FakeCloud(
        secret=SECRET,
        servers=running_servers(args.servers),
        console_ttl=args.console_ttl,
        serial_base=f"ws://127.0.0.1:{args.proxy_port}",
    )
    running = demo_serve.start(cloud, args.port)
    for name, value in demo_serve.environment(cloud).items():
        print(f"export {name}={value}", flush=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_proxy(cloud, args.proxy_port))
    finally:
        running.stop()


if __name__ == "__main__":
    main()
