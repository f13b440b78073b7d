"""The web and relay processes running on this database, and what each runs with (nothing secret)."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

from sqlalchemy import String
from sqlalchemy import Text
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from broker.extensions import db


def _now() -> datetime:
    return datetime.now(UTC)


class Instance(db.Model):
    """One process, recorded at its start and touched by its heartbeat; removed when it exits."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    # host:pid; not unique, since a restarted container may reuse both.
    name: Mapped[str] = mapped_column(String(128))
    # web (a gunicorn worker, or flask run) or relay.
    role: Mapped[str] = mapped_column(String(16))
    # pyproject's version, with the git commit when known: 0.1.0+3fa2b1c9d0e1.
    version: Mapped[str] = mapped_column(String(64))
    # scrypt of BROKER_SECRET_KEY (and of each of BROKER_SECRET_KEY_FALLBACKS, comma-separated) with a
    # fixed salt: equal keys give equal fingerprints, and no key can be read back or cheaply guessed.
    key_fingerprint: Mapped[str] = mapped_column(String(64))
    fallback_fingerprints: Mapped[str] = mapped_column(Text, default="")
    # Each cloud's name, identity and compute endpoints and region; never a credential.
    clouds: Mapped[str] = mapped_column(Text, default="")
    # How consoles open: one mode for every cloud, else each cloud's.
    console_mode: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(default=_now)
    seen_at: Mapped[datetime] = mapped_column(default=_now, index=True)
