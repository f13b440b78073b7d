"""Session limits, cookie flags, proxies, and sign-in throttling."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy import update

from broker.cloud.types import ServerInfo
from broker.extensions import db
from broker.models import NO_PASSWORD
from broker.models import User
from broker.models import UserSession
from broker.services import audit
from broker.services import relay
from broker.web import sessions
from tests.support import AuthActions
from tests.support import csrf_from
from tests.support import server_id

HOUR = 3600


@pytest.fixture
def clock(monkeypatch):
    """Move the sessions' clock: ``clock.advance(seconds)``."""

    class Clock:
        offset = 0.0

        def advance(self, seconds: float) -> None:
            self.offset += seconds

    moving = Clock()
    real = sessions.clock
    monkeypatch.setattr(sessions, "clock", lambda: real() + moving.offset)
    return moving


def test_idle_session_ends(client, auth, clock, app):
    auth.login()
    clock.advance(HOUR + 60)
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    with app.app_context():
        [row] = audit.search(audit.Filter(action="sign_out"))[0]
        assert row.reason == "session was idle too long"


def test_console_refreshes_keep_the_session_alive(client, auth, clock):
    auth.login()
    token = auth.csrf()
    for _ in range(8):  # 8 refreshes 9 minutes apart: 72 minutes, never idle for an hour
        clock.advance(9 * 60)
        response = client.post(
            f"/api/consoles/{server_id(1)}", headers={"X-CSRFToken": token}, json={"reason": "refresh"}
        )
        assert response.status_code == 200


def test_requests_mark_the_sessions_row_used_for_the_relay_to_judge_idleness(client, auth, clock, app):
    auth.login()
    long_ago = datetime(2026, 1, 1, tzinfo=UTC)
    with app.app_context():
        db.session.execute(update(UserSession).values(seen_at=long_ago))
        db.session.commit()
    client.get("/")  # within SEEN_RESOLUTION of the sign-in: the row is not written
    with app.app_context():
        assert relay.aware(db.session.scalar(select(UserSession.seen_at))) == long_ago
    clock.advance(sessions.SEEN_RESOLUTION + 1)
    client.get("/")
    with app.app_context():
        assert relay.aware(db.session.scalar(select(UserSession.seen_at))) > datetime.now(UTC) - timedelta(minutes=1)


def test_refresh_after_idle_timeout_gets_401(client, auth, clock):
    auth.login()
    token = auth.csrf()
    clock.advance(HOUR + 60)
    response = client.post(f"/api/consoles/{server_id(1)}", headers={"X-CSRFToken": token})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "not_signed_in"


def test_absolute_lifetime(client, auth, clock):
    auth.login()
    for _ in range(25):  # busy all day, every 30 minutes
        clock.advance(30 * 60)
        client.get("/healthz")
        status = client.get("/api/servers").status_code
        if status == 401:
            break
    assert status == 401
    assert clock.offset <= 12.5 * HOUR


def test_cookie_flags(client, auth):
    response = auth.login()
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


def test_secure_cookie_over_https(client, auth, app):
    client.get("/login", base_url="https://localhost")
    token = auth.csrf()
    response = client.post(
        "/login",
        base_url="https://localhost",
        data={"username": "agent", "password": "agent-password-1", "csrf_token": token},
    )
    assert "Secure" in response.headers["Set-Cookie"]


def test_forwarded_headers_ignored_without_trusted_proxies(client, auth, app):
    auth.login()
    client.get("/", headers={"X-Forwarded-For": "203.0.113.9"})
    with app.app_context():
        assert audit.search(audit.Filter(action="sign_in"))[0][0].client == "127.0.0.1"


class TestBehindOneProxy:
    @pytest.fixture
    def env_overrides(self):
        return {"BROKER_TRUSTED_PROXIES": "1"}

    def test_client_address_and_https_come_from_the_proxy(self, client, app):
        headers = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
        token_page = client.get("/login", headers=headers)
        from tests.support import csrf_from

        response = client.post(
            "/login",
            headers=headers,
            data={
                "username": "agent",
                "password": "agent-password-1",
                "csrf_token": csrf_from(token_page.get_data(as_text=True)),
            },
        )
        assert "Secure" in response.headers["Set-Cookie"]
        with app.app_context():
            assert audit.search(audit.Filter(action="sign_in"))[0][0].client == "198.51.100.7"


