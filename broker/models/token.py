"""Single-use tokens: relay tickets, power confirmations and whatever else a person may do once, soon."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey
from sqlalchemy import String
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from broker.extensions import db


class SingleUseToken(db.Model):
    """What one token lets one sign-in session do, once, until it expires. Only the token's hash is kept."""

    __tablename__ = "single_use_tokens"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    # What the token is for ("relay", "power"...): a token of one purpose never serves another.
    purpose: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[str] = mapped_column(String(64))
    server_id: Mapped[str] = mapped_column(String(64))
    # For the audit of a refusal, not a binding.
    server_name: Mapped[str] = mapped_column(String(255), default="")
    cloud: Mapped[str] = mapped_column(String(64))
    # The binding only its purpose has: the page's scheme://host[:port] for a relay ticket (the
    # websocket must come from it), the action for a power confirmation.
    scope: Mapped[str] = mapped_column(String(255))
    # What the token is about beyond its server: the live console an invite or a watch ticket is for.
    subject: Mapped[str] = mapped_column(String(64), default="", server_default="")
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None] = mapped_column(default=None)
