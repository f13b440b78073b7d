"""The server lists shared through Redis: one walk per cloud and cache lifetime for the whole
deployment, a lock only its owner releases, each instance's trouble its own, and per-process
lists exactly as without Redis while Redis is down.

Before a worker shows a list another walked, it checks its own access with a list of one
server (``fake.counts["list"]`` counts those too) unless its own calls succeeded lately."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import redis

from broker.cloud.registry import Cloud
from broker.cloud.types import Details
from broker.cloud.types import Timeouts
from broker.demo import serve
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import make_servers
from broker.services.inventory import SHARED_PREFIX
from broker.services.inventory import Inventory
from broker.services.inventory import SharedLists
from broker.services.inventory import server_from_json
from broker.services.inventory import server_to_json
from broker.shared import SharedRedis
from tests.support import REDIS_URL
from tests.support import make_client
from tests.support import require_redis
from tests.support import server_id
from tests.support import wait_until


class FakeClock:
    """Monotonic and wall clock at once: the cache lifetime passes when a test says so."""

    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


class CountingRedis(SharedRedis):
    """A SharedRedis that counts how often the inventory used it."""

    def __init__(self, url: str, **kwargs):
        super().__init__(url, **kwargs)
        self.runs = 0

    def run(self, work, fallback):
        self.runs += 1
        return super().run(work, fallback)


@pytest.fixture
def shared_redis():
    """A SharedRedis on the test database, flushed first; skipped without Redis (failed under CI=true)."""
    require_redis()
    # A generous timeout: on a loaded machine a slow answer would send a worker to its own walk (by design).
    return lambda **kwargs: CountingRedis(REDIS_URL, retry_after=0.2, timeout=5, **kwargs)


@pytest.fixture
def clock():
    return FakeClock()


def inventory_on(
    fake: FakeCloud,
    shared: SharedRedis | None,
    clock: FakeClock,
    ttl: float = 30,
    timeouts: Timeouts | None = None,
    **kwargs,
) -> Inventory:
    """One worker's inventory (its own client, as each process has) on the shared Redis."""
    cloud = Cloud("lab", make_client(fake, **({"timeouts": timeouts} if timeouts else {})), 600, "idle")
    return Inventory([cloud], ttl=ttl, clock=clock, wall=clock, shared=shared, **kwargs)


def all_at_once(calls: list) -> list:
    """Run every call in its own thread at the same moment; their results in order."""
    results: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(index: int) -> None:
        start.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    return results


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_one_walk_per_cache_lifetime_for_every_worker(fake, shared_redis, clock):
    workers = [inventory_on(fake, shared_redis(), clock) for _ in range(2)]
    fake.faults.latency = 0.2  # everyone asks while the one walk is under way
    results = all_at_once([worker.overview for worker in workers for _ in range(8)])
    assert {len(r.servers) for r in results} == {7} and not any(r.failures for r in results)
    assert fake.counts["list"] == 2  # one walk, and the other worker's check of its own access
    clock.now += 20  # still within the lifetime: nobody walks
    all_at_once([worker.overview for worker in workers for _ in range(4)])
    assert fake.counts["list"] == 2
    # Past it: one refresh in total, and both workers show what it found.
    clock.now += 11
    fake.servers[server_id(1)].name = "web-01-renamed"
    results = all_at_once([worker.overview for worker in workers for _ in range(8)])
    assert fake.counts["list"] == 3
    assert all(w.overview("renamed").servers for w in workers)
    assert fake.counts["list"] == 3


def test_a_worker_answers_from_its_own_copy_without_asking_redis(fake, shared_redis, clock):
    first, second = shared_redis(), shared_redis()
    inventory_on(fake, first, clock).overview()
    worker = inventory_on(fake, second, clock)
    clock.now += 10
    assert len(worker.overview().servers) == 7  # loaded from Redis: no walk
    assert fake.counts["list"] == 2  # the walk, and this worker's list of one server
    assert worker.overview().stale == {}  # the shared list's age is the deployment's, not the load's
    runs = second.runs
    for query in ("", "web", "10.1.0.4"):
        worker.overview(query)
    worker.sightings(server_id(1))
    assert second.runs == runs  # warm: Redis is not asked


def test_a_failed_walk_is_remembered_by_its_own_worker_only(fake, shared_redis, clock):
    first, second = (inventory_on(fake, shared_redis(), clock) for _ in range(2))
    fake.faults.fail_next["list"] = [500] * 3  # one walk's three tries
    assert "answered HTTP 500" in first.overview().failures["lab"]
    assert len(second.overview().servers) == 7  # its own walk: the first one's failure was not its own
    assert fake.counts["list"] == 4
    assert "answered HTTP 500" in first.overview().failures["lab"]  # remembered where it happened
    clock.now += 11  # past the failure memory
    assert len(first.overview().servers) == 7  # the shared list, after its own one-server check
    assert fake.counts["list"] == 5


