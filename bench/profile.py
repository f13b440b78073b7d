"""Where a mint's milliseconds go: py-spy samples the gunicorn workers while the bench mints at 50 ms.

py-spy (``bench/requirements.txt``) records every worker thread, waiting ones included
(``--idle``), without pausing the process (``--nonblocking``). Only samples of threads
inside gunicorn's ``handle_request`` count; each is put in the first bucket whose frames
it holds, and the buckets are turned into milliseconds per mint (samples / rate / mints).
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

from bench.measure import Bench
from bench.procs import VENV_BIN
from bench.report import Row
from bench.stats import ms

RATE = 250
IN_REQUEST = "ThreadWorker.handle_request"
AUDIT = "stage (broker/services/audit.py"
# The request's one commit (broker/web/commits.py): a mint's only write is its audit record.
COMMIT = "commit_request (broker/web/commits.py"
# (bucket, per request or per mint, frames any of which puts a sample in it); first match wins.
BUCKETS: list[tuple[str, str, tuple[str, ...]]] = [
    ("Nova call: waiting for the answer", "per mint", ("create_console|SocketIO.readinto",)),
    ("Nova call: keystoneauth1/requests work, TCP connect", "per mint", ("create_console",)),
    ("audit record: INSERT and COMMIT (the request's commit)", "per mint", (COMMIT,)),
    ("audit record: staging it (JSON log line, metrics)", "per mint", (AUDIT,)),
    ("read the request's JSON body", "per request", ("Request.get_data",)),
    ("access rules, finding the server, checking the URL", "per mint", ("mint (broker/web/api.py",)),
    ("load the signed-in user and session (flask-login, DB)", "per signed-in request", ("_load_user",)),
    ("Flask: session cookie, CSRF, hooks, headers, metrics", "per request", ("Flask.wsgi_app",)),
    ("gunicorn: read the request, write the response", "per request", (IN_REQUEST,)),
]


def record(pid: int, out: Path, seconds: float) -> subprocess.Popen:
    argv = [str(VENV_BIN / "py-spy"), "record", "--pid", str(pid), "--rate", str(RATE), "--duration"]
    argv += [str(int(seconds + 2)), "--format", "raw", "--output", str(out), "--nonblocking", "--idle"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stacks(path: Path) -> Counter:
    """py-spy's raw (collapsed) output: stack -> samples."""
    found: Counter = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                found[stack] += int(count)
    return found


def holds(stack: str, pattern: str) -> bool:
    """``a|b``: the stack has a frame containing ``a`` and one containing ``b`` (or ``b`` is the leaf's)."""
    return all(part in stack for part in pattern.split("|"))


def bucket(stack: str) -> str:
    for name, _, patterns in BUCKETS:
        if any(holds(stack, p) for p in patterns):
            return name
    return "other"


def mints(bench: Bench, latency: float, seconds: float) -> list[Row]:
    """Mint sequentially for ``seconds`` under py-spy; one row per bucket, in ms per mint."""
    label = f"profile of a {latency * 1000:.0f} ms mint"
    if not (VENV_BIN / "py-spy").exists():
        return [Row(label, "py-spy not installed: pip install -r bench/requirements.txt")]
    bench.main.control(latency=latency)
    outs = [bench.workdir / f"pyspy-{pid}.txt" for pid in bench.broker.workers()]
    spies = [record(pid, out, seconds) for pid, out in zip(bench.broker.workers(), outs, strict=True)]
    time.sleep(1.0)  # py-spy attaches
    count, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        bench.client.mint(bench.main_server, "main")
        count += 1
    errors = [spy.communicate(timeout=seconds + 30)[1] for spy in spies]
    found: Counter = Counter()
    for out in outs:
        found += stacks(out)
    return rows(label, found, count, errors)


def rows(label: str, found: Counter, count: int, errors: list[str]) -> list[Row]:
    sampled = Counter()
    for stack, samples in found.items():
        if IN_REQUEST in stack:
            sampled[bucket(stack)] += samples
    total = sum(sampled.values())
    if not total:
        why = "; ".join(e.strip().splitlines()[-1] for e in errors if e.strip()) or "no samples"
        return [Row(label, f"py-spy recorded nothing ({why})")]
    per_mint = lambda samples: samples / RATE / count  # noqa: E731
    out = [Row(f"{label}: sampled time in the request (py-spy)", f"{ms(per_mint(total))} per mint (n={count})")]
    for name, kind, _ in BUCKETS + [("other", "", ())]:
        if sampled[name]:
            metric = f"{label}: {name} ({kind})" if kind else f"{label}: {name}"
            out.append(Row(metric, ms(per_mint(sampled[name])), "", f"{sampled[name] / total:.0%}"))
    return out
