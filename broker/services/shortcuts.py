"""Where an agent starts: the servers they pinned, and the consoles they opened lately.

Pins are rows in the database, so they survive sign-out and are the same on every instance.
Recent consoles are read from the audit trail (every console handed out is a record there),
so nothing extra is written when a console opens. Both show only servers the agent may still
open, as the cached lists know them: a server gone from the cloud, or out of the agent's
rules, drops out without a word.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import literal
from sqlalchemy import select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.expression import Executable

from broker.cloud.types import ServerInfo
from broker.extensions import db
from broker.extensions import hand_back_connection
from broker.models import AuditRecord
from broker.models import Pin
from broker.models import User
from broker.services.consoles import ConsoleService
from broker.services.policy import Access
from broker.services.policy import access_for

RECENT = 10
# Audit rows read to find RECENT distinct servers: enough for an agent who reopens the same few.
RECENT_SCAN = 300
MAX_PINS = 50


class PinError(Exception):
    """A pin that cannot be added; the message says why."""


@dataclass(frozen=True)
class Opened:
    """A console the agent opened lately, and when they last did."""

    server: ServerInfo
    opened_at: datetime


def pinned_keys(user: User) -> set[tuple[str, str]]:
    """(cloud, server ID) of every pin of ``user``, to mark rows of the list."""
    rows = db.session.execute(select(Pin.cloud, Pin.server_id).where(Pin.user_id == user.id))
    return {(cloud, server_id) for cloud, server_id in rows}


def pinned(user: User, consoles: ConsoleService) -> list[ServerInfo]:
    """The user's pinned servers they may still open, oldest pin first."""
    access = access_for(user)
    query = select(Pin.cloud, Pin.server_id).where(Pin.user_id == user.id).order_by(Pin.created_at, Pin.id)
    rows = db.session.execute(query).all()
    hand_back_connection()
    found = (_openable(consoles, access, cloud, server_id) for cloud, server_id in rows)
    return [server for server in found if server is not None]


def recent(user: User, consoles: ConsoleService, limit: int = RECENT) -> list[Opened]:
    """The last ``limit`` distinct servers whose consoles ``user`` opened and may still open, newest first."""
    access = access_for(user)
    query = (
        select(AuditRecord.cloud, AuditRecord.server_id, AuditRecord.at)
        .where(AuditRecord.username == user.username, AuditRecord.action == "console", AuditRecord.outcome == "ok")
        .order_by(AuditRecord.id.desc())
        .limit(RECENT_SCAN)
    )
    rows = db.session.execute(query).all()
    hand_back_connection()
    opened: list[Opened] = []
    seen: set[tuple[str, str]] = set()
    for cloud, server_id, at in rows:
        if (cloud, server_id) in seen:
            continue
        seen.add((cloud, server_id))
        server = _openable(consoles, access, cloud, server_id)
        if server is not None:
            opened.append(Opened(server, at if at.tzinfo else at.replace(tzinfo=UTC)))
        if len(opened) == limit:
            break
    return opened


def _openable(consoles: ConsoleService, access: Access, cloud: str, server_id: str) -> ServerInfo | None:
    """The server as the list of ``cloud`` has it, if ``access`` grants it; never a call per server.

    A worker with no list yet waits for it (at most its cold wait, once per cloud), as the list page does.
    """
    if consoles.inventory.cloud(cloud) is None:
        return None
    seen = consoles.inventory.sightings(server_id, cloud)
    return next((s.server for s in seen if access.allows(s.server)), None)


def pin(user: User, consoles: ConsoleService, server_id: str, cloud: str | None) -> tuple[ServerInfo, bool]:
    """Pin a server the user may open; (server, True) when the pin is new, False when it was there.

    Safe when one person pins from several tabs at once: one statement adds the pin only if it
    is not there yet and they have fewer than MAX_PINS, and their user row is locked first
    (PostgreSQL; SQLite writes one at a time anyway), so two pins cannot both count 49 and
    both go in, nor the same pin twice.
    """
    server = consoles.permitted(user, server_id, cloud, detail="pin")
    db.session.execute(select(User.id).where(User.id == user.id).with_for_update())
    added = db.session.execute(_insert_below_limit(user.id, server.cloud, server.id)).rowcount == 1
    exists = select(Pin.id).where(Pin.user_id == user.id, Pin.cloud == server.cloud, Pin.server_id == server.id)
    if not added and db.session.scalar(exists) is None:
        raise PinError(f"You have {MAX_PINS} pins already: unpin one first.")
    return server, added


def _insert_below_limit(user_id: int, cloud: str, server_id: str) -> Executable:
    """INSERT INTO pins ... SELECT ... WHERE (their pins) < MAX_PINS ON CONFLICT DO NOTHING, in this dialect."""
    insert = postgresql.insert if db.session.get_bind().dialect.name == "postgresql" else sqlite.insert
    count = select(func.count()).select_from(Pin).where(Pin.user_id == user_id).scalar_subquery()
    columns = [Pin.user_id, Pin.cloud, Pin.server_id, Pin.created_at]
    values = (user_id, cloud, server_id, datetime.now(UTC))
    row = select(*(literal(value, column.type) for column, value in zip(columns, values, strict=True)))
    statement = insert(Pin.__table__).from_select(columns, row.where(count < MAX_PINS)).on_conflict_do_nothing()
    # SQLAlchemy keeps an INSERT's row count (0 or 1 here: was the pin added?) only when asked.
    return statement.execution_options(preserve_rowcount=True)


def unpin(user: User, server_id: str, cloud: str | None) -> None:
    """Remove the user's pin of that server (of any cloud when none is named); nothing if there is none."""
    doomed = delete(Pin).where(Pin.user_id == user.id, Pin.server_id == server_id[:64])
    if cloud:
        doomed = doomed.where(Pin.cloud == cloud[:64])
    db.session.execute(doomed)
