"""Serial consoles through the relay: one upstream per server shared by every browser, history, continuation.

The cloud's side is the demo's nova-serialproxy (broker.demo.serialproxy): one client at a time
per server, a tiny shell behind it. Tickets are the broker's own (serial ones); mints are faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from broker import state
from broker.cloud import errors
from broker.demo.consoleproxy import Grant
from broker.demo.serialproxy import SerialProxy
from broker.relay.console import Retry
from broker.relay.serial import HISTORY
from broker.relay.serial import MAX_INPUT
from broker.relay.server import Relay
from tests.relay import TOKEN
from tests.relay import eventually
from tests.relay import run
from tests.relay import ticket_offer
from tests.relay.services import ORIGIN
from tests.relay.services import FakeServices
from tests.relay.services import relay_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return relay_app(tmp_path_factory)


class Port:
    """The demo serial proxy in this process, counting the websockets that reached the serial port."""

    def __init__(self) -> None:
        self.proxy = SerialProxy(lambda token: Grant("web-01") if token == TOKEN else None)
        self.connections: list[ServerConnection] = []
        self.open_now = 0
        self.url = ""

    async def handle(self, connection: ServerConnection) -> None:
        self.connections.append(connection)
        self.open_now += 1
        try:
            await self.proxy.handle(connection)
        finally:
            self.open_now -= 1


@contextlib.asynccontextmanager
async def serial_relay(fakes: FakeServices) -> AsyncIterator[tuple[Relay, Port]]:
    port = Port()
    async with serve(port.handle, "127.0.0.1", 0, subprotocols=["binary"], compression=None) as server:
        fakes.console_url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/demo-serial/?token={TOKEN}"
        relay = Relay(state.of(fakes.app).settings, fakes.services(), retry=Retry((0.01,), 2.0), poll_interval=0.05)
        await relay.start("127.0.0.1", 0)
        try:
            yield relay, port
        finally:
            await relay.stop()


class Terminal:
    """A serial console page's websocket: what it was sent, as text, and the relay's status messages."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.output = bytearray()
        self.statuses: list[dict] = []

    @classmethod
    async def open(cls, fakes: FakeServices, relay: Relay) -> Terminal:
        token = fakes.issue(kind="serial")
        websocket = await connect(
            f"ws://127.0.0.1:{relay.port}/relay",
            origin=ORIGIN,
            additional_headers=[("Cookie", fakes.cookie)],
            subprotocols=ticket_offer(token),
            compression=None,
        )
        terminal = cls(websocket)
        terminal.reader = asyncio.create_task(terminal._read())
        return terminal

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.websocket:
                if isinstance(message, str):
                    self.statuses.append(json.loads(message))
                else:
                    self.output += message

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def people(self) -> list[str] | None:
        said = [status["people"] for status in self.statuses if "people" in status]
        return said[-1] if said else None

    async def type(self, text: str) -> None:
        await self.websocket.send(text.encode())

    async def close(self) -> None:
        await self.websocket.close()
        await self.reader


def test_two_browsers_share_one_serial_port_and_both_may_type(app):
    fakes = FakeServices(app)

    async def scenario():
        async with serial_relay(fakes) as (relay, port):
            first = await Terminal.open(fakes, relay)
            await eventually(lambda: first.people() == ["agent"])
            second = await Terminal.open(fakes, relay)
            await eventually(lambda: first.people() == ["agent", "agent"] and second.people() == ["agent", "agent"])
            await first.type("echo from-first\r")
            await second.type("echo from-second\r")
            await eventually(
                lambda: all("from-second\r\n" in t.text and "from-first\r\n" in t.text for t in (first, second))
            )
            return port, fakes, first, second

    port, fakes, first, second = run(scenario())
    assert len(port.connections) == 1  # one upstream, one mint, for both browsers
    assert len(fakes.mints) == 1
    assert len(fakes.opened) == 2  # each browser has its own record
    assert all(item["ticket"].kind == "serial" for item in fakes.opened)


def test_who_joins_sees_what_the_server_printed_before(app):
    fakes = FakeServices(app)

    async def scenario():
        async with serial_relay(fakes) as (relay, port):
            first = await Terminal.open(fakes, relay)
            await first.type("echo kernel-panic-line\r")
            await eventually(lambda: "kernel-panic-line\r\n" in first.text)
            late = await Terminal.open(fakes, relay)
            await eventually(lambda: "kernel-panic-line\r\n" in late.text)
            await first.close()
            await eventually(lambda: late.people() == ["agent"])
            return late

    late = run(scenario())
    assert late.text.startswith("echo kernel-panic-line")  # the history first, from its start


def test_the_history_is_bounded_and_goes_with_the_last_browser(app):
    fakes = FakeServices(app)

    async def scenario():
        async with serial_relay(fakes) as (relay, port):
            first = await Terminal.open(fakes, relay)
            await first.type("echo " + "x" * 4000 + "\r")
            await first.type("echo marker-one\r")
            await eventually(lambda: "marker-one\r\n" in first.text)
            serial = next(iter(relay.serials.values()))
            for _ in range(80):
                serial._remember(b"y" * 4096)
            assert len(serial.history) == HISTORY
            await first.close()
            await eventually(lambda: not relay.serials and port.open_now == 0)
            fresh = await Terminal.open(fakes, relay)
            await eventually(lambda: fresh.people() == ["agent"])
            await fresh.type("\r")
            await eventually(lambda: "root@web-01" in fresh.text)
            return fresh

    fresh = run(scenario())
    assert "marker-one" not in fresh.text and "y" * 10 not in fresh.text


