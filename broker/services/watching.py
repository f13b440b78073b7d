"""Watching someone's console: invites to a live relay console, and the tickets that let a watcher in.

The person who opened a console invites a colleague by name, or makes a link, valid for a few
minutes and usable once. Either way only someone allowed to open that server can join, by the same
authorization as opening it: a link is not a bearer credential for anyone else. Admins may observe
any live console without an invite; the people on it see that they do. Functions here only stage:
the request commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from broker.cloud.types import ServerInfo
from broker.extensions import db
from broker.models import LiveConsole
from broker.models import User
from broker.services import audit
from broker.services import relay
from broker.services import tokens
from broker.services import users
from broker.services.clock import now
from broker.services.consoles import ConsoleService
from broker.services.policy import access_for

# The largest row ID there can be (PostgreSQL's integer): a larger one in a URL names no console, and must
# not reach the database, which refuses to compare with it (a 500 instead of a 404).
MAX_ROW_ID = 2**31 - 1
# An invite is for now: long enough to paste into a chat and be clicked, short enough to be worthless later.
INVITE_TTL = 300
INVITE = "invite"
# An invite names its person, or anyone allowed to open the server who has the link.
NAMED = "named"
LINK = "link"
# Why an invite did not let someone in, in words for the page.
REFUSALS = {
    tokens.UNKNOWN: "This is not an invite to this console.",
    tokens.USED: "This invite has been used already: ask for a new one.",
    tokens.EXPIRED: "This invite has expired: ask for a new one.",
    "user_id": "This invite is for someone else.",
    "subject": "This is not an invite to this console.",
}


class NotLive(LookupError):
    """No graphical relay console with this ID is open now (it ended, or never was)."""

    message = "That console is not open any more."


class WatchRefused(Exception):
    """An invite or a watch ticket that may not be had; ``status`` is the HTTP answer, the message the page's."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Invite:
    """An invite just made: the token goes into the link, once."""

    token: str
    console_id: int
    invitee: str | None
    expires_in: int = INVITE_TTL


def live_console(console_id: int) -> LiveConsole:
    """The graphical console opened (not watched) through a relay with this ID, while it is open; else NotLive."""
    if not 0 < console_id <= MAX_ROW_ID:
        raise NotLive(NotLive.message)
    fresh = now() - timedelta(seconds=relay.STALE_AFTER)
    row = db.session.scalar(
        select(LiveConsole).where(
            LiveConsole.id == console_id,
            LiveConsole.seen_at >= fresh,
            LiveConsole.watching.is_(None),
            LiveConsole.kind == "novnc",
        )
    )
    if row is None:
        raise NotLive(NotLive.message)
    return row


def invite(service: ConsoleService, user: User, session_id: str, console_id: int, name: str | None) -> Invite:
    """An invite to watch the console ``console_id``, which ``user`` opened: for the user called ``name``, or a
    link (``name`` None); staged. WatchRefused (audited) when the person may not watch it."""
    row = live_console(console_id)
    server = service.permitted(user, row.server_id, row.cloud, detail="invite", action="watch", console_id=row.id)
    fields = _fields(row, server) | {"username": user.username, "detail": "invite"}
    if row.user_id != user.id:
        audit.stage("watch", "refused", **fields, reason=f"not the opener ({row.username} opened it)")
        raise WatchRefused("Only the person who opened a console can invite others to it.")
    invitee = _invitee(user, server, name, fields) if name is not None else None
    token = tokens.issue(
        INVITE,
        INVITE_TTL,
        user_id=invitee.id if invitee else user.id,
        session_id=session_id,
        server_id=server.id,
        cloud=server.cloud,
        scope=NAMED if invitee else LINK,
        server_name=server.name,
        subject=str(console_id),
    )
    reason = f"invited {invitee.username} to watch" if invitee else "made a link to watch, for anyone who may open it"
    audit.stage("watch", "ok", **fields, reason=f"{reason} ({INVITE_TTL // 60} minutes, once)")
    return Invite(token, console_id, invitee.username if invitee else None)


def _invitee(user: User, server: ServerInfo, name: str, fields: dict) -> User:
    """The user called ``name``, if they may open ``server`` (the same rules as opening it)."""
    invitee = users.find(name.strip()) if name.strip() else None
    if invitee is None:
        raise WatchRefused(f"No user is called {name.strip()[:64]!r}.", 404)
    if invitee.id == user.id:
        raise WatchRefused("You are at this console already: invite someone else.", 400)
    if not access_for(invitee).allows(server):
        reason = f"{invitee.username} may not open this server"
        audit.stage("watch", "refused", **fields, reason=reason)
        raise WatchRefused(
            f"{invitee.username} may not open {server.name}: only people who may open a server can watch it."
        )
    return invitee


def admit(
    service: ConsoleService, user: User, session_id: str, console_id: int, token: str, origin: str, limit: int
) -> tuple[str, ServerInfo, str]:
    """A watch ticket for ``user`` on the console ``console_id`` (its ticket, server and role: watch with an invite,
    observe for an admin without one); staged. WatchRefused (audited) otherwise; NoSuchServer when ``user`` may
    not open the server."""
    row = live_console(console_id)
    server = service.permitted(user, row.server_id, row.cloud, detail="join", action="watch", console_id=row.id)
    fields = _fields(row, server) | {"username": user.username, "detail": "join"}
    if row.user_id == user.id:
        raise WatchRefused("This is your own console: it is open on its own page.", 400)
    if token:
        # Refused for the console limit, the person keeps the invite for when they have closed one.
        relay.require_room(user, server, limit)
        _claim(token, user, console_id, fields)
        role = "watch"
    elif user.is_admin:
        role = "observe"
    else:
        audit.stage("watch", "refused", **fields, reason="no invite")
        raise WatchRefused(f"Watching {row.username}'s console needs their invite.")
    ticket = relay.issue(user, session_id, server, origin, limit, watching=(console_id, role))
    return ticket, server, role


def _claim(token: str, user: User, console_id: int, fields: dict) -> None:
    """Use the invite up if it is for this console and, when it names someone, for ``user``."""
    found = tokens.peek(INVITE, token)
    expected: dict[str, object] = {"subject": str(console_id)}
    if found is not None and found.scope == NAMED:
        expected["user_id"] = user.id
    claim = tokens.claim(INVITE, token, **expected)
    if claim.granted:
        return
    message = REFUSALS.get(claim.refusal or "", REFUSALS[tokens.UNKNOWN])
    audit.stage("watch", "refused", **fields, reason=f"invite refused: {message}")
    raise WatchRefused(message)


def _fields(row: LiveConsole, server: ServerInfo) -> dict:
    return {"cloud": server.cloud, "server_id": server.id, "server_name": server.name, "console_id": row.id}
