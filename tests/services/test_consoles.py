"""The console service: which server an ID or name means for a user, never on out-of-date
details, never telling a forbidden server from an unknown one, and each cloud's trouble
shown only to those it concerns."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from broker import state
from broker.cloud import errors
from broker.cloud.registry import Cloud
from broker.cloud.registry import load_clouds
from broker.cloud.types import Timeouts
from broker.demo import serve
from broker.demo.cloud import OTHER_PROJECT_SERVER_ID
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import Server
from broker.demo.cloud import make_servers
from broker.extensions import db
from broker.models import AuditRecord
from broker.services import policy
from broker.services import users
from broker.services.consoles import NOT_FOUND
from broker.services.consoles import RELAY
from broker.services.consoles import ConsoleService
from broker.services.consoles import NoSuchServer
from broker.services.consoles import ViewerOnly
from broker.services.inventory import Inventory
from broker.web.errors import cloud_answer
from tests.support import make_client
from tests.support import server_id
from tests.support import wait_until

HANG = 30.0
UNKNOWN = server_id(99)
FORBIDDEN = server_id(3)  # db-01, outside the agent's web-* rule


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


@pytest.fixture(autouse=True)
def unhang(fake):
    yield
    fake.release_hangs()


@pytest.fixture
def far():
    """A second stand-in cloud, whose only server is web-far."""
    cloud = FakeCloud(secret="far", servers=[Server(id=server_id(201), name="web-far")])
    running = serve.start(cloud)
    yield cloud
    cloud.release_hangs()
    running.stop()


def build(app, clock, budget, *clouds: Cloud, cold_wait: float = 0.5) -> ConsoleService:
    """A service on ``clouds`` with the test's clock and budget, installed in the app."""
    service = ConsoleService(Inventory(list(clouds), ttl=30, clock=clock, cold_wait=cold_wait), lookup_budget=budget)
    state.of(app).consoles = service
    return service


def two_clouds(app, clock, budget, fake, far, cold_wait: float = 0.5) -> ConsoleService:
    """A service on two clouds: ``lab`` and ``far``."""
    return build(
        app,
        clock,
        budget,
        Cloud("lab", make_client(fake), 600, "idle"),
        Cloud("far", make_client(far, "far"), 600, "idle"),
        cold_wait=cold_wait,
    )


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
    db.session.commit()


def agent():
    return users.find("agent")


def console_records() -> list[AuditRecord]:
    return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == "console").order_by(AuditRecord.id)))


# -- (4) never granted on out-of-date details -------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "outcome"),
    [
        ("unchanged", "ok"),
        ("renamed out of the rule", "refused"),
        ("deleted", "failed"),
        ("answering errors", "unconfirmed"),
        ("not answering", "unconfirmed"),
    ],
)
def test_a_mint_from_an_out_of_date_list_rereads_the_server(service, fake, clock, budget, ctx, upstream, outcome):
    grant("agent", "lab", "web-*")
    # The first list, however long a loaded machine takes to walk it (each look waits at most cold_wait).
    wait_until(lambda: "web-01" in [s.name for s in service.overview(agent()).servers], timeout=10)
    fake.faults.malformed.add("list")  # every refresh of the list fails from now on
    clock.now = 100  # long past the cache lifetime
    if upstream == "renamed out of the rule":
        fake.servers[server_id(1)].name = "db-renamed"
    elif upstream == "deleted":
        del fake.servers[server_id(1)]
    elif upstream == "answering errors":
        fake.faults.fail_next["show"] = [500] * 3
    elif upstream == "not answering":
        fake.faults.hang["show"] = HANG
    if outcome == "ok":
        assert service.mint(agent(), server_id(1)).server.name == "web-01"
    elif outcome == "unconfirmed":
        with pytest.raises(errors.ServerUnconfirmed) as caught:
            service.mint(agent(), server_id(1))
        assert "could not confirm the current details of server web-01" in caught.value.message
    else:
        with pytest.raises(NoSuchServer, match=NOT_FOUND):
            service.mint(agent(), server_id(1))
    assert fake.counts["show"] >= 1  # asked the cloud, not the old list
    assert fake.counts["console"] == (1 if outcome == "ok" else 0)
    [record] = console_records()
    assert record.outcome == {"unconfirmed": "failed"}.get(outcome, outcome)
    assert budget.asked == []  # re-reading a server the user was granted spends no lookups
    # The list page keeps the old list, with its age.
    assert service.overview(agent()).stale["lab"].age == 100


