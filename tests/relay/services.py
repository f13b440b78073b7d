"""The relay's Services for its tests, and a relay, a fake console proxy and browsers to run a scenario with.

Sign-in and tickets are the broker's own (``broker.relayhost`` on a test app and its database):
a ticket a test uses was issued by ``broker.services.relay.issue`` and is redeemed by its
``redeem``. Mints and live-console records are fakes that record each call and who it was made
for, so that a test can hold a mint, fail it, or take the database away.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import AsyncIterator
from datetime import UTC
from datetime import datetime

from flask import Flask
from sqlalchemy import select

from broker import create_app
from broker import relayhost
from broker import state
from broker.cloud.types import Console
from broker.cloud.types import ServerInfo
from broker.extensions import db
from broker.models import User
from broker.models import UserSession
from broker.relay import rfb
from broker.relay.console import Retry
from broker.relay.server import Caller
from broker.relay.server import Relay
from broker.relay.server import Services
from broker.relay.server import SignIn
from broker.services import relay as live
from broker.services import users
from broker.services.consoles import Minted
from broker.services.relay import DatabaseUnavailable
from broker.services.relay import LiveReport
from broker.services.relay import Ticket
from tests.relay import Browser
from tests.relay import FakeProxy
from tests.relay import eventually
from tests.support import AGENT
from tests.support import broker_env

ORIGIN = "http://broker.example:5000"
SERVER_ID = "00000000-0000-4000-8000-000000000001"
SERVER = ServerInfo(SERVER_ID, "web-01", "ACTIVE", "lab")
# The ticket a browser offers unless a test names another: the one issued last.
LATEST = "<the ticket issued last>"


def relay_app(tmp_path_factory) -> Flask:
    """A broker app for a module of relay tests: its settings, its session cookies and its database."""
    tmp = tmp_path_factory.mktemp("relay")
    return create_app({"ENV": broker_env(tmp), "CLOUDS": [], "INSTANCE_PATH": str(tmp / "instance"), "TESTING": True})


def session_cookie(app: Flask, data: dict) -> str:
    """A Flask session cookie holding ``data``, signed as ``app`` signs it."""
    value = app.session_interface.get_signing_serializer(app).dumps(data)
    return f"{app.config['SESSION_COOKIE_NAME']}={value}"


def signed_in(app: Flask, username: str = AGENT[0]) -> tuple[User, str]:
    """The user (made when missing) and a fresh live sign-in session of theirs."""
    with app.app_context():
        user = db.session.scalar(select(User).where(User.username == username))
        if user is None:
            user = users.add(username, AGENT[1], role="agent")
        sid = secrets.token_urlsafe(32)
        db.session.add(UserSession(id=sid, user_id=user.id, method="local"))
        db.session.commit()
        db.session.refresh(user)
        db.session.expunge(user)
        return user, sid


class FakeServices:
    """The relay's Services: the broker's sign-in and tickets, and fake mints and records that note every call."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.real = relayhost.services(app)
        self.user, self.session_id = signed_in(app)
        self.tokens: list[str] = []
        self.console_url = ""
        # The console_ttl of the cloud each mint reports (the relay replaces the side before it runs out).
        self.expires_in = 600
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
        self.noted: list[dict] = []
        self.ending: dict[int, int] = {}
        # Set by a test: every record raises DatabaseUnavailable, as while PostgreSQL is unreachable.
        self.database_down = False

    @property
    def cookie(self) -> str:
        """The session cookie of the signed-in browser, as the web app sets it at sign-in."""
        return session_cookie(self.app, {"sid": self.session_id, "_user_id": self.user.get_id()})

    def issue(self, origin: str = ORIGIN, kind: str = "novnc", watching: tuple[int, str] | None = None) -> str:
        """A real ticket for the test server's console of ``kind`` (or to watch the live console ``watching``: its
        row, and watch or observe), for the signed-in browser's page at ``origin``."""
        with self.app.app_context():
            user = db.session.get(User, self.user.id)
            token = live.issue(user, self.session_id, SERVER, origin, limit=10, kind=kind, watching=watching)
            db.session.commit()
        self.tokens.append(token)
        return token

    def services(self) -> Services:
        return Services(
            self.real.identify,
            self._redeem,
            self._mint,
            self._opened,
            self._failed,
            self._report,
            self._closed,
            self._noted,
        )

    def _database(self) -> None:
        if self.database_down:
            raise DatabaseUnavailable("the broker's database cannot be reached")

    def _redeem(
        self, caller: Caller, token: str, *, session_id: str | None, user_id: int | None, origin: str | None
    ) -> Ticket:
        self.redeemed.append({"token": token, "sid": session_id, "user": user_id, "origin": origin, **context(caller)})
        return self.real.redeem(caller, token, session_id=session_id, user_id=user_id, origin=origin)

    def _mint(self, caller: Caller, ticket: Ticket, confirmed: ServerInfo | None) -> Minted:
        self.mints.append({"server_id": ticket.server_id, "confirmed": confirmed, **context(caller)})
        assert self.mint_gate.wait(5)
        if self.mint_errors:
            raise self.mint_errors.pop(0)
        server = ServerInfo(ticket.server_id, "web-01", "ACTIVE", ticket.cloud)
        return Minted(Console(self.console_url), server, self.expires_in, datetime.now(UTC), "idle")

    def _opened(self, caller: Caller, ticket: Ticket, *, client: str, instance: str, server_name: str) -> int:
        self._database()
        self.opened.append({"ticket": ticket, "client": client, "instance": instance, "server_name": server_name})
        return 40 + len(self.opened)

    def _failed(self, caller: Caller, ticket: Ticket, *, reason: str) -> None:
        self._database()
        self.failed.append({"ticket": ticket, "reason": reason, **context(caller)})

    def _closed(self, caller: Caller, row_id: int, *, reason: str, to_cloud: int, to_browser: int) -> None:
        self._database()
        self.closed.append({"row": row_id, "reason": reason, "to_cloud": to_cloud, "to_browser": to_browser})

    def _noted(self, caller: Caller, row_id: int, *, detail: str, reason: str) -> None:
        self._database()
        self.noted.append({"row": row_id, "detail": detail, "reason": reason})

    def _report(self, caller: Caller, reports: list[LiveReport]) -> dict[int, int]:
        self._database()
        self.reports.append(reports)
        rows = {item.row_id for item in reports}
        return {row: code for row, code in self.ending.items() if row in rows}


