"""Each measurement of the bench; every one returns table rows."""

from __future__ import annotations

import html
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from urllib.parse import urljoin
from urllib.parse import urlsplit

import requests
from keystoneauth1 import adapter as ks_adapter

from bench import clients
from bench import procs
from bench.backends import Backend
from bench.clients import BrokerClient
from bench.clients import expect
from bench.load import Load
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
from broker.demo.cloud import ONE_SERVER_LIST

SEARCH = "db-16"
# What a mint may add to the direct call at 0 ms upstream (at the median).
MINT_ADDED_AT_ZERO = 0.003
# The storm's targets: every mint answered within this, and the healthy cloud's p95 meanwhile.
STORM_WALL = 3.0
HEALTHY_TARGETS = {"list": 0.050, "mint": 0.100}
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
    cold: FakeCloud | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    backend: Backend | None = None
    password: str = ""
    main_server: str = ""
    healthy_server: str = ""
    adapter: ks_adapter.Adapter | None = None


def upstream_calls(cloud: FakeCloud) -> int:
    return sum(n for kind, n in cloud.counts().items() if kind != ONE_SERVER_LIST)  # those are lists too


def first_active(servers: list[dict], cloud: str) -> str:
    return next(s["id"] for s in servers if s["cloud"] == cloud and s["status"] == "ACTIVE")


# -- 3. the server list --------------------------------------------------------------------------


