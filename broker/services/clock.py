"""The time every service stores and compares: now in UTC, and a stored time read back as UTC."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime


def now() -> datetime:
    """This moment, in UTC."""
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """``moment`` with its UTC zone: SQLite hands datetimes back without it, and every one stored here is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
