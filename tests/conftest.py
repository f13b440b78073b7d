"""Fixtures: a stand-in cloud on loopback, a broker app wired to it, and signed-in clients."""

from __future__ import annotations

import contextlib

import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy import inspect
from sqlalchemy import text
from xdist.scheduler import LoadFileScheduling

from broker import create_app
from broker.cloud.client import ComputeClient
from broker.cloud.registry import Cloud
from broker.demo import serve
from broker.demo.cloud import FakeCloud
from broker.extensions import db
from broker.extensions import limiter
from broker.services import policy
from broker.services import users
from tests import workers  # before tests.support: it gives a parallel run's workers databases of their own
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

# Run on one worker of a parallel run (pytest-xdist), each as a whole: the browser tests and the lab's
# share one console lab and one Chromium (package fixtures) and start QEMU guests, whose VNC displays two
# labs starting at once could both pick. Every other file is a unit of its own, so that its module
# fixtures (a deployment behind nginx, say) start once.
ONE_WORKER = {"tests/e2e/": "browser-and-lab", "tests/lab/": "browser-and-lab"}
# The longest units, handed out first so that none starts last and keeps a run waiting on it alone.
LONGEST_FIRST = ("tests/e2e/", "tests/lab/", "tests/deploy/")


class FileOrGroupScheduling(LoadFileScheduling):
    """pytest-xdist's ``--dist loadfile``, with the files of ``ONE_WORKER`` in one unit.

    Not ``--dist loadgroup`` with markers: pytest-xdist 3.8 marks a test's group in an attribute pytest 9
    no longer reads, so every test of a group went wherever it was sent.
    """

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.partition("::")[0]
        return next((group for prefix, group in ONE_WORKER.items() if path.startswith(prefix)), path)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own choice of scheduler
def pytest_xdist_make_scheduler(config: pytest.Config, log) -> FileOrGroupScheduling | None:
    """With ``-n`` (``--dist loadfile`` is in pyproject.toml): whole files to a worker, browser and lab together."""
    return FileOrGroupScheduling(config, log) if config.getvalue("dist") == "loadfile" else None


def pytest_configure(config: pytest.Config) -> None:
    """A worker of a parallel run makes its PostgreSQL database (tests.workers) before any test needs it."""
    if workers.WORKER is not None:
        workers.create_postgres_database(POSTGRES_URL)


def hand_out_order(item: pytest.Item) -> int:
    return next((n for n, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a worker of a parallel run, the longest units first: the scheduler hands out units in this order."""
    if workers.WORKER is not None:
        items.sort(key=hand_out_order)


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
def console_types() -> tuple[str, ...]:
    """The console types the test clouds offer (novnc, serial); tests override this fixture."""
    return ("novnc",)


@pytest.fixture
def app(fake, tmp_path, env_overrides, cloud_names, console_mode, console_types):
    clouds = [
        Cloud(name, make_client(fake, name), 600, "idle", console_mode, console_types=console_types)
        for name in cloud_names
    ]
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
