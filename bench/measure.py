"""Each measurement of the bench; every one returns table rows."""

from __future__ import annotations

import html
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import urljoin
from urllib.parse import urlsplit

from keystoneauth1 import adapter as ks_adapter

from bench import clients
from bench.clients import BrokerClient
from bench.procs import VENV_BIN
from bench.procs import Broker
from bench.procs import FakeCloud
from bench.procs import clean_env
from bench.report import Row
from bench.report import ratio
from bench.report import verdict
from bench.stats import Samples
from bench.stats import median_p95
from bench.stats import ms
from bench.stats import percentile

SEARCH = "db-16"
STATIC_REF = re.compile(r'(?:href|src)="(/static/[^"]+)"')
HTTP_STATUS = re.compile(r"HTTP \d{3}")
DATA_ROWS = re.compile(r'data-rows="(\d+)"')
JS_IMPORT = re.compile(r'(?:\bfrom\s*|\bimport\s*\(?\s*)["\'](\.{1,2}/[^"\']+|/static/[^"\']+)["\']')


@dataclass
class Bench:
    """Everything the measurements share: the broker, the clouds, a signed-in client."""

    broker: Broker
    client: BrokerClient
    main: FakeCloud
    healthy: FakeCloud
    main_server: str = ""
    healthy_server: str = ""
    adapter: ks_adapter.Adapter | None = None


def upstream_calls(cloud: FakeCloud) -> int:
    return sum(cloud.counts().values())


def first_active(servers: list[dict], cloud: str) -> str:
    return next(s["id"] for s in servers if s["cloud"] == cloud and s["status"] == "ACTIVE")


# -- 3. the server list --------------------------------------------------------------------------


def cold_list(bench: Bench) -> list[Row]:
    """The first list after start (10 pages upstream) against the same pagination done directly."""
    broker = Samples("broker cold")
    servers = broker.time(lambda: bench.client.servers(cloud="main"))
    bench.main_server = first_active(servers, "main")
    direct = Samples("direct cold")
    adapter = clients.direct_adapter(bench.main.os_env)
    count = direct.time(lambda: clients.direct_list(adapter))
    bench.adapter = adapter
    return [
        Row(
            f"cold list, {len(servers):,} servers: broker (first /api/servers) vs direct ksa pagination",
            f"{ms(broker.median)} vs {ms(direct.median)} ({count:,} servers)",
            "fetched once, then cached",
            ratio(broker.median, direct.median),
        )
    ]


def warm_workers(bench: Bench, rounds: int = 30) -> int:
    """Touch every worker until a round of fresh connections makes no upstream call; the rounds it took."""
    bench.healthy_server = first_active(bench.client.servers(cloud="healthy"), "healthy")
    workers = max(1, len(bench.broker.workers()))
    quiet = 0
    for done in range(1, rounds + 1):
        before = upstream_calls(bench.main) + upstream_calls(bench.healthy)
        with ThreadPoolExecutor(4 * workers) as pool:
            list(pool.map(lambda _: touch(bench), range(4 * workers)))
        calls = upstream_calls(bench.main) + upstream_calls(bench.healthy) - before
        # Each touch mints twice (two console calls); anything beyond that was a cold worker.
        quiet = quiet + 1 if calls == 2 * 4 * workers else 0
        if quiet == 2:
            return done
    return rounds


def touch(bench: Bench) -> None:
    """A new connection lists both clouds and mints on each."""
    client = bench.client.clone()
    try:
        client.servers(SEARCH)
        client.mint(bench.main_server, "main")
        client.mint(bench.healthy_server, "healthy")
    finally:
        client.close()


def page_rows(bench: Bench) -> int | None:
    """How many rows the list page renders (its ``data-rows``); its search asks the API for as many."""
    found = DATA_ROWS.search(bench.client.page("/").decode())
    return int(found.group(1)) if found else None


