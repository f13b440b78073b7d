"""The relay bench's processes: console proxy, two stand-in clouds, the broker and its relay; all stopped at the end.

Each runs in its own process so the relay's RSS and CPU are the relay's alone: the demo VNC
sessions live in the proxy process, not in the relay (as the relay's demo mount would have them).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from urllib.parse import urlsplit

from bench import procs
from bench.clients import BrokerClient
from bench.clients import expect
from bench.procs import FakeCloud
from bench.procs import Proc
from bench.viewer import Viewer

# Servers in each stand-in cloud; the proxy makes the same ones to check their tokens.
SERVERS = 24
# Console token lifetimes (s): "steady" outlives the run; "expiring" has its upstream closed by the proxy.
STEADY_TTL = 3600
EXPIRING_TTL = 2
# The stand-in cloud with serial consoles (and its serial proxy), ``python -m bench.serial``.
SERIAL_CLOUD = "serial"
# BROKER_MAX_CONSOLES_PER_USER for the bench's broker: more than --relay-idle ever asks for at full size.
MAX_CONSOLES = 100_000


@dataclass
class RelayStack:
    """Everything the relay measurements share."""

    broker: procs.Broker
    relay: Proc
    proxy: Proc
    clouds: dict[str, FakeCloud]
    client: BrokerClient
    server: str = ""
    # The relay's RSS once it listens, before any console.
    rss_at_start: int = 0
    # The broker's and the relay's environment (another relay process of the same broker starts with it).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """The console page's origin, which a ticket is bound to."""
        return self.broker.url

    def cookie(self, client: BrokerClient | None = None) -> str:
        """The Cookie header a page of this sign-in sends with its websocket."""
        jar = (client or self.client).http.cookies.get_dict()
        return "; ".join(f"{name}={value}" for name, value in jar.items())

    def ticket(
        self, cloud: str, client: BrokerClient | None = None, server: str = "", kind: str = "novnc"
    ) -> tuple[str, str]:
        """``POST /api/relay-tickets/<id>?type=``: the relay's websocket URL and a fresh ticket (``server``: the
        steady cloud's one unless named)."""
        client = client or self.client
        response = client.http.post(
            f"{client.url}/api/relay-tickets/{server or self.server}",
            params={"cloud": cloud, "type": kind},
            headers={"X-CSRFToken": client.csrf},
            timeout=30,
        )
        body = expect(response, 201).json()
        return body["url"], body["ticket"]

    async def through_relay(self, cloud: str, client: BrokerClient | None = None) -> Viewer:
        """A viewer on the relay, as the console page opens it: a ticket, the session cookie, the page's Origin."""
        url, ticket = await asyncio.to_thread(self.ticket, cloud, client)
        return await Viewer.open(url, origin=self.origin, cookie=self.cookie(client), ticket=ticket)

    async def through_relay_at(self, port: int, cloud: str) -> Viewer:
        """As ``through_relay``, through another relay process of the same broker, listening on ``port``."""
        url, ticket = await asyncio.to_thread(self.ticket, cloud)
        url = urlsplit(url)._replace(netloc=f"127.0.0.1:{port}").geturl()
        return await Viewer.open(url, origin=self.origin, cookie=self.cookie(), ticket=ticket)

    def rss(self) -> int:
        """The relay process's resident memory in bytes (VmRSS)."""
        return rss(self.relay.popen.pid)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def raise_fd_limit(needed: int) -> int:
    """Raise this process's open-file limit (which the processes it starts inherit) towards ``needed``; the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def procfile_line(name: str) -> str:
    """The Procfile's ``name:`` line."""
    for line in (procs.ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line[len(name) + 1 :].strip()
    raise RuntimeError(f"Procfile has no {name}: line")


def wait_for_line(proc: Proc, prefix: str, what: str) -> None:
    def printed() -> bool:
        proc.check_alive()
        return any(line.startswith(prefix) for line in proc.log.read_text().splitlines())

    try:
        procs.wait_for(printed, what)
    except BaseException:
        proc.stop()
        raise


def start_proxy(logdir: Path) -> tuple[Proc, int]:
    """``python -m bench.vncproxy``: the demo console proxy with token expiry enforced."""
    port = procs.free_port()
    argv = [sys.executable, "-m", "bench.vncproxy", "--port", str(port), "--servers", str(SERVERS)]
    proxy = procs.spawn("vncproxy", argv, procs.clean_env(), logdir)
    wait_for_line(proxy, "ready", "console proxy")
    return proxy, port


def start_cloud(name: str, console_ttl: int, proxy_port: int, logdir: Path) -> FakeCloud:
    """A stand-in Keystone + Nova whose console URLs name the proxy and live ``console_ttl`` seconds."""
    port = procs.free_port()
    argv = [sys.executable, "-m", "broker.demo.serve", "--port", str(port), "--servers", str(SERVERS), "--control"]
    argv += ["--console-ttl", str(console_ttl), "--console-base", f"http://127.0.0.1:{proxy_port}"]
    proc = procs.spawn(name, argv, procs.clean_env(), logdir)
    wait_for_line(proc, "export OS_IDENTITY_API_VERSION", f"stand-in cloud {name}")
    return FakeCloud(proc, f"http://127.0.0.1:{port}", procs.exported(proc.log))


class SerialCloud(FakeCloud):
    """The stand-in cloud of the serial figures: its clouds.yaml entry offers serial consoles, and only them."""

    def clouds_yaml_entry(self) -> dict:
        return super().clouds_yaml_entry() | {"console_types": ["serial"]}


def start_serial_cloud(servers: int, logdir: Path) -> SerialCloud:
    """``python -m bench.serial``: a stand-in cloud of ``servers`` running servers and its serial proxy, one process."""
    port, proxy_port = procs.free_port(), procs.free_port()
    argv = [sys.executable, "-m", "bench.serial", "--port", str(port), "--proxy-port", str(proxy_port)]
    argv += ["--servers", str(servers), "--console-ttl", str(STEADY_TTL)]
    proc = procs.spawn(SERIAL_CLOUD, argv, procs.clean_env(), logdir)
    wait_for_line(proc, "ready", "stand-in cloud with serial consoles")
    return SerialCloud(proc, f"http://127.0.0.1:{port}", procs.exported(proc.log))


def wait_for_port(proc: Proc, port: int, what: str) -> None:
    def listening() -> bool:
        proc.check_alive()
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    try:
        procs.wait_for(listening, what, timeout=60)
    except BaseException:
        proc.stop()
        raise


def start(stack: contextlib.ExitStack, workdir: Path, serial_servers: int = 2) -> RelayStack:
    """Proxy, clouds (one with ``serial_servers`` serial consoles), broker (Procfile ``web:``) and relay (Procfile
    ``relay:``) in relay mode on a fresh SQLite."""
    proxy, proxy_port = start_proxy(workdir)
    stack.callback(proxy.stop)
    clouds = {}
    for name, ttl in (("steady", STEADY_TTL), ("expiring", EXPIRING_TTL)):
        clouds[name] = start_cloud(name, ttl, proxy_port, workdir)
        stack.callback(clouds[name].proc.stop)
    clouds[SERIAL_CLOUD] = start_serial_cloud(serial_servers, workdir)
    stack.callback(clouds[SERIAL_CLOUD].proc.stop)
    clouds_yaml = workdir / "clouds.yaml"
    procs.write_clouds_yaml(clouds, clouds_yaml)
    relay_port = procs.free_port()
    database = {"BROKER_DATABASE_URL": f"sqlite:///{workdir / 'broker.db'}"}
    env = procs.broker_env(clouds_yaml, list(clouds), procs.free_port(), database) | {
        "BROKER_CONSOLE_MODE": "relay",
        "BROKER_RELAY_URL": f"ws://127.0.0.1:{relay_port}/relay",
        "RELAY_BIND": f"127.0.0.1:{relay_port}",
        # The idle-console figure opens its hundreds of consoles as the bench's one user.
        "BROKER_MAX_CONSOLES_PER_USER": str(MAX_CONSOLES),
    }
    password = secrets.token_urlsafe(16)
    procs.add_user(env, "bench", password)
    broker = procs.start_broker(env, workdir)
    stack.callback(broker.proc.stop)
    relay = procs.spawn("relay", ["sh", "-c", "exec " + procfile_line("relay")], env, workdir)
    stack.callback(relay.stop)
    wait_for_port(relay, relay_port, "relay")
    client = BrokerClient.sign_in(broker.url, "bench", password)
    stack.callback(client.close)
    running = RelayStack(broker, relay, proxy, clouds, client, env=env)
    running.rss_at_start = running.rss()
    running.server = first_server(client)
    return running


def first_server(client: BrokerClient) -> str:
    """A running server of the steady cloud (the expiring one has the same servers), once the list has it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [s for s in client.servers(cloud="steady") if s["status"] == "ACTIVE"]
        if found:
            return found[0]["id"]
        time.sleep(0.2)
    raise RuntimeError("the steady cloud's list stayed empty for 60 s")


def expiries(proxy: Proc) -> list[float]:
    """When the proxy closed a session at its token's expiry (time.monotonic() of the machine)."""
    lines = proxy.log.read_text().splitlines()
    return [float(line.split()[1]) for line in lines if line.startswith("expired ")]


def start_unbudgeted(stack: contextlib.ExitStack, running: RelayStack, logdir: Path) -> int:
    """A second relay of the same broker without per-connection budgets (``bench.unbudgeted``); its port."""
    port = procs.free_port()
    env = running.env | {"RELAY_BIND": f"127.0.0.1:{port}"}
    proc = procs.spawn("relay-unbudgeted", [sys.executable, "-m", "bench.unbudgeted"], env, logdir)
    stack.callback(proc.stop)
    wait_for_port(proc, port, "relay without budgets")
    return port
