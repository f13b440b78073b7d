"""Sign-in with OpenID Connect against a real provider (npm's oidc-provider), and every bad answer refused.

Flows run against a live broker (a werkzeug server in a thread), so the provider can
redirect to it and post its back-channel logouts to it. Bad ID tokens are signed with the
provider's own key and handed to the broker in place of the token endpoint's answer; the
checks that refuse them are Authlib's, on the provider's real metadata and JWKS.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from urllib.parse import parse_qs
from urllib.parse import urljoin
from urllib.parse import urlsplit

import pytest
import requests
from bs4 import BeautifulSoup
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import func
from sqlalchemy import select
from werkzeug.serving import make_server

from broker import state
from broker.extensions import db
from broker.models import AuditRecord
from broker.models import User
from broker.models import UserSession
from broker.services import policy
from broker.services import users
from broker.web import oidc
from tests.oidc import ACCOUNTS
from tests.oidc import CLIENT_ID
from tests.oidc import CLIENT_SECRET
from tests.oidc import free_port
from tests.oidc import provider
from tests.support import AGENT
from tests.support import server_id
from tests.support import wait_until

# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker_port() -> int:
    """One port for every live broker of the session: the provider's client names it."""
    return free_port()


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory, broker_port):
    with provider(tmp_path_factory.mktemp("oidc-provider"), f"http://127.0.0.1:{broker_port}") as running:
        yield running


@pytest.fixture
def changed() -> dict:
    """Variables a test changes, by parametrizing this fixture."""
    return {}


@pytest.fixture
def env_overrides(oidc_provider, changed) -> dict:
    """The broker as a client of the test provider, with the local password form too."""
    return {
        "BROKER_AUTH": "oidc,local",
        "BROKER_OIDC_ISSUER": oidc_provider.issuer,
        "BROKER_OIDC_CLIENT_ID": CLIENT_ID,
        "BROKER_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "BROKER_OIDC_NAME": "Company SSO",
        "BROKER_OIDC_SCOPES": "openid profile groups",
        "BROKER_ADMIN_GROUPS": "console-admins",
        **changed,
    }


@pytest.fixture
def helpdesk(app):
    """A broker group named like the provider's, allowed the whole test cloud."""
    with app.app_context():
        policy.add_group("helpdesk")
        policy.add_rule(group="helpdesk", cloud="lab", clouds=["lab"])
        db.session.commit()


