"""Relay mode: single-use tickets for the console websocket, and the consoles connected right now.

The web app issues a ticket after the usual authorization check; the relay process redeems
it once, bound to the same sign-in session, server, cloud and page origin. While a browser is
connected, the relay keeps a row here up to date (bytes each way, last seen), so that admins
on any instance see it and can end it, and so that a session that ends (sign-out, password
change, removal, back-channel logout) closes its consoles within seconds.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy import select
from sqlalchemy import update

from broker.cloud.types import ServerInfo
from broker.extensions import db
from broker.models import LiveConsole
from broker.models import RelayTicket
from broker.models import User
from broker.models import UserSession
from broker.services import audit

# Long enough for a page to open its websocket on a slow link; short enough that a copied
# ticket (it is in the websocket URL, so it may reach a proxy's access log) is worthless.
TICKET_TTL = 30
# A row its relay has not touched for this long belongs to a relay that died: not listed.
STALE_AFTER = 30
# Close codes the viewer acts on (see static/js/viewer.js).
SIGNED_OUT = 4401
ENDED_BY_ADMIN = 4410


class TicketRefused(Exception):
    """A websocket that may not connect; ``status`` is the HTTP answer to its handshake."""

    def __init__(self, reason: str, status: int = 403):
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Ticket:
    """What a redeemed ticket lets the relay open, and for whom."""

    user_id: int
    username: str
    session_id: str
    server_id: str
    server_name: str
    cloud: str
    origin: str


@dataclass(frozen=True)
class Live:
    """A connected console as the admin page shows it."""

    id: int
    username: str
    server_id: str
    server_name: str
    cloud: str
    client: str
    instance: str
    started_at: datetime
    to_cloud: int
    to_browser: int
    ending: bool


def now() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; every one stored here is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(user: User, session_id: str, server: ServerInfo, origin: str) -> str:
    """A fresh single-use ticket for ``server`` (already authorized); staged and committed here."""
    token = secrets.token_urlsafe(32)
    db.session.execute(delete(RelayTicket).where(RelayTicket.expires_at < now() - timedelta(seconds=TICKET_TTL)))
    db.session.add(
        RelayTicket(
            digest=digest(token),
            user_id=user.id,
            session_id=session_id,
            server_id=server.id,
            server_name=server.name[:255],
            cloud=server.cloud,
            origin=origin[:255],
            expires_at=now() + timedelta(seconds=TICKET_TTL),
        )
    )
    db.session.commit()
    return token


def redeem(token: str, *, session_id: str | None, user_id: int | None, origin: str | None) -> Ticket:
    """The ticket's grant, used up now; TicketRefused (audited) when any binding does not hold."""
    row, claimed = _claim(token or "")
    try:
        return _check(row, claimed, session_id, user_id, origin)
    except TicketRefused as refused:
        _audit_refusal(row, refused)
        raise


def _claim(token: str) -> tuple[RelayTicket | None, bool]:
    """The ticket's row, and whether this call used it up (one UPDATE: two redeemers cannot both win)."""
    key = digest(token)
    claimed = db.session.execute(
        update(RelayTicket).where(RelayTicket.digest == key, RelayTicket.used_at.is_(None)).values(used_at=now())
    ).rowcount
    db.session.commit()
    return db.session.get(RelayTicket, key), bool(claimed)


def _check(
    row: RelayTicket | None, claimed: bool, session_id: str | None, user_id: int | None, origin: str | None
) -> Ticket:
    if row is None:
        raise TicketRefused("unknown ticket")
    if not claimed:
        raise TicketRefused("ticket already used")
    if aware(row.expires_at) < now():
        raise TicketRefused("ticket expired")
    if not session_id or user_id is None:
        raise TicketRefused("no sign-in session with the websocket", status=401)
    if row.session_id != session_id or row.user_id != user_id:
        raise TicketRefused("ticket of another sign-in session")
    if not origin or origin != row.origin:
        raise TicketRefused(f"websocket from another origin ({(origin or 'none')[:100]})")
    user = _live_user(session_id)
    if user is None or user.id != row.user_id:
        raise TicketRefused("the sign-in session has ended", status=401)
    return Ticket(user.id, user.username, session_id, row.server_id, row.server_name, row.cloud, row.origin)


def _live_user(session_id: str) -> User | None:
    return db.session.scalar(
        select(User)
        .join(UserSession, UserSession.user_id == User.id)
        .where(UserSession.id == session_id, UserSession.ended_at.is_(None))
    )


def _audit_refusal(row: RelayTicket | None, refused: TicketRefused) -> None:
    fields = {"detail": "relay", "reason": refused.reason}
    if row is None:
        # Anyone can knock with a made-up ticket: stored once a minute per address at most.
        audit.record_anonymous("console", "refused", **fields)
        return
    owner = db.session.get(User, row.user_id)
    fields.update(
        username=owner.username if owner else "",
        cloud=row.cloud,
        server_id=row.server_id,
        server_name=row.server_name,
    )
    audit.record("console", "refused", **fields)


