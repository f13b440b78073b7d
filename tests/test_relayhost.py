"""The relay's host (broker.relayhost): the session cookie read as the web app reads it, and the broker's services
called one unit of work at a time, for the browser each is done for."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from flask import Flask
from flask import g
from flask import request
from itsdangerous import TimestampSigner
from sqlalchemy import select
from sqlalchemy import update

from broker import create_app
from broker import relayhost
from broker import state
from broker.extensions import db
from broker.models import AuditRecord
from broker.models import LiveConsole
from broker.models import User
from broker.models import UserSession
from broker.relay.server import Caller
from broker.relay.server import SignIn
from broker.services.relay import Ticket
from broker.services.relay import TicketRefused
from tests.support import AGENT
from tests.support import broker_env
from tests.support import server_id

CALLER = Caller("192.0.2.7", "viewer/1", "0123456789abcdef0123456789abcdef")
OLD_KEY = "the-old-secret-key-0123456789"


@pytest.fixture
def console_mode() -> str:
    return "relay"


@pytest.fixture
def env_overrides() -> dict:
    # A key the app had before: cookies it signed are still good (BROKER_SECRET_KEY_FALLBACKS).
    return {"BROKER_SECRET_KEY_FALLBACKS": OLD_KEY}


def signed_in(client, auth) -> tuple[str, str]:
    """Sign the agent in through the web app: the session cookie it set, and the sign-in session's ID."""
    auth.login()
    with client.session_transaction() as session:
        sid = session["sid"]
    return f"session={client.get_cookie('session').value}", sid


def agent_id(app) -> int:
    with app.app_context():
        return db.session.scalar(select(User.id).where(User.username == AGENT[0]))


def cookie(app: Flask, data: dict) -> str:
    value = app.session_interface.get_signing_serializer(app).dumps(data)
    return f"{app.config['SESSION_COOKIE_NAME']}={value}"


# -- who a cookie signs in ---------------------------------------------------------------------------


def test_identify_reads_the_cookie_the_web_app_set_at_sign_in(app, client, auth):
    header, sid = signed_in(client, auth)
    assert relayhost.identify(app, f"theme=dark; {header}; other=1") == SignIn(agent_id(app), sid)


def test_identify_takes_a_cookie_signed_with_a_fallback_key_as_flask_does(app):
    old = Flask("before")
    old.config.update(SECRET_KEY=OLD_KEY, SESSION_COOKIE_NAME=app.config["SESSION_COOKIE_NAME"])
    assert relayhost.identify(app, cookie(old, {"sid": "s-1", "_user_id": "3:token"})) == SignIn(3, "s-1")


def spoilt(app: Flask, kind: str, monkeypatch) -> str:
    """A session cookie that names nobody, as ``kind`` says."""
    data = {"sid": "s-1", "_user_id": "3:token"}
    if kind == "none":
        return "theme=dark"
    if kind == "tampered":
        name, _, value = cookie(app, data).partition("=")
        return f"{name}={value.replace('.', 'x.', 1)}"
    if kind == "signed with another key":
        other = Flask("elsewhere")
        other.config.update(SECRET_KEY="another-secret-key-0123456789")
        return cookie(other, data)
    if kind == "older than a session may live":
        then = int(time.time() - app.permanent_session_lifetime.total_seconds()) - 60
        with monkeypatch.context() as patched:
            patched.setattr(TimestampSigner, "get_timestamp", lambda signer: then)
            return cookie(app, data)
    if kind == "naming no user":
        return cookie(app, {"sid": "s-1"})
    if kind == "a user ID that is no number":
        return cookie(app, {"sid": "s-1", "_user_id": "admin:token"})
    return cookie(app, {"sid": 5, "_user_id": "3:token"})  # "a session ID that is no string"


@pytest.mark.parametrize(
    "kind",
    [
        "none",
        "tampered",
        "signed with another key",
        "older than a session may live",
        "naming no user",
        "a user ID that is no number",
        "a session ID that is no string",
    ],
)
def test_identify_names_nobody_for_a_cookie_the_web_app_would_not_take(app, monkeypatch, kind):
    assert relayhost.identify(app, spoilt(app, kind, monkeypatch)) is None


def test_identify_is_only_decoding_the_ended_session_is_refused_by_redeem(app, client, auth):
    """A cookie of a session that has ended still names it; the ticket's redemption is what refuses it (401)."""
    header, sid = signed_in(client, auth)
    token = client.post(
        f"/api/relay-tickets/{server_id(1)}", query_string={"cloud": "lab"}, headers={"X-CSRFToken": auth.csrf()}
    ).get_json()["ticket"]
    with app.app_context():
        db.session.execute(update(UserSession).where(UserSession.id == sid).values(ended_at=datetime.now(UTC)))
        db.session.commit()
    signed = relayhost.identify(app, header)
    services = relayhost.services(app)
    with pytest.raises(TicketRefused) as refused:
        services.redeem(CALLER, token, session_id=signed.session_id, user_id=signed.user_id, origin="http://localhost")
    assert (refused.value.status, refused.value.reason) == (401, "the sign-in session has ended")


# -- the broker's services, one unit of work each ---------------------------------------------------------


