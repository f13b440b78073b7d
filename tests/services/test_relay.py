"""Relay tickets (single use, bound to session, server, cloud and origin) and the live-console registry."""

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
from broker.models import UserSession
from broker.services import management
from broker.services import policy
from broker.services import relay
from broker.services import tokens
from broker.services import users
from tests.support import ADMIN
from tests.support import AGENT
from tests.support import server_id

ORIGIN = "https://broker.example"
# Relay tickets among the single-use tokens.
TICKETS = SingleUseToken.purpose.in_(relay.PURPOSES.values())
SERVER = ServerInfo(id=server_id(1), name="web-01", status="ACTIVE", cloud="lab")


def redeem(token: str, **bindings) -> relay.Ticket:
    """The relay's redemption, with the app's throttle for refusals of made-up tickets (as relayhost passes it)."""
    return relay.redeem(token, throttle=state.throttle(), **bindings)


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield


def signed_in(name: str = AGENT[0], sid: str = "session-1") -> tuple[int, str]:
    user = users.find(name)
    db.session.add(UserSession(id=sid, user_id=user.id))
    db.session.commit()
    return user.id, sid


def audit_rows(action: str) -> list[AuditRecord]:
    return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.id)))


LIMITS = relay.Limits(lifetime=12 * 3600, idle=3600)


def issued(sid: str = "session-1", name: str = AGENT[0], limit: int = 10) -> str:
    return relay.issue(users.find(name), sid, SERVER, ORIGIN, limit)


def test_a_ticket_is_redeemed_once_with_everything_it_grants(ctx):
    user_id, sid = signed_in()
    token = issued(sid)
    ticket = redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)
    assert ticket == relay.Ticket(user_id, AGENT[0], sid, SERVER.id, "web-01", "lab", ORIGIN)
    with pytest.raises(relay.TicketRefused, match="already used"):
        redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)


def test_a_serial_ticket_opens_a_serial_console_and_its_records_say_so(ctx):
    user_id, sid = signed_in()
    token = relay.issue(users.find(AGENT[0]), sid, SERVER, ORIGIN, 10, kind="serial")
    ticket = redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)
    assert ticket == relay.Ticket(user_id, AGENT[0], sid, SERVER.id, "web-01", "lab", ORIGIN, "serial")
    relay.opened(ticket, client="192.0.2.7", instance="relay-a:1")
    relay.failed(ticket, reason="the cloud's console could not be reached")
    db.session.commit()
    assert [(row.outcome, row.detail) for row in audit_rows("console")] == [("ok", "serial"), ("failed", "serial")]


def test_a_graphical_ticket_opens_a_graphical_console(ctx):
    user_id, sid = signed_in()
    assert redeem(issued(sid), session_id=sid, user_id=user_id, origin=ORIGIN).kind == "novnc"


def test_only_the_tickets_hash_is_stored(ctx):
    _, sid = signed_in()
    token = issued(sid)
    stored = db.session.scalars(select(SingleUseToken).where(TICKETS)).one()
    assert token not in repr(vars(stored)) and stored.digest == tokens.digest(token)


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"token": "made-up"}, 403, "unknown ticket"),
        ({"session_id": "session-2"}, 403, "another sign-in session"),
        ({"user": ADMIN[0]}, 403, "another sign-in session"),
        ({"origin": "https://evil.example"}, 403, "another origin"),
        ({"origin": None}, 403, "another origin"),
        ({"session_id": None}, 401, "no sign-in session"),
    ],
)
def test_a_ticket_used_any_other_way_is_refused_and_audited(ctx, change, status, reason):
    user_id, sid = signed_in()
    signed_in(AGENT[0], "session-2")
    token = issued(sid)
    user = users.find(change.get("user", AGENT[0]))
    with pytest.raises(relay.TicketRefused) as refused:
        redeem(
            change.get("token", token),
            session_id=change.get("session_id", sid),
            user_id=user.id,
            origin=change.get("origin", ORIGIN),
        )
    assert refused.value.status == status and reason in refused.value.reason
    [row] = audit_rows("console")
    assert (row.outcome, row.detail) == ("refused", "relay")
    assert reason in row.reason and token not in row.reason
    if change.get("token") is None:
        assert (row.username, row.server_id, row.cloud) == (AGENT[0], SERVER.id, "lab")