def misconfigured(fake: FakeCloud, shared: SharedRedis, clock: FakeClock) -> Inventory:
    """An instance whose clouds.yaml entry for the same cloud has a wrong password."""
    inventory = inventory_on(fake, shared, clock)
    inventory.clouds["lab"].client.adapter.session.auth.auth_methods[0].password = "not-the-password-9"
    return inventory


def test_one_instances_cloud_error_is_not_shown_by_the_others(fake, shared_redis, clock):
    broken, healthy = misconfigured(fake, shared_redis(), clock), inventory_on(fake, shared_redis(), clock)
    assert "credentials" in broken.overview().failures["lab"]
    overview = healthy.overview()  # within the broken one's failure memory
    assert (len(overview.servers), overview.failures, overview.stale) == (7, {}, {})
    assert healthy.clouds["lab"].client.health.snapshot().state == "ok"
    assert "credentials" in broken.overview().failures["lab"]  # its own trouble stays its own


def test_a_misconfigured_instance_does_not_hide_behind_the_shared_list(fake, shared_redis, clock):
    healthy, broken = inventory_on(fake, shared_redis(), clock), misconfigured(fake, shared_redis(), clock)
    assert len(healthy.overview().servers) == 7  # walked and shared
    overview = broken.overview()
    assert (
        overview.servers == [] and "the credentials (or their project scope) were refused" in overview.failures["lab"]
    )
    assert broken.clouds["lab"].client.health.snapshot().state == "failing"  # /admin and the log say so too
    assert fake.counts["list"] == 1  # it walked nothing, and took no lock
    assert healthy.overview().failures == {}


def test_a_worker_checks_its_own_access_once_before_showing_the_shared_list(fake, shared_redis, clock):
    walker = inventory_on(fake, shared_redis(), clock)
    walker.overview()
    worker = inventory_on(fake, shared_redis(), clock)
    assert len(worker.overview().servers) == 7
    assert fake.counts["list"] == 2  # the walk, and the worker's own list of one server (not a walk)
    clock.now += 31
    fake.servers[server_id(1)].name = "web-01-renamed"
    walker.overview()  # the next walk
    assert worker.overview("renamed").servers  # loaded: its own call succeeded within the lifetime
    assert fake.counts["list"] == 3


def test_a_cold_worker_waits_for_the_walk_another_holds_the_lock_for(fake, shared_redis, clock):
    holder, waiter = inventory_on(fake, shared_redis(), clock), inventory_on(fake, shared_redis(), clock, cold_wait=5)
    waiter.clouds["lab"].client.probe()  # its own calls work (a mint, say): it needs no check of its own
    probed = fake.counts["list"]
    fake.faults.latency = 0.5
    walking = threading.Thread(target=holder.overview)
    walking.start()
    # Until the holder's walk has reached the cloud (so it holds the lock); the probe's call is not it.
    wait_until(lambda: fake.counts["list"] != probed, interval=0.01, message="the holder's walk reached the cloud")
    began = time.monotonic()
    assert len(waiter.overview().servers) == 7  # the holder's list, as soon as it landed
    assert time.monotonic() - began < 2
    walking.join(5)
    assert fake.counts["list"] == 2  # the probe's list of one server, and the holder's walk


def test_a_stale_shared_list_is_shown_while_another_worker_refreshes(fake, shared_redis, clock):
    inventory_on(fake, shared_redis(), clock).overview()
    clock.now += 40  # the shared list is stale now
    client = redis.Redis.from_url(REDIS_URL)
    client.set(f"{SHARED_PREFIX}lab:lock", "someone-else", px=5000)  # another worker is refreshing
    # The newcomer shows the stale copy once its wait ends, not when the other worker's walk does (its lock
    # lives 5 s). The wait leaves time for the newcomer's own check of the cloud (three calls), which comes
    # first: 0.3 s was too little for it on CI's loaded machine.
    newcomer = inventory_on(fake, shared_redis(), clock, cold_wait=1.0)
    began = time.monotonic()
    overview = newcomer.overview()
    assert time.monotonic() - began < 2.5
    assert len(overview.servers) == 7 and fake.counts["list"] == 2  # the stale copy, no second walk (one check)
    assert client.get(f"{SHARED_PREFIX}lab:lock") == b"someone-else"  # not ours to take or release
    client.delete(f"{SHARED_PREFIX}lab:lock")  # the other worker gave up: this one refreshes
    wait_until(lambda: fake.counts["list"] >= 3, message="the newcomer's own refresh")
    assert fake.counts["list"] == 3


