"""What the broker asks of a cloud: a cold worker's first mint by ID, and list walks per cache lifetime."""

from __future__ import annotations

import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from bench import clients
from bench import procs
from bench.clients import BrokerClient
from bench.load import Load
from bench.measure import Bench
from bench.procs import FakeCloud
from bench.report import Row
from bench.report import ratio
from bench.report import verdict
from bench.stats import Samples
from bench.stats import median_p95
from broker.demo.cloud import ONE_SERVER_LIST

PAGE = 1000


def delta(cloud: FakeCloud, before: dict[str, int]) -> dict[str, int]:
    after = cloud.counts()
    return {kind: after[kind] - before[kind] for kind in after if after[kind] != before[kind]}


def calls_text(calls: dict[str, int]) -> str:
    """``token 1, show 1, console 1``: upstream calls by kind."""
    return ", ".join(f"{kind} {n}" for kind, n in calls.items()) or "none"


def last_active(cloud: FakeCloud) -> str:
    """An ACTIVE server on the cloud's last page: a list walk would need every page to find it."""
    servers = clients.direct_servers(clients.direct_adapter(cloud.os_env))
    return next(s["id"] for s in reversed(servers) if s["status"] == "ACTIVE")


def settle(cloud: FakeCloud, timeout: float) -> dict[str, int]:
    """The cloud's counters once they stopped moving (a walk the mint started in the background landed)."""
    last, deadline = cloud.counts(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cloud.counts()
        if now == last:
            return now
        last = now
    return last


def fresh_broker(bench: Bench, name: str, **change: str) -> procs.Broker:
    """Another broker (the Procfile's line, 2 workers) on the same database, Redis and secret key; cold cloud only."""
    env = procs.on_port(bench.env, procs.free_port(), BROKER_CLOUDS="cold", WEB_CONCURRENCY="2", **change)
    return procs.start_broker(env, bench.workdir, name)


def cold_mint(bench: Bench, latency: float, repeats: int) -> list[Row]:
    """A fresh broker's first mint by ID (no list yet) against a fresh keystoneauth1 session's, both from cold."""
    cloud = bench.cold
    server = last_active(cloud)
    cloud.control(latency=latency)
    broker, direct = Samples("broker cold mint"), Samples("direct cold mint")
    broker_calls: list[dict] = []
    background: list[dict] = []
    direct_calls: list[dict] = []
    try:
        for n in range(repeats):
            bench.backend.reset_shared_cache()
            started = fresh_broker(bench, f"cold-{n}")
            try:
                client = BrokerClient.sign_in(started.url, "bench", bench.password)
                before = cloud.counts()
                broker.time(partial(client.mint, server, "cold"))
                broker_calls.append(delta(cloud, before))
                background.append(later(cloud, before, broker_calls[-1], latency))
                client.close()
            finally:
                started.proc.stop()
            before = cloud.counts()
            direct.time(lambda: clients.direct_mint(clients.direct_adapter(cloud.os_env), server))
            direct_calls.append(delta(cloud, before))
    finally:
        cloud.control(latency=0.0)
    return cold_rows(latency, repeats, broker, direct, broker_calls, direct_calls, background)


def cold_rows(
    latency: float,
    repeats: int,
    broker: Samples,
    direct: Samples,
    broker_calls: list[dict],
    direct_calls: list[dict],
    background: list[dict],
) -> list[Row]:
    """Time against direct, in upstream round trips: by ID costs 2 more (versions, show), a 3-page walk first 4+."""
    label = f"cold first mint by ID, fresh broker, {latency * 1000:.0f} ms upstream, server on page 3 of 3"
    label += f" (n={repeats})"
    extra = (broker.median - direct.median) / latency
    pairs = zip(broker_calls, background, strict=True)
    walked = max(during.get("list", 0) + after.get("list", 0) for during, after in pairs)
    return [
        Row(
            f"{label}: broker vs direct ksa (fresh session), median / p95",
            f"{median_p95(broker)} vs {median_p95(direct)}; {extra:.1f} upstream round trips more than direct",
            "by ID: 2 more (versions, show); a walk first: 4+",
            verdict(extra < 3, ratio(broker.median, direct.median)),
        ),
        Row(
            f"{label}: upstream calls, broker vs direct",
            f"{calls_text(broker_calls[0])} vs {calls_text(direct_calls[0])} until the answer; "
            f"{walked} list pages in all (the walk the lookup starts for later requests, not awaited)",
            "",
            "",
        ),
    ]


def later(cloud: FakeCloud, before: dict[str, int], during: dict[str, int], latency: float) -> dict[str, int]:
    """Calls after the answer (the list walk a cold lookup starts for the next requests)."""
    settled = settle(cloud, timeout=10 + 20 * latency)
    return {kind: settled[kind] - before[kind] - during.get(kind, 0) for kind in settled}


def walks(bench: Bench, servers: int, ttl: int, lifetimes: int) -> list[Row]:
    """2 instances x 2 workers on one database (and Redis) listing one cloud without pause: walks per lifetime."""
    cloud, pages = bench.cold, math.ceil(servers / PAGE)
    bench.backend.reset_shared_cache()
    started: list[procs.Broker] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            starting = [
                pool.submit(fresh_broker, bench, f"instance-{n}", BROKER_SERVER_CACHE_TTL=str(ttl)) for n in (0, 1)
            ]
        for future in starting:
            with contextlib.suppress(Exception):  # raised again below, once every started instance will be stopped
                started.append(future.result())
        for future in starting:
            future.result()
        client = BrokerClient.sign_in(started[0].url, "bench", bench.password)
        job = client.as_job() | {"job": "steady", "urls": [b.url for b in started], "cloud": "cold", "limit": 50}
        client.close()
        # The first lifetime starts cold (every process walks once without Redis); then the measured ones.
        warm, measured = steady(cloud, job | {"phases": [ttl, ttl * lifetimes], "threads": 8})
    finally:
        for broker in started:
            broker.proc.stop()
    # A worker that shows another's list first checks that it reaches the cloud itself, once per lifetime: a
    # list of one server, not a page of a walk.
    probes = measured["calls"].get(ONE_SERVER_LIST, 0)
    first = (warm["calls"].get("list", 0) - warm["calls"].get(ONE_SERVER_LIST, 0)) / pages
    walked = (measured["calls"].get("list", 0) - probes) / pages
    per_lifetime = walked / lifetimes
    failures = len(warm["failures"]) + len(measured["failures"])
    return [
        Row(
            f"list walks per cache lifetime ({ttl} s), 2 instances x 2 workers, {pages}-page cloud, "
            f"{lifetimes} lifetimes of steady listing",
            f"{per_lifetime:.2f} ({walked:g} walks; {first:g} in the first lifetime, from cold; besides, {probes} "
            f"one-server checks that a worker reaches the cloud itself); {measured['requests']:,} lists answered, "
            f"{failures} failed",
            "1",
            verdict(walked <= lifetimes + 1 and not failures, f"x{per_lifetime:.2f} of target"),
        )
    ]


def steady(cloud: FakeCloud, job: dict) -> list[dict]:
    """Run a steady-listing load generator; each phase's result with the upstream calls it caused."""
    load = Load(job)
    results = []
    try:
        for n, seconds in enumerate(job["phases"]):
            load.ready()
            before = cloud.counts()
            load.send("go")
            result = load.result(timeout=seconds + 120, last=n == len(job["phases"]) - 1)
            result["calls"] = delta(cloud, before)
            results.append(result)
    finally:
        load.stop()
    return results
