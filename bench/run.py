"""Start the fake clouds and the broker, run every measurement, print and save the table.

Everything runs once per backend (SQLite with in-process caches, then PostgreSQL with Redis),
each on fresh clouds, a fresh database and a fresh broker; the table puts them side by side.
The relay part (bench/relay.py) then runs once on processes of its own, in a section of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import secrets
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import backends
from bench import measure
from bench import procs
from bench import profile
from bench import relay
from bench import upstream
from bench.backends import Backend
from bench.clients import BrokerClient
from bench.measure import Bench
from bench.report import Row
from bench.report import Section
from bench.report import document
from bench.report import write

RESULTS = Path(__file__).resolve().parent / "results.md"
# --quick: every figure, on smaller samples, in about three minutes for both backends.
QUICK = {
    "servers": 2000,
    "mints": 100,
    "slow_mints": 40,
    "list_samples": 20,
    "cli_calls": 0,
    "cold_repeats": 1,
    "cache_ttl": 2,
    "lifetimes": 2,
    "profile_seconds": 3.0,
    "relay_keys": 50,
    "relay_seconds": 1.0,
    "relay_resumes": 3,
    "relay_idle": 100,
    "relay_first_frame": 3,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller samples: a smoke run of everything")
    parser.add_argument(
        "--backends", default="sqlite,pg", help="comma-separated: sqlite (in-process), pg (+ Redis); empty: none"
    )
    parser.add_argument("--servers", type=int, default=10_000, help="servers in the big cloud (10 pages of 1,000)")
    parser.add_argument("--mints", type=int, default=1000, help="mints at 0 ms (also counts Keystone tokens)")
    parser.add_argument("--slow-mints", type=int, default=200, help="mints at 50 ms upstream latency")
    parser.add_argument("--list-samples", type=int, default=100, help="requests per warm list/search figure")
    parser.add_argument("--storm", type=int, default=100, help="simultaneous mints against the slow cloud")
    parser.add_argument("--storm-latency", type=float, default=2.0, help="the slow cloud's latency (s)")
    parser.add_argument("--cold-servers", type=int, default=2500, help="servers in the cold cloud (3 pages)")
    parser.add_argument("--cold-latency", type=float, default=0.2, help="upstream latency (s) for the cold mint")
    parser.add_argument("--cold-repeats", type=int, default=3, help="fresh brokers for the cold mint (0 skips it)")
    parser.add_argument("--cache-ttl", type=int, default=5, help="BROKER_SERVER_CACHE_TTL for the walk count")
    parser.add_argument("--lifetimes", type=int, default=4, help="cache lifetimes to count walks over (0 skips it)")
    parser.add_argument("--profile-seconds", type=float, default=10.0, help="py-spy sampling of 50 ms mints (0: off)")
    parser.add_argument("--sdk-calls", type=int, default=50, help="openstacksdk create_console calls (0 skips it)")
    parser.add_argument("--cli-calls", type=int, default=3, help="openstack CLI runs (0 skips it)")
    parser.add_argument("--relay", action=argparse.BooleanOptionalAction, default=True, help="the relay part")
    parser.add_argument("--relay-keys", type=int, default=300, help="keystrokes each way, relay vs direct (0 skips)")
    parser.add_argument("--relay-seconds", type=float, default=3.0, help="full-screen updates each way (0 skips)")
    parser.add_argument("--relay-resumes", type=int, default=8, help="upstream closes to time the resume of (0 skips)")
    parser.add_argument("--relay-idle", type=int, default=1000, help="idle consoles on one relay (0 skips)")
    parser.add_argument(
        "--relay-first-frame", type=int, default=5, help="warm page loads to the first frame, relay vs bare (0 skips)"
    )
    parser.add_argument(
        "--relay-recording",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="recording's figures: relay CPU with it (--relay-seconds), an hour's size, playback in Chromium",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the Markdown table")
    if argv is None:
        argv = sys.argv[1:]
    if "--quick" in argv:
        parser.set_defaults(**QUICK)
    return parser.parse_args(argv)


def step(name: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)


def start(stack: contextlib.ExitStack, workdir: Path, args: argparse.Namespace, backend: Backend) -> Bench:
    """Three fake clouds (a big one, a small healthy one, a cold one) and the broker on the first two."""
    step(f"{backend.label}: starting fake clouds")
    sizes = {"main": args.servers, "healthy": 24, "cold": args.cold_servers}
    with ThreadPoolExecutor(len(sizes)) as pool:
        starting = {name: pool.submit(procs.start_cloud, name, size, workdir) for name, size in sizes.items()}
    for future in starting.values():
        with contextlib.suppress(Exception):  # raised again just below, once every started cloud is in the stack
            stack.callback(future.result().proc.stop)
    clouds = {name: future.result() for name, future in starting.items()}
    clouds_yaml = workdir / "clouds.yaml"
    procs.write_clouds_yaml(clouds, clouds_yaml)
    env = procs.broker_env(clouds_yaml, ["main", "healthy"], procs.free_port(), backend.env)
    password = secrets.token_urlsafe(16)
    procs.add_user(env, "bench", password)
    step(f"{backend.label}: starting the broker (Procfile)")
    broker = procs.start_broker(env, workdir)
    stack.callback(broker.proc.stop)
    client = BrokerClient.sign_in(broker.url, "bench", password)
    stack.callback(client.close)
    return Bench(broker, client, clouds["main"], clouds["healthy"], clouds["cold"], env, workdir, backend, password)


def measure_all(bench: Bench, args: argparse.Namespace, context: bool) -> list[Row]:
    """Every figure, in an order that keeps each one's conditions clean."""
    step(f"cold list of {args.servers:,} servers")
    rows = measure.cold_list(bench)
    step("warming every worker")
    rounds = measure.warm_workers(bench)
    step(f"warm list and search ({rounds} warm-up rounds)")
    list_rows = measure.warm_list(bench, args.list_samples)
    step("broker floor (/healthz)")
    floor = measure.floor(bench, args.slow_mints)
    step(f"{args.mints} mints at 0 ms")
    fast, delta = measure.mints(bench, 0.0, args.mints)
    token = measure.token_row(delta, args.mints, bench)
    step(f"{args.slow_mints} mints at 50 ms")
    slow, _ = measure.mints(bench, 0.050, args.slow_mints)
    profiled = []
    if args.profile_seconds:
        step(f"profile: {args.profile_seconds:g} s of mints at 50 ms under py-spy")
        profiled = profile.mints(bench, 0.050, args.profile_seconds)
    bench.main.control(latency=0.0)
    step(f"{args.storm} simultaneous mints at {args.storm_latency:g} s, healthy cloud probed (own processes)")
    storm = measure.slow_cloud(bench, args.storm, args.storm_latency, idle=min(30, args.list_samples))
    step("console page assets")
    assets = measure.console_assets(bench)
    cold, walked = [], []
    if args.cold_repeats:
        step(f"cold first mint by ID on fresh brokers ({args.cold_repeats}x)")
        cold = upstream.cold_mint(bench, args.cold_latency, args.cold_repeats)
    if args.lifetimes:
        step(f"list walks, 2 instances x 2 workers, {args.lifetimes} x {args.cache_ttl} s")
        walked = upstream.walks(bench, args.cold_servers, args.cache_ttl, args.lifetimes)
    extra = []
    if context and args.sdk_calls:
        step("openstacksdk")
        extra += measure.openstack_sdk(bench, args.sdk_calls)
    if context and args.cli_calls:
        step("openstack CLI")
        extra += measure.openstack_cli(bench, args.cli_calls)
    return fast + slow + floor + profiled + [token] + rows + list_rows + storm + assets + cold + walked + extra


