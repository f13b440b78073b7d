"""The audit table: append-only."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

from sqlalchemy import String
from sqlalchemy import event
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from broker.extensions import db


class AuditRecord(db.Model):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True, default=lambda: datetime.now(UTC))
    username: Mapped[str] = mapped_column(String(64), default="", index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    cloud: Mapped[str] = mapped_column(String(64), default="")
    server_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    server_name: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[str] = mapped_column(String(32), default="")
    reason: Mapped[str] = mapped_column(String(500), default="")
    client: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(255), default="")
    # The request that made the record (X-Request-ID), so a complaint can be traced through the logs.
    request_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # The live console the record is about (its opening, invites, joins, hand-overs, its end), linking them.
    console_id: Mapped[int | None] = mapped_column(default=None, index=True)

    def to_json(self) -> dict:
        return {
            "at": self.at.replace(tzinfo=UTC).isoformat(timespec="seconds") if self.at else None,
            "user": self.username,
            "action": self.action,
            "detail": self.detail,
            "outcome": self.outcome,
            "cloud": self.cloud,
            "server_id": self.server_id,
            "server_name": self.server_name,
            "reason": self.reason,
            "client": self.client,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "console_id": self.console_id,
        }


@event.listens_for(AuditRecord, "before_update")
@event.listens_for(AuditRecord, "before_delete")
def _append_only(mapper, connection, target) -> None:
    """Records are never changed or removed by the application."""
    raise PermissionError("audit records are append-only")
