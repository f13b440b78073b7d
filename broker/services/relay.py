"""Relay mode: single-use tickets for the console websocket, and the consoles connected right now.

The web app issues a ticket after the usual authorization check; the relay process redeems
it once, bound to the same sign-in session, server, cloud and page origin. While a browser is
connected, the relay keeps a row here up to date (bytes each way, last seen), so that admins
on any instance see it and can end it, and so that a session that ends (sign-out, password
change, removal, back-channel logout) closes its consoles within seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError

from broker.cloud.types import ServerInfo
from broker.extensions import db
from broker.models import LiveConsole
from broker.models import SingleUseToken
from broker.models import User
from broker.models import UserSession
from broker.schema import is_unreachable
from broker.services import audit
from broker.services import tokens
from broker.services.clock import aware
from broker.services.clock import now
from broker.services.consoles import RELAY
from broker.services.consoles import ConsoleService
from broker.services.consoles import Minted
from broker.services.policy import Access
from broker.services.policy import access_for
from broker.throttle import Throttle

log = logging.getLogger(__name__)

# Long enough for a page to open its websocket on a slow link; short enough that a copied
# ticket (it crosses every proxy in the handshake's headers) is worthless.
TICKET_TTL = 30
# A ticket is a single-use token of its console type's purpose (broker/services/tokens.py): a ticket
# for a graphical console never opens a serial one, nor the other way round.
PURPOSES = {"novnc": "relay", "serial": "relay-serial"}
KINDS = {purpose: kind for kind, purpose in PURPOSES.items()}
# Tickets to watch someone's graphical console (its live row is the token's subject): invited, or an
# admin observing. Neither ever opens a console of its own.
WATCH_PURPOSES = {"watch": "relay-watch", "observe": "relay-observe"}
ROLES = {purpose: role for role, purpose in WATCH_PURPOSES.items()}
KINDS.update(dict.fromkeys(WATCH_PURPOSES.values(), "novnc"))
# The audit's detail for each console type's records: a serial console's say "serial".
DETAILS = {"novnc": RELAY, "serial": "serial"}
# How a browser is on a console: it opened it, or it watches it (invited, or an admin observing).
OPEN = "open"
# What a websocket is told when its ticket was never issued, is spent or has expired.
LAPSED = {tokens.UNKNOWN: "unknown ticket", tokens.USED: "ticket already used", tokens.EXPIRED: "ticket expired"}
# A row its relay has not touched for this long (five of its polls) belongs to a relay that died:
# not listed, not counted against its user, and removed by the next relay that polls.
STALE_AFTER = 10
# Close codes the viewer acts on (see static/js/viewer.js).
SIGNED_OUT = 4401
NOT_ALLOWED = 4403
ENDED_BY_ADMIN = 4410


class TooManyConsoles(Exception):
    """The person has as many relay consoles open as one person may; the message names how many."""

    def __init__(self, open_now: int, limit: int):
        super().__init__(
            f"You have {open_now} consoles open, the most one person may have at once ({limit}). "
            "Close one and try again."
        )
        self.open_now = open_now
        self.limit = limit


@dataclass(frozen=True)
class Limits:
    """How long a sign-in session lives (BROKER_SESSION_LIFETIME) and may sit idle (BROKER_SESSION_IDLE), in seconds."""

    lifetime: int
    idle: int

    def expired(self, session: UserSession, moment: datetime) -> str | None:
        """Why ``session`` is over at ``moment`` by these limits (the web app's words), or None."""
        if moment - aware(session.started_at) > timedelta(seconds=self.lifetime):
            return "session reached its maximum age"
        if moment - aware(session.seen_at or session.started_at) > timedelta(seconds=self.idle):
            return "session was idle too long"
        return None


class TicketRefused(Exception):
    """A websocket that may not connect; ``status`` is the HTTP answer to its handshake."""

    def __init__(self, reason: str, status: int = 403):
        super().__init__(reason)
        self.reason = reason
        self.status = status


class DatabaseUnavailable(Exception):
    """The database cannot be reached, and the console has no rights confirmed before to go on with."""


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
    # The console type it opens: novnc (graphical) or serial.
    kind: str = "novnc"
    # A watcher's: the live row of the console it watches, and how (watch or observe); None: its own console.
    watching: int | None = None
    role: str = OPEN


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
    kind: str = "novnc"
    watching: int | None = None
    role: str = OPEN


def open_consoles(user_id: int) -> int:
    """How many relay consoles the user has connected now, on every relay."""
    fresh = now() - timedelta(seconds=STALE_AFTER)
    query = select(func.count()).where(LiveConsole.user_id == user_id, LiveConsole.seen_at >= fresh)
    return db.session.scalar(query.select_from(LiveConsole)) or 0


def require_room(user: User, server: ServerInfo, limit: int, kind: str = "novnc") -> None:
    """TooManyConsoles (audited) when the user has ``limit`` relay consoles open already, on every relay."""
    open_now = open_consoles(user.id)
    if open_now >= limit:
        reason = f"{open_now} consoles open, at the limit of {limit} (BROKER_MAX_CONSOLES_PER_USER)"
        fields = {"cloud": server.cloud, "server_id": server.id, "server_name": server.name}
        audit.stage("console", "refused", username=user.username, detail=DETAILS[kind], reason=reason, **fields)
        raise TooManyConsoles(open_now, limit)


def issue(
    user: User,
    session_id: str,
    server: ServerInfo,
    origin: str,
    limit: int,
    kind: str = "novnc",
    watching: tuple[int, str] | None = None,
) -> str:
    """A fresh single-use ticket for ``server``'s console of ``kind`` (already authorized), or to watch the live
    console ``watching`` (its row, and watch or observe); staged, for the request to commit.

    TooManyConsoles (audited) when the user has ``limit`` consoles open already (watched ones count).
    """
    require_room(user, server, limit, kind)
    row_id, role = watching or (None, OPEN)
    return tokens.issue(
        WATCH_PURPOSES[role] if row_id else PURPOSES[kind],
        TICKET_TTL,
        user_id=user.id,
        session_id=session_id,
        server_id=server.id,
        cloud=server.cloud,
        scope=origin,
        server_name=server.name,
        subject=str(row_id or ""),
    )


def redeem(
    token: str, *, session_id: str | None, user_id: int | None, origin: str | None, throttle: Throttle
) -> Ticket:
    """The ticket's grant, used up now; TicketRefused (audited) when any binding does not hold."""
    claim = _claim(token or "", session_id, user_id, origin)
    try:
        return _check(claim, session_id, user_id, origin)
    except TicketRefused as refused:
        _audit_refusal(claim.row, refused, throttle)
        raise


def _claim(token: str, session_id: str | None, user_id: int | None, origin: str | None) -> tokens.Claim:
    """Use the ticket up, whatever the attempt brings: one tried by a thief is spent, even for its owner."""
    purposes = (*PURPOSES.values(), *WATCH_PURPOSES.values())
    expected = {"user_id": user_id, "session_id": session_id, "scope": origin}
    return tokens.claim(purposes, token, spent_by_any_attempt=True, **expected)


def _check(claim: tokens.Claim, session_id: str | None, user_id: int | None, origin: str | None) -> Ticket:
    if claim.refusal in LAPSED:
        raise TicketRefused(LAPSED[claim.refusal])
    if not session_id or user_id is None:
        raise TicketRefused("no sign-in session with the websocket", status=401)
    if claim.refusal in ("user_id", "session_id"):
        raise TicketRefused("ticket of another sign-in session")
    if not origin or claim.refusal == "scope":
        raise TicketRefused(f"websocket from another origin ({(origin or 'none')[:100]})")
    row = claim.row
    user = _live_user(session_id)
    if user is None or user.id != row.user_id:
        raise TicketRefused("the sign-in session has ended", status=401)
    fields = (user.id, user.username, session_id, row.server_id, row.server_name, row.cloud, row.scope)
    if row.purpose in ROLES:
        return Ticket(*fields, watching=int(row.subject), role=ROLES[row.purpose])
    return Ticket(*fields, KINDS[row.purpose])


def _live_user(session_id: str) -> User | None:
    return db.session.scalar(
        select(User)
        .join(UserSession, UserSession.user_id == User.id)
        .where(UserSession.id == session_id, UserSession.ended_at.is_(None))
    )


def _audit_refusal(row: SingleUseToken | None, refused: TicketRefused, throttle: Throttle) -> None:
    fields = {"detail": DETAILS[KINDS[row.purpose]] if row else RELAY, "reason": refused.reason}
    if row is None:
        # Anyone can knock with a made-up ticket: stored once a minute per address at most.
        audit.stage_anonymous(throttle, "console", "refused", **fields)
        return
    owner = db.session.get(User, row.user_id)
    fields.update(
        username=owner.username if owner else "",
        cloud=row.cloud,
        server_id=row.server_id,
        server_name=row.server_name,
    )
    audit.stage("console", "refused", **fields)


# -- live consoles: written by the relay process ------------------------------------------


class SessionOver(Exception):
    """The ticket's sign-in session has ended, or passed its idle or absolute limit: nothing is minted for it."""


def mint(service: ConsoleService, limits: Limits, ticket: Ticket, confirmed: ServerInfo | None) -> Minted:
    """A console URL for the ticket's server, through the one path every mint takes (authorization included).

    Never for a session that has ended or passed its limits (SessionOver). The mint is part
    of its console's record, not a record of its own. While the database cannot be reached, a
    console already open goes on with the rights last confirmed for it (``confirmed``: the
    server as its last mint found it); a new one is refused (DatabaseUnavailable).
    """
    try:
        user = _session_user(ticket, limits)
        return service.mint(user, ticket.server_id, ticket.cloud, detail=RELAY, quiet=True, kind=ticket.kind)
    except DBAPIError as exc:
        if not is_unreachable(exc):
            raise
        db.session.rollback()
        if confirmed is None:
            raise DatabaseUnavailable("the broker's database cannot be reached") from None
        log.warning(
            "database unreachable: console of %s for %s minted on the rights last confirmed",
            confirmed.id,
            ticket.username,
        )
        return service.mint_confirmed(confirmed, ticket.kind)


def _session_user(ticket: Ticket, limits: Limits) -> User:
    """The ticket's user while its sign-in session lives; a session past its limits is ended here (audited)."""
    found = db.session.execute(
        select(User, UserSession)
        .join(UserSession, UserSession.user_id == User.id)
        .where(UserSession.id == ticket.session_id, UserSession.ended_at.is_(None), User.id == ticket.user_id)
    ).first()
    if found is None:
        raise SessionOver("the sign-in session has ended")
    user, session = found
    if reason := limits.expired(session, now()):
        _end_session(session, user.username, reason)
        raise SessionOver(reason)
    return user


def _end_session(session: UserSession, username: str, reason: str) -> None:
    """End a session the relay found past its limits, once whichever relay sees it first; staged."""
    ended = db.session.execute(
        update(UserSession).where(UserSession.id == session.id, UserSession.ended_at.is_(None)).values(ended_at=now())
    ).rowcount
    if ended:
        audit.stage("sign_out", "ok", username=username, detail=session.method, reason=f"{reason} (seen by the relay)")


def opened(ticket: Ticket, *, client: str, instance: str, server_name: str = "") -> int:
    """Record a console now connected through ``instance``: its one record of success."""
    row = _live_row(ticket, client, instance, server_name or ticket.server_name)
    db.session.add(row)
    db.session.flush()
    row_id = row.id
    if ticket.watching is not None:
        owner = _owner(ticket.watching)
        how = "observing" if ticket.role == "observe" else "watching"
        reason = f"{how} the console of {owner} through relay {instance}"
        detail = "observe" if ticket.role == "observe" else "join"
        audit.stage("watch", "ok", **_fields(row), detail=detail, reason=reason, console_id=ticket.watching)
        return row_id
    detail = DETAILS[ticket.kind]
    reason = f"connected through relay {instance}"
    audit.stage("console", "ok", **_fields(row), detail=detail, reason=reason, console_id=row_id)
    return row_id


def _owner(row_id: int) -> str:
    """Who opened the live console ``row_id`` (for a watcher's record), or "someone" once it has gone."""
    owner = db.session.scalar(select(LiveConsole.username).where(LiveConsole.id == row_id))
    return owner or "someone"


def _live_row(ticket: Ticket, client: str, instance: str, server_name: str, **columns) -> LiveConsole:
    """The row of a console its ticket opened, carried by relay ``instance``."""
    return LiveConsole(
        user_id=ticket.user_id,
        username=ticket.username,
        session_id=ticket.session_id,
        server_id=ticket.server_id,
        server_name=server_name[:255],
        cloud=ticket.cloud,
        client=client[:64],
        instance=instance[:128],
        kind=ticket.kind,
        watching=ticket.watching,
        role=ticket.role,
        **columns,
    )


def failed(ticket: Ticket, *, reason: str) -> None:
    """A console whose cloud side never connected: its one record, with the cause."""
    fields = {"username": ticket.username, "cloud": ticket.cloud, "server_id": ticket.server_id}
    fields.update(server_name=ticket.server_name, detail=DETAILS[ticket.kind])
    audit.stage("console", "failed", **fields, reason=reason)


@dataclass(frozen=True)
class LiveReport:
    """One connected console as its relay sees it at a poll."""

    row_id: int
    ticket: Ticket
    # The server as its console's last mint found it: what the rules judge now.
    server: ServerInfo
    client: str
    instance: str
    started_at: datetime
    to_cloud: int
    to_browser: int
    # The person's last key or pointer event in it (use, as any request is), or None.
    used_at: datetime | None = None


def report(reports: list[LiveReport], limits: Limits) -> dict[int, int]:
    """A relay's poll: each console's bytes (a heartbeat too) and use; which must close now, with what code.

    Every poll, even of a relay carrying nothing, also removes the rows of relays that died.

    A console closes when an admin ends it, when its session ends or passes its limits
    (4401), and when its user may no longer open its server (4403): a removed rule, group
    membership or admin role takes effect within one poll.
    """
    moment = now()
    _heartbeat(reports, moment)
    _record_use(reports)
    _forget_stale(moment)
    return _verdicts(reports, limits, moment) if reports else {}


def _heartbeat(reports: list[LiveReport], moment: datetime) -> None:
    """Bytes and last-seen of each console; a row another relay's clean-up took while this one could not
    reach the database (its heartbeat looked dead) is written back, for the console is alive."""
    for item in reports:
        written = db.session.execute(
            update(LiveConsole)
            .where(LiveConsole.id == item.row_id)
            .values(to_cloud=item.to_cloud, to_browser=item.to_browser, seen_at=moment)
        ).rowcount
        if not written:
            db.session.add(_row_of(item, moment))
    db.session.flush()


def _row_of(item: LiveReport, moment: datetime) -> LiveConsole:
    return _live_row(
        item.ticket,
        item.client,
        item.instance,
        item.server.name,
        id=item.row_id,
        started_at=item.started_at,
        seen_at=moment,
        to_cloud=item.to_cloud,
        to_browser=item.to_browser,
    )


def _record_use(reports: list[LiveReport]) -> None:
    """Typing or pointing in a console is use of its session, as a request is (the idle limit counts from it)."""
    latest: dict[str, datetime] = {}
    for item in reports:
        if item.used_at is not None:
            sid = item.ticket.session_id
            latest[sid] = max(item.used_at, latest.get(sid, item.used_at))
    for session_id, used_at in latest.items():
        db.session.execute(
            update(UserSession)
            .where(UserSession.id == session_id, (UserSession.seen_at.is_(None)) | (UserSession.seen_at < used_at))
            .values(seen_at=used_at)
        )


def _forget_stale(moment: datetime) -> None:
    """Rows of relays that stopped without closing them (a crash, a kill): their heartbeat is a few polls old."""
    db.session.execute(delete(LiveConsole).where(LiveConsole.seen_at < moment - timedelta(seconds=STALE_AFTER)))


def _verdicts(reports: list[LiveReport], limits: Limits, moment: datetime) -> dict[int, int]:
    """Which consoles must close now, and with what code; sessions found past their limits are ended (audited)."""
    query = (
        select(LiveConsole, UserSession, User)
        .outerjoin(
            UserSession,
            (UserSession.id == LiveConsole.session_id)
            & (UserSession.user_id == LiveConsole.user_id)
            & UserSession.ended_at.is_(None),
        )
        .outerjoin(User, User.id == LiveConsole.user_id)
        .where(LiveConsole.id.in_([item.row_id for item in reports]))
    )
    found = {row.id: (row, session, user) for row, session, user in db.session.execute(query)}
    servers = {item.row_id: item.server for item in reports}
    access: dict[int, Access] = {}
    ending: dict[int, int] = {}
    for row_id, (row, session, user) in found.items():
        code = _verdict(row, session, user, limits, moment)
        if code is None and user is not None:
            if user.id not in access:
                access[user.id] = access_for(user)  # once per user and poll, however many consoles
            code = None if access[user.id].allows(servers[row_id]) else NOT_ALLOWED
            if row.role == "observe" and not user.is_admin:
                code = NOT_ALLOWED  # observing is an admin's right
        if code is not None:
            ending[row_id] = code
    return ending


def _verdict(
    row: LiveConsole, session: UserSession | None, user: User | None, limits: Limits, moment: datetime
) -> int | None:
    if row.end_requested_by:
        return ENDED_BY_ADMIN
    if session is None or user is None:
        return SIGNED_OUT
    if reason := limits.expired(session, moment):
        _end_session(session, user.username, reason)
        return SIGNED_OUT
    return None


def closed(row_id: int, *, reason: str, to_cloud: int, to_browser: int) -> None:
    """A connection ended: its row goes, and the audit keeps how long it lasted and what it carried."""
    row = db.session.get(LiveConsole, row_id)
    if row is None:
        return
    seconds = int((now() - aware(row.started_at)).total_seconds())
    summary = f"{reason}; {seconds} s, {to_cloud} bytes to the cloud, {to_browser} bytes to the browser"
    fields = _fields(row)
    db.session.delete(row)
    if row.watching is not None:
        audit.stage("watch", "ok", **fields, detail="leave", reason=summary, console_id=row.watching)
        return
    audit.stage("relay", "ok", **fields, detail="disconnect", reason=summary, console_id=row_id)


def noted(row_id: int, *, detail: str, reason: str) -> None:
    """Something that happened in the live console ``row_id`` (a hand-over, a request for control); staged."""
    row = db.session.get(LiveConsole, row_id)
    fields = _fields(row) if row is not None else {}
    audit.stage("watch", "ok", **fields, detail=detail, reason=reason, console_id=row_id)


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
            row.kind,
            row.watching,
            row.role,
        )
        for row in rows
    ]


class NoSuchConsole(LookupError):
    """The connection an admin wants to end has already gone."""


def request_end(row_id: int, actor: str) -> str:
    """Close this console (within its relay's next poll) and end the sign-in session it belongs to; staged.

    Ending only the console would leave the same sign-in free to ask for a new ticket at once.
    """
    row = db.session.get(LiveConsole, row_id)
    if row is None:
        raise NoSuchConsole("that console is no longer connected")
    row.end_requested_by = actor[:64]
    db.session.execute(
        update(UserSession)
        .where(UserSession.id == row.session_id, UserSession.ended_at.is_(None))
        .values(ended_at=now())
    )
    db.session.flush()
    return (
        f"ended the console of {row.server_name or row.server_id} ({row.cloud}) opened by {row.username}, "
        f"and that sign-in session: {row.username} must sign in again"
    )


def forget_stale() -> int:
    """Remove rows of relays that stopped without closing them (at a relay's start); returns how many."""
    gone = db.session.execute(
        delete(LiveConsole).where(LiveConsole.seen_at < now() - timedelta(seconds=STALE_AFTER))
    ).rowcount
    return gone