def warm_list(bench: Bench, count: int) -> list[Row]:
    """Warm list and search as the list page asks them (JSON, ``limit`` = its rows) and as HTML, p50/p95."""
    c, rows = bench.client, page_rows(bench)
    limit = f"limit={rows}" if rows else "no limit"
    probes: list[tuple[str, Callable[[], object]]] = [
        (f"warm list JSON (/api/servers, {limit})", lambda: c.servers(limit=rows)),
        (f"warm search JSON (/api/servers?q={SEARCH}, {limit})", lambda: c.servers(SEARCH, limit=rows)),
        (f"warm search page (/?q={SEARCH}, HTML)", lambda: c.page("/", q=SEARCH)),
        ("warm list page (/, HTML)", lambda: c.page("/")),
        ("context: warm list JSON, every server (/api/servers)", lambda: c.servers()),
    ]
    out = []
    for name, call in probes:
        samples = repeat(call, count, warmup=5)
        if name.startswith("context"):
            out.append(Row(f"{name} p50 / p95", median_p95(samples)))
        else:
            out.append(Row(f"{name} p50 / p95", median_p95(samples), "p95 < 50 ms", verdict(samples.p95 < 0.050)))
    size = len(c.page("/"))
    out.append(Row("list page size (/, HTML, uncompressed)", f"{size / 1024:,.0f} KB ({rows} rows rendered)", "", ""))
    return out


def floor(bench: Bench, count: int = 200) -> list[Row]:
    """GET /healthz (no session, no cloud): what gunicorn and HTTP cost before any broker work."""
    samples = repeat(lambda: bench.client.page("/healthz"), count, warmup=10)
    return [Row(f"context: broker floor, GET /healthz median / p95 (n={count})", median_p95(samples), "", "")]


def repeat(call: Callable[[], object], count: int, warmup: int = 0) -> Samples:
    for _ in range(warmup):
        call()
    samples = Samples("")
    for _ in range(count):
        samples.time(call)
    return samples


# -- 1 and 2. mints -------------------------------------------------------------------------------


def mints(bench: Bench, latency: float, count: int) -> tuple[list[Row], dict]:
    """Broker and direct mints, interleaved so drift hits both alike; rows and the upstream call counts."""
    bench.main.control(latency=latency)
    broker, direct = Samples("broker"), Samples("direct")
    mint_broker = lambda: bench.client.mint(bench.main_server, "main")  # noqa: E731
    mint_direct = lambda: clients.direct_mint(bench.adapter, bench.main_server)  # noqa: E731
    for _ in range(10):
        mint_broker(), mint_direct()
    before = bench.main.counts()
    for _ in range(count):
        broker.time(mint_broker)
        direct.time(mint_direct)
    after = bench.main.counts()
    delta = {kind: after[kind] - before[kind] for kind in after}
    label = f"{latency * 1000:.0f} ms upstream"
    target = "ratio <= 1.05" if latency else ""
    rows = [
        Row(f"mint, {label}: broker median / p95 (n={count})", median_p95(broker), "", ""),
        Row(f"mint, {label}: direct ksa median / p95 (n={count})", median_p95(direct), "", ""),
        Row(
            f"mint, {label}: broker / direct, median and p95",
            f"{ms(broker.median - direct.median)} added at the median",
            target,
            mint_verdict(broker, direct, latency),
        ),
    ]
    return rows, delta


def mint_verdict(broker: Samples, direct: Samples, latency: float) -> str:
    text = f"{ratio(broker.median, direct.median)} / {ratio(broker.p95, direct.p95)}"
    if not latency:
        return text
    return verdict(broker.median / direct.median <= 1.05 and broker.p95 / direct.p95 <= 1.05, text)


def token_row(delta: dict, count: int, bench: Bench) -> Row:
    """Keystone token requests during ``count`` broker mints (the direct client was already signed in)."""
    per_1000 = delta["token"] * 1000 / count
    other = sum(delta.values()) - delta["token"] - 2 * count
    workers = len(bench.broker.workers())
    return Row(
        f"Keystone tokens per 1,000 mints ({count} measured)",
        f"{per_1000:g} new ({bench.main.counts()['token'] - 1} since start over {workers} workers); "
        f"{other} other upstream calls",
        "1 (one token serves every mint)",
        verdict(per_1000 <= 1),
    )


# -- 4. a slow cloud under load ------------------------------------------------------------------


