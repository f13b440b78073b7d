"""Invites to watch a live relay console and the tickets that let a watcher in (broker.services.watching).

The live console is a row as the relay writes it (broker.services.relay.opened); the server is the
stand-in cloud's web-01, which the agent and a colleague may open and an outsider may not. Each call
only stages: every test commits as the request would (its refusals' records are kept, as the web
layer keeps them), then reads what is stored.
"""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from sqlalchemy import delete
from sqlalchemy import select
from sqlalchemy import update

from broker import state
from broker.cloud.types import ServerInfo
from broker.extensions import db
from broker.models import AuditRecord
from broker.models import LiveConsole
from broker.models import SingleUseToken
from broker.services import policy
from broker.services import relay
from broker.services import tokens
from broker.services import users
from broker.services import watching
from broker.services.clock import aware
from broker.services.consoles import NoSuchServer
from broker.services.watching import NotLive
from broker.services.watching import WatchRefused
from tests.support import ADMIN
from tests.support import AGENT
from tests.support import server_id

ORIGIN = "https://broker.example"
COLLEAGUE = "colleague"
SECOND = "second-colleague"
OUTSIDER = "outsider"
OPENER_SESSION = "session-opener"
WEB_01 = ServerInfo(id=server_id(1), name="web-01", status="ACTIVE", cloud="lab")


@pytest.fixture
def ctx(app):
    """The agent, two colleagues who may open the test cloud's servers, and an outsider who may open none."""
    with app.app_context():
        for name in (COLLEAGUE, SECOND, OUTSIDER):
            users.add(name, f"{name}-password-1")
        for name in (COLLEAGUE, SECOND):
            policy.add_rule(user=name, cloud="lab", clouds=["lab"])
        db.session.commit()
        yield


def user(name: str):
    return users.find(name)


def live_console(name: str = AGENT[0], server: int = 1, kind: str = "novnc", **ticket) -> int:
    """A console ``name`` opened through a relay now (its live row, committed as the relay host commits)."""
    person = user(name)
    opened = relay.Ticket(
        person.id, person.username, OPENER_SESSION, server_id(server), f"web-0{server}", "lab", ORIGIN, kind, **ticket
    )
    row_id = relay.opened(opened, client="192.0.2.7", instance="relay-a:1")
    db.session.commit()
    return row_id


def invite(console_id: int, name: str | None, by: str = AGENT[0]) -> watching.Invite:
    made = watching.invite(state.consoles(), user(by), OPENER_SESSION, console_id, name)
    db.session.commit()
    return made


def admit(console_id: int, name: str, token: str = "") -> tuple[str, str]:
    """A watch ticket for ``name`` (the ticket and the role), committed as the request would."""
    try:
        ticket, server, role = watching.admit(
            state.consoles(), user(name), f"session-{name}", console_id, token, ORIGIN, 10
        )
    finally:
        db.session.commit()  # a refusal's record is kept
    assert server.id in (server_id(1), server_id(2))
    return ticket, role


def stored_tokens() -> list[SingleUseToken]:
    return list(db.session.scalars(select(SingleUseToken).order_by(SingleUseToken.expires_at)))


def invites() -> list[SingleUseToken]:
    return [row for row in stored_tokens() if row.purpose == watching.INVITE]


def records(action: str = "watch") -> list[AuditRecord]:
    return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.id)))


def row_of(token: str) -> SingleUseToken:
    return db.session.get(SingleUseToken, tokens.digest(token), populate_existing=True)


# -- invites --------------------------------------------------------------------------------------------


def test_an_invite_by_name_is_a_single_use_token_for_that_person_and_this_console_for_five_minutes(ctx):
    console = live_console()
    made = invite(console, COLLEAGUE)
    assert (made.console_id, made.invitee, made.expires_in) == (console, COLLEAGUE, 300)
    [row] = invites()
    assert row.digest == tokens.digest(made.token) and made.token not in repr(vars(row))
    assert (row.user_id, row.session_id, row.server_id, row.cloud) == (
        user(COLLEAGUE).id,
        OPENER_SESSION,
        server_id(1),
        "lab",
    )
    assert (row.scope, row.subject, row.used_at) == ("named", str(console), None)
    lifetime = aware(row.expires_at) - datetime.now(UTC)
    assert timedelta(seconds=295) < lifetime <= timedelta(seconds=300)
    [record] = records()
    assert (record.username, record.outcome, record.detail, record.console_id) == (AGENT[0], "ok", "invite", console)
    assert record.reason == f"invited {COLLEAGUE} to watch (5 minutes, once)"
    assert made.token not in record.reason