# -- (5) forbidden and unknown IDs are indistinguishable --------------------------------


def spend_everything(service, fake, budget) -> None:
    budget.allow = 0


MISSES = [
    pytest.param(UNKNOWN, None, "failed", "no such server", id="unknown"),
    pytest.param(FORBIDDEN, None, "refused", "no access rule grants this server", id="forbidden"),
    pytest.param(OTHER_PROJECT_SERVER_ID, None, "failed", "no such server", id="another-project"),
    pytest.param(UNKNOWN, spend_everything, "failed", "lookups are spent", id="lookups-spent"),
    pytest.param(FORBIDDEN, spend_everything, "refused", "lookups are spent", id="forbidden-lookups-spent"),
]
# A cloud that cannot answer is not a miss: see "a slow cloud" below.


def assert_looks_unknown(service, call: str, ref: str) -> None:
    """The 404 (or empty chooser) of an unknown server, quickly: never waiting out a hung cloud."""
    began = time.monotonic()
    if call == "mint":
        with pytest.raises(NoSuchServer) as caught:
            service.mint(agent(), ref)
        assert caught.value.message == NOT_FOUND
        assert cloud_answer(caught.value) == (404, "server_not_found")
    else:
        assert service.resolve(agent(), ref) == []
    assert time.monotonic() - began < 2


@pytest.mark.parametrize("call", ["mint", "resolve"])
@pytest.mark.parametrize(("ref", "setup", "outcome", "reason"), MISSES)
def test_every_miss_looks_the_same_and_is_audited_truly(service, fake, budget, ctx, call, ref, setup, outcome, reason):
    grant("agent", "lab", "web-*")
    service.overview(agent())  # the list is cached and fresh
    if setup:
        setup(service, fake, budget)
    assert_looks_unknown(service, call, ref)
    assert fake.counts["console"] == 0
    [record] = console_records()
    assert (record.outcome, record.server_id, record.detail) == (outcome, ref, "load" if call == "mint" else "view")
    assert reason in record.reason
    if outcome == "refused":
        assert record.server_name == "db-01"


@pytest.mark.parametrize(("ref", "setup", "outcome", "reason"), MISSES)
def test_a_repeated_miss_is_answered_from_memory(service, fake, budget, clock, ctx, ref, setup, outcome, reason):
    grant("agent", "lab", "web-*")
    service.overview(agent())
    if setup:
        setup(service, fake, budget)
    with pytest.raises(NoSuchServer):
        service.mint(agent(), ref)
    fake.release_hangs()
    fake.faults.fail_next.clear()
    shows, asked = fake.counts["show"], len(budget.asked)
    with pytest.raises(NoSuchServer, match=NOT_FOUND):
        service.mint(agent(), ref)
    assert (fake.counts["show"], len(budget.asked)) == (shows, asked)  # no call upstream, no lookup spent
    second = console_records()[-1]
    assert second.outcome == outcome and "answered from memory" in second.reason
    # Remembered for the cache lifetime only.
    clock.now = 31
    budget.allow = 1000
    with pytest.raises(NoSuchServer):
        service.mint(agent(), ref)
    assert "answered from memory" not in console_records()[-1].reason


