"""One relayed console (broker.relay.console): its handshake, both directions, resuming, and its records.

The first part drives a ``Console`` directly through its narrow interface (``Carrier``), which
a test fakes: what the console asks of the relay that carries it, and when. The rest run the
console inside the relay (tests.relay.services: the broker's tickets, fake mints and records)
against a fake console proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
from collections.abc import AsyncIterator
from datetime import UTC
from datetime import datetime

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve

from broker.cloud import errors
from broker.cloud.types import Console as ConsoleURL
from broker.cloud.types import ServerInfo
from broker.relay import rfb
from broker.relay import upstream
from broker.relay.console import Carrier
from broker.relay.console import Console
from broker.relay.console import Retry
from broker.relay.server import Admission
from broker.relay.server import Caller
from broker.relay.server import Relay
from broker.services.consoles import Minted
from broker.services.consoles import NoSuchServer
from broker.services.relay import Ticket
from tests.relay import FILTERED
from tests.relay import FORMAT_32
from tests.relay import Browser
from tests.relay import FakeProxy
from tests.relay import eventually
from tests.relay import key
from tests.relay import raw_update
from tests.relay import run
from tests.relay import typed
from tests.relay.services import SERVER_ID
from tests.relay.services import FakeServices
from tests.relay.services import connected
from tests.relay.services import open_browser
from tests.relay.services import relay_app
from tests.relay.services import running
from tests.relay.services import sent_keys

TICKET = Ticket(7, "agent", "sid-1", SERVER_ID, "web-01", "lab", "http://broker.example:5000")
CALLER = Caller("192.0.2.7", "viewer/1", "0123456789abcdef0123456789abcdef")
WEB_01 = ServerInfo(SERVER_ID, "web-01", "ACTIVE", "lab")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The broker app whose tickets the relay's Services redeem (mints and records are faked)."""
    return relay_app(tmp_path_factory)


# -- the console through its carrier ----------------------------------------------------------------


class FakeCarrier:
    """The relay as a console sees it: notes what the console asks, in order; the cloud's side is a FakeProxy."""

    def __init__(self, proxy: FakeProxy, *, handshake_timeout: float = 2.0) -> None:
        self.proxy = proxy
        self.handshake_timeout = handshake_timeout
        self.asked: list[tuple] = []
        self.mint_errors: list[Exception] = []
        self.stopping = False
        # What a record's writing says: True (written), False (kept back for the database), or an error.
        self.writing: bool | Exception = True

    def carrier(self) -> Carrier:
        return Carrier(
            retry=Retry(delays=(0.01,), budget=1.0),
            handshake_timeout=self.handshake_timeout,
            stopping=lambda: self.stopping,
            connect=self.connect,
            connect_serial=self.connect,
            mint=self.mint,
            opened=self.opened,
            closed=self.closed,
            failed=self.failed,
            noted=self.noted,
        )

    async def connect(self, url: str) -> upstream.Upstream:
        return await upstream.open_console(url, open_timeout=2.0, handshake_timeout=2.0)

    async def mint(self, ticket: Ticket, confirmed: ServerInfo | None) -> Minted:
        self.asked.append(("mint", ticket, confirmed))
        if self.mint_errors:
            raise self.mint_errors.pop(0)
        return Minted(ConsoleURL(self.proxy.console_url), WEB_01, 600, datetime.now(UTC), "idle")

    async def opened(self, ticket: Ticket, server_name: str) -> int:
        self.asked.append(("opened", ticket, server_name))
        return 41

    async def noted(self, row_id: int, detail: str, reason: str) -> bool:
        self.asked.append(("noted", row_id, detail, reason))
        return self._written()

    async def closed(self, row_id: int, reason: str, to_cloud: int, to_browser: int) -> bool:
        self.asked.append(("closed", row_id, reason, to_cloud, to_browser))
        return self._written()

    async def failed(self, ticket: Ticket, reason: str) -> bool:
        self.asked.append(("failed", ticket, reason))
        return self._written()

    def _written(self) -> bool:
        if isinstance(self.writing, Exception):
            raise self.writing
        return self.writing


