"""Single-use tokens: one mechanism for whatever a sign-in session may do once, soon.

A token is a random value handed out once; only its hash is stored, with its purpose ("relay" for
a console websocket, "power" for a confirmed power action, "invite" to watch someone's console), the user,
sign-in session, server and cloud it is bound to, one binding of the purpose's own (``scope``: the
page's origin, the action), what it is about beyond its server (``subject``: the live console of an
invite or a watch ticket), and when it expires. One conditional UPDATE uses it up, so a replay
never wins and of two claims at once only one does. Functions here only stage: the caller commits.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy import update

from broker.extensions import db
from broker.models import SingleUseToken
from broker.services.clock import aware
from broker.services.clock import now

# The bindings a claim may check, each named by its column, in the order refusals name them.
BINDINGS = ("user_id", "session_id", "server_id", "cloud", "scope", "subject")
# Why a claim did not win, besides a binding that does not hold (named by its column, as above).
UNKNOWN = "unknown"
USED = "used"
EXPIRED = "expired"
# An expired token is kept this long, so that a late attempt is told "expired" rather than "unknown";
# the next issue of any token removes it.
KEEP_EXPIRED = 30
# Issued tokens are 43 characters: a longer one was never issued, and is not looked up.
LONGEST = 128


@dataclass(frozen=True)
class Claim:
    """A claim's outcome: the token's row (None if there is no such token of the purpose) and why it did not win."""

    row: SingleUseToken | None
    # None when this claim used the token up with every binding it checked holding; else UNKNOWN, USED,
    # EXPIRED or the column of the first binding that does not hold.
    refusal: str | None

    @property
    def granted(self) -> bool:
        """True when the caller may do what the token grants."""
        return self.refusal is None


def digest(token: str) -> str:
    """The token's sha256 in hex: all that is stored of it."""
    return hashlib.sha256(token.encode()).hexdigest()


def issue(
    purpose: str,
    ttl: int,
    *,
    user_id: int,
    session_id: str,
    server_id: str,
    cloud: str,
    scope: str,
    server_name: str = "",
    subject: str = "",
) -> str:
    """A fresh token of ``purpose`` with these bindings, valid ``ttl`` seconds; staged, long-expired ones removed."""
    token = secrets.token_urlsafe(32)
    moment = now()
    db.session.execute(
        delete(SingleUseToken).where(SingleUseToken.expires_at < moment - timedelta(seconds=KEEP_EXPIRED))
    )
    db.session.add(
        SingleUseToken(
            digest=digest(token),
            purpose=purpose,
            user_id=user_id,
            session_id=session_id,
            server_id=server_id,
            server_name=server_name[:255],
            cloud=cloud,
            scope=scope[:255],
            subject=subject[:64],
            expires_at=moment + timedelta(seconds=ttl),
        )
    )
    return token


def claim(
    purpose: str | tuple[str, ...], token: str, *, spent_by_any_attempt: bool = False, **expected: object
) -> Claim:
    """Use up ``token`` if it is of ``purpose`` (or one of them), unused, unexpired and holds every binding in
    ``expected``; staged.

    An attempt that fails leaves the token for the right one. With ``spent_by_any_attempt`` the
    first attempt uses it up whatever it brings, failing or not: for a token that may reach someone
    who could try it before its owner (a relay ticket travels in a websocket handshake).
    """
    if unknown := set(expected) - set(BINDINGS):
        raise TypeError(f"not bindings of a single-use token: {', '.join(sorted(unknown))}")
    if not token or len(token) > LONGEST:
        return Claim(None, UNKNOWN)
    purposes = (purpose,) if isinstance(purpose, str) else purpose
    key = digest(token)
    moment = now()
    conditions = [SingleUseToken.digest == key, SingleUseToken.purpose.in_(purposes), SingleUseToken.used_at.is_(None)]
    if not spent_by_any_attempt:
        conditions += [SingleUseToken.expires_at > moment, *_held(expected)]
    update_ = update(SingleUseToken).where(*conditions).values(used_at=moment)
    won = bool(db.session.execute(update_, execution_options={"synchronize_session": False}).rowcount)
    # Read back as the database has it now: another claim may have used it since this session last looked.
    row = db.session.get(SingleUseToken, key, populate_existing=True)
    if row is None or row.purpose not in purposes:
        return Claim(None, UNKNOWN)
    return Claim(row, _refusal(row, won, expected, moment))


def peek(purpose: str, token: str) -> SingleUseToken | None:
    """The token's row if it is of ``purpose``, used or not, without using it: for a claim whose bindings
    depend on what the token says (an invite names its person, or anyone with the link)."""
    if not token or len(token) > LONGEST:
        return None
    row = db.session.get(SingleUseToken, digest(token))
    return row if row is not None and row.purpose == purpose else None


def _held(expected: dict[str, object]) -> list:
    """The SQL conditions that each expected binding holds."""
    return [getattr(SingleUseToken, name) == expected[name] for name in BINDINGS if name in expected]


def _refusal(row: SingleUseToken, won: bool, expected: dict[str, object], moment: datetime) -> str | None:
    """Why the claim may not go on (the row as the UPDATE left it), or None."""
    if not won and row.used_at is not None:
        return USED
    if aware(row.expires_at) <= moment:
        return EXPIRED
    for name in BINDINGS:
        if name in expected and getattr(row, name) != expected[name]:
            return name
    # Lost though the row shows no reason: the UPDATE saw what this read no longer does.
    return None if won else USED