@pytest.mark.parametrize("ref", [UNKNOWN, FORBIDDEN])
def test_one_users_lookup_spares_the_next_user_the_call(app, service, fake, budget, ctx, ref):
    users.add("bea", "bea-password-long-1")
    db.session.commit()
    grant("agent", "lab", "web-*")
    grant("bea", "lab", "web-*")
    service.overview(agent())
    with pytest.raises(NoSuchServer):
        service.mint(agent(), ref)
    assert (fake.counts["show"], budget.asked) == (1, ["agent"])
    with pytest.raises(NoSuchServer):
        service.mint(users.find("bea"), ref)
    assert (fake.counts["show"], budget.asked) == (1, ["agent"])  # the cloud's answer is reused


def test_unknown_ids_cost_at_most_the_users_budget(service, fake, budget, ctx):
    budget.allow = 3
    service.overview(agent())
    for n in range(10):
        with pytest.raises(NoSuchServer):
            service.mint(agent(), server_id(500 + n))
    assert fake.counts["show"] == 3


def test_a_new_server_is_found_by_id_before_the_list_knows_it(service, fake, budget, ctx):
    service.overview(agent())
    fake.servers[server_id(50)] = Server(id=server_id(50), name="web-50")
    assert service.mint(agent(), server_id(50)).server.name == "web-50"
    assert (fake.counts["show"], budget.asked) == (1, ["agent"])


def test_an_unknown_id_asks_every_cloud_at_once(app, fake, far, clock, budget, ctx):
    service = two_clouds(app, clock, budget, fake, far)
    grant("agent", "*", "web-*")
    service.overview(agent())
    far.faults.hang["show"] = HANG
    began = time.monotonic()
    with pytest.raises(errors.CloudPending, match="^Cloud far has not answered in time"):
        service.mint(agent(), UNKNOWN)  # lab said no, far could not say: undecided, not unknown
    assert time.monotonic() - began < 2
    assert (fake.counts["show"], far.counts["show"], budget.asked) == (1, 1, ["agent"])
    assert "cloud far has not answered yet" in console_records()[-1].reason
    far.release_hangs()
    with pytest.raises(NoSuchServer):  # both have said no now (answers kept): no call, nothing spent
        service.mint(agent(), UNKNOWN)
    assert (fake.counts["show"], far.counts["show"], budget.asked) == (1, 1, ["agent"])


def test_a_mistyped_name_costs_no_lookup(service, fake, budget, ctx):
    service.overview(agent())
    assert service.resolve(agent(), "web-99") == []
    assert (fake.counts["show"], budget.asked, console_records()) == (0, [], [])


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
    # Long enough for both failing walks (each retried) to end on a loaded machine: their outcome is what is judged.
    service = two_clouds(app, clock, budget, fake, far, cold_wait=10)
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
    assert [s.cloud for s in service.resolve(admin, "web-02")] == ["good"]


# -- a cold worker: one GET by ID, never a walk of the whole list first ---------------------


@pytest.fixture
def big():
    """A cloud of 2,500 servers: three pages of 1,000."""
    cloud = FakeCloud(secret="big", servers=make_servers(2500), console_base="http://127.0.0.1:6080")
    running = serve.start(cloud)
    yield cloud
    cloud.release_hangs()
    running.stop()


def test_a_cold_mint_by_id_costs_one_lookup_and_the_mint(app, big, clock, budget, ctx):
    service = build(app, clock, budget, Cloud("lab", make_client(big), 600, "idle"))
    wanted = make_servers(2500)[0]
    big.faults.hang["list"] = HANG  # a list walk, if one started first, would hold the mint up
    began = time.monotonic()
    minted = service.mint(agent(), wanted.id)
    assert time.monotonic() - began < 2
    assert (minted.server.name, minted.server.status) == (wanted.name, "ACTIVE")
    assert (big.counts["show"], big.counts["console"]) == (1, 1)
    calls = [kind for kind in big.calls if kind in ("show", "list", "console")]
    assert calls[0] == "show" and calls.count("list") <= 1  # the list walk starts only after the lookup
    assert budget.asked == ["agent"]  # a lookup like any other (see ConsoleService._look_up)
    assert console_records()[-1].outcome == "ok"
    # The walk it started in the background warms this worker for the next requests.
    big.release_hangs()
    wait_until(lambda: big.counts["list"] >= 3, timeout=10, message="the background walk")
    assert len(service.overview(agent()).servers) == 2500
    assert big.counts["list"] == 3
    service.mint(agent(), make_servers(2500)[1].id)
    assert (big.counts["show"], budget.asked) == (1, ["agent"])  # now from the list: no lookup


