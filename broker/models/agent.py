"""An agent's own things: the servers they pinned (power confirmations are single-use tokens, models/token.py)."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

from sqlalchemy import ForeignKey
from sqlalchemy import String
from sqlalchemy import UniqueConstraint
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from broker.extensions import db


def _now() -> datetime:
    return datetime.now(UTC)


class Pin(db.Model):
    """A server one user keeps at the top of their list; kept in the database, so on every instance."""

    __tablename__ = "pins"
    __table_args__ = (UniqueConstraint("user_id", "cloud", "server_id", name="uq_pins_user_server"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    cloud: Mapped[str] = mapped_column(String(64))
    server_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=_now)
