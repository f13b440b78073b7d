"""Relay mode's table: the consoles connected right now (tickets are single-use tokens, models/token.py)."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

from sqlalchemy import BigInteger
from sqlalchemy import String
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from broker.extensions import db


def _now() -> datetime:
    return datetime.now(UTC)


class LiveConsole(db.Model):
    """One browser connected through a relay process; the row goes when the connection does."""

    __tablename__ = "live_consoles"

    id: Mapped[int] = mapped_column(primary_key=True)
    # No foreign keys: the row must outlive a removed user or an ended session until its
    # relay notices and closes the connection.
    user_id: Mapped[int] = mapped_column(index=True)
    username: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    server_id: Mapped[str] = mapped_column(String(64))
    server_name: Mapped[str] = mapped_column(String(255), default="")
    cloud: Mapped[str] = mapped_column(String(64))
    # novnc (graphical) or serial.
    kind: Mapped[str] = mapped_column(String(16), default="novnc", server_default="novnc")
    # The console this row's browser watches (its own row's ID), or None for the person who opened it.
    watching: Mapped[int | None] = mapped_column(default=None)
    # How the browser is there: open (opened it), watch (invited), observe (an admin).
    role: Mapped[str] = mapped_column(String(16), default="open", server_default="open")
    client: Mapped[str] = mapped_column(String(64), default="")
    # host:pid of the relay process carrying it.
    instance: Mapped[str] = mapped_column(String(128), index=True)
    started_at: Mapped[datetime] = mapped_column(default=_now)
    # Written by the relay every few seconds; a row whose relay died stops being listed.
    seen_at: Mapped[datetime] = mapped_column(default=_now, index=True)
    to_cloud: Mapped[int] = mapped_column(BigInteger, default=0)
    to_browser: Mapped[int] = mapped_column(BigInteger, default=0)
    # The admin who pressed "End session"; the relay closes the connection when it sees it.
    end_requested_by: Mapped[str | None] = mapped_column(String(64), default=None)
