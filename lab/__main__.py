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
from lab.lab import LabServer
from lab.lab import default_servers
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
    parser.add_argument("--relay", action="store_true", help="console pages through the broker's relay")
    parser.add_argument("--relay-port", type=int, default=5001, help="the relay's port with --relay (default 5001)")
    parser.add_argument(
        "--enforce", action="store_true", help="the proxy closes consoles when their token expires (as Nova can)"
    )
    parser.add_argument("--linux", action="store_true", help="add shell-01, a Linux guest with a shell")
    parser.add_argument("--power", action="store_true", help="the user may start and reboot servers (batch-01 is off)")
    return parser.parse_args(argv)


def make_lab(args: argparse.Namespace) -> Lab:
    """The lab the command line asks for."""
    options = {"password": args.password} if args.password else {}
    servers = default_servers()
    if args.linux:
        servers.append(LabServer("shell-01", ip="10.0.0.14", guest="linux"))
    return Lab(
        console_ttl=args.ttl,
        refresh_margin=args.margin,
        idle_swap_after=args.idle_swap,
        broker_port=args.port,
        proxy_port=args.proxy_port,
        relay_port=args.relay_port if args.relay else 0,
        username=args.user,
        servers=servers,
        enforce_session_timeout=args.enforce,
        console_mode="relay" if args.relay else "iframe",
        power=args.power,
        workdir=WORKDIR,
        **options,
    )


def banner(lab: Lab) -> str:
    """What a person needs to use the lab."""
    expiry = "sessions closed at expiry" if lab.enforce_session_timeout else "sessions outlive them"
    lines = [
        "Console lab is up (Ctrl-C stops everything).",
        f"  Broker:   {lab.broker_url}/ ({lab.console_mode} consoles)",
        f"  Sign in:  {lab.username} / {lab.password}",
        f"  Proxy:    {lab.proxy_url}/ (websockify + noVNC; tokens live {lab.console_ttl} s, {expiry})",
    ]
    lines.append(f"  Serial:   {lab.serial_proxy_url}/?token=... (websockify in front of each guest's serial port)")
    if lab.relay_port:
        lines.append(f"  Relay:    {lab.relay_url} (relay consoles, and serial consoles in either mode)")
    lines.append("  Servers:")
    for server in lab.servers:
        where = f"VNC 127.0.0.1:{server.vnc_port}, QEMU pid {server.process.pid}" if server.process else "no guest"
        if server.serial_port:
            where += f", serial port 127.0.0.1:{server.serial_port}"
        if server.serial:
            where += f", serial log {server.serial}"
        lines.append(f"    {server.name:<10} {server.status:<8} {lab.broker_url}/console/{server.name}  ({where})")
    lines.append(f"  Logs:     {lab.workdir}")
    return "\n".join(lines)


def wait_for_shells(lab: Lab) -> None:
    """Wait until every Linux guest is at its prompt, saying how long each took."""
    for server in lab.servers:
        if server.runs_linux:
            print(f"{server.name}: shell ready {lab.wait_for_shell(server.name):.1f} s after QEMU started", flush=True)


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
    shutil.rmtree(WORKDIR, ignore_errors=True)
    lab = make_lab(args)
    try:
        with lab:
            wait_for_shells(lab)
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
