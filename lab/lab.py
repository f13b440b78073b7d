"""The console lab: QEMU guests behind websockify and noVNC, a stand-in Nova, and a broker.

Everything listens on 127.0.0.1 and every process is started, supervised and stopped
by its PID. Use it as a context manager::

    with Lab(console_ttl=20) as lab:
        print(lab.broker_url, lab.username, lab.password)

Guests are SeaBIOS boot menus (``LabServer(name)``) or Linux with a shell on the screen and one on
the serial port (``LabServer(name, guest="linux")``); the broker runs in iframe or relay console mode.
Each guest's serial port is a TCP server on loopback (one client at a time, as QEMU's are under Nova),
reached through a second websockify standing in for nova-serialproxy; the cloud offers both kinds.
The cloud's power actions reach the guests: a start boots a SHUTOFF server's guest, a stop ends
it, a reboot resets it; ``Lab(power=True)`` lets the lab's user run them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from broker.demo import serve
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import Server
from broker.demo.cloud import break_server
from lab.guest import READY
from lab.guest import default_cache_dir
from lab.guest import initramfs
from lab.guest import missing_tools as missing_linux_tools
from lab.guest import newest_kernel
from lab.guest import qemu_args as linux_qemu_args
from lab.processes import Child
from lab.processes import LabError
from lab.processes import free_port
from lab.processes import port_is_free
from lab.processes import spawn
from lab.processes import wait_for_port
from lab.proxy import TokenStore

REPO = Path(__file__).resolve().parent.parent
NOVNC = Path("/usr/share/novnc")
QEMU = "qemu-system-x86_64"
VNC_BASE = 5900
# openstack.config names a cloud configured by OS_* variables "envvars".
CLOUD_NAME = "envvars"
GUESTS = ("bios", "linux")
CONSOLE_MODES = ("iframe", "relay")
# The broker's default BROKER_RELAY_PATH.
RELAY_PATH = "/relay"


@dataclass
class LabServer:
    """One server of the lab cloud; an ACTIVE one has a QEMU guest behind it (a SHUTOFF one gets it when started).

    ``guest``: "bios" (SeaBIOS's boot menu, no disk) or "linux" (a shell on the screen and on the
    serial port, whose output is logged in ``serial``). ``serial_port``: QEMU's serial port, a TCP server.
    """

    name: str
    status: str = "ACTIVE"
    ip: str = "10.0.0.10"
    id: str = ""
    guest: str = "bios"
    vnc_port: int = 0
    monitor: Path | None = None
    serial: Path | None = None
    serial_port: int = 0
    process: Child | None = None
    started_at: float = 0.0
    # Where the serial log stood at the last reset: waits look only at what came after it.
    serial_mark: int = 0

    def __post_init__(self) -> None:
        if self.guest not in GUESTS:
            raise ValueError(f"guest must be one of {GUESTS}, got {self.guest!r}")
        self.id = self.id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"console-lab/{self.name}"))

    @property
    def runs_linux(self) -> bool:
        return self.status == "ACTIVE" and self.guest == "linux"

    def to_cloud(self) -> Server:
        server = Server(self.id, self.name, self.status, addresses={"lab-net": [{"addr": self.ip, "version": 4}]})
        # An ERROR server carries the fault Nova records with it (scheduling failed).
        return break_server(server) if self.status == "ERROR" else server


def default_servers() -> list[LabServer]:
    """Two running guests and one stopped server (for the "not running" path)."""
    return [
        LabServer("web-01", ip="10.0.0.11"),
        LabServer("db-01", ip="10.0.0.12"),
        LabServer("batch-01", status="SHUTOFF", ip="10.0.0.13"),
    ]


def missing_tools(linux: bool = False) -> list[str]:
    """The system tools the lab needs that this machine lacks (empty when all are there).

    ``linux``: also what a Linux guest needs (a kernel and busybox-static).
    """
    missing = []
    if shutil.which(QEMU) is None:
        missing.append(f"{QEMU} (Debian package qemu-system-x86)")
    if not (NOVNC / "vnc_lite.html").is_file():
        missing.append(f"{NOVNC}/vnc_lite.html (Debian package novnc)")
    if linux:
        missing += missing_linux_tools()
    return missing


def free_vnc_display(start: int = 20) -> int:
    """A VNC display number whose port (5900 + N) is free on loopback."""
    for display in range(start, start + 200):
        if port_is_free(VNC_BASE + display):
            return display
    raise LabError("no free VNC display between :20 and :219")


@dataclass
class Lab:
    """The whole lab; ``start()``/``stop()`` or ``with Lab() as lab``.

    ``enforce_session_timeout``: the proxy closes a websocket when its token expires (Nova's
    ``[consoleauth] enforce_session_timeout``). ``console_mode="relay"``: the broker runs in relay
    mode and the lab starts its relay (``python -m broker.relay``) too. ``power``: the lab's user
    may run power actions.
    """

    console_ttl: int = 20
    refresh_margin: int = 8
    idle_swap_after: int = 2
    with_broker: bool = True
    broker_port: int = 0
    proxy_port: int = 0
    # The stand-in nova-serialproxy's port (its console URLs are ws://127.0.0.1:<port>/?token=...).
    serial_proxy_port: int = 0
    relay_port: int = 0
    username: str = "helpdesk"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    allowed_origins: tuple[str, ...] = ()
    servers: list[LabServer] = field(default_factory=default_servers)
    enforce_session_timeout: bool = False
    console_mode: str = "iframe"
    # The lab's user may start and reboot servers (its rule gets ``--power``).
    power: bool = False
    # How long a power action keeps its transitional state (task "powering-on", status REBOOT) before
    # the guest is started or reset, so a page following the server sees it as a person would.
    action_seconds: float = 2.0
    # The broker's database (an SQLAlchemy URL, e.g. PostgreSQL's); empty: a SQLite file in the workdir.
    database_url: str = ""
    workdir: Path | None = None
    # Where the Linux guest's initramfs is kept between runs (default ~/.cache/console-lab).
    cache_dir: Path | None = None
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.console_mode not in CONSOLE_MODES:
            raise ValueError(f"console_mode must be one of {CONSOLE_MODES}, got {self.console_mode!r}")
        self._own_workdir = self.workdir is None
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="console-lab-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tokens = TokenStore(self.workdir / "tokens")
        # Serial tokens apart: as in Nova, a VNC console's token opens nothing at the serial proxy.
        self.serial_tokens = TokenStore(self.workdir / "serial-tokens")
        self.cloud: FakeCloud | None = None
        self._cloud_running: serve.Running | None = None
        self._broker_secret = secrets.token_urlsafe(32)

    # -- lifecycle ----------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Bring up guests, proxy, cloud and (if asked) the broker; undo everything on failure."""
        # A stopped Linux server counts: it boots when someone starts it.
        missing = missing_tools(linux=any(server.guest == "linux" for server in self.servers))
        if missing:
            raise LabError("missing: " + ", ".join(missing))
        try:
            # Guests first: a Linux guest boots while the rest of the lab starts.
            for server in self.servers:
                if server.status == "ACTIVE":
                    self._start_guest(server)
            self._start_proxy()
            self._start_serial_proxy()
            self._start_cloud()
            if self.with_broker:
                self._start_broker()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every child (newest first) and the cloud; remove a workdir the lab made."""
        while self.children:
            self.children.pop().stop()
        if self._cloud_running:
            self._cloud_running.stop()
            self._cloud_running = None
        if self._own_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- parts ----------------------------------------------------------------------

    def _start_guest(self, server: LabServer) -> None:
        display = free_vnc_display()
        server.vnc_port = VNC_BASE + display
        server.monitor = self.workdir / f"{server.name}.monitor"
        argv = [
            QEMU,
            "-name", server.name,
            "-display", "none",
            "-vnc", f"127.0.0.1:{display}",
            "-accel", "tcg",
            "-nic", "none",
            "-monitor", f"unix:{server.monitor},server=on,wait=off",
            *(self._linux_args(server) if server.guest == "linux" else self._bios_args()),
            *self._serial_args(server),
        ]  # fmt: skip
        server.started_at = time.monotonic()
        server.process = self._spawn(f"qemu {server.name}", argv)
        wait_for_port(server.process, server.vnc_port)

    @staticmethod
    def _bios_args() -> list[str]:
        """No disk: SeaBIOS offers its boot menu for 10 s, then stops at "No bootable device."."""
        return ["-m", "64", "-boot", "menu=on,splash-time=10000"]

    def _serial_args(self, server: LabServer) -> list[str]:
        """The serial port as a TCP server on loopback (and, for a Linux guest, its output logged to a file).

        QEMU takes one client at a time and keeps the log whether or not one is connected; without a
        client, what the guest writes goes only to the log.
        """
        server.serial_port = free_port()
        chardev = f"socket,id=serial0,host=127.0.0.1,port={server.serial_port},server=on,wait=off"
        if server.guest == "linux":
            server.serial = self.workdir / f"{server.name}.serial"
            server.serial_mark = 0
            chardev += f",logfile={server.serial}"
        return ["-chardev", chardev, "-serial", "chardev:serial0"]

    def _linux_args(self, server: LabServer) -> list[str]:
        try:
            initrd = initramfs(Path(self.cache_dir or default_cache_dir()))
        except OSError:
            # A home without a writable cache (some CI sandboxes): build it for this run only.
            initrd = initramfs(self.workdir)
        return linux_qemu_args(newest_kernel(), initrd, server.name)

    def _start_proxy(self) -> None:
        """nova-novncproxy's stand-in: noVNC's pages, and websockets to the guests' VNC servers."""
        self.proxy_port = self.proxy_port or free_port()
        self._start_websockify("websockify", self.proxy_port, self.tokens, ["--web", str(NOVNC)])

    def _start_serial_proxy(self) -> None:
        """nova-serialproxy's stand-in: websockets to the guests' serial ports, same token and Origin rules."""
        self.serial_proxy_port = self.serial_proxy_port or free_port()
        self._start_websockify("serialproxy", self.serial_proxy_port, self.serial_tokens)

    def _start_websockify(self, name: str, port: int, tokens: TokenStore, extra: list[str] | None = None) -> None:
        argv = [
            sys.executable, "-m", "lab.novncproxy",
            "--tokens", str(tokens.directory),
            "--allowed-origins", ",".join(self.allowed_origins),
            *(extra or []),
            f"127.0.0.1:{port}",
        ]  # fmt: skip
        if self.enforce_session_timeout:
            argv.append("--enforce-session-timeout")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        # From the checkout, so this lab package is the one imported whatever the caller's directory.
        wait_for_port(self._spawn(name, argv, env=env, cwd=REPO), port)

    def restart_proxy(self) -> None:
        """Stop the VNC console proxy (every console through it drops, as in a Nova upgrade) and start it again."""
        proxy = next(child for child in self.children if child.name == "websockify")
        proxy.stop()
        self.children.remove(proxy)
        self._start_proxy()

    def _start_cloud(self) -> None:
        self.cloud = FakeCloud(
            secret=secrets.token_urlsafe(16),
            servers=[server.to_cloud() for server in self.servers],
            console_ttl=self.console_ttl,
            console_base=self.proxy_url,
            console_page="vnc_lite.html",
            serial_base=self.serial_proxy_url,
            on_console=self._register_console,
            on_action=self._power_action,
        )
        self.cloud.on_serial_console = self._register_serial_console
        self.cloud.action_seconds = self.action_seconds
        self._cloud_running = serve.start(self.cloud)

    def _register_console(self, token: str, server: Server, ttl: int) -> None:
        target = self.server(server.id)
        self.tokens.register(token, "127.0.0.1", target.vnc_port, ttl)

    def _register_serial_console(self, token: str, server: Server, ttl: int) -> None:
        target = self.server(server.id)
        self.serial_tokens.register(token, "127.0.0.1", target.serial_port, ttl)

    def _power_action(self, server: Server, action: str) -> None:
        """The cloud's hook, in its request thread: what a power action does to the guest.

        The cloud sets the server's new status when this returns, so a started server is ACTIVE
        only once its guest's VNC port answers, as Nova's is once the hypervisor runs it.
        """
        target = self.server(server.id)
        if action == "os-start":
            self._start_guest(target)
            target.status = "ACTIVE"
        elif action == "os-stop":
            self._stop_guest(target)
            target.status = "SHUTOFF"
        elif action.startswith("reboot-") and target.process:
            self.reset_guest(target.name)

    def _stop_guest(self, server: LabServer) -> None:
        if server.process:
            server.process.stop()
            if server.process in self.children:
                self.children.remove(server.process)
        server.process, server.vnc_port, server.serial_port = None, 0, 0

    def _start_broker(self) -> None:
        self.broker_port = self.broker_port or free_port()
        # The relay runs in both modes: serial consoles (which the lab's cloud offers) always go through it.
        self.relay_port = self.relay_port or free_port()
        env = self.broker_env()
        self._flask(["users", "add", self.username, "--password-stdin"], env, stdin=self.password)
        self._grant_all(env)
        self._start_relay(env)
        argv = [
            sys.executable, "-m", "gunicorn",
            "--worker-class", "gthread", "--workers", "2", "--threads", "8",
            "--bind", f"127.0.0.1:{self.broker_port}",
            "app:app",
        ]  # fmt: skip
        broker = self._spawn("broker", argv, env=env, cwd=REPO)
        wait_for_port(broker, self.broker_port, timeout=30)
        self._wait_healthy(broker)

    def _start_relay(self, env: dict[str, str]) -> None:
        """The broker's relay process, on the database the setup above has just made."""
        argv = [sys.executable, "-m", "broker.relay"]
        relay = self._spawn("relay", argv, env=dict(env, RELAY_BIND=f"127.0.0.1:{self.relay_port}"), cwd=REPO)
        wait_for_port(relay, self.relay_port, timeout=30)

    def stop_relay(self) -> None:
        """Stop the relay: its consoles close with 1001, and nothing listens on its port until ``start_relay``."""
        relay = next(child for child in self.children if child.name == "relay")
        relay.stop()
        self.children.remove(relay)

    def start_relay(self) -> None:
        """Start the relay again on its port, after ``stop_relay``."""
        self._start_relay(self.broker_env())

    def _wait_healthy(self, broker: Child, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.broker_url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise LabError(f"broker not healthy within {timeout:.0f} s; log {broker.log}:\n{broker.tail()}")

    def add_user(self, name: str, password: str, *, admin: bool = False, power: bool = False) -> None:
        """Another account: an admin, or an agent allowed every lab server (``power``: and may power them)."""
        env = self.broker_env()
        self._flask(["users", "add", name, "--password-stdin", *(["--admin"] if admin else [])], env, stdin=password)
        if not admin:
            self._flask(["rules", "add", "--user", name, "--cloud", CLOUD_NAME, *(["--power"] if power else [])], env)

    def _grant_all(self, env: dict[str, str]) -> None:
        """Let the lab's user (an agent, not an admin) open every server of the lab cloud (and power them)."""
        rule = ["rules", "add", "--user", self.username, "--cloud", CLOUD_NAME] + (["--power"] if self.power else [])
        done = self._flask(rule, env, check=False)
        # A broker from before access rules lets every user see everything; nothing to grant.
        if done.returncode and "No such command" not in done.stderr:
            raise LabError(f"flask rules add failed: {done.stderr or done.stdout}")

    def _flask(
        self, args: list[str], env: dict[str, str], stdin: str = "", check: bool = True
    ) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "flask", "--app", "app", *args]
        done = subprocess.run(argv, input=stdin + "\n", env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        if check and done.returncode:
            raise LabError(f"flask {' '.join(args)} failed: {done.stderr or done.stdout}")
        return done

    def _spawn(self, name: str, argv: list[str], **kwargs) -> Child:
        log = self.workdir / (name.replace(" ", "-") + ".log")
        child = spawn(name, argv, log, **kwargs)
        self.children.append(child)
        return child

    # -- what callers use -------------------------------------------------------------

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def serial_proxy_url(self) -> str:
        """nova-serialproxy's stand-in (the cloud's ``serial_base``)."""
        return f"ws://127.0.0.1:{self.serial_proxy_port}"

    @property
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{self.broker_port}"

    @property
    def relay_url(self) -> str:
        """Where the console page opens the relay's websocket (relay mode)."""
        return f"ws://127.0.0.1:{self.relay_port}{RELAY_PATH}"

    def broker_env(self) -> dict[str, str]:
        """The environment a broker needs to run against this lab."""
        env = dict(os.environ)
        env.update(serve.environment(self.cloud))
        env.update(
            BROKER_SECRET_KEY=self._broker_secret,
            BROKER_DATABASE_URL=self.database_url or f"sqlite:///{self.workdir / 'broker.db'}",
            BROKER_CONSOLE_TTL=str(self.console_ttl),
            BROKER_REFRESH_MARGIN=str(self.refresh_margin),
            BROKER_IDLE_SWAP_AFTER=str(self.idle_swap_after),
            BROKER_CONSOLE_HOSTS="127.0.0.1",
            BROKER_SERVER_CACHE_TTL="5",
            # Set either way, so a mode left in the caller's environment does not leak in.
            BROKER_CONSOLE_MODE=self.console_mode,
            # The lab's cloud serves both kinds, as a Nova with [vnc] and [serial_console] enabled.
            BROKER_CONSOLE_TYPES="novnc,serial",
        )
        env.pop("BROKER_RELAY_URL", None)
        if self.relay_port:
            # The relay listens on its own port; the session cookie reaches it (cookies ignore ports).
            env["BROKER_RELAY_URL"] = self.relay_url
        return env

    def server(self, key: str) -> LabServer:
        """A lab server by ID or name."""
        for server in self.servers:
            if key in (server.id, server.name):
                return server
        raise KeyError(key)

    def console_url(self, key: str) -> str:
        """Mint a console URL straight from the cloud, as Nova would hand it out."""
        return self.cloud.mint_url(self.cloud.servers[self.server(key).id])

    def serial_console_url(self, key: str) -> str:
        """Mint a serial console URL straight from the cloud (``ws://...?token=...``), as Nova would hand it out."""
        return self.cloud.mint_serial_url(self.cloud.servers[self.server(key).id])

    def shut_off(self, key: str) -> None:
        """Stop a server's guest and mark it SHUTOFF in the cloud, as if it had been shut down from inside."""
        server = self.server(key)
        self._stop_guest(server)
        server.status = "SHUTOFF"
        cloud_server = self.cloud.servers[server.id]
        cloud_server.status, cloud_server.task_state = "SHUTOFF", None

    def reset_guest(self, key: str) -> None:
        """Reset a guest through its QEMU monitor; its VNC sessions stay connected.

        A Linux guest boots again: ``wait_for_shell`` then waits for the new boot's shell.
        """
        server = self.server(key)
        if server.serial:
            server.serial_mark = len(self._serial_bytes(server))
        server.started_at = time.monotonic()
        self.monitor(key, "system_reset")

    def serial_log(self, key: str) -> str:
        """All a Linux guest has written to its serial port (ttyS0) since QEMU started."""
        return self._serial_bytes(self.server(key)).decode(errors="replace")

    def wait_for_serial(self, key: str, text: str, timeout: float = 30.0) -> str:
        """Wait until ``text`` shows in the serial log after the guest's last reset; return that part."""
        server = self.server(key)
        deadline = time.monotonic() + timeout
        while True:
            since_reset = self._serial_bytes(server)[server.serial_mark :].decode(errors="replace")
            if text in since_reset:
                return since_reset
            if not server.process.alive():
                raise LabError(f"{server.process.name} exited; log {server.process.log}:\n{server.process.tail()}")
            if time.monotonic() >= deadline:
                raise LabError(f"{text!r} not in {server.name}'s serial log within {timeout:.0f} s:\n{since_reset}")
            time.sleep(0.05)

    def wait_for_shell(self, key: str, timeout: float = 60.0) -> float:
        """Wait until a Linux guest's shell is at its prompt; return seconds since QEMU started (or reset)."""
        self.wait_for_serial(key, READY, timeout)
        return time.monotonic() - self.server(key).started_at

    @staticmethod
    def _serial_bytes(server: LabServer) -> bytes:
        if server.serial is None:
            raise LabError(f"{server.name} is not a running Linux guest: it has no serial log")
        try:
            return server.serial.read_bytes()
        except FileNotFoundError:
            return b""

    def monitor(self, key: str, command: str) -> str:
        """Send one HMP command to a guest's QEMU monitor and return what it printed."""
        server = self.server(key)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(server.monitor))
            sock.sendall(command.encode() + b"\n")
            time.sleep(0.3)
            sock.settimeout(0.5)
            chunks = []
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except TimeoutError:
                pass
        return b"".join(chunks).decode(errors="replace")