@dataclass
class Probe:
    """A call started every ``interval`` seconds whether or not the last one answered (open loop).

    A closed loop would take few samples while the broker stalls, and its p95 would hide the stall.
    """

    call: Callable[[], object]
    stop: threading.Event
    interval: float = 0.05
    timings: list[tuple[float, float]] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)

    def run(self) -> None:
        with ThreadPoolExecutor(64) as pool:
            due = time.perf_counter()
            while not self.stop.is_set():
                pool.submit(self.one, due)
                due += self.interval
                time.sleep(max(0.0, due - time.perf_counter()))

    def one(self, due: float) -> None:
        try:
            self.call()
        except Exception as exc:  # noqa: BLE001 - a failed probe is a result, kept for the table
            self.failures.append(exc)
        self.timings.append((due, time.perf_counter() - due))

    def within(self, start: float, end: float) -> list[float]:
        return [d for s, d in self.timings if s >= start and s < end]


def on_new_connection(bench: Bench, call: Callable[[BrokerClient], object]) -> Callable[[], object]:
    """``call`` with a signed-in client on a connection of its own, as a new browser request."""

    def run() -> object:
        client = bench.client.clone()
        try:
            return call(client)
        finally:
            client.close()

    return run


def probes(bench: Bench, stop: threading.Event) -> list[tuple[str, Probe, threading.Thread]]:
    """The healthy cloud's list and mint, each started 20 times a second, in threads."""
    calls = {
        "healthy list (/api/servers?cloud=healthy)": on_new_connection(bench, lambda c: c.servers(cloud="healthy")),
        "healthy mint": on_new_connection(bench, lambda c: c.mint(bench.healthy_server, "healthy")),
    }
    running = []
    for name, call in calls.items():
        probe = Probe(call, stop)
        thread = threading.Thread(target=probe.run, daemon=True, name=name)
        running.append((name, probe, thread))
    return running


def storm(call: Callable[[], object], count: int) -> tuple[float, list[Exception]]:
    """``count`` calls released together; wall time and failures."""
    barrier = threading.Barrier(count + 1)
    failures = []

    def one() -> None:
        barrier.wait()
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - counted, shown below
            failures.append(exc)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join(timeout=120)
    return time.perf_counter() - start, failures


def failure_kind(exc: Exception) -> str:
    found = HTTP_STATUS.search(str(exc))
    return found.group(0) if found else type(exc).__name__


def failure_summary(failures: list[Exception]) -> str:
    """``, 12 failed (HTTP 503 x12)``, or nothing."""
    if not failures:
        return ""
    kinds = Counter(failure_kind(f) for f in failures)
    return f", {len(failures)} failed (" + ", ".join(f"{k} x{n}" for k, n in kinds.most_common()) + ")"


def slow_cloud(bench: Bench, count: int = 100, latency: float = 2.0) -> list[Row]:
    """``count`` simultaneous mints on a cloud answering in ``latency`` s, healthy cloud probed meanwhile."""
    stop = threading.Event()
    running = probes(bench, stop)
    idle = {name: repeat(probe.call, 30, warmup=3) for name, probe, _ in running}
    for _, _, thread in running:
        thread.start()
    bench.main.control(latency=latency)
    try:
        time.sleep(0.3)
        start = time.perf_counter()
        wall, failed = storm(on_new_connection(bench, lambda c: c.mint(bench.main_server, "main")), count)
        threads = bench.broker.threads()
        end = start + wall
        time.sleep(0.3)
        stop.set()
        direct_wall, _ = storm(lambda: clients.direct_mint(bench.adapter, bench.main_server), count)
    finally:
        stop.set()
        bench.main.control(latency=0.0)
    for _, _, thread in running:
        thread.join(timeout=120)
    rows = [
        Row(
            f"{count} simultaneous mints, {latency:g} s upstream: wall time (broker vs direct ksa)",
            f"{wall:.2f} s vs {direct_wall:.2f} s{failure_summary(failed)}; threads per worker after: {threads}",
            f"about {latency:g} s",
            verdict(wall <= latency * 1.25 and not failed, ratio(wall, direct_wall)),
        )
    ]
    for name, probe, _ in running:
        during = probe.within(start, end)
        rows.append(healthy_row(name, idle[name], during, probe.failures))
    return rows


