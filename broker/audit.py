"""The audit trail: one append-only record per sign-in, mint and refusal.

Records name who, what, when, from where and the outcome. They never hold a
password, a Keystone token or a console URL.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC
from datetime import datetime

from flask import has_request_context
from flask import request
from sqlalchemy import String
from sqlalchemy import select
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from broker.extensions import db

log = logging.getLogger("broker.audit")

ACTIONS = ("sign_in", "sign_out", "console")
OUTCOMES = ("ok", "failed", "refused", "error")


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
        }


def record(
    action: str,
    outcome: str,
    *,
    username: str = "",
    cloud: str = "",
    server_id: str = "",
    server_name: str = "",
    detail: str = "",
    reason: str = "",
) -> AuditRecord:
    """Write one record (and its JSON line to the ``broker.audit`` log)."""
    entry = AuditRecord(
        username=username[:64],
        action=action,
        outcome=outcome,
        cloud=cloud[:64],
        server_id=server_id[:64],
        server_name=server_name[:255],
        detail=detail[:32],
        reason=reason[:500],
    )
    if has_request_context():
        entry.client = (request.remote_addr or "")[:64]
        entry.user_agent = (request.user_agent.string or "")[:255]
    db.session.add(entry)
    db.session.commit()
    log.info(json.dumps(entry.to_json(), sort_keys=True))
    return entry


def recent(limit: int = 100) -> list[AuditRecord]:
    return list(db.session.scalars(select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)))