@contextlib.asynccontextmanager
async def console_served(carrier: FakeCarrier) -> AsyncIterator[tuple[str, list[Console]]]:
    """A websocket server that gives each browser a Console on ``carrier`` (no relay); its URL and consoles."""
    consoles: list[Console] = []
    done: list[asyncio.Event] = []

    async def handle(browser: ServerConnection) -> None:
        console = Console(carrier.carrier(), browser, Admission(TICKET, CALLER))
        consoles.append(console)
        done.append(asyncio.Event())
        try:
            await console.run()
        finally:
            done[consoles.index(console)].set()

    async with serve(handle, "127.0.0.1", 0, compression=None) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", consoles
        for event in done:
            await event.wait()


async def browser_at(url: str) -> Browser:
    return await Browser.connect(url, ticket=None, cookie="", origin="")


async def on_screen(url: str) -> Browser:
    """A browser connected to the console at ``url``, past the RFB handshake, its first screen drawn."""
    browser = await browser_at(url)
    await browser.handshake()
    await browser.start()
    await eventually(lambda: browser.screens() == [1])
    return browser


def test_a_console_asks_its_carrier_to_mint_then_records_its_opening_and_its_end(caplog):
    async def scenario():
        async with FakeProxy() as proxy:
            fake = FakeCarrier(proxy)
            async with console_served(fake) as (url, consoles):
                browser = await on_screen(url)
                for message in typed("ok"):
                    await browser.websocket.send(message)
                await eventually(lambda: len(sent_keys(proxy)) == 4)
                report = consoles[0].report("relay-1")
                await browser.websocket.close()
            return fake, report, proxy, browser

    with caplog.at_level(logging.INFO, logger="broker.relay"):
        fake, report, proxy, browser = run(scenario())
    to_cloud, to_browser = proxy.sessions[0].received, browser.received
    assert fake.asked == [
        ("mint", TICKET, None),
        ("opened", TICKET, "web-01"),
        ("closed", 41, "the browser closed the connection (1000); 1 console URL minted", to_cloud, to_browser),
    ]
    # What the relay's poll reports: the row, the browser's address, the server as the mint confirmed it.
    assert (report.row_id, report.client, report.instance, report.server) == (41, "192.0.2.7", "relay-1", WEB_01)
    assert report.used_at is not None
    # Its log lines carry the websocket's request ID.
    assert {r.request_id for r in caplog.records if "console " in r.getMessage()} == {CALLER.request_id}


def test_a_resume_mints_with_the_server_as_the_last_mint_confirmed_it():
    async def scenario():
        async with FakeProxy() as proxy:
            fake = FakeCarrier(proxy)
            async with console_served(fake) as (url, _):
                browser = await on_screen(url)
                await proxy.sessions[0].close(1000)
                await eventually(lambda: browser.screens()[-1:] == [2])
                await browser.websocket.close()
            return fake

    fake = run(scenario())
    assert [asked[:3] for asked in fake.asked if asked[0] == "mint"] == [
        ("mint", TICKET, None),
        ("mint", TICKET, WEB_01),
    ]
    assert fake.asked[-1][2].endswith("; 2 console URLs minted")


@pytest.mark.parametrize(
    "error, asked",
    [
        # The cloud cannot give a console: the one record says why it never opened.
        (errors.ConsoleUnavailable("No noVNC console."), [("failed", TICKET, "No noVNC console. (1 failed tries)")]),
        # A refused mint is on record already (the mint audits it): nothing more.
        (NoSuchServer("No server with this ID that you may open."), []),
    ],
    ids=["unavailable", "refused"],
)
def test_a_console_that_never_opens_asks_for_one_record_at_most(error, asked):
    async def scenario():
        async with FakeProxy() as proxy:
            fake = FakeCarrier(proxy)
            fake.mint_errors.append(error)
            async with console_served(fake) as (url, _):
                browser = await browser_at(url)
                await browser.greet()
                await browser.closed()
            return fake

    fake = run(scenario())
    assert fake.asked == [("mint", TICKET, None), *asked]


