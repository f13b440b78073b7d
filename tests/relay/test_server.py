"""The relay end to end in one process: a browser, the relay, a fake console proxy, and fake broker services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import struct
import threading
from collections.abc import AsyncIterator
from datetime import UTC
from datetime import datetime

import pytest
from flask import g
from flask import request
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from broker import create_app
from broker.cloud import errors
from broker.cloud.types import Console
from broker.cloud.types import ServerInfo
from broker.relay import rfb
from broker.relay.__main__ import bind_address
from broker.relay.__main__ import serve
from broker.relay.console import Retry
from broker.relay.rfb import ServerInit
from broker.relay.server import RELAY_CALLER
from broker.relay.server import Relay
from broker.relay.server import Services
from broker.relay.server import client_address
from broker.relay.server import relay_context
from broker.relay.server import relay_path
from broker.services.consoles import Minted
from broker.services.consoles import NoSuchServer
from broker.services.relay import DatabaseUnavailable
from broker.services.relay import LiveReport
from broker.services.relay import Ticket
from broker.services.relay import TicketRefused
from tests.relay import FILTERED
from tests.relay import FORMAT_32
from tests.relay import TOKEN
from tests.relay import USER_AGENT
from tests.relay import Browser
from tests.relay import FakeProxy
from tests.relay import eventually
from tests.relay import key
from tests.relay import raw_update
from tests.relay import run
from tests.relay import typed
from tests.support import broker_env

ORIGIN = "http://broker.example:5000"
SERVER_ID = "00000000-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The broker app the relay reads its settings and session cookies from (services are faked)."""
    tmp = tmp_path_factory.mktemp("relay")
    return create_app({"ENV": broker_env(tmp), "CLOUDS": [], "INSTANCE_PATH": str(tmp / "instance"), "TESTING": True})


def session_cookie(app, sid: str = "sid-1", user_id: int = 7) -> str:
    """The Flask session cookie of a signed-in browser."""
    value = app.session_interface.get_signing_serializer(app).dumps({"sid": sid, "_user_id": f"{user_id}:tok"})
    return f"{app.config['SESSION_COOKIE_NAME']}={value}"


class FakeServices:
    """broker.services.relay and the mint as the relay sees them, recording every call and its request context."""

    def __init__(self) -> None:
        self.console_url = ""
        # The console_ttl of the cloud each mint reports (the relay replaces the side before it runs out).
        self.expires_in = 600
        self.tickets: dict[str, Ticket] = {}
        self.redeemed: list[dict] = []
        self.mints: list[dict] = []
        self.mint_errors: list[Exception] = []
        # Cleared by a test to hold mints (in their worker thread) until it is ready.
        self.mint_gate = threading.Event()
        self.mint_gate.set()
        self.opened: list[dict] = []
        self.failed: list[dict] = []
        self.reports: list[list[LiveReport]] = []
        self.closed: list[dict] = []
        self.ending: dict[int, int] = {}
        # Set by a test: every call raises DatabaseUnavailable, as while PostgreSQL is unreachable.
        self.database_down = False

    def issue(self, token: str = "t1", origin: str = ORIGIN) -> str:
        self.tickets[token] = Ticket(7, "agent", "sid-1", SERVER_ID, "web-01", "lab", origin)
        return token

    def services(self) -> Services:
        return Services(self._redeem, self._mint, self._opened, self._failed, self._report, self._closed)

    def _database(self) -> None:
        if self.database_down:
            raise DatabaseUnavailable("the broker's database cannot be reached")

    def _context(self) -> dict:
        return {"client": request.remote_addr, "agent": request.user_agent.string, "request_id": g.request_id}

    def _redeem(self, token: str, *, session_id: str | None, user_id: int | None, origin: str | None) -> Ticket:
        self.redeemed.append({"token": token, "sid": session_id, "user": user_id, "origin": origin, **self._context()})
        ticket = self.tickets.pop(token, None)
        if ticket is None:
            raise TicketRefused("unknown ticket")
        if session_id is None or user_id is None:
            raise TicketRefused("no sign-in session", status=401)
        if (session_id, user_id, origin) != (ticket.session_id, ticket.user_id, ticket.origin):
            raise TicketRefused("another session or origin")
        return ticket

    def _mint(self, ticket: Ticket, confirmed: ServerInfo | None) -> Minted:
        self.mints.append({"server_id": ticket.server_id, "confirmed": confirmed, **self._context()})
        assert self.mint_gate.wait(5)
        if self.mint_errors:
            raise self.mint_errors.pop(0)
        server = ServerInfo(ticket.server_id, "web-01", "ACTIVE", ticket.cloud)
        return Minted(Console(self.console_url), server, self.expires_in, datetime.now(UTC), "idle")

    def _opened(self, ticket: Ticket, *, client: str, instance: str, server_name: str) -> int:
        self._database()
        self.opened.append({"ticket": ticket, "client": client, "instance": instance, "server_name": server_name})
        return 40 + len(self.opened)

    def _failed(self, ticket: Ticket, *, reason: str) -> None:
        self._database()
        self.failed.append({"ticket": ticket, "reason": reason, **self._context()})

    def _closed(self, row_id: int, *, reason: str, to_cloud: int, to_browser: int) -> None:
        self._database()
        self.closed.append({"row": row_id, "reason": reason, "to_cloud": to_cloud, "to_browser": to_browser})

    def _report(self, reports: list[LiveReport]) -> dict[int, int]:
        self._database()
        self.reports.append(reports)
        rows = {item.row_id for item in reports}
        return {row: code for row, code in self.ending.items() if row in rows}


