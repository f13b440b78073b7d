"""The relay's server end to end in one process: who may connect, polling, shutdown, and what it logs.

A browser, the relay, a fake console proxy, and the relay's Services (tests.relay.services): the
broker's own sign-in and tickets on a test database, fake mints and records. The console itself
(handshake, piping, resuming) is tests/relay/test_console.py's; the process, test_main.py's.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from datetime import UTC
from datetime import datetime

import pytest
from flask import Flask
from itsdangerous import TimestampSigner
from sqlalchemy import select
from sqlalchemy import update
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from broker.extensions import db
from broker.models import AuditRecord
from broker.models import UserSession
from broker.relay import rfb
from broker.relay.console import Retry
from broker.relay.rfb import ServerInit
from broker.relay.server import RELAY_CALLER
from broker.relay.server import client_address
from broker.relay.server import relay_path
from broker.services.relay import Ticket
from tests.relay import FILTERED
from tests.relay import FORMAT_32
from tests.relay import TOKEN
from tests.relay import USER_AGENT
from tests.relay import eventually
from tests.relay import run
from tests.relay import typed
from tests.relay.services import LATEST
from tests.relay.services import ORIGIN
from tests.relay.services import SERVER_ID
from tests.relay.services import FakeServices
from tests.relay.services import connected
from tests.relay.services import open_browser
from tests.relay.services import relay_app
from tests.relay.services import reported
from tests.relay.services import running
from tests.relay.services import sent_keys
from tests.relay.services import session_cookie
from tests.relay.services import signed_in


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The broker app whose sign-in and tickets the relay's Services use (mints and records are faked)."""
    return relay_app(tmp_path_factory)


# -- who may connect ---------------------------------------------------------------------------------


def test_a_console_connects_and_pipes_both_ways(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
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
    assert redeemed["sid"] == fakes.session_id and redeemed["user"] == fakes.user.id and redeemed["origin"] == ORIGIN
    assert [redeemed["token"]] == fakes.tokens
    assert (redeemed["client"], redeemed["agent"]) == ("127.0.0.1", USER_AGENT)
    # Ticket, mint, connect and disconnect records share the websocket's request ID.
    assert re.fullmatch(r"[0-9a-f]{32}", redeemed["request_id"])
    assert fakes.mints == [
        {"server_id": SERVER_ID, "confirmed": None, "client": "127.0.0.1", "agent": USER_AGENT, **ids(redeemed)}
    ]
    [opened] = fakes.opened
    assert (opened["client"], opened["server_name"]) == ("127.0.0.1", "web-01")
    # The grant the broker's redeem gave: the ticket's server, for the session that holds it.
    assert opened["ticket"] == Ticket(fakes.user.id, "agent", fakes.session_id, SERVER_ID, "web-01", "lab", ORIGIN)


def ids(record: dict) -> dict:
    return {"request_id": record["request_id"]}


@pytest.mark.parametrize(
    "path, ticket, headers, status",
    [
        ("/elsewhere", LATEST, {}, 404),
        ("/relay", LATEST, {"Origin": "http://evil.example"}, 403),
        ("/relay", LATEST, {"Origin": ""}, 403),
        ("/relay", LATEST, {"Cookie": ""}, 401),
        ("/relay", LATEST, {"Cookie": "session=forged.cookie.value"}, 401),
        ("/relay", "nope", {}, 403),
        ("/relay", None, {}, 403),
        # A ticket in the URL is one a proxy may have logged: never taken from there.
        ("/relay?ticket={ticket}", None, {}, 403),
    ],
)
def test_refusals_are_answered_before_the_upgrade(app, path, ticket, headers, status):
    fakes = FakeServices(app)
    path = path.format(ticket=fakes.issue())

    async def scenario():
        async with running(fakes) as (relay, proxy):
            with pytest.raises(InvalidStatus) as caught:
                await open_browser(fakes, relay, headers=headers, path=path, ticket=ticket)
            return caught.value.response.status_code, proxy

    answered, proxy = run(scenario())
    assert answered == status
    assert fakes.mints == [] and fakes.opened == [] and proxy.sessions == []


def refusal_reason(app) -> str:
    """The reason of the last refusal of a relay ticket, as the broker's audit has it."""
    with app.app_context():
        query = select(AuditRecord).where(AuditRecord.action == "console", AuditRecord.outcome == "refused")
        return db.session.scalars(query.order_by(AuditRecord.id.desc())).first().reason


def cookie_of(fakes: FakeServices, kind: str, monkeypatch) -> str:
    """The signed-in browser's session cookie, spoilt as ``kind`` says."""
    app, data = fakes.app, {"sid": fakes.session_id, "_user_id": fakes.user.get_id()}
    if kind == "tampered":
        name, _, value = fakes.cookie.partition("=")
        payload, _, signature = value.partition(".")
        return f"{name}={payload[:-1]}{'A' if payload[-1] != 'A' else 'B'}.{signature}"
    if kind == "signed with another key":
        other = Flask("elsewhere")
        other.config.update(
            SECRET_KEY="another-secret-key-0123456789", SESSION_COOKIE_NAME=app.config["SESSION_COOKIE_NAME"]
        )
        return session_cookie(other, data)
    if kind == "older than a session may live":
        then = int(time.time() - app.permanent_session_lifetime.total_seconds()) - 60
        with monkeypatch.context() as patched:
            patched.setattr(TimestampSigner, "get_timestamp", lambda signer: then)
            return session_cookie(app, data)
    if kind == "naming no user":
        return session_cookie(app, {"sid": fakes.session_id})
    with app.app_context():  # "of a session that has ended": signed out since
        db.session.execute(
            update(UserSession).where(UserSession.id == fakes.session_id).values(ended_at=datetime.now(UTC))
        )
        db.session.commit()
    return fakes.cookie


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("tampered", "no sign-in session with the websocket"),
        ("signed with another key", "no sign-in session with the websocket"),
        ("older than a session may live", "no sign-in session with the websocket"),
        ("naming no user", "no sign-in session with the websocket"),
        ("of a session that has ended", "the sign-in session has ended"),
    ],
)
def test_a_cookie_that_names_no_live_sign_in_is_refused_with_401(app, monkeypatch, kind, reason):
    fakes = FakeServices(app)
    fakes.issue()
    cookie = cookie_of(fakes, kind, monkeypatch)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            with pytest.raises(InvalidStatus) as caught:
                await open_browser(fakes, relay, headers={"Cookie": cookie})
            return caught.value.response.status_code, proxy

    answered, proxy = run(scenario())
    assert answered == 401
    assert refusal_reason(app) == reason
    assert fakes.mints == [] and fakes.opened == [] and proxy.sessions == []