@pytest.fixture
def live(app, broker_port, helpdesk):
    """The app served on 127.0.0.1:broker_port; its base URL."""
    server = make_server("127.0.0.1", broker_port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{broker_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def http() -> requests.Session:
    with requests.Session() as session:
        yield session


# -- helpers ---------------------------------------------------------------------


def provider_sign_in(http: requests.Session, page: requests.Response, name: str) -> requests.Response:
    """Fill in the provider's login form on ``page`` with ``name``'s password; follow where it leads."""
    assert "/interaction/" in page.url, page.url
    form = BeautifulSoup(page.text, "html.parser").find("form")
    data = {field["name"]: field.get("value", "") for field in form.find_all("input") if field.get("name")}
    data.update(login=name, password=ACCOUNTS[name]["password"])
    return http.post(urljoin(page.url, form["action"]), data=data, timeout=10)


def sign_in(http: requests.Session, live: str, name: str, next: str | None = None) -> requests.Response:
    page = http.get(f"{live}/auth/oidc/login", params={"next": next} if next else None, timeout=10)
    return provider_sign_in(http, page, name)


def user(app, name: str) -> User | None:
    with app.app_context():
        return db.session.scalar(select(User).where(User.username == name))


def group_names(app, name: str) -> list[str]:
    with app.app_context():
        return sorted(group.name for group in policy.all_groups() if users.find(name) in group.members)


def records(app, action: str, outcome: str | None = None) -> list[AuditRecord]:
    with app.app_context():
        query = select(AuditRecord).where(AuditRecord.action == action)
        if outcome:
            query = query.where(AuditRecord.outcome == outcome)
        return list(db.session.scalars(query.order_by(AuditRecord.id)))


def user_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(User))


def api_status(http: requests.Session, live: str) -> int:
    return http.get(f"{live}/api/servers", timeout=10).status_code


def confirm_provider_logout(http: requests.Session, page: requests.Response) -> requests.Response:
    """Answer "Yes, sign me out" on the provider's end-session page."""
    form = BeautifulSoup(page.text, "html.parser").find("form", id="op.logoutForm")
    data = {field["name"]: field.get("value", "") for field in form.find_all("input") if field.get("name")}
    data["logout"] = "yes"
    return http.post(urljoin(page.url, form["action"]), data=data, timeout=10)


# -- the code flow ---------------------------------------------------------------


def test_code_flow_creates_the_user_with_groups_and_returns_to_next(app, live, http, oidc_provider):
    wanted = f"/console/{server_id(1)}"
    landed = sign_in(http, live, "alice", next=wanted)
    assert landed.status_code == 200
    assert landed.url == live + wanted
    alice = user(app, "alice")
    assert (alice.source, alice.external_id, alice.role) == ("oidc", f"{oidc_provider.issuer}|alice", "agent")
    assert group_names(app, "alice") == ["helpdesk"]
    assert api_status(http, live) == 200
    (record,) = records(app, "sign_in", "ok")
    assert (record.username, record.detail) == ("alice", "oidc")
    assert "joined group helpdesk" in record.reason
    with app.app_context():
        (row,) = db.session.scalars(select(UserSession).where(UserSession.user_id == alice.id))
        assert row.method == "oidc" and row.external_sid  # the provider's sid, for back-channel logout


def test_admin_groups_make_an_admin(app, live, http):
    sign_in(http, live, "bob")
    assert user(app, "bob").role == "admin"
    assert group_names(app, "bob") == ["helpdesk"]  # console-admins is no broker group


def test_off_site_next_is_dropped(app, live, http):
    landed = sign_in(http, live, "alice", next="https://evil.example/steal")
    assert landed.url == live + "/"
    assert landed.status_code == 200


def test_a_name_held_by_a_local_account_is_refused(app, live, http):
    landed = sign_in(http, live, "agent")
    assert urlsplit(landed.url).path == "/login" and "stay=1" in landed.url
    assert "An account with your user name already exists here" in landed.text
    assert user(app, AGENT[0]).source == "local"
    assert user_count(app) == 2
    (record,) = records(app, "sign_in", "refused")
    assert record.detail == "oidc" and "belongs to a local account" in record.reason


@pytest.mark.parametrize("changed", [{"BROKER_AUTH": "oidc"}], ids=["oidc only"])
def test_with_oidc_only_a_bookmark_goes_to_the_provider_and_back(app, live, http):
    bookmark = f"/console/{server_id(2)}"
    page = http.get(live + bookmark, timeout=10)
    assert page.url.startswith(http_issuer(app)), page.url
    landed = provider_sign_in(http, page, "alice")
    assert landed.url == live + bookmark
    assert "web-02" in landed.text


def http_issuer(app) -> str:
    with app.app_context():
        return state.of(app).settings.oidc.issuer


# -- logouts ---------------------------------------------------------------------


def test_back_channel_logout_from_the_provider_ends_the_session(app, live, http, oidc_provider):
    sign_in(http, live, "alice")
    assert api_status(http, live) == 200
    # Signing out at the provider (not at the broker): the provider posts a logout token to us.
    page = http.get(f"{oidc_provider.issuer}/session/end", timeout=10)
    confirm_provider_logout(http, page)
    wait_until(lambda: records(app, "sign_out", "ok"), message="the back-channel logout was not recorded")
    (record,) = records(app, "sign_out", "ok")
    assert record.detail == "oidc" and record.username == "alice"
    assert record.reason.startswith("back-channel logout from the provider ended 1 session(s)")
    assert api_status(http, live) == 401


def test_signing_out_also_signs_out_at_the_provider(app, live, http, oidc_provider):
    sign_in(http, live, "alice")
    page = http.get(live + "/", timeout=10)
    token = BeautifulSoup(page.text, "html.parser").find("meta", {"name": "csrf-token"})["content"]
    # A browser follows the sign-out form's redirect only where the CSP's form-action allows.
    form_action = next(d for d in page.headers["Content-Security-Policy"].split("; ") if d.startswith("form-action"))
    assert form_action == f"form-action 'self' {oidc_provider.issuer}"
    out = http.post(live + "/logout", data={"csrf_token": token}, allow_redirects=False, timeout=10)
    assert out.status_code == 302
    location = out.headers["Location"]
    assert location.startswith(f"{oidc_provider.issuer}/session/end?")
    query = parse_qs(urlsplit(location).query)
    assert query["post_logout_redirect_uri"] == [f"{live}/login"]
    assert query["id_token_hint"][0].count(".") == 2
    assert api_status(http, live) == 401
    back = confirm_provider_logout(http, http.get(location, timeout=10))
    assert back.url.startswith(f"{live}/login")
    # The provider no longer knows alice: the next sign-in asks for her password again.
    again = http.get(f"{live}/auth/oidc/login", timeout=10)
    assert "/interaction/" in again.url


def test_a_replayed_logout_token_is_refused(app, client, oidc_provider):
    token = oidc_provider.logout_token(sub="alice")
    first = client.post("/auth/oidc/backchannel-logout", data={"logout_token": token})
    assert first.status_code == 200
    again = client.post("/auth/oidc/backchannel-logout", data={"logout_token": token})
    assert again.status_code == 400
    assert again.get_json() == {"error": "invalid_request"}
    assert "replayed" in records(app, "sign_out", "refused")[0].reason


OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "test-key"})