async def open_browser(
    app, relay: Relay, *, headers: dict | None = None, path: str = "/relay", ticket: str | None = "t1"
) -> Browser:
    """Connect as a page of the broker would, with its cookie and Origin unless ``headers`` say otherwise."""
    sent = {"Cookie": session_cookie(app), "Origin": ORIGIN, **(headers or {})}
    url = f"ws://127.0.0.1:{relay.port}{path}"
    return await Browser.connect(url, ticket=ticket, cookie=sent["Cookie"], origin=sent["Origin"])


@contextlib.asynccontextmanager
async def running(app, fakes: FakeServices, **options) -> AsyncIterator[tuple[Relay, FakeProxy]]:
    """A fake console proxy, and a relay minting its URLs, for one scenario."""
    options.setdefault("retry", Retry(delays=(0.01,), budget=2.0))
    options.setdefault("poll_interval", 0.02)
    async with FakeProxy() as proxy:
        fakes.console_url = proxy.console_url
        relay = Relay(app, services=fakes.services(), **options)
        await relay.start("127.0.0.1", 0)
        try:
            yield relay, proxy
        finally:
            await relay.stop()


async def connected(app, relay: Relay, proxy: FakeProxy) -> Browser:
    """A browser through the relay, past its handshake, showing the first screen."""
    browser = await open_browser(app, relay)
    await browser.handshake()
    await browser.start()
    await eventually(lambda: browser.screens() == [1])
    return browser


def reported(fakes: FakeServices) -> dict[int, LiveReport]:
    """The consoles the relay's last poll reported, by row."""
    return {item.row_id: item for item in fakes.reports[-1]} if fakes.reports else {}


def sent_keys(proxy: FakeProxy) -> list[bytes]:
    return [m for session in proxy.sessions for m in session.of_type(rfb.KEY_EVENT)]


# -- piping ------------------------------------------------------------------------------------------