def cold_list(bench: Bench) -> list[Row]:
    """The first list after start (10 pages upstream) against the same pagination done directly.

    The broker waits at most its cold wait (3 s) for a walk; a slower walk answers without that
    cloud's servers first, so the time is taken until the list holds them.
    """
    start, asked = time.perf_counter(), 0
    servers: list[dict] = []
    while not servers and time.perf_counter() - start < 120:
        servers, asked = bench.client.servers(cloud="main"), asked + 1
    broker = time.perf_counter() - start
    if not servers:
        raise RuntimeError("the main cloud's list stayed empty for 120 s")
    bench.main_server = first_active(servers, "main")
    direct = Samples("direct cold")
    adapter = clients.direct_adapter(bench.main.os_env)
    count = direct.time(lambda: clients.direct_list(adapter))
    bench.adapter = adapter
    waited = f"; the first {asked - 1} answer(s) came before the walk ended" if asked > 1 else ""
    return [
        Row(
            f"cold list, {len(servers):,} servers: broker (first /api/servers) vs direct ksa pagination",
            f"{ms(broker)} vs {ms(direct.median)} ({count:,} servers{waited})",
            "fetched once, then cached",
            ratio(broker, direct.median),
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
    """GET /healthz on the broker and on a bare Flask app under the same gunicorn flags, interleaved.

    Both get the signed-in client's cookies, as a browser's request would carry them; the
    difference is what the broker's hooks and extensions cost every request.
    """
    bare = procs.start_bare_flask(bench.workdir)
    http = requests.Session()
    http.cookies.update(bench.client.http.cookies)
    try:
        broker, reference = Samples("broker"), Samples("bare")
        get_broker = lambda: bench.client.page("/healthz")  # noqa: E731
        get_bare = lambda: expect(http.get(f"{bare.url}/healthz", timeout=30))  # noqa: E731
        for _ in range(10):
            get_broker(), get_bare()
        for _ in range(count):
            broker.time(get_broker)
            reference.time(get_bare)
        # The same bare request after the worker sat idle as long as a 50 ms mint leaves it: what waking
        # gunicorn's threads costs any app, apart from the broker's work (see the 50 ms mint).
        rested = Samples("bare, rested")
        for _ in range(min(count, 100)):
            time.sleep(0.050)
            rested.time(get_bare)
    finally:
        http.close()
        bare.proc.stop()
    return [
        Row(f"floor: GET /healthz, broker median / p95 (n={count})", median_p95(broker), "", ""),
        Row(
            f"floor: GET /healthz, bare Flask app on the Procfile's gunicorn flags, median / p95 (n={count})",
            median_p95(reference),
            "",
            "",
        ),
        Row(
            "floor: broker / bare Flask, median and p95",
            f"{ms(broker.median - reference.median)} added at the median",
            "ratio <= 1.5",
            verdict(broker.median / reference.median <= 1.5, ratio(broker.median, reference.median))
            + f" (p95 {ratio(broker.p95, reference.p95)})",
        ),
        Row(
            f"context: the bare Flask /healthz after 50 ms idle, median / p95 (n={len(rested.seconds)})",
            f"{median_p95(rested)}: {ms(rested.median - reference.median)} more than back to back",
            "",
            "",
        ),
    ]


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
    target = "ratio <= 1.05" if latency else f"<= {ms(MINT_ADDED_AT_ZERO)} added"
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
        return verdict(broker.median - direct.median <= MINT_ADDED_AT_ZERO, text)
    return verdict(broker.median / direct.median <= 1.05 and broker.p95 / direct.p95 <= 1.05, text)


def token_row(delta: dict, count: int, bench: Bench) -> Row:
    """Keystone token requests during ``count`` broker mints (the direct client was already signed in)."""
    per_1000 = delta["token"] * 1000 / count
    other = sum(delta.values()) - delta["token"] - delta[ONE_SERVER_LIST] - 2 * count
    workers = len(bench.broker.workers())
    return Row(
        f"Keystone tokens per 1,000 mints ({count} measured)",
        f"{per_1000:g} new ({bench.main.counts()['token'] - 1} since start over {workers} workers); "
        f"{other} other upstream calls",
        "1 (one token serves every mint)",
        verdict(per_1000 <= 1),
    )


# -- 4. a slow cloud under load ------------------------------------------------------------------


def failure_kind(exc: Exception | str) -> str:
    found = HTTP_STATUS.search(str(exc))
    return found.group(0) if found else (exc.split(":")[0] if isinstance(exc, str) else type(exc).__name__)


def failure_summary(failures: list[Exception | str]) -> str:
    """``, 12 failed (HTTP 503 x12)``, or nothing."""
    if not failures:
        return ""
    kinds = Counter(failure_kind(f) for f in failures)
    return f", {len(failures)} failed (" + ", ".join(f"{k} x{n}" for k, n in kinds.most_common()) + ")"


HEALTHY_PROBES = {
    "healthy list (/api/servers?cloud=healthy)": "list",
    "healthy mint": "mint",
}


def start_probes(bench: Bench, idle: int) -> dict[str, Load]:
    """The healthy cloud's list and mint, each in a process of its own; idle samples taken one probe at a time."""
    base = bench.client.as_job() | {"job": "probe", "cloud": "healthy", "server": bench.healthy_server}
    running = {}
    for name, call in HEALTHY_PROBES.items():
        running[name] = Load(base | {"call": call, "idle": idle, "interval": 0.05})
        running[name].ready()
    return running


def run_storm(job: dict) -> dict:
    load = Load(job | {"job": "storm"})
    try:
        load.ready()
        load.send("go")
        return load.result()
    finally:
        load.stop()


def slow_cloud(bench: Bench, count: int = 100, latency: float = 2.0, idle: int = 30) -> list[Row]:
    """``count`` simultaneous mints on a cloud answering in ``latency`` s, healthy cloud probed meanwhile.

    The storm's clients, each probe, and the bench itself are separate processes, so
    neither the storm's 100 threads nor the bench delay the probes' own timing.
    """
    running: dict[str, Load] = {}
    try:
        running = start_probes(bench, idle)
        storm_job = bench.client.as_job() | {"call": "mint", "server": bench.main_server, "cloud": "main"}
        storm = Load(storm_job | {"job": "storm", "count": count})
        storm.ready()
        for probe in running.values():
            probe.send("go")
        bench.main.control(latency=latency)
        time.sleep(0.3)
        storm.send("go")
        done = storm.result()
        threads = bench.broker.threads()
        time.sleep(0.3)
        for probe in running.values():
            probe.send("stop")
        results = {name: probe.result() for name, probe in running.items()}
        direct_job = {"call": "direct_mint", "os_env": bench.main.os_env, "server": bench.main_server}
        direct = run_storm(direct_job | {"count": count})
    finally:
        for probe in running.values():
            probe.stop()
        bench.main.control(latency=0.0)
    wall, direct_wall = done["end"] - done["start"], direct["end"] - direct["start"]
    rows = [
        Row(
            f"{count} simultaneous mints, {latency:g} s upstream: wall time (broker vs direct ksa)",
            f"{wall:.2f} s vs {direct_wall:.2f} s{failure_summary(done['failures'])}; "
            f"threads per worker after: {threads}",
            f"all answered within {STORM_WALL:g} s",
            verdict(wall <= STORM_WALL and not done["failures"], ratio(wall, direct_wall)),
        )
    ]
    for name, result in results.items():
        during = [d for due, d in result["timings"] if done["start"] <= due < done["end"]]
        idle = Samples(name, result["idle"])
        rows.append(healthy_row(name, idle, during, result["failures"], HEALTHY_TARGETS[HEALTHY_PROBES[name]]))
    return rows


def healthy_row(name: str, idle: Samples, during: list[float], failures: list[str], target: float) -> Row:
    label = f"{name} p95 / max during the storm vs idle p95"
    wanted = f"stays fast (p95 < {target * 1000:.0f} ms)"
    if not during:
        return Row(label, "no request completed", wanted, verdict(False))
    p95 = percentile(during, 95)
    return Row(
        label,
        f"{ms(p95)} / {ms(max(during))} vs {ms(idle.p95)} (n={len(during)}){failure_summary(failures)}",
        wanted,
        verdict(p95 < target and not failures, ratio(p95, idle.p95)),
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