def context(caller: Caller) -> dict:
    """Who a call was made for, as the audit would record it."""
    return {"client": caller.client, "agent": caller.user_agent, "request_id": caller.request_id}


def identity(fakes: FakeServices) -> SignIn:
    """Whom the signed-in browser's cookie names."""
    return SignIn(fakes.user.id, fakes.session_id)


async def open_browser(
    fakes: FakeServices,
    relay: Relay,
    *,
    headers: dict | None = None,
    path: str = "/relay",
    ticket: str | None = LATEST,
) -> Browser:
    """Connect as a page of the broker would, with its cookie, Origin and latest ticket unless told otherwise."""
    sent = {"Cookie": fakes.cookie, "Origin": ORIGIN, **(headers or {})}
    offered = fakes.tokens[-1] if ticket == LATEST else ticket
    url = f"ws://127.0.0.1:{relay.port}{path}"
    return await Browser.connect(url, ticket=offered, cookie=sent["Cookie"], origin=sent["Origin"])


@contextlib.asynccontextmanager
async def running(fakes: FakeServices, **options) -> AsyncIterator[tuple[Relay, FakeProxy]]:
    """A fake console proxy, and a relay minting its URLs, for one scenario."""
    options.setdefault("retry", Retry(delays=(0.01,), budget=2.0))
    options.setdefault("poll_interval", 0.02)
    async with FakeProxy() as proxy:
        fakes.console_url = proxy.console_url
        relay = Relay(state.of(fakes.app).settings, fakes.services(), **options)
        await relay.start("127.0.0.1", 0)
        try:
            yield relay, proxy
        finally:
            await relay.stop()


async def connected(fakes: FakeServices, relay: Relay, proxy: FakeProxy) -> Browser:
    """A browser through the relay, past its handshake, showing the first screen."""
    browser = await open_browser(fakes, relay)
    await browser.handshake()
    await browser.start()
    await eventually(lambda: browser.screens() == [1])
    return browser


def reported(fakes: FakeServices) -> dict[int, LiveReport]:
    """The consoles the relay's last poll reported, by row."""
    return {item.row_id: item for item in fakes.reports[-1]} if fakes.reports else {}


def sent_keys(proxy: FakeProxy) -> list[bytes]:
    return [m for session in proxy.sessions for m in session.of_type(rfb.KEY_EVENT)]
