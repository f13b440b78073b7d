"""Sign-in, sign-out, the ``next`` round trip for bookmarks, and what signed-out requests get."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from broker import state
from broker.extensions import db
from broker.models import AuditRecord
from broker.services import users
from broker.web import auth as auth_module
from tests.support import ADMIN
from tests.support import AuthActions
from tests.support import csrf_from
from tests.support import server_id


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
    assert response.status_code == 400
    assert "The form was stale or forged" in response.get_data(as_text=True)
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
    # signin.safe_next's own cases are in tests/web/test_signin.py.
    response = auth.login(next=target)
    assert response.headers["Location"] == "/"


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


# -- the sign-in limit: counted before the check, per device for known browsers ------------


def parallel_attempts(app, count: int, *, password: str = "wrong-password-0", address=lambda n: "127.0.0.1"):
    """``count`` sign-ins for the agent sent at the same moment, each from its own client."""
    clients = [app.test_client() for _ in range(count)]
    for n, client in enumerate(clients):
        client.environ_base["REMOTE_ADDR"] = address(n)
    tokens = [csrf_from(c.get("/login").get_data(as_text=True)) for c in clients]
    start = threading.Barrier(count)
    statuses = [0] * count

    def send(n: int) -> None:
        start.wait()
        data = {"username": "agent", "password": password, "csrf_token": tokens[n]}
        statuses[n] = clients[n].post("/login", data=data).status_code

    threads = [threading.Thread(target=send, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@pytest.fixture
def password_checks(monkeypatch):
    """Count the password checks that really run (each slowed, to widen any race)."""
    seen = {"checks": 0, "running": 0, "most": 0}
    lock = threading.Lock()
    real = users.check_password_hash

    def counted(stored: str, password: str) -> bool:
        with lock:
            seen["checks"] += 1
            seen["running"] += 1
            seen["most"] = max(seen["most"], seen["running"])
        time.sleep(0.05)
        try:
            return real(stored, password)
        finally:
            with lock:
                seen["running"] -= 1

    monkeypatch.setattr(users, "check_password_hash", counted)
    return seen


def test_forty_parallel_guesses_get_at_most_the_limit_of_checks(app, password_checks):
    statuses = parallel_attempts(app, 40)
    assert password_checks["checks"] <= 5
    assert statuses.count(401) == password_checks["checks"]
    assert set(statuses) <= {401, 429, 503}


def test_parallel_guesses_from_many_addresses_still_hit_the_account_limit(app, password_checks):
    statuses = parallel_attempts(app, 30, address=lambda n: f"198.51.100.{n + 1}")
    assert password_checks["checks"] <= 5
    # Each guess that got a check answered 401; every other one was refused (429), or told
    # to retry (503) when a loaded machine kept all check slots busy past PASSWORD_WAIT.
    assert statuses.count(401) == password_checks["checks"]
    assert set(statuses) <= {401, 429, 503}


def test_password_checks_run_a_few_at_a_time(app, password_checks, monkeypatch):
    monkeypatch.setattr(auth_module, "PASSWORD_WAIT", 5.0)  # queue rather than refuse, to see the bound
    monkeypatch.setattr(auth_module, "_password_slots", threading.BoundedSemaphore(2))
    statuses = parallel_attempts(app, 5, address=lambda n: f"203.0.113.{n + 1}")
    assert statuses == [401] * 5
    assert password_checks["most"] == 2


def test_busy_sign_in_answers_fast_with_a_retry_hint_and_costs_no_guess(client, auth, app, monkeypatch):
    slots = threading.BoundedSemaphore(1)
    monkeypatch.setattr(auth_module, "_password_slots", slots)
    monkeypatch.setattr(auth_module, "PASSWORD_WAIT", 0.05)
    slots.acquire()  # every slot busy
    for _ in range(6):
        started = time.monotonic()
        busy = auth.login(password="wrong-password-1")
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 1
    assert "Sign-in is busy" in busy.get_data(as_text=True)
    slots.release()
    # None of the six counted as a guess: five real ones are still allowed.
    assert [auth.login(password="wrong-password-2").status_code for _ in range(5)] == [401] * 5
    assert auth.login(password="wrong-password-2").status_code == 429


def test_strangers_cannot_lock_out_a_browser_that_signed_in_before(app, auth):
    assert auth.login().status_code == 302  # the agent's own browser, which gets a device cookie
    auth.logout()
    stranger = AuthActions(app.test_client())
    assert [stranger.login(password=f"guess-{n}").status_code for n in range(10)] == [401] * 5 + [429] * 5
    assert stranger.login().status_code == 429  # the account is throttled for everyone else
    assert auth.login().status_code == 302  # but not for its owner's browser


def test_a_known_browser_has_its_own_limit(app, auth):
    assert auth.login().status_code == 302
    auth.logout()
    assert [auth.login(password=f"guess-{n}").status_code for n in range(7)] == [401] * 5 + [429] * 2


@pytest.mark.parametrize("cookie", ["forged", "device-cookie-of-another-account"])
def test_device_cookie_must_be_genuine_and_for_this_account(app, auth, cookie):
    admin_browser = app.test_client()
    AuthActions(admin_browser).login(*ADMIN)
    value = admin_browser.get_cookie("broker_device").value if cookie != "forged" else "e30.forged.sig"
    stranger = AuthActions(app.test_client())
    stranger.client.set_cookie("broker_device", value)
    statuses = [stranger.login(password=f"guess-{n}").status_code for n in range(6)]
    assert statuses == [401] * 5 + [429]
    assert AuthActions(app.test_client()).login().status_code == 429  # the account's own limit applied


@pytest.mark.parametrize(
    ("typed", "kept"),
    [
        ("agent", "agent"),
        ("AGENT", "agent"),
        ("S3cret-Pa55word!", None),  # a password typed into the name field
        ("nobody", None),
        ("correct horse battery", None),
    ],
)
def test_failed_sign_in_keeps_only_real_account_names(app, auth, typed, kept):
    auth.login(username=typed, password="wrong-password-1")
    auth.login(username=typed, password="wrong-password-2")
    rows = records(app, "sign_in")
    assert [r.outcome for r in rows] == ["failed", "failed"]
    names = {r.username for r in rows}
    assert len(names) == 1  # the same typed name gives the same marker
    if kept:
        assert names == {kept}
    else:
        [marker] = names
        assert marker.startswith("?") and len(marker) == 13
        assert typed.lower() not in str([r.to_json() for r in rows]).lower()


def test_strangers_cannot_flood_the_audit_table(client, app, caplog):
    for _ in range(300):
        client.post("/login", data={"username": "agent", "password": "agent-password-1"})
    rows = [r for r in records(app, "request") if r.outcome == "refused"]
    assert len(rows) == 1 and "CSRF check failed: POST /login" in rows[0].reason
    logged = [r for r in caplog.records if r.name == "broker.audit" and "CSRF check failed" in r.getMessage()]
    assert len(logged) == 300


def test_every_signed_in_refusal_is_stored(client, auth, app):
    auth.login()
    for _ in range(20):
        assert client.post(f"/api/consoles/{server_id(1)}", headers={"X-CSRFToken": "forged"}).status_code == 400
    assert len([r for r in records(app, "request") if r.username == "agent"]) == 20


def test_a_flood_of_sign_in_requests_is_cut_off_per_address(client, auth, app):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    data = {"username": "nobody", "password": "wrong-password-1", "csrf_token": token}
    statuses = [client.post("/login", data=data).status_code for _ in range(61)]
    assert statuses[-1] == 429
    last = client.post("/login", data=data)
    assert "Too many sign-in requests" in last.get_data(as_text=True)
    assert last.headers["Retry-After"] == "60"
    refusals = [r for r in records(app, "sign_in") if r.outcome == "refused"]
    assert len(refusals) <= 2  # one per kind of refusal and minute, not one per request


def test_a_forged_device_cookie_has_no_flood_budget_of_its_own(client):
    client.set_cookie("broker_device", "e30.forged.sig")
    token = csrf_from(client.get("/login").get_data(as_text=True))
    data = {"username": "nobody", "password": "wrong-password-1", "csrf_token": token}
    assert [client.post("/login", data=data).status_code for _ in range(61)][-1] == 429
    client.delete_cookie("broker_device")
    assert client.post("/login", data=data).status_code == 429  # the same address's budget


class TestEveryoneBehindOneAddress:
    """BROKER_TRUSTED_PROXIES=0 behind nginx: every person has nginx's address (the broker warns of it)."""

    NGINX = "10.0.0.2"

    def person(self, app, address: str) -> AuthActions:
        """A browser reaching the broker through nginx, which names it in X-Forwarded-For (not believed)."""
        client = app.test_client()
        client.environ_base.update(REMOTE_ADDR=self.NGINX, HTTP_X_FORWARDED_FOR=address)
        return AuthActions(client)

    def test_nobody_elses_guesses_or_flood_block_a_browser_that_signed_in_before(self, app):
        owner = self.person(app, "198.51.100.7")
        assert owner.login().status_code == 302
        owner.logout()
        stranger = self.person(app, "203.0.113.9")
        guesses = [stranger.login(username=n, password="wrong-password-1").status_code for n in ("agent", "admin") * 4]
        assert guesses[-1] == 429  # the address is spent: for every person without a device cookie
        token = csrf_from(stranger.client.get("/login").get_data(as_text=True))
        data = {"username": "nobody", "password": "wrong-password-1", "csrf_token": token}
        assert [stranger.client.post("/login", data=data).status_code for _ in range(61)][-1] == 429
        assert self.person(app, "192.0.2.50").login(*ADMIN).status_code == 429  # a newcomer shares nginx's address
        assert owner.login().status_code == 302  # but a browser that signed in before has budgets of its own


class TestRedisDown:
    """BROKER_REDIS_URL set but Redis not answering: sign-in works and is limited, per process."""

    @pytest.fixture
    def env_overrides(self):
        return {"BROKER_REDIS_URL": "redis://127.0.0.1:1/0"}

    def test_sign_in_works_and_failures_are_still_limited(self, auth, app):
        assert auth.login().status_code == 302
        auth.logout()
        statuses = [auth.login(password="wrong-password-1").status_code for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        assert not state.of(app).redis.usable()