@pytest.mark.parametrize(
    "writing, line, level",
    [
        (False, "console %s: its record waits for the database", logging.WARNING),
        (RuntimeError("a bug"), "console %s: its record could not be written", logging.ERROR),
    ],
    ids=["kept-back", "failed"],
)
def test_a_record_the_carrier_could_not_write_now_is_logged_and_the_console_ends(caplog, writing, line, level):
    async def scenario():
        async with FakeProxy() as proxy:
            fake = FakeCarrier(proxy)
            fake.writing = writing
            async with console_served(fake) as (url, _):
                browser = await browser_at(url)
                await browser.handshake()
                await browser.websocket.close()
            return fake

    fake = run(scenario())
    assert fake.asked[-1][0] == "closed"
    [record] = [r for r in caplog.records if r.msg == line]
    assert record.levelno == level and record.request_id == CALLER.request_id


def test_a_browser_gone_while_its_carrier_stops_is_recorded_as_the_shutdown():
    async def scenario():
        async with FakeProxy() as proxy:
            fake = FakeCarrier(proxy)
            async with console_served(fake) as (url, _):
                browser = await browser_at(url)
                await browser.handshake()
                fake.stopping = True
                await browser.websocket.close()
            return fake

    assert run(scenario()).asked[-1][2] == "the relay shut down; 1 console URL minted"


def test_a_console_ended_from_outside_closes_its_browser_with_the_code():
    async def scenario():
        async with FakeProxy() as proxy:
            fake = FakeCarrier(proxy)
            async with console_served(fake) as (url, consoles):
                browser = await browser_at(url)
                await browser.handshake()
                await consoles[0].end(4410)
                return fake, await browser.closed()

    fake, closed = run(scenario())
    assert closed == (4410, "Ended by an administrator")
    assert fake.asked[-1][2] == "ended by an administrator; 1 console URL minted"


def test_the_handshake_timeout_is_the_carriers_and_a_silent_browser_costs_nothing():
    async def scenario():
        async with FakeProxy() as proxy:
            fake = FakeCarrier(proxy, handshake_timeout=0.05)
            async with console_served(fake) as (url, _):
                browser = await browser_at(url)
                return fake, await browser.closed()

    fake, closed = run(scenario())
    assert closed == (1002, "Handshake timed out")
    assert fake.asked == []


# -- the console inside the relay: piping and resuming -----------------------------------------------


async def cut_and_type(relay: Relay, proxy: FakeProxy, fakes: FakeServices, browser: Browser, cut: bytes) -> None:
    """The proxy sends ``cut`` and closes (1000, as at token expiry); keys are typed while the relay re-mints."""
    fakes.mint_gate.clear()
    session = proxy.sessions[-1]
    if cut:
        await session.send(cut)
    await session.close(1000)
    await eventually(lambda: len(fakes.mints) == 2)
    for message in typed("echo"):
        await browser.websocket.send(message)
    [console] = relay.consoles
    # Every key is waiting in the relay before the new upstream exists.
    await eventually(lambda: len(console.backlog) == 8)
    fakes.mint_gate.set()