def unsigned(claims: dict) -> str:
    """A JWT with ``alg: none`` and no signature."""

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


BAD_LOGOUT_TOKENS = {
    "for another client": lambda p: p.logout_token(sub="alice", aud="another-client"),
    "with a nonce": lambda p: p.logout_token(sub="alice", nonce="n-1"),
    "from another issuer": lambda p: p.logout_token(sub="alice", iss="https://idp.evil.example"),
    "issued long ago": lambda p: p.logout_token(sub="alice", iat=int(time.time()) - 3600),
    "without the event": lambda p: p.logout_token(sub="alice", events={"other": {}}),
    "naming nobody": lambda p: p.logout_token(),
    "without a jti": lambda p: p.logout_token(sub="alice", jti=None),
    "unsigned (alg none)": lambda p: unsigned(
        {
            "iss": p.issuer,
            "aud": CLIENT_ID,
            "iat": int(time.time()),
            "jti": "x",
            "sub": "alice",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }
    ),  # fmt: skip
    "signed by another key": lambda p: jwt.encode(
        {"alg": "RS256", "kid": "test-key"},
        {
            "iss": p.issuer,
            "aud": CLIENT_ID,
            "iat": int(time.time()),
            "jti": "y",
            "sub": "alice",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        },
        OTHER_KEY,
    ),  # fmt: skip
    "signature flipped": lambda p: flip_signature(p.logout_token(sub="alice")),
    "not a JWT": lambda p: "not-a-jwt",
    "missing": lambda p: "",
}


@pytest.mark.parametrize("case", BAD_LOGOUT_TOKENS, ids=list(BAD_LOGOUT_TOKENS))
def test_bad_logout_tokens_are_refused_and_end_nothing(app, client, oidc_provider, case):
    alice_session = oidc_session_for(app, oidc_provider, "alice")
    answer = client.post("/auth/oidc/backchannel-logout", data={"logout_token": BAD_LOGOUT_TOKENS[case](oidc_provider)})
    assert answer.status_code == 400
    assert answer.get_json() == {"error": "invalid_request"}
    assert answer.headers["Cache-Control"] == "no-store"
    (record,) = records(app, "sign_out", "refused")
    assert record.detail == "oidc" and record.reason.startswith("back-channel logout refused")
    assert "eyJ" not in record.reason  # never a token in the audit
    with app.app_context():
        assert db.session.get(UserSession, alice_session).ended_at is None


def oidc_session_for(app, oidc_provider, name: str) -> str:
    """A live broker session of an OIDC account, as a sign-in would leave it; its ID."""
    with app.app_context():
        account = User(
            username=name, password_hash="!", role="agent", source="oidc", external_id=f"{oidc_provider.issuer}|{name}"
        )
        db.session.add(account)
        db.session.flush()
        db.session.add(UserSession(id=f"sid-{name}", user_id=account.id, method="oidc", external_sid="op-sid"))
        db.session.commit()
    return f"sid-{name}"


def flip_signature(token: str) -> str:
    head, body, signature = token.split(".")
    flipped = ("A" if signature[5] != "A" else "B").join((signature[:5], signature[6:]))
    return f"{head}.{body}.{flipped}"


