"""The inventory: one list fetch per cloud shared by every waiter, failures remembered briefly,
and a slow or hung cloud never holding up another cloud's part of a page."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import REGISTRY

from broker.cloud.client import ComputeClient
from broker.cloud.registry import Cloud
from broker.cloud.resilience import RetryPolicy
from broker.cloud.types import Timeouts
from broker.demo import keystone_session
from broker.demo import serve
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import Server
from broker.services.inventory import Inventory
from tests.support import make_client
from tests.support import server_id
from tests.support import wait_until

# Longer than any test may take: a call into a hung cloud ends only when the test releases it.
HANG = 30.0
PENDING = "cloud {} has not answered yet; its servers will appear when it does."


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def patient_client(fake: FakeCloud, name: str) -> ComputeClient:
    """A client that would wait out a hung cloud (its timeouts are longer than HANG)."""
    session = keystone_session(fake, timeout=HANG + 10)
    return ComputeClient(
        name,
        session,
        region_name=fake.region,
        timeouts=Timeouts(connect=5, read=HANG + 10),
        retry=RetryPolicy(attempts=1),
    )


@pytest.fixture(autouse=True)
def unhang(fake):
    yield
    fake.release_hangs()


@pytest.fixture
def start_cloud():
    """Start more stand-in clouds, each with servers of its own; hangs are released at the end."""
    running = []

    def start(prefix: int) -> FakeCloud:
        servers = [Server(id=server_id(prefix * 100 + n), name=f"far-{prefix}-{n}") for n in (1, 2)]
        cloud = FakeCloud(secret=f"s{prefix}", servers=servers)
        running.append(serve.start(cloud))
        return cloud

    yield start
    for run in running:
        run.cloud.release_hangs()
        run.stop()


def in_threads(count: int, call) -> tuple[list[threading.Thread], list]:
    """Start ``call`` in ``count`` threads at once; the threads, and their results (or exceptions) in order."""
    results: list = [None] * count

    def run(index: int) -> None:
        try:
            results[index] = call()
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            results[index] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def joining(inventory: Inventory, monkeypatch) -> list:
    """The plans callers have taken from the inventory (a fetch to wait for, or none), one per caller and cloud:
    once a caller has one, a release can no longer make it start a fetch of its own."""
    plans: list = []
    real = inventory._due

    def due(name: str):
        plan = real(name)
        plans.append(plan)
        return plan

    monkeypatch.setattr(inventory, "_due", due)
    return plans


@pytest.mark.parametrize(
    ("failure", "expected"),
    [(None, "7 servers"), (403, "Listing servers: Injected failure 403 for list.")],
    ids=["success", "failure"],
)
def test_waiters_on_a_first_fetch_share_its_outcome(fake, failure, expected, monkeypatch):
    inventory = Inventory([Cloud("lab", patient_client(fake, "lab"), 600, "idle")], ttl=30, cold_wait=HANG)
    plans = joining(inventory, monkeypatch)
    fake.faults.hang["token"] = HANG  # Keystone hangs until released
    if failure:
        fake.faults.fail_next["list"] = [failure]
    threads, results = in_threads(8, inventory.overview)
    assert wait_until(lambda: fake.counts["token"] == 1)
    wait_until(lambda: len(plans) == 8, message="all eight waiters inside overview()")
    assert all(fetch is plans[0][0] for fetch, _ in plans)  # one fetch in flight, for everyone
    fake.release_hangs()
    for thread in threads:
        thread.join(10)
    outcomes = {f"{len(r.servers)} servers" if r.servers else r.failures["lab"] for r in results}
    assert outcomes == {expected}
    assert (fake.counts["token"], fake.counts["list"]) == (1, 1)  # one fetch for all eight


@pytest.mark.parametrize(
    ("ttl", "later", "fetched_again"),
    [(30, 9, False), (30, 11, True), (5, 4, False), (5, 6, True)],
)
def test_a_failed_fetch_is_remembered_for_a_few_seconds(fake, ttl, later, fetched_again):
    clock = FakeClock()
    inventory = Inventory([Cloud("lab", make_client(fake), 600, "idle")], ttl=ttl, clock=clock)
    fake.faults.fail_next["list"] = [403]
    assert "Injected failure 403" in inventory.overview().failures["lab"]
    assert "Injected failure 403" in inventory.overview().failures["lab"]  # at once, from memory
    assert fake.counts["list"] == 1
    clock.now = later
    overview = inventory.overview()
    assert fake.counts["list"] == (2 if fetched_again else 1)
    assert len(overview.servers) == (7 if fetched_again else 0)


def test_a_hung_cloud_never_delays_the_others(fake, start_cloud):
    slow = start_cloud(2)
    slow.faults.hang["token"] = HANG
    clouds = [Cloud("lab", make_client(fake), 600, "idle"), Cloud("slow", patient_client(slow, "slow"), 600, "idle")]
    inventory = Inventory(clouds, ttl=30, cold_wait=0.5)
    began = time.monotonic()
    overview = inventory.overview()
    assert time.monotonic() - began < 2  # not the 30 s the hung cloud would take
    assert len(overview.servers) == 7
    assert overview.failures == {"slow": PENDING.format("slow")}
    began = time.monotonic()
    assert [s.name for s in inventory.by_name("web-01")] == ["web-01"]
    assert [s.server.name for s in inventory.sightings(server_id(1))] == ["web-01"]
    assert time.monotonic() - began < 2
    # The fetch goes on after its waiters gave up, and fills the cache for later requests.
    slow.release_hangs()
    assert wait_until(lambda: not inventory.overview().failures)
    assert len(inventory.overview().servers) == 9
    assert slow.counts["list"] == 1


def test_hung_clouds_are_waited_for_together_not_in_turn(fake, start_cloud):
    hung = [start_cloud(n) for n in (2, 3, 4)]
    for cloud in hung:
        cloud.faults.hang["token"] = HANG
    clouds = [Cloud(f"hung{n}", patient_client(c, f"hung{n}"), 600, "idle") for n, c in enumerate(hung)]
    inventory = Inventory(clouds, ttl=30, cold_wait=1.5)
    began = time.monotonic()
    overview = inventory.overview()
    assert time.monotonic() - began < 3.5  # one bounded wait, not 3 x 1.5 s
    assert sorted(overview.failures) == ["hung0", "hung1", "hung2"]


def test_a_stale_list_is_served_at_once_while_one_request_refreshes_it(fake):
    clock = FakeClock()
    inventory = Inventory([Cloud("lab", patient_client(fake, "lab"), 600, "idle")], ttl=30, clock=clock, cold_wait=HANG)
    assert len(inventory.overview().servers) == 7
    clock.now = 100
    fake.servers[server_id(1)].name = "web-01-renamed"
    fake.faults.hang["list"] = HANG
    threads, results = in_threads(1, inventory.overview)  # starts the refresh and waits for it
    assert wait_until(lambda: fake.counts["list"] == 2)
    began = time.monotonic()
    meanwhile = inventory.overview()
    assert time.monotonic() - began < 2  # not the hung refresh's 30 s
    assert "web-01" in [s.name for s in meanwhile.servers]
    fake.release_hangs()
    threads[0].join(10)
    assert "web-01-renamed" in [s.name for s in results[0].servers]  # the refresher waited for it
    assert "web-01-renamed" in [s.name for s in inventory.overview().servers]
    assert fake.counts["list"] == 2  # the first fetch and the one refresh


def test_a_refresh_that_answers_in_time_is_shown_at_once(fake):
    clock = FakeClock()
    inventory = Inventory([Cloud("lab", make_client(fake), 600, "idle")], ttl=30, clock=clock)
    inventory.overview()
    fake.servers[server_id(1)].name = "web-01-renamed"
    clock.now = 100
    assert "web-01-renamed" in [s.name for s in inventory.overview().servers]


def test_the_age_of_the_list_a_request_was_answered_from_is_measured(fake):
    clock = FakeClock()
    inventory = Inventory([Cloud("aged", make_client(fake, "aged"), 600, "idle")], ttl=30, clock=clock)
    inventory.overview()
    clock.now = 12
    inventory.overview()
    assert REGISTRY.get_sample_value("broker_server_list_age_seconds", {"cloud": "aged"}) == 12
    clock.now = 20
    inventory.sightings(server_id(1))
    assert REGISTRY.get_sample_value("broker_server_list_age_seconds", {"cloud": "aged"}) == 20