# -- live consoles: written by the relay process ------------------------------------------


def opened(ticket: Ticket, *, client: str, instance: str, server_name: str = "") -> int:
    """Record a browser now connected through ``instance``; audited."""
    row = LiveConsole(
        user_id=ticket.user_id,
        username=ticket.username,
        session_id=ticket.session_id,
        server_id=ticket.server_id,
        server_name=(server_name or ticket.server_name)[:255],
        cloud=ticket.cloud,
        client=client[:64],
        instance=instance[:128],
    )
    db.session.add(row)
    db.session.flush()
    row_id = row.id
    audit.record("relay", "ok", **_fields(row), detail="connect")
    return row_id


def progress(counts: dict[int, tuple[int, int]]) -> None:
    """Bytes each way so far for each of a relay's connections; also says the relay is alive."""
    if not counts:
        return
    seen = now()
    for row_id, (to_cloud, to_browser) in counts.items():
        db.session.execute(
            update(LiveConsole)
            .where(LiveConsole.id == row_id)
            .values(to_cloud=to_cloud, to_browser=to_browser, seen_at=seen)
        )
    db.session.commit()


def closed(row_id: int, *, reason: str, to_cloud: int, to_browser: int) -> None:
    """A connection ended: its row goes, and the audit keeps how long it lasted and what it carried."""
    row = db.session.get(LiveConsole, row_id)
    if row is None:
        return
    seconds = int((now() - aware(row.started_at)).total_seconds())
    summary = f"{reason}; {seconds} s, {to_cloud} bytes to the cloud, {to_browser} bytes to the browser"
    fields = _fields(row)
    db.session.delete(row)
    audit.record("relay", "ok", **fields, detail="disconnect", reason=summary)


def to_end(row_ids: list[int]) -> dict[int, int]:
    """Which of these connections must close now, and with what code."""
    if not row_ids:
        return {}
    query = (
        select(LiveConsole.id, LiveConsole.end_requested_by, UserSession.id)
        .outerjoin(
            UserSession,
            (UserSession.id == LiveConsole.session_id)
            & (UserSession.user_id == LiveConsole.user_id)
            & UserSession.ended_at.is_(None),
        )
        .where(LiveConsole.id.in_(row_ids))
    )
    ending = {}
    found = set()
    for row_id, requested_by, live_session in db.session.execute(query):
        found.add(row_id)
        if requested_by:
            ending[row_id] = ENDED_BY_ADMIN
        elif live_session is None:
            ending[row_id] = SIGNED_OUT
    db.session.rollback()  # read only: hand the connection back
    # A row someone deleted (cleanup of a dead relay's rows) has nobody watching it: close.
    ending.update({row_id: ENDED_BY_ADMIN for row_id in row_ids if row_id not in found})
    return ending


def _fields(row: LiveConsole) -> dict[str, str]:
    return {
        "username": row.username,
        "cloud": row.cloud,
        "server_id": row.server_id,
        "server_name": row.server_name,
    }


# -- live consoles: read and ended by admins ----------------------------------------------


def listing() -> list[Live]:
    """Consoles connected now, on every instance, oldest first."""
    fresh = now() - timedelta(seconds=STALE_AFTER)
    rows = db.session.scalars(
        select(LiveConsole).where(LiveConsole.seen_at >= fresh).order_by(LiveConsole.started_at, LiveConsole.id)
    ).all()
    return [
        Live(
            row.id,
            row.username,
            row.server_id,
            row.server_name,
            row.cloud,
            row.client,
            row.instance,
            aware(row.started_at),
            row.to_cloud,
            row.to_browser,
            bool(row.end_requested_by),
        )
        for row in rows
    ]


class NoSuchConsole(LookupError):
    """The connection an admin wants to end has already gone."""


def request_end(row_id: int, actor: str) -> str:
    """Ask the relay carrying this console to close it (within its next poll); staged, for the admin's audit."""
    row = db.session.get(LiveConsole, row_id)
    if row is None:
        raise NoSuchConsole("that console is no longer connected")
    row.end_requested_by = actor[:64]
    db.session.flush()
    return f"ended the console of {row.server_name or row.server_id} ({row.cloud}) opened by {row.username}"


def forget_stale() -> int:
    """Remove rows of relays that stopped without closing them (a crash); returns how many."""
    cutoff = now() - timedelta(seconds=STALE_AFTER * 10)
    gone = db.session.execute(delete(LiveConsole).where(LiveConsole.seen_at < cutoff)).rowcount
    db.session.commit()
    return gone