def test_a_console_connects_and_pipes_both_ways(app):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await connected(app, relay, proxy)
            for message in typed("ls"):
                await browser.websocket.send(message)
            await eventually(lambda: len(sent_keys(proxy)) == 4)
            return browser, proxy

    browser, proxy = run(scenario())
    assert browser.init == ServerInit(32, 24, FORMAT_32, b"guest")
    [session] = proxy.sessions
    assert session.messages[:3] == [
        rfb.set_pixel_format(FORMAT_32),
        rfb.set_encodings(FILTERED),
        rfb.framebuffer_update_request(False, 0, 0, 32, 24),
    ]
    assert sent_keys(proxy) == typed("ls")
    [redeemed] = fakes.redeemed
    assert redeemed["sid"] == "sid-1" and redeemed["user"] == 7 and redeemed["origin"] == ORIGIN
    assert redeemed["token"] == "t1"
    assert (redeemed["client"], redeemed["agent"]) == ("127.0.0.1", USER_AGENT)
    # Ticket, mint, connect and disconnect records share the websocket's request ID.
    assert re.fullmatch(r"[0-9a-f]{32}", redeemed["request_id"])
    assert fakes.mints == [
        {"server_id": SERVER_ID, "confirmed": None, "client": "127.0.0.1", "agent": USER_AGENT, **ids(redeemed)}
    ]
    [opened] = fakes.opened
    assert (opened["client"], opened["server_name"]) == ("127.0.0.1", "web-01")
    assert opened["ticket"].server_id == SERVER_ID


def ids(record: dict) -> dict:
    return {"request_id": record["request_id"]}


@pytest.mark.parametrize(
    "path, ticket, headers, status",
    [
        ("/elsewhere", "t1", {}, 404),
        ("/relay", "t1", {"Origin": "http://evil.example"}, 403),
        ("/relay", "t1", {"Origin": ""}, 403),
        ("/relay", "t1", {"Cookie": ""}, 401),
        ("/relay", "t1", {"Cookie": "session=forged.cookie.value"}, 401),
        ("/relay", "nope", {}, 403),
        ("/relay", None, {}, 403),
        # A ticket in the URL is one a proxy may have logged: never taken from there.
        ("/relay?ticket=t1", None, {}, 403),
    ],
)
def test_refusals_are_answered_before_the_upgrade(app, path, ticket, headers, status):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            with pytest.raises(InvalidStatus) as caught:
                await open_browser(app, relay, headers=headers, path=path, ticket=ticket)
            return caught.value.response.status_code, proxy

    answered, proxy = run(scenario())
    assert answered == status
    assert fakes.mints == [] and fakes.opened == [] and proxy.sessions == []


def test_a_viewer_offering_no_binary_subprotocol_is_let_in_as_websockify_would(app):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            headers = [("Cookie", session_cookie(app))]
            url = f"ws://127.0.0.1:{relay.port}/relay"
            offer = [Subprotocol("ticket.t1")]
            async with connect(
                url, origin=ORIGIN, additional_headers=headers, subprotocols=offer, compression=None
            ) as websocket:
                return websocket.subprotocol, await websocket.recv()

    # The ticket's offer is never the one chosen: the answer's headers would echo it.
    assert run(scenario()) == (None, rfb.VERSION_3_8)


def test_the_ticket_offered_as_a_subprotocol_is_redeemed_and_never_echoed(app):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await open_browser(app, relay)
            return browser.websocket.subprotocol, browser.websocket.response.headers

    chosen, answer = run(scenario())
    assert chosen == "binary"
    assert "t1" not in str(answer)
    assert [redeemed["token"] for redeemed in fakes.redeemed] == ["t1"]


def test_a_ticket_is_good_once(app):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            await connected(app, relay, proxy)
            with pytest.raises(InvalidStatus) as caught:
                await open_browser(app, relay)
            return caught.value.response.status_code

    assert run(scenario()) == 403