def test_a_stolen_ticket_is_used_up_by_the_thief_attempt(ctx):
    """A ticket tried from the wrong session is spent: it cannot be tried again, even by its owner."""
    user_id, sid = signed_in()
    token = issued(sid)
    with pytest.raises(relay.TicketRefused):
        redeem(token, session_id="session-x", user_id=user_id, origin=ORIGIN)
    with pytest.raises(relay.TicketRefused, match="already used"):
        redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)


def test_an_expired_ticket_is_refused(ctx):
    user_id, sid = signed_in()
    token = issued(sid)
    past = datetime.now(UTC) - timedelta(seconds=1)
    db.session.execute(update(SingleUseToken).where(TICKETS).values(expires_at=past))
    db.session.commit()
    with pytest.raises(relay.TicketRefused, match="expired"):
        redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)


def test_a_ticket_of_an_ended_session_is_refused_as_signed_out(ctx):
    user_id, sid = signed_in()
    token = issued(sid)
    db.session.execute(update(UserSession).values(ended_at=datetime.now(UTC)))
    db.session.commit()
    with pytest.raises(relay.TicketRefused) as refused:
        redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)
    assert refused.value.status == 401


def test_old_tickets_are_cleared_when_new_ones_are_issued(ctx):
    _, sid = signed_in()
    issued(sid)
    db.session.execute(
        update(SingleUseToken).where(TICKETS).values(expires_at=datetime.now(UTC) - timedelta(minutes=5))
    )
    db.session.commit()
    issued(sid)
    assert db.session.scalar(select(db.func.count()).select_from(SingleUseToken).where(TICKETS)) == 1


def connected(sid: str = "session-1", name: str = AGENT[0]) -> int:
    """A console the relay has opened, committed as the relay host commits each call."""
    row_id = relay.opened(ticket_of(sid, name), client="192.0.2.7", instance="relay-a:1")
    db.session.commit()
    return row_id


def ticket_of(sid: str = "session-1", name: str = AGENT[0]) -> relay.Ticket:
    user_id, sid = signed_in(name, sid=sid)
    return redeem(issued(sid, name), session_id=sid, user_id=user_id, origin=ORIGIN)


def live(row_id: int, server: ServerInfo = SERVER, **fields) -> relay.LiveReport:
    """The relay's report of one of its consoles (as it would build it from the row's ticket)."""
    row = db.session.get(LiveConsole, row_id)
    ticket = relay.Ticket(row.user_id, row.username, row.session_id, row.server_id, row.server_name, row.cloud, ORIGIN)
    db.session.rollback()
    values = {"to_cloud": 0, "to_browser": 0, "used_at": None, **fields}
    return relay.LiveReport(row_id, ticket, server, "192.0.2.7", "relay-a:1", datetime.now(UTC), **values)


def to_end(*row_ids: int, limits: relay.Limits = LIMITS) -> dict[int, int]:
    return relay.report([live(row_id) for row_id in row_ids], limits)


def test_a_connection_is_listed_with_its_bytes_and_audited_when_it_ends(ctx):
    row_id = connected()
    relay.report([live(row_id, to_cloud=1200, to_browser=5_000_000)], LIMITS)
    [listed] = relay.listing()
    assert (listed.username, listed.server_name, listed.cloud, listed.client, listed.to_cloud, listed.to_browser) == (
        AGENT[0],
        "web-01",
        "lab",
        "192.0.2.7",
        1200,
        5_000_000,
    )
    relay.closed(row_id, reason="the browser closed it", to_cloud=1300, to_browser=5_100_000)
    assert relay.listing() == []
    [opened] = audit_rows("console")
    assert (opened.outcome, opened.detail, opened.reason) == ("ok", "relay", "connected through relay relay-a:1")
    [disconnect] = audit_rows("relay")
    assert disconnect.detail == "disconnect"
    assert disconnect.server_name == "web-01" and disconnect.username == AGENT[0]
    assert disconnect.reason == "the browser closed it; 0 s, 1300 bytes to the cloud, 5100000 bytes to the browser"