def signed_by_an_unknown_key(p, jti: str) -> str:
    """A logout token naming a key id the provider never had (as anyone can make one)."""
    claims = {"iss": p.issuer, "aud": CLIENT_ID, "iat": int(time.time()), "jti": jti, "sub": "alice"}
    claims["events"] = {"http://schemas.openid.net/event/backchannel-logout": {}}
    return jwt.encode({"alg": "RS256", "kid": "no-such-key"}, claims, OTHER_KEY)


@pytest.fixture
def key_set_fetches(oidc_provider, monkeypatch) -> list[str]:
    """Every request the broker sends for the provider's key set (its jwks_uri)."""
    metadata = requests.get(f"{oidc_provider.issuer}/.well-known/openid-configuration", timeout=10).json()
    fetches = []
    real = requests.Session.send

    def send(self, prepared, **kwargs):
        if prepared.url == metadata["jwks_uri"]:
            fetches.append(prepared.url)
        return real(self, prepared, **kwargs)

    monkeypatch.setattr(requests.Session, "send", send)
    return fetches


def test_logout_tokens_naming_unknown_keys_fetch_the_key_set_at_most_once_a_minute(
    app, client, oidc_provider, key_set_fetches, monkeypatch
):
    def post(token: str) -> int:
        return client.post("/auth/oidc/backchannel-logout", data={"logout_token": token}).status_code

    assert [post(signed_by_an_unknown_key(oidc_provider, f"u-{n}")) for n in range(30)] == [400] * 30
    assert len(key_set_fetches) == 1
    # A minute on, the provider may have rotated its keys: an unknown key id may fetch the set again, once.
    later = time.monotonic() + oidc.KEY_SET_REFRESH
    monkeypatch.setattr(oidc, "clock", lambda: later)
    assert [post(signed_by_an_unknown_key(oidc_provider, f"v-{n}")) for n in range(5)] == [400] * 5
    assert len(key_set_fetches) == 2
    # Genuine tokens are checked with the keys already fetched.
    assert post(oidc_provider.logout_token(sub="alice")) == 200
    assert len(key_set_fetches) == 2


# -- bad answers at the callback --------------------------------------------------