@pytest.mark.xfail(
    strict=False,
    reason="known gap (issue 22's note): what the server prints on the old side during a switch can be lost; with "
    "1 s tokens this loses a line about one run in ten on a loaded machine (CI at 96643fa, and locally)",
)
def test_the_serial_console_outlives_several_token_lifetimes_without_a_gap(app):
    fakes = FakeServices(app)
    fakes.expires_in = 1  # replaced 0.25 s before each expiry

    async def scenario():
        async with serial_relay(fakes) as (relay, port):
            terminal = await Terminal.open(fakes, relay)
            for n in range(5):
                await terminal.type(f"echo line-{n}\r")
                # A loaded machine (CI's two passes at once) takes seconds over a switch; a lost line never comes.
                await eventually(lambda n=n: f"line-{n}\r\n" in terminal.text, timeout=10)
                await eventually(lambda n=n: len(fakes.mints) >= n + 2, timeout=10)
            return terminal, port

    terminal, port = run(scenario(), timeout=60)
    assert len(port.connections) >= 5
    assert not [status for status in terminal.statuses if "relay" in status]  # never "away": no visible cut


def test_a_cut_side_is_resumed_and_the_browsers_are_told(app):
    fakes = FakeServices(app)

    async def scenario():
        async with serial_relay(fakes) as (relay, port):
            terminal = await Terminal.open(fakes, relay)
            await eventually(lambda: terminal.people() == ["agent"])
            await port.connections[0].close()
            await eventually(lambda: {"relay": "back"} in terminal.statuses)
            await terminal.type("echo after-cut\r")
            await eventually(lambda: "after-cut\r\n" in terminal.text)
            return terminal

    terminal = run(scenario())
    assert {"relay": "away"} in terminal.statuses


@pytest.mark.parametrize(
    "message, reason",
    [("text, not bytes", "Input is binary"), (b"p" * (MAX_INPUT + 1), "Paste too long")],
    ids=["text", "paste-too-long"],
)
def test_what_a_page_may_not_send_ends_only_that_browser(app, message, reason):
    fakes = FakeServices(app)

    async def scenario():
        async with serial_relay(fakes) as (relay, port):
            good = await Terminal.open(fakes, relay)
            bad = await Terminal.open(fakes, relay)
            await eventually(lambda: good.people() == ["agent", "agent"])
            await bad.websocket.send(message)
            await bad.reader
            await eventually(lambda: good.people() == ["agent"])
            return bad

    bad = run(scenario())
    assert bad.websocket.close_code == 1002
    assert bad.websocket.close_reason == reason
    assert [closed["reason"] for closed in fakes.closed][0].startswith("serial console: the browser sent")


def test_a_browser_whose_rights_went_is_ended_alone(app):
    fakes = FakeServices(app)

    async def scenario():
        async with serial_relay(fakes) as (relay, port):
            stays = await Terminal.open(fakes, relay)
            goes = await Terminal.open(fakes, relay)
            await eventually(lambda: stays.people() == ["agent", "agent"])
            fakes.ending = {42: 4403}  # the second browser's row (FakeServices numbers them from 41)
            await goes.reader
            await stays.type("echo still-here\r")
            await eventually(lambda: "still-here\r\n" in stays.text)
            return goes, port

    goes, port = run(scenario())
    assert goes.websocket.close_code == 4403
    assert len(port.connections) == 1


def test_a_burst_of_joins_leaves_one_list_of_people_waiting_per_browser(app):
    fakes = FakeServices(app)

    async def scenario():
        async with serial_relay(fakes) as (relay, port):
            first = await Terminal.open(fakes, relay)
            await eventually(lambda: first.people() == ["agent"])
            serial = next(iter(relay.serials.values()))
            [viewer] = serial.viewers
            for n in range(50):  # as if 50 browsers joined before this one's sender ran
                viewer.tell({"people": ["agent"] * (n + 2)})
            waiting = [item for item in viewer._outbox if isinstance(item, str)]
            await eventually(lambda: first.people() == ["agent"] * 51)
            return waiting

    waiting = run(scenario())
    assert len(waiting) == 1


def test_a_cloud_without_a_serial_console_for_the_server_ends_it_for_good(app):
    fakes = FakeServices(app)
    fakes.mint_errors.append(errors.ConsoleUnavailable("Unavailable console type serial."))

    async def scenario():
        async with serial_relay(fakes) as (relay, port):
            terminal = await Terminal.open(fakes, relay)
            await terminal.reader
            return terminal

    terminal = run(scenario())
    assert (terminal.websocket.close_code, terminal.websocket.close_reason) == (
        4501,
        "The cloud has no serial console for this server",
    )
    assert len(fakes.mints) == 1  # not tried again
    [failed] = fakes.failed
    assert failed["reason"] == "serial console: Unavailable console type serial."


def test_a_fresh_side_the_cloud_will_not_give_before_expiry_keeps_the_one_that_works(app):
    fakes = FakeServices(app)
    fakes.expires_in = 1

    async def scenario():
        async with serial_relay(fakes) as (relay, port):
            terminal = await Terminal.open(fakes, relay)
            await eventually(lambda: terminal.people() == ["agent"])
            fakes.mint_errors.append(errors.ConsoleUnavailable("Unavailable console type serial."))
            # The rotation's try is refused; a side cut at expiry would be resumed as any other.
            await eventually(lambda: len(fakes.mints) == 2, timeout=5)
            await terminal.type("echo still-on-the-old-side\r")
            await eventually(lambda: "still-on-the-old-side\r\n" in terminal.text)
            return terminal.websocket.close_code, port

    open_still, port = run(scenario(), timeout=20)
    assert open_still is None  # nothing ended it before the relay stopped
    assert len(port.connections) == 1
