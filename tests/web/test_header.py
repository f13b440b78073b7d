"""Sign-in by a trusted proxy header: believed from BROKER_AUTH_HEADER_FROM only, from others ignored and audited."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from broker.extensions import db
from broker.models import AuditRecord
from broker.models import User
from broker.models import UserSession
from broker.services import policy
from broker.services import users
from tests.support import AGENT

PROXY = "10.0.0.5"
STRANGER = "127.0.0.1"
HEADER = "X-Remote-User"
GROUPS = "X-Remote-Groups"


@pytest.fixture
def env_overrides() -> dict:
    return {
        "BROKER_AUTH": "header,local",
        "BROKER_AUTH_HEADER": HEADER,
        "BROKER_AUTH_GROUPS_HEADER": GROUPS,
        "BROKER_AUTH_HEADER_FROM": "10.0.0.0/29",
        "BROKER_ADMIN_GROUPS": "broker-admins",
    }


@pytest.fixture
def groups(app):
    with app.app_context():
        for name in ("helpdesk", "dba"):
            policy.add_group(name)
        db.session.commit()


def as_from(client, address: str):
    client.environ_base["REMOTE_ADDR"] = address
    return client


def live_sessions(app) -> list[tuple[str, str, str]]:
    """(user name, source, session method) of every session not ended."""
    with app.app_context():
        query = select(User.username, User.source, UserSession.method).join(User, User.id == UserSession.user_id)
        return [tuple(row) for row in db.session.execute(query.where(UserSession.ended_at.is_(None)))]


def records(app, action: str) -> list[AuditRecord]:
    with app.app_context():
        return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == action)))


def user_names(app) -> list[str]:
    with app.app_context():
        return sorted(user.username for user in users.all_users())


def membership(app, name: str) -> tuple[str, str, list[str]]:
    with app.app_context():
        user = users.find(name)
        return user.source, user.role, [g.name for g in policy.all_groups() if user in g.members]


# -- from the authenticating proxy ---------------------------------------------------------


def test_the_proxys_user_is_signed_in_on_the_request_itself(client, app, groups):
    proxy = as_from(client, PROXY)
    response = proxy.get("/api/servers", headers={HEADER: "Alice", GROUPS: " helpdesk , dba,, no such*group "})
    # No redirect: the API request that brought the header is answered, signed in.
    assert response.status_code == 200, response.get_data(as_text=True)
    assert live_sessions(app) == [("Alice", "header", "header")]
    assert membership(app, "Alice") == ("header", "agent", ["dba", "helpdesk"])
    with app.app_context():
        assert users.find("Alice").external_id == "alice"
    [entry] = records(app, "sign_in")
    assert (entry.username, entry.outcome, entry.detail) == ("Alice", "ok", "header")
    assert "joined group helpdesk" in entry.reason
    # A page request is answered too, and later requests ride the same session (no second sign-in).
    page = proxy.get("/", headers={HEADER: "Alice", GROUPS: "helpdesk"})
    assert page.status_code == 200 and "Alice" in page.get_data(as_text=True)
    assert len(records(app, "sign_in")) == 1 and len(live_sessions(app)) == 1


@pytest.mark.parametrize("probe", ["/healthz", "/readyz"])
def test_the_probes_sign_nobody_in_even_with_the_proxys_header(client, app, probe):
    """A monitor behind the authenticating proxy: /healthz must not reach the database (it answers while it is down)."""
    response = as_from(client, PROXY).get(probe, headers={HEADER: "Alice", GROUPS: "helpdesk"})
    assert response.status_code == 200
    assert live_sessions(app) == [] and user_names(app) == sorted([AGENT[0], "admin"])
    assert records(app, "sign_in") == []


def test_admin_groups_make_an_admin(client, app):
    proxy = as_from(client, PROXY)
    assert proxy.get("/admin/", headers={HEADER: "bob", GROUPS: "helpdesk,broker-admins"}).status_code == 200
    assert membership(app, "bob")[:2] == ("header", "admin")


def test_another_name_on_the_same_session_switches_user(client, app, groups):
    proxy = as_from(client, PROXY)
    assert proxy.get("/api/servers", headers={HEADER: "alice", GROUPS: "broker-admins"}).status_code == 200
    assert proxy.get("/admin/", headers={HEADER: "alice"}).status_code == 200
    # The proxy now names someone else (another person on this browser): alice's session ends.
    assert proxy.get("/admin/", headers={HEADER: "carol", GROUPS: "helpdesk"}).status_code == 403
    assert live_sessions(app) == [("carol", "header", "header")]
    [ended] = records(app, "sign_out")
    assert (ended.username, ended.detail) == ("alice", "header")
    assert "names another user" in ended.reason


def test_no_header_from_the_proxy_ends_a_header_session(client, app):
    proxy = as_from(client, PROXY)
    assert proxy.get("/api/servers", headers={HEADER: "alice"}).status_code == 200
    assert proxy.get("/api/servers").status_code == 401
    assert live_sessions(app) == []
    [ended] = records(app, "sign_out")
    assert ended.username == "alice" and "no longer names a user" in ended.reason


def test_local_sign_in_still_works_beside_the_header(client, app, auth):
    response = auth.login()
    assert response.status_code == 302
    assert client.get("/api/servers").status_code == 200
    assert live_sessions(app) == [(AGENT[0], "local", "local")]
    # Through the proxy without its header (a break-glass admin, say): the local session stays.
    assert as_from(client, PROXY).get("/api/servers").status_code == 200
    assert live_sessions(app) == [(AGENT[0], "local", "local")]


def test_a_name_held_by_a_local_account_is_refused(client, app):
    response = as_from(client, PROXY).get("/api/servers", headers={HEADER: AGENT[0]})
    assert response.status_code == 401
    assert live_sessions(app) == []
    [entry] = records(app, "sign_in")
    assert (entry.outcome, entry.detail) == ("refused", "header")
    assert "belongs to a local account" in entry.reason


@pytest.mark.parametrize("value", ["*", "a b", "x" * 100, "", "   ", "*)(uid=*", "alice\u00e9"])
def test_a_value_that_is_not_a_name_is_refused_and_audited(client, app, value):
    before = user_names(app)
    response = as_from(client, PROXY).get("/api/servers", headers={HEADER: value})
    assert response.status_code == 401
    assert live_sessions(app) == [] and user_names(app) == before
    [entry] = records(app, "sign_in")
    assert (entry.outcome, entry.detail) == ("refused", "header")
    assert "is not a broker name" in entry.reason


def test_a_refused_name_from_the_proxy_ends_the_previous_header_session(client, app):
    proxy = as_from(client, PROXY)
    assert proxy.get("/api/servers", headers={HEADER: "alice"}).status_code == 200
    assert proxy.get("/api/servers", headers={HEADER: "a b"}).status_code == 401
    assert live_sessions(app) == []


# -- from anyone else ------------------------------------------------------------------


def test_an_untrusted_address_is_ignored_audited_and_nothing_is_made(client, app, caplog):
    before = user_names(app)
    stranger = as_from(client, STRANGER)
    assert stranger.get("/api/servers", headers={HEADER: "alice"}).status_code == 401
    page = stranger.get("/", headers={HEADER: "alice"})
    # The normal sign-in, as if the header were not there.
    assert page.status_code == 302 and page.headers["Location"].startswith("/login")
    assert live_sessions(app) == [] and user_names(app) == before
    # Stored once a minute per address (a stranger cannot grow the table), logged every time.
    [entry] = records(app, "sign_in")
    assert (entry.outcome, entry.detail, entry.client) == ("refused", "header", STRANGER)
    assert f"identity header from an untrusted address {STRANGER}" in entry.reason
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "BROKER_AUTH_HEADER_FROM" in r.getMessage()]
    assert len(warnings) == 2


def test_an_untrusted_address_with_a_session_keeps_it_and_is_not_switched(client, app, auth):
    assert auth.login().status_code == 302
    assert client.get("/api/servers", headers={HEADER: "alice"}).status_code == 200
    assert live_sessions(app) == [(AGENT[0], "local", "local")]
    assert "alice" not in user_names(app)


def test_a_forged_x_forwarded_for_naming_the_proxy_is_not_believed(client, app):
    forged = {HEADER: "alice", "X-Forwarded-For": PROXY, "X-Real-IP": PROXY, "Forwarded": f"for={PROXY}"}
    assert as_from(client, STRANGER).get("/api/servers", headers=forged).status_code == 401
    assert live_sessions(app) == [] and "alice" not in user_names(app)


class TestBehindProxyFix:
    """BROKER_TRUSTED_PROXIES=1: ProxyFix replaces REMOTE_ADDR with X-Forwarded-For's last entry."""

    @pytest.fixture
    def env_overrides(self) -> dict:
        return {
            "BROKER_AUTH": "header,local",
            "BROKER_AUTH_HEADER": HEADER,
            "BROKER_AUTH_HEADER_FROM": PROXY,
            "BROKER_TRUSTED_PROXIES": "1",
        }

    def test_a_stranger_claiming_to_be_the_proxy_is_refused(self, client, app):
        forged = {HEADER: "alice", "X-Forwarded-For": PROXY}
        assert as_from(client, STRANGER).get("/api/servers", headers=forged).status_code == 401
        assert live_sessions(app) == [] and "alice" not in user_names(app)
        [entry] = records(app, "sign_in")
        # The audit keeps the (forwarded) client as ever; the reason names the real peer.
        assert entry.outcome == "refused" and f"untrusted address {STRANGER}" in entry.reason

    def test_the_proxy_itself_is_believed_whatever_client_it_forwards(self, client, app):
        forwarded = {HEADER: "alice", "X-Forwarded-For": "198.51.100.7"}
        assert as_from(client, PROXY).get("/api/servers", headers=forwarded).status_code == 200
        assert live_sessions(app) == [("alice", "header", "header")]
        [entry] = records(app, "sign_in")
        assert (entry.username, entry.client) == ("alice", "198.51.100.7")


class TestWithoutHeaderSignIn:
    """BROKER_AUTH without header: the hook is not there, the header means nothing even from the proxy."""

    @pytest.fixture
    def env_overrides(self) -> dict:
        return {"BROKER_AUTH": "local", "BROKER_AUTH_HEADER": HEADER, "BROKER_AUTH_HEADER_FROM": PROXY}

    def test_the_header_is_not_read(self, client, app):
        assert as_from(client, PROXY).get("/api/servers", headers={HEADER: "alice"}).status_code == 401
        assert live_sessions(app) == [] and records(app, "sign_in") == []
