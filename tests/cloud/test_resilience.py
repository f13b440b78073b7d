"""A misbehaving cloud: retries where safe, a circuit breaker, a bulkhead, stale lists."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import REGISTRY

from broker import state
from broker.cloud import errors
from broker.cloud.registry import Cloud
from broker.cloud.resilience import Bulkhead
from broker.cloud.resilience import CircuitBreaker
from broker.cloud.resilience import RetryPolicy
from broker.services.inventory import Inventory
from tests.support import make_client
from tests.support import server_id


@pytest.mark.parametrize("status", [429, 413, 503])
def test_transient_mint_failure_is_retried_unseen(compute, fake, status):
    compute.max_version()
    fake.faults.fail_next["console"] = [status, status]
    assert compute.create_console(server_id(1)).url
    assert fake.counts["console"] == 3


def test_server_error_on_a_read_is_retried(compute, fake):
    fake.faults.fail_next["list"] = [500]
    assert len(compute.list_servers()) == 7


def test_server_error_on_a_mint_is_not_repeated(compute, fake):
    compute.max_version()
    fake.faults.fail_next["console"] = [500]
    with pytest.raises(errors.CloudError, match=r"answered HTTP 500 \(computeFault\)"):
        compute.create_console(server_id(1))
    assert fake.counts["console"] == 1


def test_retry_after_longer_than_the_cap_fails_fast(compute, fake):
    compute.max_version()
    fake.faults.retry_after = "30"
    fake.faults.fail_next["console"] = [429]
    with pytest.raises(errors.CloudBusy) as caught:
        compute.create_console(server_id(1))
    assert caught.value.retry_after == 30
    assert fake.counts["console"] == 1


def test_keystone_outage_then_recovery(compute, fake):
    fake.faults.keystone_down = True
    with pytest.raises(errors.CloudUnreachable):
        compute.list_servers()
    fake.faults.keystone_down = False
    assert len(compute.list_servers()) == 7


def test_keystone_blip_is_retried(compute, fake):
    fake.faults.fail_next["token"] = [503]
    assert len(compute.list_servers()) == 7


def test_breaker_opens_after_repeated_failures_and_probes_later():
    now = [0.0]
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=lambda: now[0])
    for _ in range(3):
        breaker.before("c", "x")
        breaker.failed()
    with pytest.raises(errors.CloudUnreachable, match="try it again in 10 s"):
        breaker.before("c", "x")
    now[0] = 10.5
    breaker.before("c", "x")  # the probe
    with pytest.raises(errors.CloudUnreachable):
        breaker.before("c", "x")  # only one probe at a time
    breaker.succeeded()
    breaker.before("c", "x")
    assert not breaker.is_open


def test_open_breaker_spares_the_cloud(fake):
    compute = make_client(fake, breaker=CircuitBreaker(threshold=2, cooldown=60))
    fake.faults.fail_next["list"] = [500] * 6
    for _ in range(2):
        with pytest.raises(errors.CloudError):
            compute.list_servers()
    calls = fake.counts["list"]
    with pytest.raises(errors.CloudUnreachable, match="is failing"):
        compute.list_servers()
    assert fake.counts["list"] == calls


def circuit_gauge(cloud: str, circuit: str) -> float | None:
    return REGISTRY.get_sample_value("broker_circuit_open", {"cloud": cloud, "circuit": circuit})


def test_failing_mints_open_only_the_consoles_breaker(fake):
    compute = make_client(fake, "mints-fail", console_breaker=CircuitBreaker(threshold=2, cooldown=60))
    assert circuit_gauge("mints-fail", "consoles") == 0
    fake.faults.fail_next["console"] = [500] * 2
    for _ in range(2):
        with pytest.raises(errors.CloudError, match="HTTP 500"):
            compute.create_console(server_id(1))
    assert compute.breakers["consoles"].is_open and not compute.breakers["lists"].is_open
    assert circuit_gauge("mints-fail", "consoles") == 1 and circuit_gauge("mints-fail", "lists") == 0
    with pytest.raises(errors.CircuitOpen):
        compute.create_console(server_id(1))
    assert fake.counts["console"] == 2  # the open circuit spared the cloud
    # Lists and reads by ID go on: their breaker is another.
    assert len(compute.list_servers()) == 7
    assert compute.get_server(server_id(1)).name == "web-01"


def test_failing_lists_open_only_the_lists_breaker_and_closing_is_reported(fake):
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=lambda: now[0])
    compute = make_client(fake, "lists-fail", retry=RetryPolicy(attempts=1), breaker=breaker)
    fake.faults.fail_next["list"] = [500] * 2
    for _ in range(2):
        with pytest.raises(errors.CloudError, match="HTTP 500"):
            compute.list_servers()
    assert circuit_gauge("lists-fail", "lists") == 1 and circuit_gauge("lists-fail", "consoles") == 0
    with pytest.raises(errors.CircuitOpen):
        compute.list_servers()
    assert compute.create_console(server_id(1)).url.startswith("http://127.0.0.1:6080/")
    now[0] = 11  # the cooldown is over: the next list is the probe, and it answers
    assert len(compute.list_servers()) == 7
    assert not breaker.is_open and circuit_gauge("lists-fail", "lists") == 0


def test_a_failing_console_service_is_still_shown_in_the_clouds_health(fake):
    compute = make_client(fake, "mints-health", console_breaker=CircuitBreaker(threshold=1, cooldown=60))
    fake.faults.fail_next["console"] = [500]
    with pytest.raises(errors.CloudError):
        compute.create_console(server_id(1))
    assert compute.health.snapshot().state == "failing"
    with pytest.raises(errors.CircuitOpen):
        compute.create_console(server_id(1))
    assert "HTTP 500" in compute.health.snapshot().last_error  # the open circuit does not hide the cause


def calls_counted(cloud: str, operation: str, outcome: str) -> float:
    labels = {"cloud": cloud, "operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("broker_upstream_call_seconds_count", labels) or 0.0


def test_every_upstream_call_is_measured_with_its_outcome(fake):
    compute = make_client(fake, "measured", retry=RetryPolicy(attempts=1))
    compute.list_servers()
    compute.get_server(server_id(1))
    with pytest.raises(errors.ServerNotFound):
        compute.get_server(server_id(99))
    compute.create_console(server_id(1))
    compute.create_console(server_id(2))
    fake.faults.fail_next["console"] = [500]
    with pytest.raises(errors.CloudError):
        compute.create_console(server_id(1))
    counted = {
        ("list_servers", "ok"): 1,
        ("get_server", "ok"): 1,
        ("get_server", "ServerNotFound"): 1,
        ("create_console", "ok"): 2,
        ("create_console", "CloudError"): 1,
        ("version", "ok"): 1,  # discovered once, then keystoneauth1's cache answers
    }
    assert {key: calls_counted("measured", *key) for key in counted} == counted


def test_bulkhead_refuses_beyond_its_limit():
    bulkhead = Bulkhead(limit=1)
    with bulkhead, pytest.raises(errors.CloudBusy), bulkhead:
        pass
    with bulkhead:
        pass


def test_slow_cloud_cannot_hold_more_than_its_slots(fake):
    compute = make_client(fake, max_in_flight=2)
    compute.max_version()
    fake.faults.latency = 0.5
    results = []

    def mint():
        try:
            compute.create_console(server_id(1))
            results.append("ok")
        except errors.CloudBusy:
            results.append("busy")

    threads = [threading.Thread(target=mint) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["busy", "busy", "ok", "ok"]


def test_retry_policy_is_bounded():
    policy = RetryPolicy(attempts=3, base=0.2, cap=2)
    assert policy.delay(3) is None
    assert 0 <= policy.delay(1) <= 0.4
    assert policy.delay(1, retry_after=1.5) == 1.5
    assert policy.delay(1, retry_after=5) is None


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_failed_refresh_keeps_the_last_good_list_with_its_age(fake):
    clock = FakeClock()
    inventory = Inventory([Cloud("lab", make_client(fake), 600, "idle")], ttl=30, clock=clock)
    assert len(inventory.overview().servers) == 7
    clock.now = 100
    fake.faults.fail_next["list"] = [500] * 3
    overview = inventory.overview("web")
    assert [s.name for s in overview.servers] == ["web-01", "web-02"]
    assert overview.stale["lab"].age == 100
    assert overview.stale["lab"].message == "Listing servers: cloud lab answered HTTP 500 (computeFault)."
    assert overview.failures == {}


def test_unknown_cloud_list_failure_is_reported(fake):
    inventory = Inventory([Cloud("lab", make_client(fake), 600, "idle")], ttl=30)
    fake.faults.fail_next["list"] = [500] * 3
    overview = inventory.overview()
    assert overview.servers == [] and "cloud lab answered HTTP 500" in overview.failures["lab"]


def test_one_cloud_down_others_listed(fake):
    down = make_client(fake, name="down")
    down.adapter.endpoint_override = "http://127.0.0.1:9/compute/v2.1/x"
    inventory = Inventory([Cloud("lab", make_client(fake), 600, "idle"), Cloud("down", down, 600, "idle")], ttl=30)
    overview = inventory.overview()
    assert len(overview.servers) == 7 and "cannot connect to http://127.0.0.1:9/" in overview.failures["down"]


def test_list_page_shows_the_stale_list_and_its_age(client, auth, app, fake):
    auth.login()
    client.get("/")
    inventory = state.of(app).consoles.inventory
    inventory.ttl = 0  # everything is due for a refresh
    fake.faults.fail_next["list"] = [500] * 3
    html = client.get("/").get_data(as_text=True)
    assert "web-01" in html
    assert "Showing the list of cloud lab from" in html


def test_mint_failure_is_still_audited(client, auth, app, fake):
    from broker.services import audit

    auth.login()
    token = auth.csrf()
    fake.faults.keystone_down = True
    fake.revoke_tokens()
    response = client.post(f"/api/consoles/{server_id(1)}", headers={"X-CSRFToken": token})
    assert response.status_code == 503
    with app.app_context():
        [row] = audit.search(audit.Filter(action="console"))[0]
        assert row.outcome == "failed" and "identity service" in row.reason


def test_mint_failing_on_the_server_lookup_is_audited(client, auth, app, fake):
    from broker.services import audit

    auth.login()
    token = auth.csrf()
    fake.faults.fail_next["list"] = [500] * 3
    fake.faults.fail_next["show"] = [503] * 3
    state.of(app).consoles.inventory.ttl = 0
    response = client.post("/api/consoles/00000000-0000-4000-8000-000000000042", headers={"X-CSRFToken": token})
    # Cloud trouble, never "no such server": the same for every ID, so it tells nothing of which exist.
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "server_unconfirmed"
    with app.app_context():
        [row] = audit.search(audit.Filter(action="console"))[0]
        assert row.outcome == "failed" and "cloud lab answered HTTP 503" in row.reason


def test_probe_that_crashes_does_not_wedge_the_breaker(fake, monkeypatch):
    breaker = CircuitBreaker(threshold=1, cooldown=0)
    compute = make_client(fake, breaker=breaker)
    fake.faults.fail_next["list"] = [500] * 3
    with pytest.raises(errors.CloudError):
        compute.list_servers()
    assert breaker.is_open

    def explode(*args, **kwargs):
        raise RuntimeError("bug in a library")

    monkeypatch.setattr(compute.adapter, "request", explode)
    with pytest.raises(errors.CloudError, match="cloud lab failed in the broker"):
        compute.list_servers()  # the half-open probe
    assert not breaker.probing
    monkeypatch.undo()
    assert len(compute.list_servers()) == 7
    assert not breaker.is_open
