"""Where the broker keeps its state during a run: SQLite and in-process caches, or PostgreSQL and Redis."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/13"


@dataclass
class Backend:
    """One column of the table: the broker's database and shared state, made fresh and removed after."""

    name: str
    label: str
    env: dict[str, str] = field(default_factory=dict)
    database: str = ""

    def prepare(self, workdir: Path) -> None:
        """A fresh database (and an empty Redis database) for this run."""
        if self.name == "sqlite":
            self.env = {"BROKER_DATABASE_URL": f"sqlite:///{workdir / 'broker.db'}"}
            return
        self.database = f"bench_{secrets.token_hex(4)}"
        admin(f'CREATE DATABASE "{self.database}"')
        self.env = {
            "BROKER_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.database}",
            "BROKER_REDIS_URL": REDIS_URL,
        }
        flush_redis()

    def reset_shared_cache(self) -> None:
        """Forget every shared list, so a fresh broker process is cold for the whole deployment too."""
        if "BROKER_REDIS_URL" in self.env:
            flush_redis()

    def cleanup(self) -> None:
        if self.database:
            admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self.database = ""
            flush_redis()


def admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(statement)


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL, socket_timeout=5).flushdb()


def available(name: str) -> str:
    """Why ``name`` cannot run here, or "" when it can."""
    if name == "sqlite":
        return ""
    try:
        admin("SELECT 1")
        flush_redis()
    except Exception as exc:  # noqa: BLE001 - any failure means the column is skipped, with its reason
        return f"{type(exc).__name__}: {exc}"
    return ""


def make(names: list[str]) -> list[Backend]:
    labels = {"sqlite": "SQLite, in-process caches", "pg": "PostgreSQL + Redis"}
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise SystemExit(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(labels)}")
    return [Backend(n, labels[n]) for n in names]