def test_a_cold_console_page_by_id_costs_one_lookup(app, big, clock, budget, ctx):
    service = build(app, clock, budget, Cloud("lab", make_client(big), 600, "idle"))
    big.faults.hang["list"] = HANG
    wanted = make_servers(2500)[0]
    began = time.monotonic()
    assert [s.name for s in service.resolve(agent(), wanted.id)] == [wanted.name]
    service.mint(agent(), wanted.id)  # the page's mint: the lookup's answer is reused
    assert time.monotonic() - began < 2
    assert (big.counts["show"], big.counts["console"]) == (1, 1)


@pytest.mark.parametrize("call", ["mint", "resolve"])
@pytest.mark.parametrize(
    ("ref", "outcome", "reason"),
    [(UNKNOWN, "failed", "no such server"), (FORBIDDEN, "refused", "no access rule grants this server")],
    ids=["unknown", "forbidden"],
)
def test_a_cold_worker_answers_unknown_and_forbidden_ids_alike(service, fake, budget, ctx, call, ref, outcome, reason):
    grant("agent", "lab", "web-*")
    fake.faults.hang["list"] = HANG  # no list arrives while the ID is judged
    assert_looks_unknown(service, call, ref)
    assert (fake.counts["show"], fake.counts["console"], budget.asked) == (1, 0, ["agent"])
    [record] = console_records()
    assert (record.outcome, record.server_id, record.reason) == (outcome, ref, reason)
    assert record.server_name == ("db-01" if outcome == "refused" else "")


@pytest.mark.parametrize(
    ("ref", "outcome", "reason"),
    [
        (server_id(1), "ok", ""),
        (UNKNOWN, "failed", "no such server (the user's server lookups are spent for now)"),
        (FORBIDDEN, "refused", "no access rule grants this server as last listed"),
    ],
    ids=["granted", "unknown", "forbidden"],
)
def test_a_cold_worker_with_lookups_spent_judges_by_the_list(service, fake, budget, ctx, ref, outcome, reason):
    grant("agent", "lab", "web-*")
    budget.allow = 0
    if outcome == "ok":
        assert service.mint(agent(), ref).server.name == "web-01"
    else:
        with pytest.raises(NoSuchServer, match=NOT_FOUND):
            service.mint(agent(), ref)
    assert (fake.counts["show"], fake.counts["list"]) == (0, 1)  # no GET: one list walk judged it
    record = console_records()[-1]
    assert record.outcome == outcome and reason in record.reason


# -- a 409 keeps the list ---------------------------------------------------------------------


def test_a_stopped_server_updates_its_entry_and_keeps_the_list(service, fake, ctx):
    assert service.overview(agent()).servers  # the list is cached and fresh
    fake.servers[server_id(1)].status = "SHUTOFF"  # stopped since it was listed
    with pytest.raises(errors.ServerNotReady, match=r"web-01 is not running \(SHUTOFF\)") as caught:
        service.mint(agent(), server_id(1))
    assert caught.value.server_status == "SHUTOFF"
    assert [r.outcome for r in console_records()] == ["failed"]
    lists = fake.counts["list"]
    fake.faults.latency = 1.0  # a walk now would show in the time
    began = time.monotonic()
    listed = {s.id: s.status for s in service.overview(agent()).servers}
    assert time.monotonic() - began < 0.5
    assert fake.counts["list"] == lists  # the list was not thrown away
    assert listed[server_id(1)] == "SHUTOFF" and len(listed) == 7
    assert [s.status for s in service.overview(agent(), "web-01").servers] == ["SHUTOFF"]  # search too