@pytest.mark.parametrize("whose", ["another session of the same user", "another user"])
def test_a_ticket_is_refused_to_a_cookie_of_another_sign_in(app, whose):
    fakes = FakeServices(app)
    fakes.issue()
    if whose == "another user":
        other, sid = signed_in(app, "someone-else")
    else:
        other, sid = signed_in(app)
    cookie = session_cookie(app, {"sid": sid, "_user_id": other.get_id()})

    async def scenario():
        async with running(fakes) as (relay, proxy):
            with pytest.raises(InvalidStatus) as caught:
                await open_browser(fakes, relay, headers={"Cookie": cookie})
            return caught.value.response.status_code

    assert run(scenario()) == 403
    assert refusal_reason(app) == "ticket of another sign-in session"
    assert fakes.mints == []


def test_a_viewer_offering_no_binary_subprotocol_is_let_in_as_websockify_would(app):
    fakes = FakeServices(app)
    ticket = fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            headers = [("Cookie", fakes.cookie)]
            url = f"ws://127.0.0.1:{relay.port}/relay"
            offer = [Subprotocol(f"ticket.{ticket}")]
            async with connect(
                url, origin=ORIGIN, additional_headers=headers, subprotocols=offer, compression=None
            ) as websocket:
                return websocket.subprotocol, await websocket.recv()

    # The ticket's offer is never the one chosen: the answer's headers would echo it.
    assert run(scenario()) == (None, rfb.VERSION_3_8)


def test_the_ticket_offered_as_a_subprotocol_is_redeemed_and_never_echoed(app):
    fakes = FakeServices(app)
    ticket = fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await open_browser(fakes, relay)
            return browser.websocket.subprotocol, browser.websocket.response.headers

    chosen, answer = run(scenario())
    assert chosen == "binary"
    assert ticket not in str(answer)
    assert [redeemed["token"] for redeemed in fakes.redeemed] == [ticket]