def healthy_row(name: str, idle: Samples, during: list[float], failures: list[Exception]) -> Row:
    if not during:
        return Row(f"{name} during the storm", "no request completed", "stays fast", verdict(False))
    p95 = percentile(during, 95)
    return Row(
        f"{name} p95 / max during the storm (n={len(during)}) vs idle p95",
        f"{ms(p95)} / {ms(max(during))} vs {ms(idle.p95)}{failure_summary(failures)}",
        "stays fast (p95 < 50 ms)",
        verdict(p95 < 0.050 and not failures, ratio(p95, idle.p95)),
    )


# -- 5. the console page's weight -----------------------------------------------------------------


def console_assets(bench: Bench) -> list[Row]:
    """The console page's HTML plus every /static/ file it (or its modules) loads, as served."""
    page = bench.client.page(f"/console/{bench.main_server}", cloud="main")
    sizes = {"html": len(page)}
    queue = [html.unescape(ref) for ref in STATIC_REF.findall(page.decode())]
    seen: set[str] = set()
    while queue:
        ref = queue.pop()
        path = urlsplit(ref).path
        if path in seen:
            continue
        seen.add(path)
        body = bench.client.page(ref)
        kind = path.rsplit(".", 1)[-1]
        sizes[kind] = sizes.get(kind, 0) + len(body)
        if kind in ("js", "mjs"):
            queue += [urljoin(path, found) for found in JS_IMPORT.findall(body.decode())]
    total = sum(sizes.values())
    parts = " + ".join(f"{kind} {size / 1024:.1f}" for kind, size in sizes.items())
    return [
        Row(
            f"console page assets (HTML + {len(seen)} static files, uncompressed)",
            f"{total / 1024:.1f} KB ({parts})",
            "< 50 KB",
            verdict(total < 50 * 1024, f"{total / (50 * 1024):.0%} of budget"),
        )
    ]


# -- 6. for context: the OpenStack client and SDK ---------------------------------------------------


def openstack_cli(bench: Bench, count: int = 3) -> list[Row]:
    """``openstack console url show --novnc`` per call, new process each time as people run it."""
    binary = VENV_BIN / "openstack"
    label = f"context: `openstack console url show --novnc` per call (n={count})"
    if not binary.exists():
        return [Row(label, "not installed: pip install -r bench/requirements.txt")]
    env = clean_env() | bench.main.os_env
    argv = [str(binary), "console", "url", "show", "--novnc", bench.main_server, "-f", "value"]
    argv += ["-c", "url"]
    samples = Samples("cli")
    for _ in range(count):
        done = samples.time(lambda: subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120))
        if done.returncode or "token" not in done.stdout:
            raise RuntimeError(f"openstack console url show failed: {done.stderr.strip()[-500:]}")
    return [Row(label, median_p95(samples))]


def openstack_sdk(bench: Bench, count: int = 50) -> list[Row]:
    """openstacksdk's ``create_console`` on a warm connection."""
    import openstack

    env = bench.main.os_env
    conn = openstack.connect(
        auth_url=env["OS_AUTH_URL"],
        username=env["OS_USERNAME"],
        password=env["OS_PASSWORD"],
        project_id=env["OS_PROJECT_ID"],
        user_domain_name=env["OS_USER_DOMAIN_NAME"],
        region_name=env["OS_REGION_NAME"],
        load_envvars=False,
        load_yaml_config=False,
    )
    try:
        call = lambda: conn.compute.create_console(bench.main_server, console_type="novnc")  # noqa: E731
        samples = repeat(call, count, warmup=3)
        before = upstream_calls(bench.main)
        call()
        per_call = upstream_calls(bench.main) - before
    finally:
        conn.close()
    return [
        Row(
            f"context: openstacksdk `create_console`, warm connection (n={count})",
            f"{median_p95(samples)}, {per_call} upstream call(s) each",
            "",
            "",
        )
    ]