def test_fifty_wrong_passwords_are_throttled(client, auth, app, caplog):
    statuses = [auth.login(password=f"guess-{n}").status_code for n in range(50)]
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    throttled = auth.login(password="guess-x")
    assert int(throttled.headers["Retry-After"]) > 0
    # Even the right password waits now: this browser never signed in to the account before.
    assert auth.login().status_code == 429
    with app.app_context():
        assert audit.search(audit.Filter(action="sign_in", outcome="failed"))[1] == 5
        # 47 refusals: one row, the rest only in the log (strangers cannot grow the table).
        assert audit.search(audit.Filter(action="sign_in", outcome="refused"))[1] == 1
    logged = [r for r in caplog.records if r.name == "broker.audit" and '"too many failed sign-ins' in r.getMessage()]
    assert len(logged) == 47


def test_throttle_is_per_account_and_per_address(client, auth, app):
    for n in range(5):
        auth.login(username=f"nobody{n}", password="wrong-password")
    # Five failures from this address, each on a different account: the address is throttled.
    assert auth.login().status_code == 429


def test_successful_sign_ins_do_not_count(client, auth):
    for _ in range(8):
        assert auth.login().status_code == 302
        auth.logout()


def test_sign_out_ends_that_session_everywhere_and_only_that_one(app, auth):
    """A copy of the cookie kept from before sign-out is refused; the user's other session goes on."""
    other = app.test_client()
    AuthActions(other).login()
    auth.login()
    token = auth.csrf()
    kept = auth.client.get_cookie("session").value
    assert auth.logout().status_code == 302
    auth.client.set_cookie("session", kept)
    assert auth.client.get("/api/servers").status_code == 401
    mint = auth.client.post(f"/api/consoles/{server_id(1)}", headers={"X-CSRFToken": token})
    assert mint.status_code == 401 and mint.get_json()["error"]["code"] == "not_signed_in"
    assert auth.client.get("/").status_code == 302
    assert auth.client.get("/admin/").status_code == 302
    assert other.get("/api/servers").status_code == 200


def test_ended_sessions_by_timeout_cannot_be_replayed(client, auth, clock):
    auth.login()
    kept = client.get_cookie("session").value
    clock.advance(HOUR + 60)
    assert client.get("/").status_code == 302  # the idle limit ends it
    clock.offset = 0  # even with the clock back, the old cookie's session stays ended
    client.set_cookie("session", kept)
    assert client.get("/api/servers").status_code == 401


def test_sign_in_renews_the_session_and_the_csrf_token(client, auth):
    before_token = csrf_from(client.get("/login").get_data(as_text=True))
    with client.session_transaction() as planted:
        planted["planted"] = "by someone before sign-in"
    before_cookie = client.get_cookie("session").value
    client.post("/login", data={"username": "agent", "password": "agent-password-1", "csrf_token": before_token})
    with client.session_transaction() as current:
        assert "planted" not in current
        assert current.get("csrf_token") is None  # a new one is made for the next page
    after_token = auth.csrf()
    assert after_token != before_token
    refused = client.post("/logout", data={"csrf_token": before_token})
    assert refused.status_code == 400
    assert client.get_cookie("session").value != before_cookie


def test_a_providers_logout_ends_that_sessions_relay_consoles(app):
    """Back-channel logout ends the session row; the relay's next poll closes its consoles with 4401."""
    with app.app_context():
        # An admin: the rules grant every console, so only the sessions decide here.
        user = User(username="oidc-ann", password_hash=NO_PASSWORD, source="oidc", external_id="sub-ann", role="admin")
        db.session.add(user)
        db.session.flush()
        db.session.add_all(
            [
                UserSession(id="sid-a", user_id=user.id, method="oidc", external_sid="op-a"),
                UserSession(id="sid-b", user_id=user.id, method="oidc", external_sid="op-b"),
            ]
        )
        db.session.commit()
        reports = {}
        for sid in ("sid-a", "sid-b"):
            ticket = relay.Ticket(user.id, user.username, sid, server_id(1), "web-01", "lab", "http://localhost")
            row_id = relay.opened(ticket, client="192.0.2.1", instance="relay:1")
            server = ServerInfo(server_id(1), "web-01", "ACTIVE", "lab")
            reports[sid] = relay.LiveReport(row_id, ticket, server, "192.0.2.1", "relay:1", datetime.now(UTC), 0, 0)
        assert sessions.end_external("oidc", "sub-ann", "op-a") == ["oidc-ann"]
        db.session.commit()
        limits = relay.Limits(lifetime=HOUR, idle=HOUR)
        assert relay.report(list(reports.values()), limits) == {reports["sid-a"].row_id: relay.SIGNED_OUT}
