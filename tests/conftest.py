"""Fixtures: a stand-in cloud on loopback, a broker app wired to it, and signed-in clients."""

from __future__ import annotations

import pytest
from bs4 import BeautifulSoup

from broker import create_app
from broker.cloud.client import ComputeClient
from broker.cloud.registry import Cloud
from broker.cloud.resilience import RetryPolicy
from broker.cloud.types import Timeouts
from broker.demo import keystone_session
from broker.demo import serve
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import Server
from broker.extensions import db
from broker.extensions import limiter
from broker.services import policy
from broker.services import users

AGENT = ("agent", "agent-password-1")
# What a browser sends on a navigation that started on one of the broker's own pages.
FROM_THIS_SITE = {"Sec-Fetch-Site": "same-origin"}
ADMIN = ("admin", "admin-password-1")


def fleet() -> list[Server]:
    """Servers covering the cases the tests need: running, stopped, shared and hostile names."""

    def server(n: int, name: str, status: str = "ACTIVE") -> Server:
        return Server(
            id=f"00000000-0000-4000-8000-{n:012d}",
            name=name,
            status=status,
            addresses={"private": [{"addr": f"10.1.0.{n}", "version": 4}]},
            az="az-1",
        )

    return [
        server(1, "web-01"),
        server(2, "web-02"),
        server(3, "db-01", "SHUTOFF"),
        server(4, "worker"),
        server(5, "worker"),
        server(6, "<b>bold</b>&<script>alert(1)</script>"),
        server(7, "build-01", "BUILD"),
    ]


def server_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


@pytest.fixture
def fake():
    """A stand-in Keystone + Nova over real HTTP on 127.0.0.1."""
    cloud = FakeCloud(secret="test-secret", servers=fleet(), console_base="http://127.0.0.1:6080")
    cloud.faults.retry_after = "0.05"
    running = serve.start(cloud)
    yield cloud
    running.stop()


def make_client(fake: FakeCloud, name: str = "lab", **kwargs) -> ComputeClient:
    session = keystone_session(fake, timeout=2)
    kwargs.setdefault("timeouts", Timeouts(connect=1, read=1))
    kwargs.setdefault("retry", RetryPolicy(attempts=3, base=0.01, cap=0.5))
    return ComputeClient(name, session, region_name=fake.region, **kwargs)


@pytest.fixture
def compute(fake) -> ComputeClient:
    return make_client(fake)


def test_env(tmp_path, **extra) -> dict:
    env = {
        "BROKER_SECRET_KEY": "test-secret-key-0123456789",
        "BROKER_DATABASE_URL": f"sqlite:///{tmp_path}/broker.sqlite3",
        "BROKER_DEMO": "false",
    }
    env.update(extra)
    return env


@pytest.fixture
def env_overrides() -> dict:
    """Extra ``BROKER_*`` variables for the app fixture; tests override this fixture."""
    return {}


@pytest.fixture
def cloud_names() -> list[str]:
    """Names of the configured clouds (all served by the one fake); tests override this fixture."""
    return ["lab"]


@pytest.fixture
def app(fake, tmp_path, env_overrides, cloud_names):
    clouds = [Cloud(name, make_client(fake, name), console_ttl=600, console_swap="idle") for name in cloud_names]
    app = create_app(
        {
            "ENV": test_env(tmp_path, **env_overrides),
            "CLOUDS": clouds,
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "TESTING": True,
        }
    )
    limiter.reset()  # its memory storage outlives one app; start each test unthrottled
    with app.app_context():
        users.add(*AGENT, role="agent")
        users.add(*ADMIN, role="admin")
        # Deny by default: the agent gets the whole test cloud unless a test narrows it.
        policy.add_rule(user=AGENT[0], cloud="lab", clouds=["lab"])
        db.session.commit()  # services stage their changes; whoever calls them commits
    return app


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


def csrf_from(html: str) -> str:
    soup = BeautifulSoup(html, "html.parser")
    field = soup.find("input", {"name": "csrf_token"})
    if field:
        return field["value"]
    return soup.find("meta", {"name": "csrf-token"})["content"]


class AuthActions:
    """Sign in and out the way a browser does, CSRF token included."""

    def __init__(self, client):
        self.client = client

    def login(self, username: str = AGENT[0], password: str = AGENT[1], next: str | None = None):
        token = csrf_from(self.client.get("/login").get_data(as_text=True))
        data = {"username": username, "password": password, "csrf_token": token}
        if next is not None:
            data["next"] = next
        return self.client.post("/login", data=data)

    def csrf(self) -> str:
        """The CSRF token a page would carry (the list page once signed in)."""
        return csrf_from(self.client.get("/login", follow_redirects=True).get_data(as_text=True))

    def logout(self):
        return self.client.post("/logout", data={"csrf_token": self.csrf()})


@pytest.fixture
def auth(client) -> AuthActions:
    return AuthActions(client)
