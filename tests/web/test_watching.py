"""Watching a console through the web app: the invite and watch-ticket APIs and the watch page (relay mode).

The live console is a row as a relay would have written it, opened by the agent on web-01; a
colleague may open that server, an outsider may not. Each person has a browser of their own (a
Flask test client with its own cookies).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import select

from broker.extensions import db
from broker.models import AuditRecord
from broker.models import LiveConsole
from broker.models import SingleUseToken
from broker.services import policy
from broker.services import tokens
from broker.services import users
from tests.support import ADMIN
from tests.support import AGENT
from tests.support import AuthActions
from tests.support import server_id

COLLEAGUE = ("colleague", "colleague-password-1")
OUTSIDER = ("outsider", "outsider-password-1")
ONLY_THOSE_WHO_MAY_OPEN = "only people who may open a server can watch it."


@pytest.fixture
def console_mode() -> str:
    return "relay"


@pytest.fixture
def console(app) -> int:
    """The agent's console on web-01, open through a relay now; a colleague who may open it; an outsider."""
    with app.app_context():
        users.add(*COLLEAGUE)
        users.add(*OUTSIDER)
        policy.add_rule(user=COLLEAGUE[0], cloud="lab", clouds=["lab"])
        agent = users.find(AGENT[0])
        row = LiveConsole(
            user_id=agent.id,
            username=agent.username,
            session_id="session-of-the-opener",
            server_id=server_id(1),
            server_name="web-01",
            cloud="lab",
            instance="relay-a:1",
        )
        db.session.add(row)
        db.session.commit()
        return row.id


class Person:
    """Someone's browser: signed in, posting JSON with the page's CSRF token."""

    def __init__(self, app, username: str, password: str) -> None:
        self.client = app.test_client()
        auth = AuthActions(self.client)
        auth.login(username, password)
        self.csrf = auth.csrf()

    def post(self, path: str, body=None, **kwargs):
        headers = kwargs.pop("headers", {"X-CSRFToken": self.csrf})
        if body is not None:
            kwargs["data"] = body if isinstance(body, str) else json.dumps(body)
            kwargs["content_type"] = "application/json"
        return self.client.post(path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs):
        return self.client.get(path, **kwargs)


@pytest.fixture
def opener(app, console) -> Person:
    return Person(app, *AGENT)


@pytest.fixture
def colleague(app, console) -> Person:
    return Person(app, *COLLEAGUE)


def invites_url(console_id) -> str:
    return f"/api/consoles/live/{console_id}/invites"


def tickets_url(console_id) -> str:
    return f"/api/consoles/live/{console_id}/watch-tickets"


def invite_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["invite"][0]


def stored(app) -> tuple:
    """Everything a refused request could have changed: tokens (and whether used) and audit records."""
    with app.app_context():
        rows = db.session.scalars(select(SingleUseToken).order_by(SingleUseToken.digest)).all()
        audit = db.session.scalar(select(func.count()).select_from(AuditRecord))
        return [(row.digest, row.purpose, row.used_at) for row in rows], audit


def token_row(app, token: str) -> SingleUseToken:
    with app.app_context():
        return db.session.get(SingleUseToken, tokens.digest(token))


def watch_records(app) -> list[dict]:
    with app.app_context():
        query = select(AuditRecord).where(AuditRecord.action == "watch").order_by(AuditRecord.id)
        return [record.to_json() for record in db.session.scalars(query)]


def page_data(response) -> dict:
    html = response.get_data(as_text=True)
    start = html.index("data-page='") + len("data-page='")
    return json.loads(html[start : html.index("'", start)].replace("&#39;", "'").replace("&amp;", "&"))


# -- invites -------------------------------------------------------------------------------------------------