def test_a_relay_that_stopped_reporting_is_not_listed(ctx):
    row_id = connected()
    stale = datetime.now(UTC) - timedelta(seconds=relay.STALE_AFTER + 1)
    db.session.execute(update(LiveConsole).where(LiveConsole.id == row_id).values(seen_at=stale))
    db.session.commit()
    assert relay.listing() == []


def test_an_admin_ends_a_console_through_the_audited_path(ctx):
    row_id = connected()
    assert to_end(row_id) == {}
    text = management.end_console(ADMIN[0], row_id)
    db.session.commit()  # as the admin page or the command does
    assert "web-01" in text and AGENT[0] in text
    assert to_end(row_id) == {row_id: relay.ENDED_BY_ADMIN}
    [record] = [r for r in audit_rows("admin") if r.detail == "relay_end"]
    assert (record.username, record.outcome) == (ADMIN[0], "ok")
    assert relay.listing()[0].ending


def test_ending_a_console_that_is_gone_says_so(ctx):
    with pytest.raises(relay.NoSuchConsole):
        management.end_console(ADMIN[0], 999)
    [record] = audit_rows("admin")
    assert record.outcome == "failed"


@pytest.mark.parametrize("how", ["sign-out", "password", "removal"])
def test_consoles_end_when_their_session_does(ctx, how):
    row_id = connected()
    other = connected(sid="session-other")
    if how == "sign-out":
        db.session.execute(update(UserSession).where(UserSession.id == "session-1").values(ended_at=datetime.now(UTC)))
        db.session.commit()
        assert to_end(row_id, other) == {row_id: relay.SIGNED_OUT}
        return
    if how == "password":
        management.set_password(ADMIN[0], AGENT[0], "a-new-password-for-the-agent")
        db.session.commit()  # as the admin page or the command does
    else:
        management.remove_user(ADMIN[0], AGENT[0])
        db.session.commit()  # as the admin page or the command does
    assert to_end(row_id, other) == {row_id: relay.SIGNED_OUT, other: relay.SIGNED_OUT}


def test_rows_of_a_dead_relay_are_removed_by_the_next_poll_of_any_relay(ctx):
    dead = connected()
    alive = connected(sid="session-other")
    stale = datetime.now(UTC) - timedelta(seconds=relay.STALE_AFTER + 1)
    db.session.execute(update(LiveConsole).where(LiveConsole.id == dead).values(seen_at=stale))
    db.session.commit()
    assert relay.report([], LIMITS) == {}  # a relay carrying nothing cleans up too
    assert [row.id for row in db.session.scalars(select(LiveConsole))] == [alive]


def test_a_console_whose_row_was_taken_while_its_relay_was_cut_off_is_written_back(ctx):
    """After a database outage a live relay's heartbeat looks as old as a dead one's; its consoles go on."""
    row_id = connected()
    report = live(row_id, to_cloud=10, to_browser=20)
    db.session.execute(delete(LiveConsole))
    db.session.commit()
    assert relay.report([report], LIMITS) == {}
    [row] = db.session.scalars(select(LiveConsole)).all()
    assert (row.id, row.username, row.server_id, row.to_cloud) == (row_id, AGENT[0], SERVER.id, 10)


# -- access that ends ends the console ----------------------------------------------------------------


def test_a_console_closes_when_its_session_passes_the_idle_limit_and_the_session_ends(ctx):
    row_id = connected()
    idle = datetime.now(UTC) - timedelta(seconds=LIMITS.idle + 5)
    db.session.execute(update(UserSession).values(seen_at=idle, started_at=idle))
    db.session.commit()
    assert to_end(row_id) == {row_id: relay.SIGNED_OUT}
    session = db.session.get(UserSession, "session-1")
    assert session.ended_at is not None
    [record] = audit_rows("sign_out")
    assert (record.username, record.reason) == (AGENT[0], "session was idle too long (seen by the relay)")
    assert to_end(row_id) == {row_id: relay.SIGNED_OUT}
    assert len(audit_rows("sign_out")) == 1  # ended once, however many polls see it


