"""Sign-in, sign-out, the ``next`` round trip for bookmarks, and what signed-out requests get."""

from __future__ import annotations

import pytest
from conftest import ADMIN
from sqlalchemy import select

from broker.audit import AuditRecord
from broker.auth import safe_next
from broker.extensions import db


def records(app, action):
    with app.app_context():
        return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == action)))


def test_login_page_has_csrf_field(client):
    html = client.get("/login").get_data(as_text=True)
    assert 'name="csrf_token"' in html
    assert 'id="username"' in html and 'id="password"' in html


def test_sign_in_lands_on_list_and_is_audited(client, auth, app):
    response = auth.login()
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    assert client.get("/").status_code == 200
    [entry] = records(app, "sign_in")
    assert (entry.username, entry.outcome, entry.client) == ("agent", "ok", "127.0.0.1")


def test_wrong_password_is_refused_and_audited_without_the_password(client, auth, app):
    response = auth.login(password="not-the-password")
    assert response.status_code == 401
    assert "Wrong user name or password." in response.get_data(as_text=True)
    [entry] = records(app, "sign_in")
    assert entry.outcome == "failed"
    assert "not-the-password" not in str(entry.to_json())


def test_unknown_user_gets_the_same_message(auth):
    response = auth.login(username="nobody")
    assert response.status_code == 401
    assert "Wrong user name or password." in response.get_data(as_text=True)


def test_login_without_csrf_token_is_refused(client):
    response = client.post("/login", data={"username": "agent", "password": "agent-password-1"})
    assert response.status_code in (400, 401)
    assert client.get("/").status_code == 302


def test_bookmark_round_trip(client, auth):
    response = client.get("/console/web-01")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/console/web-01"
    response = auth.login(next="/console/web-01")
    assert response.headers["Location"] == "/console/web-01"
    assert client.get("/console/web-01").status_code == 200


def test_bookmark_with_query_survives(client, auth):
    response = client.get("/console/worker?cloud=lab")
    assert response.headers["Location"] == "/login?next=/console/worker?cloud%3Dlab"
    response = auth.login(next="/console/worker?cloud=lab")
    assert response.headers["Location"] == "/console/worker?cloud=lab"


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example", "/\\evil.example", "javascript:alert(1)", "evil", "/\x00x", ""],
)
def test_unsafe_next_falls_back_to_the_list(auth, target):
    response = auth.login(next=target)
    assert response.headers["Location"] == "/"
    assert safe_next(target) is None


def test_logout_needs_post_and_csrf(client, auth):
    auth.login()
    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 400
    assert client.get("/").status_code == 200
    response = auth.logout()
    assert response.headers["Location"] == "/login"
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("path", ["/", "/console/web-01", "/console/web-01/open"])
def test_pages_redirect_to_sign_in(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/servers"), ("POST", "/api/consoles/x")])
def test_api_answers_401_json_never_a_redirect(client, method, path):
    response = client.open(path, method=method)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "not_signed_in"


def test_password_change_ends_sessions(client, auth, runner):
    auth.login()
    assert client.get("/").status_code == 200
    result = runner.invoke(args=["users", "set-password", "agent", "--password-stdin"], input="another-password\n")
    assert result.exit_code == 0
    assert client.get("/").status_code == 302


def test_admin_can_sign_in(auth):
    assert auth.login(*ADMIN).status_code == 302