def test_a_ticket_is_good_once(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            await connected(fakes, relay, proxy)
            with pytest.raises(InvalidStatus) as caught:
                await open_browser(fakes, relay)
            return caught.value.response.status_code

    assert run(scenario()) == 403


def test_a_service_mounted_beside_the_relay_checks_its_own_clients(app):
    fakes = FakeServices(app)

    async def echo(websocket):
        await websocket.send(await websocket.recv())

    async def scenario():
        async with running(fakes, mounts={"/demo-console/websockify": echo}) as (relay, proxy):
            url = f"ws://127.0.0.1:{relay.port}/demo-console/websockify?token=x"
            async with connect(url, compression=None) as websocket:
                await websocket.send(b"RFB?")
                echoed = await websocket.recv()
            with pytest.raises(InvalidStatus) as caught:
                await open_browser(fakes, relay, ticket="t1")
            return echoed, caught.value.response.status_code

    assert run(scenario()) == (b"RFB?", 403)
    assert [r["token"] for r in fakes.redeemed] == ["t1"]


def test_a_plain_get_on_the_relay_path_proves_the_address_reaches_the_relay(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"GET /relay HTTP/1.1\r\nHost: relay\r\n\r\n")
            answer = await reader.read(4096)
            writer.close()
            return answer

    answer = run(scenario())
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\nconsole-broker relay\n")
    assert fakes.redeemed == []


# -- live consoles: polled, ended, shut down ---------------------------------------------------------


def test_bytes_each_way_are_counted_and_reported(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
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


@pytest.mark.parametrize(
    "code, reason, audit",
    [
        (4410, "Ended by an administrator", "ended by an administrator"),
        (4401, "Sign in again", "the sign-in session ended"),
        (4403, "No server with this ID that you may open", "the user may no longer open this server"),
    ],
)
def test_consoles_the_broker_ends_are_closed_with_its_code(app, code, reason, audit):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            fakes.ending[41] = code
            return await browser.closed()

    assert run(scenario()) == (code, reason)
    assert fakes.closed[0]["reason"] == f"{audit}; 1 console URL minted"


def test_shutdown_closes_every_browser_with_1001(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            first = await connected(fakes, relay, proxy)
            fakes.issue()
            second = await open_browser(fakes, relay)
            await second.handshake()
            await relay.stop()
            return await first.closed(), await second.closed()

    assert run(scenario()) == ((1001, "The relay is restarting"),) * 2
    assert [closed["reason"] for closed in fakes.closed] == ["the relay shut down; 1 console URL minted"] * 2


def test_consoles_open_ride_out_a_database_outage_and_their_records_wait_for_it(app):
    """PostgreSQL unreachable: no poll, no record, yet the console goes on, its token replaced on the rights
    last confirmed; once the database is back, the disconnect is recorded and the rules judge it again."""
    fakes = FakeServices(app)
    fakes.expires_in = 2  # replaced while the database is away
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
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


def test_a_kept_back_record_that_cannot_be_written_never_blocks_the_ones_after_it(app, caplog):
    fakes = FakeServices(app)
    written = []

    def broken() -> None:
        raise RuntimeError("a bug, not an outage")

    async def scenario():
        async with running(fakes) as (relay, proxy):
            relay.defer(RELAY_CALLER, broken)
            relay.defer(RELAY_CALLER, lambda: written.append("second"))
            await eventually(lambda: not relay.deferred)

    run(scenario())
    assert written == ["second"]
    assert "a console's record kept back could not be written" in caplog.text


# -- what it logs, and pieces ----------------------------------------------------------------------


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
    fakes = FakeServices(app)
    ticket = fakes.issue()
    cookie = fakes.cookie

    async def scenario():
        async with running(fakes, retry=Retry(delays=(0.01,), budget=0.2)) as (relay, proxy):
            browser = await open_browser(fakes, relay)
            await browser.handshake()
            await proxy.sessions[0].close(1000)
            await eventually(lambda: len(proxy.sessions) == 2)
            proxy.refuse_status = 403
            await proxy.sessions[1].close(1000)
            return await browser.closed()

    assert run(scenario())[0] == 4502
    text = "\n".join(log_lines)
    assert "resuming" in text and "HTTP 403" in text
    for secret in (TOKEN, ticket, cookie.partition("=")[2]):
        assert secret not in text


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


def test_the_relay_path_is_the_relay_urls_when_there_is_one(app):
    settings = app.extensions["broker"].settings
    assert relay_path(settings) == "/relay"
    on_its_port = type(settings)(**{**settings.__dict__, "relay_url": "ws://{host}:5001/console-relay"})
    assert relay_path(on_its_port) == "/console-relay"


def test_a_console_that_closes_while_a_poll_reports_it_is_recorded_after_the_report(app):
    """Else the report, taken while the console was open, would write its row back after its close removed it:
    a console listed, and counted against its user, for seconds after it ended."""
    fakes = FakeServices(app)
    fakes.issue()
    reporting = threading.Event()
    go_on = threading.Event()
    order: list[str] = []

    def slow_report(caller, reports):
        if reports and not go_on.is_set():
            reporting.set()
            assert go_on.wait(5)
            order.append("report")
        return FakeServices._report(fakes, caller, reports)

    def closed(caller, row_id, **fields):
        order.append("closed")
        FakeServices._closed(fakes, caller, row_id, **fields)

    fakes._report, fakes._closed = slow_report, closed

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            await eventually(reporting.is_set)  # a poll is reporting the open console
            await browser.websocket.close()
            await eventually(lambda: all(console.row_id is None for console in relay.consoles))  # closing
            # Time enough for a close that did not wait for the report to be written first.
            await asyncio.sleep(0.2)
            go_on.set()
            await eventually(lambda: fakes.closed)

    run(scenario())
    assert order == ["report", "closed"]