def test_a_link_invite_names_nobody_and_is_bound_to_the_opener_and_the_console(ctx):
    console = live_console()
    made = invite(console, None)
    assert made.invitee is None
    [row] = invites()
    assert (row.user_id, row.scope, row.subject) == (user(AGENT[0]).id, "link", str(console))
    [record] = records()
    assert record.reason == "made a link to watch, for anyone who may open it (5 minutes, once)"
    assert record.console_id == console


@pytest.mark.parametrize(
    "by, name, status, message",
    [
        (COLLEAGUE, None, 403, "Only the person who opened a console can invite others to it."),
        (AGENT[0], "nobody", 404, "No user is called 'nobody'."),
        (AGENT[0], "  ", 404, "No user is called ''."),
        (AGENT[0], AGENT[0], 400, "You are at this console already: invite someone else."),
        (AGENT[0], OUTSIDER, 403, f"{OUTSIDER} may not open web-01: only people who may open a server can watch it."),
    ],
    ids=["not-the-opener", "unknown-user", "blank-name", "self", "no-rule"],
)
def test_an_invite_that_may_not_be_made_is_refused_and_stores_no_invite(ctx, by, name, status, message):
    console = live_console()
    before = records()
    with pytest.raises(WatchRefused) as refused:
        invite(console, name, by=by)
    db.session.commit()  # a refusal answered on purpose keeps its record
    assert (refused.value.status, refused.value.message) == (status, message)
    assert invites() == []
    if name == OUTSIDER:
        [record] = records()[len(before) :]
        assert (record.outcome, record.detail, record.console_id) == ("refused", "invite", console)
        assert record.reason == f"{OUTSIDER} may not open this server"


@pytest.mark.parametrize("ended", ["gone", "stale", "serial", "a-watchers-row"])
def test_no_invite_to_a_console_that_is_not_a_live_graphical_one(ctx, ended):
    if ended == "serial":
        console = live_console(kind="serial")
    elif ended == "a-watchers-row":
        console = live_console(COLLEAGUE, watching=live_console(), role="watch")
    else:
        console = live_console()
    if ended == "gone":
        db.session.execute(delete(LiveConsole).where(LiveConsole.id == console))
    if ended == "stale":
        stale = datetime.now(UTC) - timedelta(seconds=relay.STALE_AFTER + 1)
        db.session.execute(update(LiveConsole).where(LiveConsole.id == console).values(seen_at=stale))
    db.session.commit()
    opener = COLLEAGUE if ended == "a-watchers-row" else AGENT[0]
    with pytest.raises(NotLive, match="That console is not open any more."):
        invite(console, None, by=opener)
    with pytest.raises(NotLive):
        admit(console, ADMIN[0])
    assert invites() == [] and [t for t in stored_tokens() if t.purpose in relay.WATCH_PURPOSES.values()] == []


# -- joining with an invite -------------------------------------------------------------------------------


def test_a_named_invite_lets_its_person_in_once_with_a_watch_ticket_for_the_console(ctx):
    console = live_console()
    made = invite(console, COLLEAGUE)
    ticket, role = admit(console, COLLEAGUE, made.token)
    assert role == "watch"
    assert row_of(made.token).used_at is not None
    watch_ticket = row_of(ticket)
    assert (watch_ticket.purpose, watch_ticket.subject, watch_ticket.user_id) == (
        "relay-watch",
        str(console),
        user(COLLEAGUE).id,
    )
    assert (watch_ticket.session_id, watch_ticket.scope) == (f"session-{COLLEAGUE}", ORIGIN)
    with pytest.raises(WatchRefused, match="This invite has been used already: ask for a new one."):
        admit(console, COLLEAGUE, made.token)


def test_a_link_lets_in_anyone_who_may_open_the_server_once(ctx):
    console = live_console()
    made = invite(console, None)
    with pytest.raises(NoSuchServer):
        admit(console, OUTSIDER, made.token)  # the link is no credential for someone without a rule
    assert row_of(made.token).used_at is None
    assert admit(console, SECOND, made.token)[1] == "watch"
    with pytest.raises(WatchRefused, match="used already"):
        admit(console, COLLEAGUE, made.token)
    refusal = [r for r in records() if r.username == OUTSIDER]
    assert [(r.outcome, r.detail) for r in refusal] == [("refused", "join")]


def expire(token: str) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    db.session.execute(
        update(SingleUseToken).where(SingleUseToken.digest == tokens.digest(token)).values(expires_at=past)
    )
    db.session.commit()