def test_typing_in_a_console_is_use_that_keeps_its_session(ctx):
    row_id = connected()
    idle = datetime.now(UTC) - timedelta(seconds=LIMITS.idle + 5)
    db.session.execute(update(UserSession).values(seen_at=idle, started_at=idle))
    db.session.commit()
    typed_now = datetime.now(UTC)
    assert relay.report([live(row_id, used_at=typed_now)], LIMITS) == {}
    assert relay.aware(db.session.get(UserSession, "session-1").seen_at) >= typed_now - timedelta(seconds=1)


def test_a_console_closes_when_its_session_reaches_its_absolute_lifetime_however_used(ctx):
    row_id = connected()
    old = datetime.now(UTC) - timedelta(seconds=LIMITS.lifetime + 5)
    db.session.execute(update(UserSession).values(started_at=old))
    db.session.commit()
    assert relay.report([live(row_id, used_at=datetime.now(UTC))], LIMITS) == {row_id: relay.SIGNED_OUT}
    [record] = audit_rows("sign_out")
    assert record.reason == "session reached its maximum age (seen by the relay)"


def test_nothing_is_minted_for_a_session_past_its_limits(ctx, app):
    ticket = ticket_of()
    old = datetime.now(UTC) - timedelta(seconds=LIMITS.lifetime + 5)
    db.session.execute(update(UserSession).values(started_at=old))
    db.session.commit()
    with pytest.raises(relay.SessionOver, match="maximum age"):
        relay.mint(ConsoleWithNoCloud(), LIMITS, ticket, None)
    assert db.session.get(UserSession, "session-1").ended_at is not None


def test_nothing_is_minted_for_a_session_that_has_ended(ctx):
    ticket = ticket_of()
    db.session.execute(update(UserSession).values(ended_at=datetime.now(UTC)))
    db.session.commit()
    with pytest.raises(relay.SessionOver):
        relay.mint(ConsoleWithNoCloud(), LIMITS, ticket, SERVER)


class ConsoleWithNoCloud:
    """A console service that fails the test if anything reaches it."""

    def mint(self, *args, **kwargs):
        raise AssertionError("minted for a session that is over")

    mint_confirmed = mint


def rule_for(name: str, pattern: str = "web-*") -> None:
    management.add_rule(ADMIN[0], ["lab"], user=name, cloud="lab", name_pattern=pattern)
    db.session.commit()  # as the admin page or the command does


@pytest.fixture
def no_rules(ctx):
    """Nobody but admins may open anything until a test grants it."""
    for rule in policy.all_rules():
        policy.remove_rule(rule.id)
    db.session.commit()


@pytest.mark.parametrize("change", ["rule removed", "left the group", "no longer admin"])
def test_a_console_closes_within_one_poll_when_its_user_may_no_longer_open_the_server(no_rules, change):
    if change == "rule removed":
        rule_for(AGENT[0])
        name = AGENT[0]
    elif change == "left the group":
        management.add_group(ADMIN[0], "helpdesk")
        management.add_member(ADMIN[0], "helpdesk", AGENT[0])
        management.add_rule(ADMIN[0], ["lab"], group="helpdesk", cloud="lab", name_pattern="web-*")
        db.session.commit()  # as the admin page or the command does
        name = AGENT[0]
    else:
        name = ADMIN[0]
    row_id = connected(name=name)
    assert to_end(row_id) == {}
    if change == "rule removed":
        [rule] = policy.all_rules()
        management.remove_rule(ADMIN[0], rule.id)
        db.session.commit()  # as the admin page or the command does
    elif change == "left the group":
        management.remove_member(ADMIN[0], "helpdesk", AGENT[0])
        db.session.commit()  # as the admin page or the command does
    else:
        management.add_user(ADMIN[0], "second-admin", "a-long-enough-password-2", "admin")
        management.set_role("second-admin", ADMIN[0], "agent")
        db.session.commit()  # as the admin page or the command does
    assert to_end(row_id) == {row_id: relay.NOT_ALLOWED}


