"""The load generator, in processes of its own: ``python -m bench.load`` runs one job and reports timings.

The bench's own interpreter only starts jobs and reads their results, so 100 client threads
of a storm never share a GIL with the probes that time the healthy cloud meanwhile, nor with
the broker (which runs under gunicorn in its own processes anyway).

Protocol: the job is one JSON line on stdin; the process prints ``ready`` when set up, waits
for ``go`` (probes also for ``stop``) on stdin, and ends with one JSON line of results.
Times are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process of the machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests

from bench import clients
from bench.clients import BrokerClient
from bench.procs import ROOT


def client_from(job: dict, url: str = "") -> BrokerClient:
    http = requests.Session()
    http.cookies.update(job["cookies"])
    return BrokerClient(url or job["url"], http, job["csrf"])


def fresh(job: dict, call: Callable[[BrokerClient], object], url: str = "") -> Callable[[], object]:
    """``call`` on a new connection each time, as a new browser request."""

    def run() -> object:
        client = client_from(job, url)
        try:
            return call(client)
        finally:
            client.close()

    return run


def call_for(job: dict) -> Callable[[], object]:
    kind = job["call"]
    if kind == "mint":
        return fresh(job, lambda c: c.mint(job["server"], job["cloud"]))
    if kind == "list":
        return fresh(job, lambda c: c.servers(cloud=job["cloud"], limit=job.get("limit")))
    if kind == "direct_mint":
        adapter = clients.direct_adapter(job["os_env"])
        clients.direct_mint(adapter, job["server"])  # its token, before anything is timed
        return lambda: clients.direct_mint(adapter, job["server"])
    raise SystemExit(f"unknown call {kind}")


def error_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def storm(job: dict) -> dict:
    """``count`` calls released together by a barrier; wall time and failures."""
    call, count = call_for(job), job["count"]
    barrier = threading.Barrier(count + 1)
    failures: list[str] = []

    def one() -> None:
        barrier.wait()
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - a failure is a result
            failures.append(error_text(exc))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    handshake()
    barrier.wait()
    start = time.monotonic()
    for thread in threads:
        thread.join(timeout=120)
    return {"start": start, "end": time.monotonic(), "failures": failures}


def probe(job: dict) -> dict:
    """Sequential idle samples, then an open loop (one call every ``interval`` s, answered or not) until ``stop``."""
    call = call_for(job)
    for _ in range(3):
        call()
    idle = []
    for _ in range(job["idle"]):
        start = time.perf_counter()
        call()
        idle.append(time.perf_counter() - start)
    handshake()
    timings: list[tuple[float, float]] = []
    failures: list[str] = []
    stop = threading.Event()

    def one(due: float) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - a failure is a result
            failures.append(error_text(exc))
        timings.append((due, time.monotonic() - due))

    def loop() -> None:
        with ThreadPoolExecutor(64) as pool:
            due = time.monotonic()
            while not stop.is_set():
                pool.submit(one, due)
                due += job["interval"]
                time.sleep(max(0.0, due - time.monotonic()))

    runner = threading.Thread(target=loop, daemon=True)
    runner.start()
    sys.stdin.readline()  # "stop"
    stop.set()
    runner.join(timeout=120)
    return {"idle": idle, "timings": timings, "failures": failures}


def steady(job: dict) -> dict:
    """``threads`` closed loops, each request on a new connection to the next of ``urls``, for each of ``phases``.

    Before each phase it says ``ready`` and waits for ``go``; after each it prints that phase's
    result, so the bench can read the cloud's counters between phases.
    """
    calls = [fresh(job, lambda c: c.servers(cloud=job["cloud"], limit=job.get("limit")), url) for url in job["urls"]]
    for seconds in job["phases"][:-1]:
        print(json.dumps(phase(calls, job["threads"], seconds)), flush=True)
    return phase(calls, job["threads"], job["phases"][-1])


def phase(calls: list[Callable[[], object]], threads: int, seconds: float) -> dict:
    done, failures = [0], []
    handshake()
    deadline = time.monotonic() + seconds

    def loop(n: int) -> None:
        while time.monotonic() < deadline:
            try:
                calls[n % len(calls)]()
                done[0] += 1
            except Exception as exc:  # noqa: BLE001 - a failure is a result
                failures.append(error_text(exc))
                time.sleep(0.05)
            n += 1

    running = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(timeout=seconds + 120)
    return {"requests": done[0], "failures": failures}


JOBS = {"storm": storm, "probe": probe, "steady": steady}


def handshake() -> None:
    """Say ``ready``; wait for ``go``."""
    print("ready", flush=True)
    sys.stdin.readline()


def main() -> None:
    job = json.loads(sys.stdin.readline())
    result = JOBS[job["job"]](job)
    print(json.dumps(result), flush=True)


class Load:
    """One ``python -m bench.load`` process, driven from the bench."""

    def __init__(self, job: dict):
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "bench.load"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.send(json.dumps(job))

    def send(self, line: str) -> None:
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def ready(self) -> None:
        """Block until the job is set up (its idle samples taken, its threads started)."""
        line = self.popen.stdout.readline().strip()
        if line != "ready":
            self.popen.wait(timeout=30)
            raise RuntimeError(f"load generator failed before it was ready ({self.popen.returncode}): {line[:300]}")

    def result(self, timeout: float = 300, last: bool = True) -> dict:
        """The next result line (``last``: the job's final one, then the process ends)."""
        line = self.popen.stdout.readline()
        if last:
            self.popen.wait(timeout=timeout)
        if not line.strip():
            raise RuntimeError(f"load generator ended without a result ({self.popen.returncode})")
        return json.loads(line)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)


if __name__ == "__main__":
    main()