def test_an_invite_by_name_is_a_link_to_the_watch_page_for_that_person(app, opener, console):
    response = opener.post(invites_url(console), {"user": COLLEAGUE[0]})
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"url", "expires_in", "user"}
    assert (body["expires_in"], body["user"]) == (300, COLLEAGUE[0])
    url = urlsplit(body["url"])
    assert (url.scheme, url.netloc, url.path) == ("http", "localhost", f"/console/live/{console}/watch")
    invite = token_row(app, invite_of(body["url"]))
    assert (invite.purpose, invite.scope, invite.subject, invite.used_at) == ("invite", "named", str(console), None)
    [record] = watch_records(app)
    assert (record["detail"], record["outcome"], record["console_id"]) == ("invite", "ok", console)
    assert invite_of(body["url"]) not in json.dumps(record)


def test_an_empty_body_makes_a_link_for_anyone_who_may_open_the_server(app, opener, console):
    for body in (None, {}):
        response = opener.post(invites_url(console), body)
        assert response.status_code == 201
        assert response.get_json()["user"] is None
        assert token_row(app, invite_of(response.get_json()["url"])).scope == "link"


@pytest.mark.parametrize(
    "who, body, status, message",
    [
        ("colleague", {}, 403, "Only the person who opened a console can invite others to it."),
        ("opener", {"user": "nobody"}, 404, "No user is called 'nobody'."),
        ("opener", {"user": AGENT[0]}, 400, "You are at this console already: invite someone else."),
        ("opener", {"user": OUTSIDER[0]}, 403, f"{OUTSIDER[0]} may not open web-01: {ONLY_THOSE_WHO_MAY_OPEN}"),
    ],
    ids=["not-the-opener", "unknown-user", "self", "no-rule"],
)  # fmt: skip
def test_an_invite_that_may_not_be_made_is_refused_with_its_reason(app, console, who, body, status, message):
    person = Person(app, *(AGENT if who == "opener" else COLLEAGUE))
    response = person.post(invites_url(console), body)
    assert response.status_code == status
    assert response.get_json()["error"] | {"request_id": ""} == {
        "code": "watch_refused",
        "message": message,
        "request_id": "",
    }
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SingleUseToken)) == 0


# -- the watch page and its ticket ------------------------------------------------------------------------------


def test_the_watch_page_never_spends_the_invite_and_its_post_does_once(app, opener, colleague, console):
    url = opener.post(invites_url(console), {"user": COLLEAGUE[0]}).get_json()["url"]
    invite = invite_of(url)
    page = colleague.get(urlsplit(url).path + "?" + urlsplit(url).query)
    assert page.status_code == 200
    data = page_data(page)
    assert data["watch"] == {"console": console, "invite": invite, "owner": AGENT[0]}
    assert data["ticketUrl"] == tickets_url(console)
    assert (data["power"], data["actions"], data["serialUrl"]) == (False, [], None)
    colleague.get(urlsplit(url).path + "?" + urlsplit(url).query)  # a reload
    assert token_row(app, invite).used_at is None

    response = colleague.post(tickets_url(console), {"invite": invite})
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"ticket", "url", "expires_in", "server", "role"}
    assert (body["expires_in"], body["role"]) == (30, "watch")
    # The relay's URL names the console, so that a load balancer sends the watcher to the relay carrying it.
    relay_url = urlsplit(body["url"])
    assert (relay_url.scheme, relay_url.netloc, relay_url.path) == ("ws", "localhost", "/relay")
    assert parse_qs(relay_url.query) == {"console": [f"lab/{server_id(1)}"], "watch": [str(console)]}
    assert (body["server"]["id"], body["server"]["name"]) == (server_id(1), "web-01")
    ticket = token_row(app, body["ticket"])
    assert (ticket.purpose, ticket.subject) == ("relay-watch", str(console))
    assert token_row(app, invite).used_at is not None

    again = colleague.post(tickets_url(console), {"invite": invite})
    assert again.status_code == 403
    assert again.get_json()["error"]["message"] == "This invite has been used already: ask for a new one."