def test_rights_are_judged_on_the_server_as_last_minted(no_rules):
    rule_for(AGENT[0], pattern="web-*")
    row_id = connected()
    renamed = ServerInfo(id=SERVER.id, name="db-01", status="ACTIVE", cloud="lab")
    assert relay.report([live(row_id, server=renamed)], LIMITS) == {row_id: relay.NOT_ALLOWED}
    assert relay.report([live(row_id)], LIMITS) == {}


def test_ending_a_console_from_the_admin_page_ends_its_sign_in_too(ctx):
    row_id = connected()
    other = connected(sid="session-other")
    text = management.end_console(ADMIN[0], row_id)
    db.session.commit()  # as the admin page or the command does
    assert "must sign in again" in text
    assert db.session.get(UserSession, "session-1").ended_at is not None
    assert db.session.get(UserSession, "session-other").ended_at is None
    with pytest.raises(relay.TicketRefused) as refused:
        redeem(issued("session-1"), session_id="session-1", user_id=users.find(AGENT[0]).id, origin=ORIGIN)
    assert refused.value.status == 401
    [record] = [r for r in audit_rows("admin") if r.detail == "relay_end"]
    assert (record.username, record.outcome) == (ADMIN[0], "ok")
    assert AGENT[0] in record.reason and "sign-in session" in record.reason
    assert to_end(row_id, other) == {row_id: relay.ENDED_BY_ADMIN}


# -- a cap per person -----------------------------------------------------------------------------------


def test_a_ticket_past_the_users_console_limit_is_refused_naming_how_many_are_open(ctx):
    for n in range(3):
        connected(sid=f"session-{n}")
    before = db.session.scalar(select(db.func.count()).select_from(SingleUseToken).where(TICKETS))
    with pytest.raises(relay.TooManyConsoles, match="You have 3 consoles open, the most one person may have at once"):
        issued("session-0", limit=3)
    assert db.session.scalar(select(db.func.count()).select_from(SingleUseToken).where(TICKETS)) == before
    [refusal] = [r for r in audit_rows("console") if r.outcome == "refused"]
    assert refusal.reason == "3 consoles open, at the limit of 3 (BROKER_MAX_CONSOLES_PER_USER)"
    issued("session-0", limit=4)  # below the limit: issued
    issued("session-0", name=ADMIN[0], limit=3)  # another person's consoles are their own


def test_consoles_of_a_dead_relay_do_not_count_against_the_limit(ctx):
    connected()
    stale = datetime.now(UTC) - timedelta(seconds=relay.STALE_AFTER + 1)
    db.session.execute(update(LiveConsole).values(seen_at=stale))
    db.session.commit()
    assert relay.open_consoles(users.find(AGENT[0]).id) == 0
    issued("session-1", limit=1)


# -- watching a console (issue 23): watch tickets, watchers' rows and records ------------------------------


def watched_by(name: str, sid: str, console: int, role: str = "watch") -> tuple[relay.Ticket, int]:
    """``name`` redeems a ticket to watch the live console ``console`` and the relay records the watcher."""
    user_id, sid = signed_in(name, sid)
    token = relay.issue(users.find(name), sid, SERVER, ORIGIN, 10, watching=(console, role))
    ticket = redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)
    row_id = relay.opened(ticket, client="192.0.2.8", instance="relay-a:1")
    db.session.commit()
    return ticket, row_id


@pytest.mark.parametrize("role, purpose", [("watch", "relay-watch"), ("observe", "relay-observe")])
def test_a_watch_ticket_redeems_to_watching_the_live_console_never_to_one_of_its_own(ctx, role, purpose):
    console = connected()
    user_id, sid = signed_in(ADMIN[0], "session-admin")
    token = relay.issue(users.find(ADMIN[0]), sid, SERVER, ORIGIN, 10, watching=(console, role))
    stored = db.session.get(SingleUseToken, tokens.digest(token))
    assert (stored.purpose, stored.subject) == (purpose, str(console))
    ticket = redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)
    assert ticket == relay.Ticket(
        user_id, ADMIN[0], sid, SERVER.id, "web-01", "lab", ORIGIN, "novnc", watching=console, role=role
    )


