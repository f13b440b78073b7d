"""``python -m lab`` (``./dev lab``): the console lab and a broker on it, for a person to try.

Stops everything on Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time

from lab.lab import REPO
from lab.lab import Lab
from lab.processes import LabError

# Logs, tokens and the broker's database; kept after the lab stops, wiped when it starts again.
WORKDIR = REPO / "lab-run"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    parser.add_argument("--port", type=int, default=5000, help="broker port on 127.0.0.1 (default 5000)")
    parser.add_argument("--proxy-port", type=int, default=6080, help="websockify/noVNC port (default 6080, as Nova)")
    parser.add_argument("--ttl", type=int, default=120, help="console token lifetime in seconds (Nova: 600)")
    parser.add_argument("--margin", type=int, default=30, help="refresh this many seconds before expiry")
    parser.add_argument("--idle-swap", type=int, default=20, help="seconds without focus before a fresh URL swaps in")
    parser.add_argument("--user", default="helpdesk", help="the user to create (default helpdesk)")
    parser.add_argument("--password", help="that user's password (default: a random one, printed)")
    return parser.parse_args(argv)


def banner(lab: Lab) -> str:
    """What a person needs to use the lab."""
    lines = [
        "Console lab is up (Ctrl-C stops everything).",
        f"  Broker:   {lab.broker_url}/",
        f"  Sign in:  {lab.username} / {lab.password}",
        f"  Proxy:    {lab.proxy_url}/ (websockify + noVNC; tokens live {lab.console_ttl} s)",
        "  Servers:",
    ]
    for server in lab.servers:
        where = f"VNC 127.0.0.1:{server.vnc_port}, QEMU pid {server.guest.pid}" if server.guest else "no guest"
        lines.append(f"    {server.name:<10} {server.status:<8} {lab.broker_url}/console/{server.name}  ({where})")
    lines.append(f"  Logs:     {lab.workdir}")
    return "\n".join(lines)


def wait_until_stopped(lab: Lab) -> None:
    """Sleep until Ctrl-C or SIGTERM, or until a lab process dies on its own."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        dead = [child for child in lab.children if not child.alive()]
        if dead:
            raise LabError(f"{dead[0].name} exited; log {dead[0].log}:\n{dead[0].tail()}")
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = {"password": args.password} if args.password else {}
    shutil.rmtree(WORKDIR, ignore_errors=True)
    lab = Lab(
        console_ttl=args.ttl,
        refresh_margin=args.margin,
        idle_swap_after=args.idle_swap,
        broker_port=args.port,
        proxy_port=args.proxy_port,
        username=args.user,
        workdir=WORKDIR,
        **options,
    )
    try:
        with lab:
            print(banner(lab), flush=True)
            wait_until_stopped(lab)
    except KeyboardInterrupt:
        pass
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    finally:
        print("Console lab stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