def test_bytes_each_way_are_counted_and_reported(app):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await connected(app, relay, proxy)
            for message in typed("abc"):
                await browser.websocket.send(message)
            await eventually(lambda: len(sent_keys(proxy)) == 6)
            await eventually(lambda: reported(fakes) and reported(fakes)[41].to_cloud == proxy.sessions[0].received)
            await browser.websocket.close()
            await eventually(lambda: fakes.closed)
            return browser, proxy

    browser, proxy = run(scenario())
    [closed] = fakes.closed
    # RFB after the handshakes: what the proxy's server read, and what the viewer read after ServerInit.
    assert closed["to_cloud"] == proxy.sessions[0].received
    assert closed["to_browser"] == browser.received == 4 + 12 + 32 * 24 * 4
    assert closed["reason"] == "the browser closed the connection (1000); 1 console URL minted"
    assert closed["row"] == 41
    last = reported(fakes)[41]
    assert (last.client, last.server.name, last.ticket.username) == ("127.0.0.1", "web-01", "agent")
    # Typing is use of the sign-in session: the poll says when it last happened.
    assert last.used_at is not None


# -- resuming ---------------------------------------------------------------------------------------


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
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await connected(app, relay, proxy)
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
    fakes = FakeServices()
    fakes.expires_in = 2  # replaced a quarter of its life before expiry: 1.5 s after the mint
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await connected(app, relay, proxy)
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
    fakes = FakeServices()
    fakes.expires_in = 2
    fakes.issue()

    async def scenario():
        async with running(app, fakes, retry=Retry(delays=(0.01,), budget=0.3)) as (relay, proxy):
            browser = await connected(app, relay, proxy)
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
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await connected(app, relay, proxy)
            proxy.width, proxy.height = 40, 30
            await cut_and_type(relay, proxy, fakes, browser, b"")
            await eventually(lambda: any(m == rfb.desktop_size(40, 30) for m in browser.messages))
            await eventually(lambda: len(proxy.sessions) == 2 and len(proxy.sessions[1].messages) >= 3)
            return browser, proxy

    browser, proxy = run(scenario())
    assert proxy.sessions[1].messages[2] == rfb.framebuffer_update_request(False, 0, 0, 40, 30)


def test_pointer_moves_while_the_cloud_is_away_are_merged(app):
    fakes = FakeServices()
    fakes.issue()

    def pointer(buttons: int, x: int) -> bytes:
        return struct.pack(">BBHH", rfb.POINTER_EVENT, buttons, x, 5)

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await connected(app, relay, proxy)
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
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes, retry=Retry(delays=(0.01, 0.02), budget=0.3)) as (relay, proxy):
            browser = await connected(app, relay, proxy)
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
    fakes = FakeServices()
    fakes.issue()
    stopped = errors.ServerNotReady("The server web-01 is not running (SHUTOFF).")
    stopped.server_status = "SHUTOFF"

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            if during == "connect":
                fakes.mint_errors.append(stopped)
                browser = await open_browser(app, relay)
                await browser.greet()
            else:
                browser = await connected(app, relay, proxy)
                fakes.mint_errors.append(stopped)
                await proxy.sessions[0].close(1000)
            return await browser.closed()

    assert run(scenario()) == (4409, "Server not running (SHUTOFF)")
    assert len(fakes.opened) == (0 if during == "connect" else 1)


def test_a_mint_refused_on_resume_closes_with_4403(app):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await connected(app, relay, proxy)
            fakes.mint_errors.append(NoSuchServer("No server with this ID that you may open."))
            await proxy.sessions[0].close(1000)
            return await browser.closed()

    assert run(scenario())[0] == 4403


def test_a_console_the_cloud_cannot_give_is_not_retried(app):
    fakes = FakeServices()
    fakes.issue()
    fakes.mint_errors.append(errors.ConsoleUnavailable("The cloud has no noVNC console for this server."))

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await open_browser(app, relay)
            await browser.greet()
            return await browser.closed()

    assert run(scenario()) == (4502, "The cloud's console is unreachable")
    assert len(fakes.mints) == 1
    # One record of the console, saying why it never opened; no connect record.
    assert fakes.opened == [] and fakes.closed == []
    [failed] = fakes.failed
    assert failed["reason"] == "The cloud has no noVNC console for this server. (1 failed tries)"
    assert failed["request_id"] == fakes.redeemed[0]["request_id"]