def start(client) -> tuple[str, str]:
    """GET /auth/oidc/login in the test client: the state and nonce the broker sent to the provider."""
    sent = client.get("/auth/oidc/login?next=/?cloud=lab")
    assert sent.status_code == 302
    query = parse_qs(urlsplit(sent.headers["Location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
    return query["state"][0], query["nonce"][0]


def answer_with(app, monkeypatch, id_token: str | None) -> None:
    """The token endpoint's answer, replaced by one carrying ``id_token`` (the code exchange is not under test here)."""
    with app.app_context():
        authlib_client = oidc.client()

    def fetch_access_token(**params):
        token = {"access_token": "at-1", "token_type": "Bearer", "expires_in": 60}
        if id_token is not None:
            token["id_token"] = id_token
        return token

    monkeypatch.setattr(authlib_client, "fetch_access_token", fetch_access_token)


def id_claims(p, sent_nonce: str, **changes) -> dict:
    now = int(time.time())
    claims = {
        "iss": p.issuer,
        "aud": CLIENT_ID,
        "sub": "carol",
        "iat": now,
        "exp": now + 300,
        "nonce": sent_nonce,
        "sid": "op-sid-carol",
        "preferred_username": "carol",
        "groups": ["helpdesk"],
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def test_a_good_id_token_within_the_clock_skew_signs_in(app, client, oidc_provider, monkeypatch, helpdesk):
    state, nonce = start(client)
    answer_with(app, monkeypatch, oidc_provider.sign(id_claims(oidc_provider, nonce, exp=int(time.time()) - 30)))
    done = client.get(f"/auth/oidc/callback?code=c-1&state={state}")
    assert done.status_code == 302 and done.headers["Location"] == "/?cloud=lab"
    assert user(app, "carol").source == "oidc"
    assert group_names(app, "carol") == ["helpdesk"]


def test_groups_that_are_not_a_list_of_strings_give_no_groups(app, client, oidc_provider, monkeypatch, helpdesk):
    state, nonce = start(client)
    answer_with(app, monkeypatch, oidc_provider.sign(id_claims(oidc_provider, nonce, groups="helpdesk")))
    client.get(f"/auth/oidc/callback?code=c-1&state={state}")
    assert group_names(app, "carol") == []


BAD_ID_TOKENS = {
    "signature flipped": lambda p, nonce: flip_signature(p.sign(id_claims(p, nonce))),
    "wrong aud": lambda p, nonce: p.sign(id_claims(p, nonce, aud="another-client")),
    "wrong iss": lambda p, nonce: p.sign(id_claims(p, nonce, iss="https://idp.evil.example")),
    "expired beyond the skew": lambda p, nonce: p.sign(id_claims(p, nonce, exp=int(time.time()) - 120)),
    "missing nonce": lambda p, nonce: p.sign(id_claims(p, nonce, nonce=None)),
    "mismatched nonce": lambda p, nonce: p.sign(id_claims(p, "another-nonce")),
    "unsigned (alg none)": lambda p, nonce: unsigned(id_claims(p, nonce)),
    "signed by another key": lambda p, nonce: jwt.encode(
        {"alg": "RS256", "kid": "test-key"}, id_claims(p, nonce), OTHER_KEY
    ),
    "no ID token at all": lambda p, nonce: None,
}


@pytest.mark.parametrize("case", BAD_ID_TOKENS, ids=list(BAD_ID_TOKENS))
def test_bad_id_tokens_are_refused_audited_and_create_no_one(app, client, oidc_provider, monkeypatch, case):
    state, nonce = start(client)
    answer_with(app, monkeypatch, BAD_ID_TOKENS[case](oidc_provider, nonce))
    done = client.get(f"/auth/oidc/callback?code=c-1&state={state}")
    assert_refused(app, client, done, "Single sign-on did not work")


def assert_refused(app, client, response, message: str, outcome: str = "refused") -> AuditRecord:
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?stay=1"
    page = client.get("/login?stay=1").get_data(as_text=True)
    assert message in page
    assert user_count(app) == 2  # the fixture's agent and admin only
    (record,) = records(app, "sign_in", outcome)
    assert record.detail == "oidc"
    assert "eyJ" not in record.reason and CLIENT_SECRET not in record.reason
    return record


def test_a_replayed_state_is_refused(app, client, oidc_provider, monkeypatch, helpdesk):
    state, nonce = start(client)
    cookie = client.get_cookie("session").value  # the browser's cookie, state inside, as an attacker keeps it
    answer_with(app, monkeypatch, oidc_provider.sign(id_claims(oidc_provider, nonce)))
    assert client.get(f"/auth/oidc/callback?code=c-1&state={state}").headers["Location"] == "/?cloud=lab"
    replay = app.test_client()
    replay.set_cookie("session", cookie)
    done = replay.get(f"/auth/oidc/callback?code=c-1&state={state}")
    assert done.headers["Location"] == "/login?stay=1"
    (record,) = records(app, "sign_in", "refused")
    assert record.reason == "state replayed"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(UserSession)) == 1


def test_an_unknown_state_is_refused(app, client, oidc_provider):
    start(client)
    done = client.get("/auth/oidc/callback?code=c-1&state=made-up")
    record = assert_refused(app, client, done, "Single sign-on did not work")
    assert record.reason.startswith("unknown or already used state")


def test_an_error_from_the_provider_is_shown_and_audited(app, client, oidc_provider):
    state, _ = start(client)
    done = client.get(f"/auth/oidc/callback?error=access_denied&state={state}")
    record = assert_refused(app, client, done, "Company SSO did not sign you in")
    assert record.reason.startswith("provider answered access_denied")


def test_a_code_the_provider_refuses_is_audited(app, client, oidc_provider):
    state, _ = start(client)
    done = client.get(f"/auth/oidc/callback?code=made-up&state={state}")
    record = assert_refused(app, client, done, "Single sign-on did not work")
    assert record.reason == "code exchange refused: invalid_grant"


@pytest.mark.parametrize("changed", [{"BROKER_OIDC_ISSUER": f"http://127.0.0.1:{free_port()}"}], ids=["closed port"])
def test_an_unreachable_provider_gives_a_clear_message(app, client):
    started = time.monotonic()
    done = client.get("/auth/oidc/login")
    assert time.monotonic() - started < 10
    record = assert_refused(app, client, done, "Company SSO cannot be reached", outcome="failed")
    assert record.reason == "provider unreachable: ConnectionError"