def test_an_admin_observes_without_an_invite_and_others_need_one(app, colleague, console):
    refused = colleague.post(tickets_url(console), {})
    assert refused.status_code == 403
    assert refused.get_json()["error"]["message"] == f"Watching {AGENT[0]}'s console needs their invite."
    admin = Person(app, *ADMIN)
    assert admin.get(f"/console/live/{console}/watch").status_code == 200
    response = admin.post(tickets_url(console))
    assert response.status_code == 201
    assert response.get_json()["role"] == "observe"
    assert token_row(app, response.get_json()["ticket"]).purpose == "relay-observe"


def test_someone_who_may_not_open_the_server_gets_no_watch_page_and_no_ticket_even_with_a_link(app, opener, console):
    invite = invite_of(opener.post(invites_url(console), {}).get_json()["url"])
    outsider = Person(app, *OUTSIDER)
    assert outsider.get(f"/console/live/{console}/watch?invite={invite}").status_code == 404
    response = outsider.post(tickets_url(console), {"invite": invite})
    assert response.status_code == 404
    assert token_row(app, invite).used_at is None  # the link is still good for someone who may
    refusals = [r for r in watch_records(app) if r["user"] == OUTSIDER[0]]
    assert refusals and all(r["outcome"] in ("refused", "failed") for r in refusals)
    # Each in the console's story (/admin/audit?console=<id>).
    assert {r["console_id"] for r in refusals} == {console}


# -- bad input changes nothing --------------------------------------------------------------------------------


BAD_BODIES = [
    pytest.param("{", "The request body is not valid JSON.", id="not-json"),
    pytest.param("[]", None, id="not-an-object"),
    pytest.param({"user": "colleague", "invite": "x"}, None, id="extra-field"),
    pytest.param({"user": 5}, None, id="not-a-string"),
    pytest.param({"user": None}, None, id="null"),
    pytest.param(
        {"user": "x" * 300}, "The request body must be a small JSON object (at most 256 bytes).", id="too-big"
    ),
]