@pytest.mark.parametrize(
    "cut_at",
    [0, 3, 16 + 40, 4 + 12 + 32 * 24 * 4 - 1],
    ids=["between-messages", "in-the-update-header", "in-the-pixels", "one-byte-short"],
)
def test_the_cloud_closing_mid_update_is_resumed_unseen(app, cut_at):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            await browser.websocket.send(key(True, ord("x")))
            await eventually(lambda: len(sent_keys(proxy)) == 1)
            await cut_and_type(relay, proxy, fakes, browser, raw_update(32, 24, 9)[:cut_at])
            await eventually(lambda: browser.screens()[-1:] == [2])
            await eventually(lambda: len(sent_keys(proxy)) == 9)
            return browser, proxy

    browser, proxy = run(scenario())
    first, second = proxy.sessions
    assert first.of_type(rfb.KEY_EVENT) == [key(True, ord("x"))]
    # The new server is told the viewer's format and encodings, asked for everything, then given the keys.
    assert second.messages == [
        rfb.set_pixel_format(FORMAT_32),
        rfb.set_encodings(FILTERED),
        rfb.framebuffer_update_request(False, 0, 0, 32, 24),
        *typed("echo"),
    ]
    # The viewer's stream stayed whole: the cut update was finished (black from the cut on), then the new screen.
    assert browser.framer.at_boundary
    assert browser.screens() == ([1, 9, 2] if cut_at > 16 else [1, 2])


def test_the_cloud_side_is_replaced_before_its_token_expires_with_every_key_delivered_once(app):
    """Make before break: a proxy enforcing expiry would drop keys in flight, so the relay leaves it first."""
    fakes = FakeServices(app)
    fakes.expires_in = 2  # replaced a quarter of its life before expiry: 1.5 s after the mint
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            keys = []
            for n in range(20):  # typing straight through the switch, a key every 0.1 s
                keys.append(key(True, ord("a") + n))
                await browser.websocket.send(keys[-1])
                await asyncio.sleep(0.1)
            await eventually(lambda: len(sent_keys(proxy)) == 20)
            return browser, proxy, keys

    browser, proxy, keys = run(scenario())
    first, second = proxy.sessions[:2]
    assert sent_keys(proxy) == keys  # each key once, in order, none lost at the switch
    assert first.of_type(rfb.KEY_EVENT) and second.of_type(rfb.KEY_EVENT)
    assert second.messages[:3] == [
        rfb.set_pixel_format(FORMAT_32),
        rfb.set_encodings(FILTERED),
        rfb.framebuffer_update_request(False, 0, 0, 32, 24),
    ]
    assert browser.framer.at_boundary and browser.screens()[-1] == 2
    assert len(fakes.mints) == 2


def test_a_cloud_that_cannot_give_a_new_side_before_expiry_leaves_the_working_one(app):
    fakes = FakeServices(app)
    fakes.expires_in = 2
    fakes.issue()

    async def scenario():
        async with running(fakes, retry=Retry(delays=(0.01,), budget=0.3)) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            fakes.mint_errors.extend(errors.CloudUnreachable("the compute API is down") for _ in range(1000))
            keys = []
            for n in range(25):  # through the failed switch at 1.5 s and past it
                keys.append(key(True, ord("a") + n))
                await browser.websocket.send(keys[-1])
                await asyncio.sleep(0.1)
            await eventually(lambda: len(sent_keys(proxy)) == 25)
            open_then = browser.websocket.close_code is None and len(relay.consoles) == 1
            return open_then, proxy, keys

    open_then, proxy, keys = run(scenario())
    assert open_then, "the console ended although its cloud side still worked"
    assert len(proxy.sessions) == 1 and sent_keys(proxy) == keys


