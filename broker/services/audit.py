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

from flask import g
from flask import has_request_context
from flask import request
from sqlalchemy import func
from sqlalchemy import select

from broker import metrics
from broker.cloud.client import ACTION_BODIES
from broker.extensions import db
from broker.models import SOURCES
from broker.models import AuditRecord
from broker.throttle import Throttle
from broker.throttle import parse_limit

log = logging.getLogger("broker.audit")

ACTIONS = ("sign_in", "sign_out", "console", "relay", "watch", "power", "admin", "request")
# Column widths of the free-text fields a caller fills in.
LIMITS = {"username": 64, "cloud": 64, "server_id": 64, "server_name": 255, "detail": 32, "reason": 500}
# Refusals of people not signed in: rows kept per address and kind, and in all.
ANONYMOUS_PER_KIND = parse_limit("1 per minute")
ANONYMOUS_TOTAL = parse_limit("120 per minute")
ANONYMOUS_NOTE = " (repeats from this address within a minute are logged, not stored)"
OUTCOMES = ("ok", "failed", "refused", "error")


def entry_for(action: str, outcome: str, **fields: str) -> AuditRecord:
    """A record of this request (client address and agent filled in), not yet stored."""
    entry = AuditRecord(at=datetime.now(UTC), action=action, outcome=outcome, console_id=fields.get("console_id"))
    for name, limit in LIMITS.items():
        setattr(entry, name, storable(fields.get(name, ""), limit))
    if has_request_context():
        entry.client = storable(request.remote_addr or "", 64)
        entry.user_agent = storable(request.user_agent.string or "", 255)
        entry.request_id = g.get("request_id", "")[:64]
    return entry


def storable(text: str, limit: int) -> str:
    """``text`` cut to its column; a NUL (which PostgreSQL refuses in text) shown as U+FFFD, so the record is kept."""
    return text.replace("\x00", "\ufffd")[:limit]


def measure(entry: AuditRecord) -> None:
    """Mints and sign-ins also count in the metrics, stored or not: every one passes through here."""
    if entry.action == "console" and entry.detail != "view":
        metrics.mint(entry.cloud, entry.outcome)
    elif entry.action == "power":
        # The detail is the action only when it is one (a refusal of a made-up action never gets this far).
        metrics.power(entry.cloud, entry.detail if entry.detail in ACTION_BODIES else "none", entry.outcome)
    elif entry.action == "sign_in":
        metrics.sign_in(entry.detail if entry.detail in SOURCES else "local", entry.outcome)


def stage(action: str, outcome: str, **fields: str) -> AuditRecord:
    """One record added to the unit of work under way (and its JSON line to the ``broker.audit`` log, now).

    ``fields``: username, cloud, server_id, server_name, detail, reason, console_id (an int). Stored by the
    caller's commit, together with the change it records: the request's (broker.web.commits), a command's,
    or a relay call's (broker.relayhost).
    """
    entry, line = _staged(action, outcome, fields)
    log.info(line)
    return entry


def _staged(action: str, outcome: str, fields: dict[str, str]) -> tuple[AuditRecord, str]:
    entry = entry_for(action, outcome, **fields)
    measure(entry)
    # Taken before the caller's commit: afterwards the row is expired, and reading it for the line
    # would take a connection and a SELECT per record (1-5 ms of every mint).
    line = json.dumps(entry.to_json(), sort_keys=True)
    db.session.add(entry)
    return entry, line


def stage_anonymous(throttle: Throttle, action: str, outcome: str, **fields: str) -> None:
    """A refusal of someone not signed in: staged once per address, kind and minute (by ``throttle``); always
    logged.

    Anyone can send these, so storing each would let a stranger grow the table without
    bound. Failed password checks are not sent here: the sign-in limit bounds them, and
    each is kept.
    """
    entry = entry_for(action, outcome, **fields)
    measure(entry)
    kind = f"audit:{entry.client}:{action}:{outcome}:{entry.reason}"
    if throttle.take(ANONYMOUS_PER_KIND, kind).granted and throttle.take(ANONYMOUS_TOTAL, "audit:anonymous").granted:
        entry.reason = (entry.reason + ANONYMOUS_NOTE)[:500]
        log.info(json.dumps(entry.to_json(), sort_keys=True))
        db.session.add(entry)
    else:
        log.info(json.dumps({**entry.to_json(), "stored": False}, sort_keys=True))


@dataclass(frozen=True)
class Filter:
    """What the admin narrows the trail to; empty fields match everything."""

    user: str = ""
    server: str = ""
    action: str = ""
    outcome: str = ""
    since: datetime | None = None
    until: datetime | None = None
    # One console's records (its opening, invites, joins, hand-overs, its end).
    console: int | None = None

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
        if self.console is not None:
            query = query.where(AuditRecord.console_id == self.console)
        return query


def count(where: Filter) -> int:
    """How many records match."""
    return db.session.scalar(select(func.count()).select_from(where.query().subquery())) or 0


def page(where: Filter, number: int = 1, per_page: int = 50) -> list[AuditRecord]:
    """One page of matching records, newest first."""
    query = where.query().order_by(AuditRecord.id.desc()).offset((number - 1) * per_page).limit(per_page)
    return list(db.session.scalars(query))


def search(where: Filter, number: int = 1, per_page: int = 50) -> tuple[list[AuditRecord], int]:
    """One page of matching records, newest first, and how many match in all."""
    return page(where, number, per_page), count(where)


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
    "request_id",
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