def setup_line(bench: Bench, args: argparse.Namespace) -> str:
    workers = len(bench.broker.workers())
    return (
        f"broker: `{bench.broker.command}` ({workers} workers), fake clouds in their own processes "
        f"(main: {args.servers:,} servers, healthy: 24, cold: {args.cold_servers:,}), load generators in "
        f"their own processes; `python -m bench{' --quick' if args.quick else ''}`"
    )


def terminate(signum: int, frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C, so every process is stopped."""
    raise KeyboardInterrupt


def run_backend(backend: Backend, args: argparse.Namespace, workdir: Path, context: bool) -> tuple[list[Row], str]:
    """One column set: fresh clouds, database and broker; everything stopped and dropped after."""
    with contextlib.ExitStack() as stack:
        backend.prepare(workdir)
        stack.callback(backend.cleanup)
        try:
            bench = start(stack, workdir, args, backend)
            return measure_all(bench, args, context), setup_line(bench, args)
        except KeyboardInterrupt:
            raise
        except Exception:
            for log in sorted(workdir.glob("*.log")):
                print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-1500:]}", file=sys.stderr)
            raise


def run_relay(args: argparse.Namespace, workdir: Path) -> Section:
    """The relay part on its own processes; a failure is said in its section (the backends' figures stay)."""
    workdir.mkdir()
    try:
        return relay.run(args, workdir, step)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        for log in sorted(workdir.glob("*.log")):
            print(f"--- relay/{log.name} (tail)\n{log.read_text(errors='replace')[-1500:]}", file=sys.stderr)
        print(f"relay part failed: {exc!r}", file=sys.stderr)
        return Section(relay.TITLE, f"Not measured: the relay part failed ({type(exc).__name__}: {exc}).", [])


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when it completed (targets missed or not), 1 when it could not run."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    columns: dict[str, list[Row]] = {}
    notes, setup, sections = [], "", []
    names = [name for name in args.backends.split(",") if name]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        try:
            for backend in backends.make(names):
                missing = backends.available(backend.name)
                if missing:
                    notes.append(f"{backend.label}: not measured ({missing}).")
                    print(f"skipping {backend.label}: {missing}", file=sys.stderr)
                    continue
                workdir = Path(tmp) / backend.name
                workdir.mkdir()
                columns[backend.label], setup = run_backend(backend, args, workdir, context=not columns)
            if args.relay:
                sections.append(run_relay(args, Path(tmp) / "relay"))
        except KeyboardInterrupt:
            print("interrupted; stopping everything", file=sys.stderr)
            return 130
        except Exception as exc:
            print(f"bench failed: {exc!r}", file=sys.stderr)
            return 1
    if names and not columns:
        print("bench failed: no backend could run", file=sys.stderr)
        return 1
    text = document(columns, setup, notes, sections)
    print(text)
    write(args.out, text)
    # A relay part that could not run is in the results, and fails the run.
    return 1 if any(not section.rows for section in sections) else 0