def test_a_resume_tells_the_viewer_of_a_new_screen_size(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            proxy.width, proxy.height = 40, 30
            await cut_and_type(relay, proxy, fakes, browser, b"")
            await eventually(lambda: any(m == rfb.desktop_size(40, 30) for m in browser.messages))
            await eventually(lambda: len(proxy.sessions) == 2 and len(proxy.sessions[1].messages) >= 3)
            return browser, proxy

    browser, proxy = run(scenario())
    assert proxy.sessions[1].messages[2] == rfb.framebuffer_update_request(False, 0, 0, 40, 30)


def test_pointer_moves_while_the_cloud_is_away_are_merged(app):
    fakes = FakeServices(app)
    fakes.issue()

    def pointer(buttons: int, x: int) -> bytes:
        return struct.pack(">BBHH", rfb.POINTER_EVENT, buttons, x, 5)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            fakes.mint_gate.clear()
            await proxy.sessions[0].close(1000)
            await eventually(lambda: len(fakes.mints) == 2)
            moves = [pointer(0, 1), pointer(0, 2), pointer(1, 3), pointer(1, 4), pointer(0, 5)]
            await browser.websocket.send(b"".join(moves))
            [console] = relay.consoles
            await eventually(lambda: len(console.backlog) == 3)
            fakes.mint_gate.set()
            await eventually(lambda: len(proxy.sessions) == 2 and len(proxy.sessions[1].messages) == 6)
            return proxy

    proxy = run(scenario())
    assert proxy.sessions[1].messages[3:] == [pointer(0, 2), pointer(1, 4), pointer(0, 5)]


def test_resume_gives_up_after_the_retry_budget(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        # A budget that allows several tries even on a loaded machine (CI runs its passes side by side).
        async with running(fakes, retry=Retry(delays=(0.01, 0.02), budget=1.0)) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            proxy.refuse_status = 403
            await proxy.sessions[0].close(1000)
            return await browser.closed()

    assert run(scenario()) == (4502, "The cloud's console is unreachable")
    [closed] = fakes.closed
    assert closed["reason"].startswith("the cloud's console could not be reached")
    assert "HTTP 403" in closed["reason"]
    assert len(fakes.mints) > 3


@pytest.mark.parametrize("during", ["connect", "resume"])
def test_a_server_that_is_not_running_closes_with_4409(app, during):
    fakes = FakeServices(app)
    fakes.issue()
    stopped = errors.ServerNotReady("The server web-01 is not running (SHUTOFF).")
    stopped.server_status = "SHUTOFF"

    async def scenario():
        async with running(fakes) as (relay, proxy):
            if during == "connect":
                fakes.mint_errors.append(stopped)
                browser = await open_browser(fakes, relay)
                await browser.greet()
            else:
                browser = await connected(fakes, relay, proxy)
                fakes.mint_errors.append(stopped)
                await proxy.sessions[0].close(1000)
            return await browser.closed()

    assert run(scenario()) == (4409, "Server not running (SHUTOFF)")
    assert len(fakes.opened) == (0 if during == "connect" else 1)


def test_a_mint_refused_on_resume_closes_with_4403(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            fakes.mint_errors.append(NoSuchServer("No server with this ID that you may open."))
            await proxy.sessions[0].close(1000)
            return await browser.closed()

    assert run(scenario())[0] == 4403


def test_a_console_the_cloud_cannot_give_is_not_retried_and_the_page_is_told_so(app):
    fakes = FakeServices(app)
    fakes.issue()
    fakes.mint_errors.append(errors.ConsoleUnavailable("The cloud has no noVNC console for this server."))

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await open_browser(fakes, relay)
            await browser.greet()
            return await browser.closed()

    # Its own code: the viewer offers the serial console instead of trying again.
    assert run(scenario()) == (4501, "The cloud has no graphical console for this server")
    assert len(fakes.mints) == 1
    # One record of the console, saying why it never opened; no connect record.
    assert fakes.opened == [] and fakes.closed == []
    [failed] = fakes.failed
    assert failed["reason"] == "The cloud has no noVNC console for this server. (1 failed tries)"
    assert failed["request_id"] == fakes.redeemed[0]["request_id"]


def test_a_console_whose_cloud_never_answers_is_one_failure_on_record_with_its_cause(app, caplog):
    fakes = FakeServices(app)
    fakes.issue()
    fakes.mint_errors.extend([errors.CloudUnreachable("The cloud lab cannot be reached.")] * 50)

    async def scenario():
        async with running(fakes, retry=Retry(delays=(0.01,), budget=0.3)) as (relay, proxy):
            browser = await open_browser(fakes, relay)
            await browser.greet()
            return await browser.closed()

    with caplog.at_level(logging.WARNING, logger="broker.relay"):
        assert run(scenario()) == (4502, "The cloud's console is unreachable")
    # Each failed try is a warning at once, not only the ending.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "could not be opened" in r.message]
    tries = len(warnings)
    assert tries > 3
    # Every try asked the broker for a mint, but the last one may run out of budget before its call (in a
    # worker thread) got as far as the broker.
    assert len(fakes.mints) in (tries, tries - 1)
    [failed] = fakes.failed
    assert failed["reason"].startswith(f"the cloud's console could not be reached ({tries} tries)")
    assert "The cloud lab cannot be reached." in failed["reason"]
    assert fakes.opened == [] and fakes.closed == []


def test_a_websocket_that_never_speaks_rfb_costs_the_cloud_nothing(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes, handshake_timeout=0.3) as (relay, proxy):
            browser = await open_browser(fakes, relay)
            return await browser.closed(), proxy

    (code, _), proxy = run(scenario())
    assert code == 1002
    assert fakes.mints == [] and fakes.failed == [] and proxy.sessions == []


def test_a_cloud_blip_while_connecting_is_retried(app):
    fakes = FakeServices(app)
    fakes.issue()
    fakes.mint_errors.append(errors.CloudUnreachable("Keystone did not answer."))

    async def scenario():
        async with running(fakes) as (relay, proxy):
            await connected(fakes, relay, proxy)

    run(scenario())
    assert len(fakes.mints) == 2


# -- what the browser sends ----------------------------------------------------------------------


def test_a_browser_sending_what_rfb_does_not_have_is_closed(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            await browser.websocket.send(b"\x07\x00")
            return await browser.closed()

    assert run(scenario()) == (1002, "Unsupported RFB message")
    assert fakes.closed[0]["reason"].startswith("the browser sent what it may not")


def test_a_browser_that_never_finishes_the_handshake_is_closed(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes, handshake_timeout=0.05) as (relay, proxy):
            browser = await open_browser(fakes, relay)
            return await browser.closed()

    assert run(scenario()) == (1002, "Handshake timed out")
    assert fakes.opened == []


# -- riding out trouble ------------------------------------------------------------------------------


def test_the_viewer_hears_at_once_when_its_keys_cannot_reach_the_server_and_when_they_can_again(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            fakes.mint_gate.clear()  # the cloud is slow to give a new side
            await proxy.sessions[0].close(1000)
            await eventually(lambda: browser.statuses == ["away"])
            for message in typed("ok"):
                await browser.websocket.send(message)
            fakes.mint_gate.set()
            await eventually(lambda: browser.statuses == ["away", "back"])
            await eventually(lambda: len(sent_keys(proxy)) == 4)
            return browser, proxy

    browser, proxy = run(scenario())
    assert sent_keys(proxy) == typed("ok")  # what waited was sent once it could be
    assert browser.framer.at_boundary  # text messages never disturbed the RFB stream


def test_keys_the_relay_had_to_drop_are_counted_in_the_reason_the_viewer_gets(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes, retry=Retry(delays=(0.05,), budget=0.6)) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            proxy.refuse_status = 503  # the cloud's proxy does not come back within the budget
            await proxy.sessions[0].close(1000)
            await eventually(lambda: browser.statuses == ["away"])
            for message in typed("lost"):
                await browser.websocket.send(message)
            return await browser.closed()

    code, reason = run(scenario())
    assert code == 4502
    assert reason == "The cloud's console is unreachable: 4 keys typed did not reach the server"
    assert re.fullmatch(
        r"the cloud's console could not be reached \(\d+ tries\): .*HTTP 503; 4 keys typed did not reach the server; "
        r"\d+ console URLs minted",
        fakes.closed[0]["reason"],
    )


def test_a_new_console_while_the_database_is_unreachable_is_refused_saying_so(app):
    fakes = FakeServices(app)
    fakes.issue()
    fakes.database_down = True

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await open_browser(fakes, relay)
            await browser.greet()
            return await browser.closed()

    assert run(scenario()) == (4503, "The broker's database is unavailable")