@pytest.mark.parametrize("url", [invites_url, tickets_url], ids=["invites", "watch-tickets"])
@pytest.mark.parametrize("body, message", BAD_BODIES)
def test_a_body_that_is_not_what_the_page_sends_is_a_400_and_changes_nothing(app, opener, console, url, body, message):
    if url is tickets_url and isinstance(body, dict) and set(body) == {"user"}:
        body = {"invite": body["user"]}
    before = stored(app)
    response = opener.post(url(console), body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["message"] == message or (message is None and error["message"].startswith("The request body must be"))
    assert stored(app) == before


@pytest.mark.parametrize("console_id", ["abc", "-1", "1.0", "1%2F2", "0", "2147483648", "9" * 30])
@pytest.mark.parametrize("url", [invites_url, tickets_url], ids=["invites", "watch-tickets"])
def test_a_console_id_that_is_not_one_is_a_404_and_makes_nothing(app, opener, console, url, console_id):
    before = stored(app)[0]
    response = opener.post(url(console_id), {})
    assert response.status_code == 404
    assert response.get_json()["error"]["message"] == "That console is not open any more."
    assert opener.get(f"/console/live/{console_id}/watch").status_code == 404
    # Nothing made, and nothing recorded as a mint of a server called "live/abc/invites".
    assert stored(app)[0] == before and watch_records(app) == []
    with app.app_context():
        assert (
            db.session.scalar(select(func.count()).select_from(AuditRecord).where(AuditRecord.action == "console")) == 0
        )


@pytest.mark.parametrize("how", ["gone", "watchers-row", "unknown"])
def test_a_console_that_is_not_open_is_a_404_saying_so(app, opener, console, how):
    target = 999 if how == "unknown" else console
    with app.app_context():
        if how == "gone":
            db.session.execute(delete(LiveConsole))
        if how == "watchers-row":
            db.session.execute(LiveConsole.__table__.update().values(watching=12345, role="watch"))
        db.session.commit()
    before = stored(app)
    for response in (opener.post(invites_url(target), {}), opener.post(tickets_url(target), {})):
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "console_ended"
        assert response.get_json()["error"]["message"] == "That console is not open any more."
    page = opener.get(f"/console/live/{target}/watch")
    assert page.status_code == 404 and "That console is not open any more." in page.get_data(as_text=True)
    assert stored(app) == before


# -- who may ask at all -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [invites_url, tickets_url], ids=["invites", "watch-tickets"])
def test_the_apis_answer_401_json_when_signed_out_and_need_the_csrf_token(app, client, console, url):
    response = client.post(url(console), json={})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "not_signed_in"
    person = Person(app, *AGENT)
    before = stored(app)[0]
    assert person.post(url(console), {}, headers={}).status_code == 400
    assert person.post(url(console), {}, headers={"X-CSRFToken": "forged"}).status_code == 400
    assert stored(app)[0] == before and watch_records(app) == []  # (each CSRF failure is audited as one)


def test_the_watch_page_sends_someone_signed_out_to_sign_in_and_back(client, console):
    response = client.get(f"/console/live/{console}/watch?invite=abc")
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/login"
    assert parse_qs(location.query)["next"] == [f"/console/live/{console}/watch?invite=abc"]


def test_the_watch_page_keeps_an_invite_only_as_long_as_one_can_be(app, colleague, console):
    data = page_data(colleague.get(f"/console/live/{console}/watch?invite={'x' * 500}"))
    assert data["watch"]["invite"] == "x" * 128


@pytest.mark.parametrize("env_overrides", [{"BROKER_MAX_CONSOLES_PER_USER": "1"}])
def test_an_invite_refused_for_the_console_limit_is_still_good(app, opener, colleague, console, env_overrides):
    invite = invite_of(opener.post(invites_url(console), {"user": COLLEAGUE[0]}).get_json()["url"])
    with app.app_context():
        mate = users.find(COLLEAGUE[0])
        db.session.add(
            LiveConsole(
                user_id=mate.id,
                username=mate.username,
                session_id="s",
                server_id=server_id(2),
                cloud="lab",
                instance="relay-a:1",
            )
        )
        db.session.commit()
    response = colleague.post(tickets_url(console), {"invite": invite})
    assert response.status_code == 429
    assert token_row(app, invite).used_at is None  # closing another console and trying again must work


# -- a recorded console says so -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env_overrides", "recorded"), [({"BROKER_RECORDING": "all"}, True), ({}, False)], ids=["all", "off"]
)
def test_a_recorded_console_says_so_to_its_opener_and_to_every_watcher(
    app, opener, colleague, console, env_overrides, recorded
):
    invite = invite_of(opener.post(invites_url(console), {"user": COLLEAGUE[0]}).get_json()["url"])
    for person, path in ((opener, "/console/web-01"), (colleague, f"/console/live/{console}/watch?invite={invite}")):
        soup = BeautifulSoup(person.get(path).get_data(as_text=True), "html.parser")
        notice = soup.select_one("#recorded")
        assert (notice.get_text() if notice else None) == ("Recorded" if recorded else None), path
        assert json.loads(soup.select_one("#console")["data-page"])["recorded"] is recorded


@pytest.mark.parametrize("console_types", [["novnc", "serial"]])
@pytest.mark.parametrize(("env_overrides", "recorded"), [({"BROKER_RECORDING": "all"}, True), ({}, False)])
def test_a_recorded_serial_console_says_so_too(opener, console_types, env_overrides, recorded):
    soup = BeautifulSoup(opener.get("/console/web-01/serial").get_data(as_text=True), "html.parser")
    notice = soup.select_one("#recorded")
    assert (notice.get_text() if notice else None) == ("Recorded" if recorded else None)
