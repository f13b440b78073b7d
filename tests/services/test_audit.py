"""The audit trail under load: records written from many threads and several instances are all kept."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func
from sqlalchemy import select

from broker import create_app
from broker.extensions import db
from broker.models import AuditRecord
from broker.services import audit
from tests.support import SUITE_DATABASE
from tests.support import broker_env
from tests.support import require_postgres

THREADS = 16
EACH = 25


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "postgresql":
        if SUITE_DATABASE != "postgresql":
            pytest.skip("the PostgreSQL run of the suite (BROKER_TEST_DB=postgresql) covers this")
        return require_postgres()
    return f"sqlite:///{tmp_path}/audit.sqlite3"


def instance(url: str, tmp_path, name: str):
    """One broker instance: its own app, engine and connection pool on the shared database."""
    env = broker_env(tmp_path, BROKER_DATABASE_URL=url)
    return create_app({"ENV": env, "CLOUDS": [], "INSTANCE_PATH": str(tmp_path / name), "TESTING": True})


def test_records_from_many_threads_of_two_instances_are_all_kept(database_url, tmp_path):
    apps = [instance(database_url, tmp_path, "one"), instance(database_url, tmp_path, "two")]
    start = threading.Barrier(THREADS)

    def write(n: int) -> None:
        app = apps[n % 2]
        start.wait()
        for i in range(EACH):
            with app.test_request_context():
                audit.stage("console", "ok", username=f"user{n}", server_id=f"s{i}", detail="load")
                db.session.commit()

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(write, range(THREADS)))
    with apps[0].app_context():
        rows = db.session.execute(select(AuditRecord.username, func.count()).group_by(AuditRecord.username)).all()
        ids = db.session.scalars(select(AuditRecord.id)).all()
    assert dict(rows) == {f"user{n}": EACH for n in range(THREADS)}
    assert len(set(ids)) == THREADS * EACH
    for app in apps:
        with app.app_context():
            db.engine.dispose()
