"""Relay tickets (single use, bound to session, server, cloud and origin) and the live-console registry."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy import update

from broker.cloud.types import ServerInfo
from broker.extensions import db
from broker.models import AuditRecord
from broker.models import LiveConsole
from broker.models import RelayTicket
from broker.models import UserSession
from broker.services import management
from broker.services import relay
from broker.services import users
from tests.support import ADMIN
from tests.support import AGENT
from tests.support import server_id

ORIGIN = "https://broker.example"
SERVER = ServerInfo(id=server_id(1), name="web-01", status="ACTIVE", cloud="lab")


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


def issued(sid: str = "session-1", name: str = AGENT[0]) -> str:
    return relay.issue(users.find(name), sid, SERVER, ORIGIN)


def test_a_ticket_is_redeemed_once_with_everything_it_grants(ctx):
    user_id, sid = signed_in()
    token = issued(sid)
    ticket = relay.redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)
    assert ticket == relay.Ticket(user_id, AGENT[0], sid, SERVER.id, "web-01", "lab", ORIGIN)
    with pytest.raises(relay.TicketRefused, match="already used"):
        relay.redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)


def test_only_the_tickets_hash_is_stored(ctx):
    _, sid = signed_in()
    token = issued(sid)
    stored = db.session.scalars(select(RelayTicket)).one()
    assert token not in repr(vars(stored)) and stored.digest == relay.digest(token)


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
        relay.redeem(
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
        relay.redeem(token, session_id="session-x", user_id=user_id, origin=ORIGIN)
    with pytest.raises(relay.TicketRefused, match="already used"):
        relay.redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)


def test_an_expired_ticket_is_refused(ctx):
    user_id, sid = signed_in()
    token = issued(sid)
    past = datetime.now(UTC) - timedelta(seconds=1)
    db.session.execute(update(RelayTicket).values(expires_at=past))
    db.session.commit()
    with pytest.raises(relay.TicketRefused, match="expired"):
        relay.redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)


def test_a_ticket_of_an_ended_session_is_refused_as_signed_out(ctx):
    user_id, sid = signed_in()
    token = issued(sid)
    db.session.execute(update(UserSession).values(ended_at=datetime.now(UTC)))
    db.session.commit()
    with pytest.raises(relay.TicketRefused) as refused:
        relay.redeem(token, session_id=sid, user_id=user_id, origin=ORIGIN)
    assert refused.value.status == 401


def test_old_tickets_are_cleared_when_new_ones_are_issued(ctx):
    _, sid = signed_in()
    issued(sid)
    db.session.execute(update(RelayTicket).values(expires_at=datetime.now(UTC) - timedelta(minutes=5)))
    db.session.commit()
    issued(sid)
    assert db.session.scalar(select(db.func.count()).select_from(RelayTicket)) == 1


def connected(sid: str = "session-1") -> int:
    user_id, sid = signed_in(sid=sid)
    ticket = relay.redeem(issued(sid), session_id=sid, user_id=user_id, origin=ORIGIN)
    return relay.opened(ticket, client="192.0.2.7", instance="relay-a:1")


def test_a_connection_is_listed_with_its_bytes_and_audited_when_it_ends(ctx):
    row_id = connected()
    relay.progress({row_id: (1200, 5_000_000)})
    [live] = relay.listing()
    assert (live.username, live.server_name, live.cloud, live.client, live.to_cloud, live.to_browser) == (
        AGENT[0],
        "web-01",
        "lab",
        "192.0.2.7",
        1200,
        5_000_000,
    )
    relay.closed(row_id, reason="the browser closed it", to_cloud=1300, to_browser=5_100_000)
    assert relay.listing() == []
    connect, disconnect = audit_rows("relay")
    assert (connect.detail, disconnect.detail) == ("connect", "disconnect")
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
    assert relay.to_end([row_id]) == {}
    text = management.end_console(ADMIN[0], row_id)
    assert "web-01" in text and AGENT[0] in text
    assert relay.to_end([row_id]) == {row_id: relay.ENDED_BY_ADMIN}
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
        assert relay.to_end([row_id, other]) == {row_id: relay.SIGNED_OUT}
        return
    if how == "password":
        management.set_password(ADMIN[0], AGENT[0], "a-new-password-for-the-agent")
    else:
        management.remove_user(ADMIN[0], AGENT[0])
    assert relay.to_end([row_id, other]) == {row_id: relay.SIGNED_OUT, other: relay.SIGNED_OUT}


def test_rows_of_a_dead_relay_are_forgotten(ctx):
    row_id = connected()
    db.session.execute(update(LiveConsole).values(seen_at=datetime.now(UTC) - timedelta(hours=1)))
    db.session.commit()
    assert relay.forget_stale() == 1
    assert relay.to_end([row_id]) == {row_id: relay.ENDED_BY_ADMIN}
