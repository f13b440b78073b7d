"""The audit trail: one append-only record per sign-in, mint and refusal.

Records name who, what, when, from where and the outcome. They never hold a
password, a Keystone token or a console URL.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime

from flask import has_request_context
from flask import request
from sqlalchemy import String
from sqlalchemy import event
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from broker.extensions import db

log = logging.getLogger("broker.audit")

ACTIONS = ("sign_in", "sign_out", "console", "admin", "request")
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


@event.listens_for(AuditRecord, "before_update")
@event.listens_for(AuditRecord, "before_delete")
def _append_only(mapper, connection, target) -> None:
    """Records are never changed or removed by the application."""
    raise PermissionError("audit records are append-only")


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


@dataclass(frozen=True)
class Filter:
    """What the admin narrows the trail to; empty fields match everything."""

    user: str = ""
    server: str = ""
    action: str = ""
    outcome: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def query(self):
        query = select(AuditRecord)
        if self.user:
            query = query.where(AuditRecord.username == self.user)
        if self.server:
            like = f"%{self.server}%"
            query = query.where(AuditRecord.server_id.like(like) | AuditRecord.server_name.like(like))
        if self.action:
            query = query.where(AuditRecord.action == self.action)
        if self.outcome:
            query = query.where(AuditRecord.outcome == self.outcome)
        if self.since:
            query = query.where(AuditRecord.at >= self.since)
        if self.until:
            query = query.where(AuditRecord.at < self.until)
        return query


def search(where: Filter, page: int = 1, per_page: int = 50) -> tuple[list[AuditRecord], int]:
    """One page of matching records, newest first, and how many match in all."""
    total = db.session.scalar(select(func.count()).select_from(where.query().subquery()))
    rows = db.session.scalars(
        where.query().order_by(AuditRecord.id.desc()).offset((page - 1) * per_page).limit(per_page)
    )
    return list(rows), total or 0


CSV_FIELDS = (
    "at",
    "user",
    "action",
    "detail",
    "outcome",
    "cloud",
    "server_id",
    "server_name",
    "reason",
    "client",
    "user_agent",
)


def csv_cell(value: object) -> str:
    """Spreadsheets run cells that start with = + - @; quote them so they stay text."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_csv(where: Filter, limit: int = 100_000) -> Iterator[str]:
    """The matching records as CSV lines, oldest first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_FIELDS)
    rows = db.session.scalars(where.query().order_by(AuditRecord.id).limit(limit))
    for index, entry in enumerate(rows):
        data = entry.to_json()
        writer.writerow([csv_cell(data[name]) for name in CSV_FIELDS])
        if index % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
