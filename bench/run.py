"""Start the fake clouds and the broker, run every measurement, print and save the table."""

from __future__ import annotations

import argparse
import contextlib
import logging
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import measure
from bench import procs
from bench.clients import BrokerClient
from bench.measure import Bench
from bench.report import Row
from bench.report import document
from bench.report import write

RESULTS = Path(__file__).resolve().parent / "results.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--servers", type=int, default=10_000, help="servers in the big cloud (10 pages of 1,000)")
    parser.add_argument("--mints", type=int, default=1000, help="mints at 0 ms (also counts Keystone tokens)")
    parser.add_argument("--slow-mints", type=int, default=200, help="mints at 50 ms upstream latency")
    parser.add_argument("--list-samples", type=int, default=100, help="requests per warm list/search figure")
    parser.add_argument("--storm", type=int, default=100, help="simultaneous mints against the 2 s cloud")
    parser.add_argument("--cli-calls", type=int, default=3, help="openstack CLI runs (0 skips it)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the Markdown table")
    return parser.parse_args(argv)


def step(name: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)


def start(stack: contextlib.ExitStack, workdir: Path, servers: int) -> Bench:
    """Two fake clouds (a big one and a small healthy one) and the broker on both."""
    step("starting fake clouds")
    clouds = {"main": procs.start_cloud("main", servers, workdir), "healthy": procs.start_cloud("healthy", 24, workdir)}
    for cloud in clouds.values():
        stack.callback(cloud.proc.stop)
    clouds_yaml = workdir / "clouds.yaml"
    procs.write_clouds_yaml(clouds, clouds_yaml)
    env = procs.broker_env(workdir, clouds_yaml, list(clouds), procs.free_port())
    password = secrets.token_urlsafe(16)
    procs.add_user(env, "bench", password)
    step("starting the broker (Procfile)")
    broker = procs.start_broker(env, workdir)
    stack.callback(broker.proc.stop)
    client = BrokerClient.sign_in(broker.url, "bench", password)
    stack.callback(client.close)
    return Bench(broker, client, clouds["main"], clouds["healthy"])


def measure_all(bench: Bench, args: argparse.Namespace) -> list[Row]:
    """Every figure, in an order that keeps each one's conditions clean."""
    step(f"cold list of {args.servers:,} servers")
    rows = measure.cold_list(bench)
    step("warming every worker")
    rounds = measure.warm_workers(bench)
    step(f"warm list and search ({rounds} warm-up rounds)")
    list_rows = measure.warm_list(bench, args.list_samples)
    step("broker floor (/healthz)")
    floor = measure.floor(bench)
    step(f"{args.mints} mints at 0 ms")
    fast, delta = measure.mints(bench, 0.0, args.mints)
    token = measure.token_row(delta, args.mints, bench)
    step(f"{args.slow_mints} mints at 50 ms")
    slow, _ = measure.mints(bench, 0.050, args.slow_mints)
    bench.main.control(latency=0.0)
    step(f"{args.storm} simultaneous mints at 2 s")
    storm = measure.slow_cloud(bench, args.storm)
    step("console page assets")
    assets = measure.console_assets(bench)
    step("openstacksdk and openstack CLI")
    context = measure.openstack_sdk(bench)
    if args.cli_calls:
        context += measure.openstack_cli(bench, args.cli_calls)
    return fast + slow + floor + [token] + rows + list_rows + storm + assets + context


def setup_line(bench: Bench, args: argparse.Namespace) -> str:
    workers = len(bench.broker.workers())
    return (
        f"broker: `{bench.broker.command}` ({workers} workers), fake clouds in their own processes "
        f"(main: {args.servers:,} servers, healthy: 24); `python -m bench`"
    )


def terminate(signum: int, frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C, so every process is stopped."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when it completed (targets missed or not), 1 when it could not run."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        try:
            bench = start(stack, workdir, args.servers)
            rows = measure_all(bench, args)
        except KeyboardInterrupt:
            print("interrupted; stopping everything", file=sys.stderr)
            return 130
        except Exception as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            for log in sorted(workdir.glob("*.log")):
                print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-1500:]}", file=sys.stderr)
            return 1
        text = document(rows, setup_line(bench, args))
    print(text)
    write(args.out, text)
    return 0