def test_a_console_whose_cloud_never_answers_is_one_failure_on_record_with_its_cause(app, caplog):
    fakes = FakeServices()
    fakes.issue()
    fakes.mint_errors.extend([errors.CloudUnreachable("The cloud lab cannot be reached.")] * 50)

    async def scenario():
        async with running(app, fakes, retry=Retry(delays=(0.01,), budget=0.3)) as (relay, proxy):
            browser = await open_browser(app, relay)
            await browser.greet()
            return await browser.closed()

    with caplog.at_level(logging.WARNING, logger="broker.relay"):
        assert run(scenario()) == (4502, "The cloud's console is unreachable")
    tries = len(fakes.mints)
    assert tries > 3
    [failed] = fakes.failed
    assert failed["reason"].startswith(f"the cloud's console could not be reached ({tries} tries)")
    assert "The cloud lab cannot be reached." in failed["reason"]
    assert fakes.opened == [] and fakes.closed == []
    # Each failed try is a warning at once, not only the ending.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "could not be opened" in r.message]
    assert len(warnings) == tries


def test_a_websocket_that_never_speaks_rfb_costs_the_cloud_nothing(app):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes, handshake_timeout=0.3) as (relay, proxy):
            browser = await open_browser(app, relay)
            return await browser.closed(), proxy

    (code, _), proxy = run(scenario())
    assert code == 1002
    assert fakes.mints == [] and fakes.failed == [] and proxy.sessions == []


def test_a_cloud_blip_while_connecting_is_retried(app):
    fakes = FakeServices()
    fakes.issue()
    fakes.mint_errors.append(errors.CloudUnreachable("Keystone did not answer."))

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            await connected(app, relay, proxy)

    run(scenario())
    assert len(fakes.mints) == 2


# -- ending ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, reason, audit",
    [
        (4410, "Ended by an administrator", "ended by an administrator"),
        (4401, "Sign in again", "the sign-in session ended"),
        (4403, "No server with this ID that you may open", "the user may no longer open this server"),
    ],
)
def test_consoles_the_broker_ends_are_closed_with_its_code(app, code, reason, audit):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await connected(app, relay, proxy)
            fakes.ending[41] = code
            return await browser.closed()

    assert run(scenario()) == (code, reason)
    assert fakes.closed[0]["reason"] == f"{audit}; 1 console URL minted"


def test_shutdown_closes_every_browser_with_1001(app):
    fakes = FakeServices()
    fakes.issue("t1")
    fakes.issue("t2")

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            first = await connected(app, relay, proxy)
            second = await open_browser(app, relay, ticket="t2")
            await second.handshake()
            await relay.stop()
            return await first.closed(), await second.closed()

    assert run(scenario()) == ((1001, "The relay is restarting"),) * 2
    assert [closed["reason"] for closed in fakes.closed] == ["the relay shut down; 1 console URL minted"] * 2


def test_a_browser_sending_what_rfb_does_not_have_is_closed(app):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await connected(app, relay, proxy)
            await browser.websocket.send(b"\x07\x00")
            return await browser.closed()

    assert run(scenario()) == (1002, "Unsupported RFB message")
    assert fakes.closed[0]["reason"].startswith("the browser sent what it may not")


def test_a_browser_that_never_finishes_the_handshake_is_closed(app):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes, handshake_timeout=0.05) as (relay, proxy):
            browser = await open_browser(app, relay)
            return await browser.closed()

    assert run(scenario()) == (1002, "Handshake timed out")
    assert fakes.opened == []