def test_an_invite_is_no_ticket_for_the_relay(ctx):
    user_id, sid = signed_in()
    invite = tokens.issue(
        "invite", 300, user_id=user_id, session_id=sid, server_id=SERVER.id, cloud="lab", scope="link", subject="1"
    )
    db.session.commit()
    with pytest.raises(relay.TicketRefused, match="unknown ticket"):
        redeem(invite, session_id=sid, user_id=user_id, origin=ORIGIN)


def test_a_watchers_join_hand_overs_and_leave_are_watch_records_linked_to_the_console(ctx):
    console = connected()
    _, watcher = watched_by(ADMIN[0], "session-admin", console)
    _, observer = watched_by(ADMIN[0], "session-admin-2", console, role="observe")
    relay.noted(console, detail="hand-over", reason="agent gave control to admin")
    db.session.commit()
    relay.closed(watcher, reason="the browser closed the connection (1000)", to_cloud=16, to_browser=4096)
    relay.closed(observer, reason="the console ended", to_cloud=0, to_browser=1)
    relay.closed(console, reason="the browser closed the connection (1000)", to_cloud=10, to_browser=20)
    db.session.commit()
    linked = db.session.scalars(select(AuditRecord).where(AuditRecord.console_id == console).order_by(AuditRecord.id))
    assert [(r.action, r.detail, r.username) for r in linked] == [
        ("console", "relay", AGENT[0]),
        ("watch", "join", ADMIN[0]),
        ("watch", "observe", ADMIN[0]),
        ("watch", "hand-over", AGENT[0]),
        ("watch", "leave", ADMIN[0]),
        ("watch", "leave", ADMIN[0]),
        ("relay", "disconnect", AGENT[0]),
    ]
    [join, observe, _, leave, *_] = audit_rows("watch")
    assert join.reason == f"watching the console of {AGENT[0]} through relay relay-a:1"
    assert observe.reason == f"observing the console of {AGENT[0]} through relay relay-a:1"
    assert leave.reason.startswith("the browser closed the connection (1000); ")
    assert leave.reason.endswith(" s, 16 bytes to the cloud, 4096 bytes to the browser")
    assert (leave.server_id, leave.server_name, leave.cloud) == (SERVER.id, "web-01", "lab")
    assert relay.listing() == []


def test_watchers_are_listed_with_the_console_they_watch_and_how(ctx):
    console = connected()
    _, watcher = watched_by(ADMIN[0], "session-admin", console, role="observe")
    listed = {live_console.id: live_console for live_console in relay.listing()}
    assert (listed[console].watching, listed[console].role) == (None, "open")
    assert (listed[watcher].watching, listed[watcher].role, listed[watcher].username) == (console, "observe", ADMIN[0])


def test_a_hand_over_in_a_console_already_gone_is_still_recorded(ctx):
    relay.noted(404, detail="hand-over", reason="control went back to agent: admin left")
    db.session.commit()
    [record] = audit_rows("watch")
    assert (record.detail, record.console_id, record.username) == ("hand-over", 404, "")


def test_an_observer_who_is_no_longer_an_admin_is_let_go_while_invited_watchers_stay(no_rules):
    rule_for(AGENT[0])
    rule_for(ADMIN[0])  # may open the server whatever its role: only observing needs the admin role
    console = connected()
    _, observer = watched_by(ADMIN[0], "session-admin", console, role="observe")
    _, watcher = watched_by(ADMIN[0], "session-admin-2", console, role="watch")
    assert to_end(console, observer, watcher) == {}
    management.add_user(ADMIN[0], "second-admin", "a-long-enough-password-2", "admin")
    management.set_role("second-admin", ADMIN[0], "agent")
    db.session.commit()  # as the admin page or the command does
    assert to_end(console, observer, watcher) == {observer: relay.NOT_ALLOWED}