@pytest.mark.parametrize(
    "case, message",
    [
        pytest.param("forged", "This is not an invite to this console.", id="forged"),
        pytest.param("too-long", "This is not an invite to this console.", id="too-long"),
        pytest.param("expired", "This invite has expired: ask for a new one.", id="expired"),
        pytest.param("reused", "This invite has been used already: ask for a new one.", id="reused"),
        pytest.param("foreign", "This invite is for someone else.", id="foreign"),
        pytest.param("other-console", "This is not an invite to this console.", id="other-console"),
        pytest.param("a-relay-ticket", "This is not an invite to this console.", id="a-relay-ticket"),
    ],
)
def test_an_invite_that_does_not_hold_is_refused_with_its_message_and_audited(ctx, case, message):
    console = live_console()
    other = live_console(server=2)
    token = invite(other if case == "other-console" else console, COLLEAGUE).token
    if case == "forged":
        token = token[:-4] + "AAAA"
    elif case == "too-long":
        token = "x" * 200
    elif case == "expired":
        expire(token)
    elif case == "reused":
        admit(console, COLLEAGUE, token)
    elif case == "a-relay-ticket":
        token = relay.issue(user(COLLEAGUE), f"session-{COLLEAGUE}", WEB_01, ORIGIN, 10)
        db.session.commit()
    name = SECOND if case == "foreign" else COLLEAGUE
    tickets_before = [t.digest for t in stored_tokens() if t.purpose in relay.WATCH_PURPOSES.values()]
    records_before = len(records())
    with pytest.raises(WatchRefused) as refused:
        admit(console, name, token)
    assert (refused.value.status, refused.value.message) == (403, message)
    assert [t.digest for t in stored_tokens() if t.purpose in relay.WATCH_PURPOSES.values()] == tickets_before
    [record] = records()[records_before:]
    assert (record.username, record.outcome, record.detail, record.console_id) == (name, "refused", "join", console)
    assert record.reason == f"invite refused: {message}"
    assert token not in record.reason


def test_an_attempt_by_the_wrong_person_leaves_the_invite_for_the_right_one(ctx):
    console = live_console()
    made = invite(console, COLLEAGUE)
    with pytest.raises(WatchRefused, match="for someone else"):
        admit(console, SECOND, made.token)
    assert admit(console, COLLEAGUE, made.token)[1] == "watch"


def test_an_invite_to_another_console_stays_good_for_its_own(ctx):
    console = live_console()
    other = live_console(server=2)
    made = invite(other, COLLEAGUE)
    with pytest.raises(WatchRefused, match="not an invite to this console"):
        admit(console, COLLEAGUE, made.token)
    assert admit(other, COLLEAGUE, made.token)[1] == "watch"


# -- without an invite ------------------------------------------------------------------------------------


def test_an_admin_without_an_invite_observes(ctx):
    console = live_console()
    ticket, role = admit(console, ADMIN[0])
    assert role == "observe"
    assert (row_of(ticket).purpose, row_of(ticket).subject) == ("relay-observe", str(console))


def test_an_admin_with_an_invite_watches_as_invited(ctx):
    console = live_console()
    made = invite(console, ADMIN[0])
    assert admit(console, ADMIN[0], made.token)[1] == "watch"


def test_someone_who_is_not_an_admin_needs_an_invite(ctx):
    console = live_console()
    with pytest.raises(WatchRefused) as refused:
        admit(console, COLLEAGUE)
    assert (refused.value.status, refused.value.message) == (403, f"Watching {AGENT[0]}'s console needs their invite.")
    [record] = records()
    assert (record.username, record.outcome, record.detail, record.console_id) == (
        COLLEAGUE,
        "refused",
        "join",
        console,
    )
    assert record.reason == "no invite"
    assert [t for t in stored_tokens() if t.purpose in relay.WATCH_PURPOSES.values()] == []


def test_the_opener_cannot_watch_their_own_console(ctx):
    console = live_console()
    made = invite(console, COLLEAGUE)
    with pytest.raises(WatchRefused) as refused:
        admit(console, AGENT[0], made.token)
    assert (refused.value.status, refused.value.message) == (
        400,
        "This is your own console: it is open on its own page.",
    )
    assert row_of(made.token).used_at is None  # still the colleague's


def test_consoles_watched_count_against_the_watchers_limit(ctx):
    console = live_console()
    for _ in range(2):
        live_console(COLLEAGUE, server=2, watching=console, role="watch")
    made = invite(console, COLLEAGUE)
    with pytest.raises(relay.TooManyConsoles, match="You have 2 consoles open"):
        watching.admit(state.consoles(), user(COLLEAGUE), "s", console, made.token, ORIGIN, 2)
