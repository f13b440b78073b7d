"""The console service: each cloud's trouble shown only to those it concerns, and kept to that cloud."""

from __future__ import annotations

import pytest
from conftest import make_client
from conftest import server_id
from sqlalchemy import select

from broker import policy
from broker import users
from broker.audit import AuditRecord
from broker.cloud.client import Timeouts
from broker.cloud.registry import Cloud
from broker.cloud.registry import load_clouds
from broker.consoles import ConsoleService
from broker.demo import serve
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import Server
from broker.extensions import db
from broker.inventory import Inventory


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Budget:
    """A lookup budget that grants ``allow`` lookups in all and counts who asked."""

    def __init__(self, allow: int = 1000):
        self.allow = allow
        self.asked: list[str] = []

    def __call__(self, username: str) -> bool:
        self.asked.append(username)
        return len(self.asked) <= self.allow


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def budget():
    return Budget()


@pytest.fixture
def far():
    """A second stand-in cloud, whose only server is web-far."""
    cloud = FakeCloud(secret="far", servers=[Server(id=server_id(201), name="web-far")])
    running = serve.start(cloud)
    yield cloud
    running.stop()


def build(app, clock, budget, *clouds: Cloud) -> ConsoleService:
    """A service on ``clouds`` with the test's clock and budget, installed in the app."""
    service = ConsoleService(Inventory(list(clouds), ttl=30, clock=clock), lookup_budget=budget)
    app.extensions["consoles"] = service
    return service


@pytest.fixture
def service(app, fake, clock, budget) -> ConsoleService:
    return build(app, clock, budget, Cloud("lab", make_client(fake), 600, "idle"))


@pytest.fixture
def ctx(app):
    with app.test_request_context():
        yield


def grant(username: str, cloud: str, pattern: str = "*", clouds: tuple[str, ...] = ("lab", "far")) -> None:
    """Replace ``username``'s rules with one."""
    for rule in policy.all_rules():
        if rule.user and rule.user.username == username:
            policy.remove_rule(rule.id)
    policy.add_rule(user=username, cloud=cloud, clouds=list(clouds), name_pattern=pattern)


def agent():
    return users.find("agent")


def console_records() -> list[AuditRecord]:
    return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == "console").order_by(AuditRecord.id)))


# -- (11c) each cloud's trouble shown only to those who may use it ----------------------


@pytest.mark.parametrize(
    ("rule", "failures", "stale"),
    [
        ("lab", [], ["lab"]),
        ("far", ["far"], []),
        ("*", ["far"], ["lab"]),
        (None, ["far"], ["lab"]),  # an admin
    ],
)
def test_cloud_trouble_is_shown_only_to_users_of_that_cloud(app, fake, far, clock, budget, ctx, rule, failures, stale):
    service = build(
        app,
        clock,
        budget,
        Cloud("lab", make_client(fake), 600, "idle"),
        Cloud("far", make_client(far, "far"), 600, "idle"),
    )
    service.inventory.overview(cloud="lab")  # lab is listed, far never; then both go wrong
    clock.now = 100
    fake.faults.fail_next["list"] = [500] * 3
    far.faults.error_message = "could not reach postgresql://nova:s3cr3t@db.internal/nova"
    far.faults.fail_next["list"] = [500] * 3
    if rule:
        grant("agent", rule)
    user = users.find("agent" if rule else "admin")
    overview = service.overview(user)
    assert (sorted(overview.failures), sorted(overview.stale)) == (failures, stale)
    shown = " ".join([*overview.failures.values(), *(s.message for s in overview.stale.values())])
    assert "s3cr3t" not in shown and "postgresql" not in shown
    if failures:
        assert overview.failures["far"] == "Listing servers: cloud far answered HTTP 500 (computeFault)."
    else:
        assert far.counts["list"] == 0  # a cloud the user may not use is not even asked


# -- (15) one broken clouds.yaml entry -----------------------------------------------------


def test_a_broken_clouds_yaml_entry_is_only_that_clouds_trouble(app, fake, tmp_path, monkeypatch, ctx):
    auth = f"""
      auth_url: {fake.auth_url}
      username: {fake.username}
      project_id: {fake.project_id}
      user_domain_id: default"""
    (tmp_path / "clouds.yaml").write_text(
        f"""clouds:
  good:
    region_name: {fake.region}
    auth:{auth}
      password: {fake.password}
  broken:
    region_name: {fake.region}
    auth:{auth}
"""
    )
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))
    monkeypatch.delenv("OS_CLOUD", raising=False)
    clouds = load_clouds(("good", "broken"), timeouts=Timeouts(2, 2), default_ttl=600, default_swap="idle")
    service = ConsoleService(Inventory(clouds, ttl=30))
    admin = users.find("admin")
    overview = service.overview(admin)
    assert {s.cloud for s in overview.servers} == {"good"} and len(overview.servers) == 7
    assert list(overview.failures) == ["broken"]
    message = overview.failures["broken"]
    assert message.startswith("Listing servers: cloud broken failed in the broker")
    assert fake.password not in message
    assert service.mint(admin, server_id(1)).server.cloud == "good"