# -- a slow cloud: cloud trouble, never "no such server" --------------------------------------


def mint_at_once(app, service, count: int, ref: str) -> list:
    """``count`` mints of ``ref`` by the agent let go together, each in its own thread and app
    context (so its own database session), as parallel requests are; what each returned or raised."""
    start = threading.Barrier(count)
    results: list = [None] * count

    def run(n: int) -> None:
        with app.app_context():
            user = users.find("agent")
            db.session.close()  # its connection back to the pool: fifty threads wait at the barrier
            start.wait()
            try:
                results[n] = service.mint(user, ref)
            except Exception as exc:  # noqa: BLE001 - the request's answer, handed back to the test
                results[n] = exc
            db.session.commit()  # as the request's boundary does, after its answer (broker.web.commits)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def answers(results: list) -> set:
    """What each result would answer over HTTP: 200, or the status of its cloud error."""
    return {200 if not isinstance(r, Exception) else cloud_answer(r)[0] for r in results}


def patient(fake: FakeCloud, name: str = "lab") -> Cloud:
    """A cloud whose client waits out a slow answer (its read timeout is longer than the latency)."""
    return Cloud(name, make_client(fake, name, timeouts=Timeouts(connect=2, read=10)), 600, "idle")


def test_parallel_mints_on_a_slow_cold_cloud_share_one_lookup(app, fake, clock, ctx):
    """A restart on a slow cloud: the issue's 50 mints of one server, with the deployment's budget."""
    budget = Budget(allow=30)  # LOOKUP_LIMIT: 30 per 10 minutes
    service = build(app, clock, budget, patient(fake), cold_wait=3)
    fake.faults.latency = 1.0  # every answer of the cloud takes a second (its list walk too)
    results = mint_at_once(app, service, 50, server_id(1))
    assert not [r for r in results if isinstance(r, NoSuchServer)]  # an existing server never looks unknown
    assert answers(results) <= {200, 503, 504}
    assert fake.counts["show"] == 1  # one GET by ID, shared by all fifty
    assert budget.asked == ["agent"]  # and paid for once: joining a lookup in flight costs nothing
    assert fake.counts["console"] == sum(1 for r in results if not isinstance(r, Exception))


@pytest.mark.parametrize("ref", [server_id(1), FORBIDDEN, UNKNOWN], ids=["granted", "forbidden", "unknown"])
def test_a_cloud_that_does_not_answer_is_cloud_trouble_and_not_remembered(app, fake, clock, budget, ctx, ref):
    grant("agent", "lab", "web-*")
    service = build(app, clock, budget, patient(fake))
    fake.faults.hang["show"] = HANG  # the GET by ID does not answer while the mints wait
    fake.faults.hang["list"] = HANG  # nor does the list walk the lookup starts
    results = mint_at_once(app, service, 20, ref)
    # The same answer for every kind of ID: it depends on the cloud, not on the ID.
    assert {type(r) for r in results} == {errors.CloudPending}
    assert {r.message for r in results} == {
        "Cloud lab has not answered in time, so the broker cannot tell yet whether you may open this server. "
        "Try again in a moment."
    }
    assert answers(results) == {504} and all(r.retry_after for r in results)
    assert (fake.counts["show"], budget.asked) == (1, ["agent"])  # one lookup for the twenty, paid once
    records = console_records()
    assert {(r.outcome, r.reason) for r in records} == {
        ("failed", f"{results[0].message} (cloud lab has not answered yet.)")
    }
    # The cloud answers again: nothing of the trouble was remembered as a miss.
    fake.release_hangs()
    if ref == server_id(1):
        assert service.mint(agent(), ref).server.name == "web-01"
    else:
        with pytest.raises(NoSuchServer, match=NOT_FOUND):
            service.mint(agent(), ref)
        assert "answered from memory" not in console_records()[-1].reason