def test_the_caller_context_gives_the_audit_its_client_agent_and_request_id(app):
    with relayhost.caller_context(app, CALLER):
        assert (request.remote_addr, request.user_agent.string, g.request_id) == (
            "192.0.2.7",
            "viewer/1",
            CALLER.request_id,
        )
    anonymous = Caller("192.0.2.7", "viewer/1", None)
    with relayhost.caller_context(app, anonymous):
        first = g.request_id
    with relayhost.caller_context(app, anonymous):
        assert re.fullmatch(r"[0-9a-f]{32}", g.request_id) and g.request_id != first


def test_a_unit_of_work_runs_the_call_in_the_callers_context_and_returns_what_it_gives(app):
    def seen(*args, **kwargs):
        return args, kwargs, request.remote_addr, g.request_id

    assert relayhost.unit_of_work(app, seen, CALLER, 1, two=2) == ((1,), {"two": 2}, "192.0.2.7", CALLER.request_id)


def test_a_ticket_from_the_api_is_redeemed_once_minted_and_recorded_for_the_caller(app, client, auth, fake):
    header, sid = signed_in(client, auth)
    token = client.post(
        f"/api/relay-tickets/{server_id(1)}", query_string={"cloud": "lab"}, headers={"X-CSRFToken": auth.csrf()}
    ).get_json()["ticket"]
    services = relayhost.services(app)
    signed = services.identify(header)
    bindings = {"session_id": signed.session_id, "user_id": signed.user_id, "origin": "http://localhost"}

    ticket = services.redeem(CALLER, token, **bindings)
    assert ticket == Ticket(signed.user_id, AGENT[0], sid, server_id(1), "web-01", "lab", "http://localhost")
    with pytest.raises(TicketRefused, match="ticket already used"):
        services.redeem(CALLER, token, **bindings)
    minted = services.mint(CALLER, ticket, None)
    assert minted.server.name == "web-01" and minted.console.url
    row_id = services.opened(CALLER, ticket, client=CALLER.client, instance="relay-1", server_name="web-01")
    assert services.report(Caller("", "console-broker relay", None), []) == {}
    services.closed(CALLER, row_id, reason="the browser closed the connection (1000)", to_cloud=5, to_browser=7)

    with app.app_context():
        records = db.session.scalars(
            select(AuditRecord).where(AuditRecord.detail.in_(["relay", "disconnect"])).order_by(AuditRecord.id)
        ).all()
        # Each call is audited for the browser it was made for: its address, its agent, its websocket's ID.
        assert [(r.action, r.outcome) for r in records] == [("console", "refused"), ("console", "ok"), ("relay", "ok")]
        assert {(r.client, r.user_agent, r.request_id) for r in records} == {
            ("192.0.2.7", "viewer/1", CALLER.request_id)
        }
        assert db.session.scalars(select(LiveConsole)).all() == []


def test_the_relay_is_made_with_the_apps_settings_and_services(app):
    relay = relayhost.relay(app, poll_interval=0.5)
    assert relay.settings is state.of(app).settings
    assert (relay.path, relay.poll_interval, relay.mounts) == ("/relay", 0.5, {})
    assert relay.services.identify("") is None


def test_the_relay_process_forgets_the_consoles_of_relays_that_died(app):
    user = agent_id(app)
    with app.app_context():
        long_ago = datetime.now(UTC) - timedelta(minutes=5)
        db.session.add(
            LiveConsole(
                user_id=user,
                username=AGENT[0],
                session_id=uuid.uuid4().hex,
                server_id=server_id(1),
                server_name="web-01",
                cloud="lab",
                client="192.0.2.7",
                instance="gone:1",
                started_at=long_ago,
                seen_at=long_ago,
            )
        )
        db.session.commit()
    relay = relayhost.relay_process(app, "127.0.0.1", 5001)
    with app.app_context():
        assert db.session.scalars(select(LiveConsole)).all() == []
    assert relay.mounts == {}


def test_on_the_demo_cloud_the_relay_also_serves_its_console_proxies(tmp_path):
    app = create_app({"ENV": broker_env(tmp_path, BROKER_DEMO="true"), "INSTANCE_PATH": str(tmp_path / "instance")})
    fake = state.of(app).demo_cloud
    mounts = relayhost.demo_mounts(app, "0.0.0.0", 5001)
    assert list(mounts) == ["/demo-console/websockify", "/demo-serial/"]
    # Its console URLs name this relay, over loopback whatever address it listens on.
    assert (fake.console_base, fake.console_ws_path) == (
        "http://127.0.0.1:5001/demo-console",
        "demo-console/websockify",
    )
    server = next(iter(fake.servers.values()))
    assert fake.mint_serial_url(server).startswith("ws://127.0.0.1:5001/demo-serial/?token=")
    # The demo offers both console types.
    assert state.of(app).settings.console_types == ("novnc", "serial")
    # The proxy takes the demo cloud's console tokens, and only those.
    lookup = mounts["/demo-console/websockify"].keywords["lookup"]
    token = fake.issue_console_token(server)
    granted = lookup(token)
    assert (granted.server, granted.expires_at) == (server.name, fake.console_token_expiry(token))
    assert lookup("made-up") is None
    # Each proxy takes only its own kind of token, as Nova's do.
    serial = mounts["/demo-serial/"].__self__.lookup
    serial_token = fake.issue_console_token(server, "serial")
    assert serial(serial_token).server == server.name
    assert serial(token) is None and lookup(serial_token) is None
