"""Fixtures: a stand-in cloud on loopback, a broker app wired to it, and signed-in clients."""

from __future__ import annotations

import contextlib

import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy import inspect
from sqlalchemy import text

from broker import create_app
from broker.cloud.client import ComputeClient
from broker.cloud.registry import Cloud
from broker.demo import serve
from broker.demo.cloud import FakeCloud
from broker.extensions import db
from broker.extensions import limiter
from broker.services import policy
from broker.services import users
from tests.support import ADMIN
from tests.support import AGENT
from tests.support import POSTGRES_URL
from tests.support import SUITE_DATABASE
from tests.support import AuthActions
from tests.support import broker_env
from tests.support import fleet
from tests.support import make_client
from tests.support import require_postgres
from tests.support import require_redis


@pytest.fixture(scope="session")
def suite_engine():
    """On a PostgreSQL run, the shared database, wiped once so the first app migrates it from empty."""
    if SUITE_DATABASE != "postgresql":
        yield None
        return
    require_postgres()
    engine = create_engine(POSTGRES_URL)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def empty_suite_database(suite_engine):
    """Every test starts on empty tables, as it does on its own SQLite file."""
    if suite_engine is None:
        return
    with suite_engine.begin() as connection:
        # A connection some test left inside a transaction would make TRUNCATE wait forever.
        connection.execute(text("SET LOCAL lock_timeout = '10s'"))
        tables = [name for name in inspect(connection).get_table_names() if name != "alembic_version"]
        if tables:
            connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


@pytest.fixture
def redis_url() -> str:
    """The test Redis database, emptied (BROKER_TEST_REDIS_URL); skips without Redis, fails under CI=true."""
    return require_redis()


@pytest.fixture
def postgres_url() -> str:
    """The test PostgreSQL (BROKER_TEST_DATABASE_URL); skips without it, fails under CI=true."""
    return require_postgres()


@pytest.fixture
def fake():
    """A stand-in Keystone + Nova over real HTTP on 127.0.0.1."""
    cloud = FakeCloud(secret="test-secret", servers=fleet(), console_base="http://127.0.0.1:6080")
    cloud.faults.retry_after = "0.05"
    running = serve.start(cloud)
    yield cloud
    running.stop()


@pytest.fixture
def compute(fake) -> ComputeClient:
    return make_client(fake)


@pytest.fixture
def env_overrides() -> dict:
    """Extra ``BROKER_*`` variables for the app fixture; tests override this fixture."""
    return {}


@pytest.fixture
def cloud_names() -> list[str]:
    """Names of the configured clouds (all served by the one fake); tests override this fixture."""
    return ["lab"]


@pytest.fixture
def console_mode() -> str:
    """How the test clouds show consoles (iframe or relay); tests override this fixture."""
    return "iframe"


@pytest.fixture
def app(fake, tmp_path, env_overrides, cloud_names, console_mode):
    clouds = [Cloud(name, make_client(fake, name), 600, "idle", console_mode) for name in cloud_names]
    app = create_app(
        {
            "ENV": broker_env(tmp_path, **env_overrides),
            "CLOUDS": clouds,
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "TESTING": True,
        }
    )
    with contextlib.suppress(redis.RedisError):  # a test's Redis may be down on purpose
        limiter.reset()  # its memory storage outlives one app; start each test unthrottled
    with app.app_context():
        users.add(*AGENT, role="agent")
        users.add(*ADMIN, role="admin")
        # Deny by default: the agent gets the whole test cloud unless a test narrows it.
        policy.add_rule(user=AGENT[0], cloud="lab", clouds=["lab"])
        db.session.commit()  # services stage their changes; whoever calls them commits
    yield app
    with app.app_context():
        db.engine.dispose()  # one app per test: give its connections back at once


@pytest.fixture
def web_only_agent(app):
    """The agent may open web-* on the test cloud, nothing else."""
    with app.app_context():
        for rule in policy.all_rules():
            policy.remove_rule(rule.id)
        policy.add_rule(user=AGENT[0], cloud="lab", clouds=["lab"], name_pattern="web-*")
        db.session.commit()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def auth(client) -> AuthActions:
    return AuthActions(client)
