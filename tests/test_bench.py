"""The benchmark still runs end to end and prints its table (a smoke run on tiny samples; no timing is judged).

The sections that start more brokers (cold first mint, two instances) are left to
``./dev bench --quick``, which runs everything in about three minutes; the relay part runs
on a handful of keystrokes, updates and consoles (graphical and serial), and one resume.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--backends=sqlite",
    "--servers=50",
    "--mints=5",
    "--slow-mints=3",
    "--list-samples=3",
    "--storm=5",
    "--storm-latency=0.2",
    "--cold-servers=50",
    "--cold-repeats=0",
    "--lifetimes=0",
    "--profile-seconds=0",
    "--sdk-calls=0",
    "--cli-calls=0",
    "--relay-keys=5",
    "--relay-seconds=0.3",
    "--relay-resumes=1",
    "--relay-idle=5",
    "--relay-first-frame=1",
]


def test_bench_prints_its_table(tmp_path):
    pytest.importorskip("keystoneauth1")
    out = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", *TINY, f"--out={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| metric | value | target | ratio / verdict |" in done.stdout
    for metric in (
        "mint, 50 ms upstream: broker / direct",
        "during the storm",
        "warm list JSON",
        "floor: broker / bare Flask",
    ):
        assert metric in done.stdout
    relay = done.stdout.partition("## Relay mode")[2]
    for metric in (
        "relay console page weight",
        "served compressed",
        "keystroke to echo: added by the relay",
        "one console's throughput",
        "reconnect gap",
        "5 idle consoles on one relay process",
        "serial byte to echo: added by the relay",
        "5 idle serial consoles, one per server, on one relay process",
        "5 more browsers on one server's serial console",
        "relay first frame vs bare noVNC page",
    ):
        assert metric in relay
    first_frame = next(line for line in relay.splitlines() if "relay first frame vs bare noVNC page" in line)
    if os.environ.get("CI") == "true":  # CI installs the lab's tools and Chromium: the frame is measured there
        assert "not measured" not in first_frame, first_frame
    assert out.read_text() in done.stdout
