"""Each pytest process of a parallel run (pytest-xdist's workers, ``.ci/run``'s two passes) gets its own
PostgreSQL database and Redis database, so no process empties another's tables or keys.

tests/conftest.py imports this before tests/support.py, which reads BROKER_TEST_DATABASE_URL and
BROKER_TEST_REDIS_URL once; here they are rewritten for this process first. A run without workers
keeps the URLs it was given (by default the database ``test`` and Redis database 15).
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

POSTGRES_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_DEFAULT = "redis://127.0.0.1:6379/15"
# The Redis databases the deployment tests empty, one per module (tests/deploy): workers pass over them.
DEPLOY_REDIS_DBS = frozenset({12, 13, 14})

# "gw3", set by pytest-xdist before it loads any conftest; None when pytest runs without workers.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def worker_index(worker: str) -> int:
    """3 for pytest-xdist's "gw3"."""
    return int(worker.removeprefix("gw"))


def redis_db(base: int, index: int) -> int:
    """The ``index``-th database counting down from ``base``, past the deployment tests' own."""
    free = [number for number in range(base, -1, -1) if number == base or number not in DEPLOY_REDIS_DBS]
    if index >= len(free):
        raise RuntimeError(f"no Redis database left for worker {index} below {base}: run fewer workers")
    return free[index]


def worker_redis_url(url: str, index: int) -> str:
    """``url`` with the worker's own database number in place of the given one."""
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{redis_db(base, index)}"))


def worker_postgres_url(url: str, worker: str, suite: str) -> str:
    """``url`` naming a database of the worker's own, per suite database, as ``test_sqlite_gw1``.

    The suite database is in the name because ``.ci/run`` runs the SQLite and PostgreSQL passes at once,
    each with workers ``gw0``, ``gw1``...
    """
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}_{suite}_{worker}"))


def isolate() -> None:
    """Point this worker's BROKER_TEST_DATABASE_URL and BROKER_TEST_REDIS_URL at databases of its own."""
    if WORKER is None:
        return
    # Too late once tests/support.py has read the variables: its URLs would be everyone's.
    assert "tests.support" not in sys.modules, "import tests.workers before tests.support"
    suite = os.environ.get("BROKER_TEST_DB", "sqlite")
    postgres = os.environ.get("BROKER_TEST_DATABASE_URL", POSTGRES_DEFAULT)
    redis = os.environ.get("BROKER_TEST_REDIS_URL", REDIS_DEFAULT)
    os.environ["BROKER_TEST_DATABASE_URL"] = worker_postgres_url(postgres, WORKER, suite)
    os.environ["BROKER_TEST_REDIS_URL"] = worker_redis_url(redis, worker_index(WORKER))


def create_postgres_database(url: str) -> None:
    """Create the worker's database on its server unless it exists; a server that does not answer is left
    to the tests that need it (they skip, or fail under CI=true)."""
    from sqlalchemy import create_engine
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    name = make_url(url).database
    server = create_engine(
        make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 2}
    )
    try:
        with server.connect() as connection:
            found = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name})
            if found.first() is None:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    except SQLAlchemyError:
        pass
    finally:
        server.dispose()


isolate()