def test_a_service_mounted_beside_the_relay_checks_its_own_clients(app):
    fakes = FakeServices()

    async def echo(websocket):
        await websocket.send(await websocket.recv())

    async def scenario():
        async with running(app, fakes, mounts={"/demo-console/websockify": echo}) as (relay, proxy):
            url = f"ws://127.0.0.1:{relay.port}/demo-console/websockify?token=x"
            async with connect(url, compression=None) as websocket:
                await websocket.send(b"RFB?")
                echoed = await websocket.recv()
            with pytest.raises(InvalidStatus) as caught:
                await open_browser(app, relay)
            return echoed, caught.value.response.status_code

    assert run(scenario()) == (b"RFB?", 403)
    assert [r["token"] for r in fakes.redeemed] == ["t1"]


@pytest.fixture
def log_lines():
    """Every line the broker's and websockets' loggers write meanwhile, formatted."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger("broker"), logging.getLogger("websockets")]
    for logger in loggers:
        logger.addHandler(handler)
    yield lines
    for logger in loggers:
        logger.removeHandler(handler)


def test_nothing_logged_holds_a_ticket_cookie_or_console_token(app, log_lines):
    fakes = FakeServices()
    fakes.issue("ticket-5ecret")
    cookie = session_cookie(app)

    async def scenario():
        async with running(app, fakes, retry=Retry(delays=(0.01,), budget=0.2)) as (relay, proxy):
            browser = await open_browser(app, relay, ticket="ticket-5ecret")
            await browser.handshake()
            await proxy.sessions[0].close(1000)
            await eventually(lambda: len(proxy.sessions) == 2)
            proxy.refuse_status = 403
            await proxy.sessions[1].close(1000)
            return await browser.closed()

    assert run(scenario())[0] == 4502
    text = "\n".join(log_lines)
    assert "resuming" in text and "HTTP 403" in text
    for secret in (TOKEN, "ticket-5ecret", cookie.partition("=")[2]):
        assert secret not in text


# -- pieces --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forwarded, trusted, client",
    [
        ("203.0.113.9", 0, "10.0.0.2"),
        ("203.0.113.9", 1, "203.0.113.9"),
        # Whatever the client wrote left of what the trusted proxy saw proves nothing.
        ("1.2.3.4, 203.0.113.9", 1, "203.0.113.9"),
        ("1.2.3.4, 203.0.113.9", 2, "1.2.3.4"),
        ("203.0.113.9", 2, "10.0.0.2"),
        ("", 1, "10.0.0.2"),
    ],
)
def test_client_address_reads_forwarded_for_as_the_web_app_does(forwarded, trusted, client):
    assert client_address("10.0.0.2", forwarded, trusted) == client


def test_relay_context_gives_the_audit_its_client_agent_and_request_id(app):
    with relay_context(app, "192.0.2.7", "viewer/1"):
        assert (request.remote_addr, request.user_agent.string) == ("192.0.2.7", "viewer/1")
        first = g.request_id
    with relay_context(app, "192.0.2.7", "viewer/1"):
        assert re.fullmatch(r"[0-9a-f]{32}", g.request_id) and g.request_id != first


def test_the_relay_path_is_the_relay_urls_when_there_is_one(app):
    settings = app.extensions["broker"].settings
    assert relay_path(settings) == "/relay"
    on_its_port = type(settings)(**{**settings.__dict__, "relay_url": "ws://{host}:5001/console-relay"})
    assert relay_path(on_its_port) == "/console-relay"


# -- the process -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, bound",
    [
        ({}, ("127.0.0.1", 5001)),
        ({"RELAY_PORT": "6001"}, ("127.0.0.1", 6001)),
        ({"RELAY_BIND": "0.0.0.0:7001", "RELAY_PORT": "6001"}, ("0.0.0.0", 7001)),
        ({"RELAY_BIND": "[::1]:7001"}, ("::1", 7001)),
    ],
)
def test_the_relay_binds_where_the_environment_says(env, bound):
    assert bind_address(env) == bound


@pytest.mark.parametrize("env", [{"RELAY_BIND": "7001"}, {"RELAY_BIND": "host:port"}, {"RELAY_PORT": "70000"}])
def test_a_bad_bind_address_stops_start_up_naming_the_variable(env, capsys):
    with pytest.raises(SystemExit):
        bind_address(env)
    assert next(iter(env)) in capsys.readouterr().err


def test_sigterm_closes_every_browser_with_1001_and_stops(app):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with FakeProxy() as proxy:
            fakes.console_url = proxy.console_url
            relay = Relay(app, services=fakes.services())
            serving = asyncio.create_task(serve(relay, "127.0.0.1", 0))
            await eventually(lambda: relay.server is not None)
            browser = await connected(app, relay, proxy)
            os.kill(os.getpid(), signal.SIGTERM)
            await serving
            return await browser.closed()

    assert run(scenario()) == (1001, "The relay is restarting")
    assert fakes.closed[0]["reason"] == "the relay shut down; 1 console URL minted"


def test_a_plain_get_on_the_relay_path_proves_the_address_reaches_the_relay(app):
    fakes = FakeServices()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"GET /relay HTTP/1.1\r\nHost: relay\r\n\r\n")
            answer = await reader.read(4096)
            writer.close()
            return answer

    answer = run(scenario())
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\nconsole-broker relay\n")
    assert fakes.redeemed == []


# -- riding out trouble ------------------------------------------------------------------------------


def test_the_viewer_hears_at_once_when_its_keys_cannot_reach_the_server_and_when_they_can_again(app):
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await connected(app, relay, proxy)
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
    fakes = FakeServices()
    fakes.issue()

    async def scenario():
        async with running(app, fakes, retry=Retry(delays=(0.05,), budget=0.6)) as (relay, proxy):
            browser = await connected(app, relay, proxy)
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


def test_consoles_open_ride_out_a_database_outage_and_their_records_wait_for_it(app):
    """PostgreSQL unreachable: no poll, no record, yet the console goes on, its token replaced on the rights
    last confirmed; once the database is back, the disconnect is recorded and the rules judge it again."""
    fakes = FakeServices()
    fakes.expires_in = 2  # replaced while the database is away
    fakes.issue()

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await connected(app, relay, proxy)
            fakes.database_down = True
            await eventually(lambda: len(proxy.sessions) == 2, timeout=5)
            for message in typed("up"):
                await browser.websocket.send(message)
            await eventually(lambda: len(sent_keys(proxy)) == 4)
            await browser.websocket.close()
            await eventually(lambda: not relay.consoles)
            assert fakes.closed == [] and relay.deferred
            fakes.database_down = False
            await eventually(lambda: fakes.closed)
            return browser

    browser = run(scenario())
    assert browser.websocket.close_code == 1000
    # The second mint was asked with the rights last confirmed, for the broker to use if it must.
    assert fakes.mints[0]["confirmed"] is None
    assert fakes.mints[1]["confirmed"].name == "web-01"
    [closed] = fakes.closed
    assert closed["reason"] == "the browser closed the connection (1000); 2 console URLs minted"


def test_a_new_console_while_the_database_is_unreachable_is_refused_saying_so(app):
    fakes = FakeServices()
    fakes.issue()
    fakes.database_down = True

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            browser = await open_browser(app, relay)
            await browser.greet()
            return await browser.closed()

    assert run(scenario()) == (4503, "The broker's database is unavailable")


def test_a_kept_back_record_that_cannot_be_written_never_blocks_the_ones_after_it(app, caplog):
    fakes = FakeServices()
    written = []

    def broken() -> None:
        raise RuntimeError("a bug, not an outage")

    async def scenario():
        async with running(app, fakes) as (relay, proxy):
            relay.defer(RELAY_CALLER, broken)
            relay.defer(RELAY_CALLER, lambda: written.append("second"))
            await eventually(lambda: not relay.deferred)

    run(scenario())
    assert written == ["second"]
    assert "a console's record kept back could not be written" in caplog.text