def test_the_lock_is_released_only_by_its_owner(shared_redis):
    lists = SharedLists(shared_redis(), lock_ttl=5)
    assert lists.lock("lab", "mine") is True
    assert lists.lock("lab", "theirs") is False
    lists.release("lab", "theirs")
    assert lists.lock("lab", "theirs") is False  # still mine
    lists.release("lab", "mine")
    assert lists.lock("lab", "theirs") is True


def test_redis_down_means_lists_per_process_until_it_is_back(fake, shared_redis, clock):
    shared = shared_redis(clock=clock)  # its retry_after passes on the test's clock, not in a sleep
    worker = inventory_on(fake, shared, clock)
    assert len(worker.overview().servers) == 7
    reachable = shared.client
    shared.client = SharedRedis(f"redis://127.0.0.1:{closed_port()}/15").client  # Redis stops
    clock.now += 31
    fake.servers[server_id(1)].name = "web-01-renamed"
    began = time.monotonic()
    assert worker.overview("renamed").servers  # walked by this process itself
    assert time.monotonic() - began < 2
    assert fake.counts["list"] == 2 and not shared.usable()
    assert worker.overview("renamed").servers and fake.counts["list"] == 2  # and cached as before
    shared.client = reachable
    assert not shared.usable()  # not asked again before retry_after...
    clock.now += 31  # ...which has passed by the next cache lifetime
    assert shared.usable()
    fake.servers[server_id(1)].name = "web-01-again"
    assert worker.overview("again").servers
    assert fake.counts["list"] == 3 and shared.usable()
    stored = json.loads(redis.Redis.from_url(REDIS_URL).get(f"{SHARED_PREFIX}lab"))
    assert "web-01-again" in [item[1] for item in stored["servers"]]  # shared again
    other = inventory_on(fake, shared_redis(), clock)
    assert other.overview("again").servers and fake.counts["list"] == 4  # its check, no walk


def test_a_warm_list_of_10000_servers_stays_fast(shared_redis, clock):
    big = FakeCloud(secret="big", servers=make_servers(10_000))
    running = serve.start(big)
    try:
        # However long the walk of ten pages takes on a busy machine, it is done (and shared) before the other
        # worker looks: asking again joins the walk in flight, it never starts another.
        # Pages of 1,000 servers each: the suite's 1 s read timeout is too short for them on a loaded machine.
        patient = Timeouts(connect=5, read=15)
        first = inventory_on(big, shared_redis(), clock, timeouts=patient)
        wait_until(lambda: len(first.overview().servers) == 10_000, timeout=60, interval=0.5)
        worker = inventory_on(big, shared_redis(), clock, timeouts=patient)
        began = time.monotonic()
        assert len(worker.overview().servers) == 10_000
        loaded = time.monotonic() - began
        timings = []
        for n in range(40):
            began = time.monotonic()
            worker.overview(("web-1", "10.3.", "")[n % 3])
            timings.append(time.monotonic() - began)
        p95 = sorted(timings)[int(len(timings) * 0.95) - 1]
        print(f"10,000 servers: loaded from Redis in {loaded * 1000:.0f} ms; warm list/search p95 {p95 * 1000:.1f} ms")
        # Warm, nothing is fetched again: the p95 printed above is a figure for the bench, not a pass mark
        # (a timed assertion fails on a busy machine, whatever the code does).
        assert big.counts["list"] == 11  # one walk of ten pages for both workers, and one server's check
    finally:
        running.stop()


def test_the_panels_details_travel_with_the_shared_list(fake, shared_redis, clock):
    broken = fake.servers[server_id(4)]
    broken.status = "ERROR"
    broken.fault = {"code": 500, "message": "No valid host was found.", "created": "2026-01-05T09:31:00Z"}
    inventory_on(fake, shared_redis(), clock).overview()
    other = inventory_on(fake, shared_redis(), clock)
    [seen] = [s for s in other.overview().servers if s.id == server_id(4)]
    assert fake.counts["list"] == 2  # the second worker read the list from Redis (after its check)
    assert (seen.details.fault_code, seen.details.fault_message, seen.details.flavor) == (
        500,
        "No valid host was found.",
        "m1.small",
    )


def test_a_shared_list_from_before_the_panel_still_reads():
    """An instance of the previous release wrote six fields per server; a rolling upgrade reads them."""
    old = ["id-1", "web-01", "ACTIVE", ["10.0.0.1"], "az-1", {"team": "ops"}]
    server = server_from_json(old, "lab")
    assert (server.name, server.metadata, server.details) == ("web-01", {"team": "ops"}, Details())
    assert server_from_json(server_to_json(server), "lab") == server