@pytest.mark.parametrize("call", ["mint", "resolve"])
@pytest.mark.parametrize("ref", [FORBIDDEN, UNKNOWN, OTHER_PROJECT_SERVER_ID], ids=["forbidden", "unknown", "other"])
def test_a_failing_cloud_answers_every_id_alike_as_cloud_trouble(service, fake, budget, ctx, ref, call):
    grant("agent", "lab", "web-*")
    service.overview(agent())  # a warm list: db-01 (forbidden) is in it
    fake.faults.fail_next["show"] = [503] * 3  # the GET's three tries
    with pytest.raises(errors.ServerUnconfirmed) as caught:
        service.mint(agent(), ref) if call == "mint" else service.resolve(agent(), ref)
    assert caught.value.message == (
        "Cloud lab could not answer, so the broker cannot tell yet whether you may open this server. "
        "Try again in a moment."
    )
    assert cloud_answer(caught.value) == (503, "server_unconfirmed") and caught.value.retry_after
    [record] = console_records()
    assert (record.outcome, record.detail) == ("failed", "load" if call == "mint" else "view")
    assert "cloud lab answered HTTP 503" in record.reason
    assert service.mint(agent(), server_id(1)).server.name == "web-01"  # granted from the list meanwhile
    assert_looks_unknown(service, call, ref)  # the cloud is back: the true answer, asked again
    assert fake.counts["show"] == 4


def test_a_cloud_the_user_has_no_rule_on_changes_nothing_for_them(app, fake, far, clock, budget, ctx):
    service = two_clouds(app, clock, budget, fake, far)
    grant("agent", "lab", "web-*")
    service.overview(agent())
    far.faults.hang["show"] = HANG
    far.faults.hang["list"] = HANG
    for ref in (UNKNOWN, FORBIDDEN, server_id(201)):  # web-far is on far, where the agent has no rule
        assert_looks_unknown(service, "mint", ref)
    assert far.counts["show"] == 0  # not asked, not waited for


# -- console types ----------------------------------------------------------------------------


def serial_service(app, fake, clock, budget, hosts: tuple[str, ...] = ()) -> ConsoleService:
    cloud = Cloud("lab", make_client(fake), 600, "idle", console_types=("novnc", "serial"))
    service = ConsoleService(Inventory([cloud], ttl=30, clock=clock), console_hosts=hosts, lookup_budget=budget)
    state.of(app).consoles = service
    return service


def test_a_serial_console_is_minted_only_for_the_relay(app, fake, clock, budget, ctx):
    service = serial_service(app, fake, clock, budget)
    minted = service.mint(agent(), server_id(1), "lab", detail=RELAY, quiet=True, kind="serial")
    assert minted.console.url.startswith("ws://") and "?token=" in minted.console.url
    assert (minted.console.type, minted.console.protocol) == ("serial", "serial")
    with pytest.raises(ViewerOnly):
        service.mint(agent(), server_id(1), "lab", kind="serial")  # a page's mint: the URL would reach a browser
    assert fake.counts["console"] == 1


def test_a_console_type_the_cloud_does_not_offer_is_never_asked_of_it(service, fake, ctx):
    with pytest.raises(errors.ConsoleUnavailable, match="Cloud lab offers no serial consoles."):
        service.mint(agent(), server_id(1), "lab", detail=RELAY, kind="serial")
    assert fake.counts["console"] == 0
    [record] = console_records()
    assert (record.outcome, record.reason) == ("failed", "Cloud lab offers no serial consoles.")


def test_a_serial_console_on_a_host_off_the_allow_list_is_refused(app, fake, clock, budget, ctx):
    service = serial_service(app, fake, clock, budget, hosts=("console.example",))
    with pytest.raises(errors.CloudBadResponse, match="not in BROKER_CONSOLE_HOSTS"):
        service.mint(agent(), server_id(1), "lab", detail=RELAY, quiet=True, kind="serial")
