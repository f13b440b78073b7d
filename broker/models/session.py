"""Sign-in sessions: one row each, named in the session cookie."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

from sqlalchemy import ForeignKey
from sqlalchemy import String
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from broker.extensions import db


class UserSession(db.Model):
    """One sign-in; ``ended_at`` is set when it is signed out or times out."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[datetime] = mapped_column(index=True, default=lambda: datetime.now(UTC))
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    # The last request or input in a relay console (to SEEN_RESOLUTION): the relay, which sees no
    # cookie after the handshake, ends a session idle past BROKER_SESSION_IDLE by it.
    seen_at: Mapped[datetime | None] = mapped_column(default=lambda: datetime.now(UTC))
    # How it was signed in to (local, oidc, ldap, header), and the provider's session ID (OIDC
    # ``sid``), so that the provider's back-channel logout can end exactly this session.
    method: Mapped[str] = mapped_column(String(16), default="local", server_default="local")
    external_sid: Mapped[str | None] = mapped_column(String(255), default=None, index=True)
