"""What tests share besides fixtures: the test fleet, users, and small helpers a browser would use."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest
import requests
from bs4 import BeautifulSoup

from broker import relayhost
from broker.cloud.client import ComputeClient
from broker.cloud.resilience import RetryPolicy
from broker.cloud.types import Timeouts
from broker.demo import keystone_session
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import Server

# The checkout: where app.py, the Procfile and gunicorn.conf.py are.
ROOT = Path(__file__).resolve().parent.parent
AGENT = ("agent", "agent-password-1")
# What a browser sends on a navigation that started on one of the broker's own pages.
FROM_THIS_SITE = {"Sec-Fetch-Site": "same-origin"}
ADMIN = ("admin", "admin-password-1")

# The machines run PostgreSQL and Redis; a laptop may not (then those tests skip, except under CI=true).
POSTGRES_URL = os.environ.get("BROKER_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BROKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# The database the whole suite runs on: sqlite (a file per test) or postgresql (POSTGRES_URL, emptied per test).
SUITE_DATABASE = os.environ.get("BROKER_TEST_DB", "sqlite")


def needs(reason: str) -> None:
    """Skip for want of a service, or fail under CI=true, where the service is part of the machine."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " (CI=true: the CI machine provides it)", pytrace=False)
    pytest.skip(reason)


def npm_ci(folder: Path, what: str) -> None:
    """``npm ci`` in ``folder`` from its lock file, when node_modules is missing or older than the lock.

    ``what``: which tests need it, for the skip (or, under CI=true, failure) message.
    """
    import shutil

    if shutil.which("node") is None or shutil.which("npm") is None:
        needs(f"{what} need Node.js and npm")
    marker = folder / "node_modules" / ".package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= (folder / "package-lock.json").stat().st_mtime:
        return
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(folder)], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        needs(f"npm ci in {folder} failed: {done.stderr.strip()[-500:]}")


def require_redis() -> str:
    """REDIS_URL, reachable and emptied, or skip/fail."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.flushdb()
    except redis.RedisError as exc:
        needs(f"needs Redis at {REDIS_URL} (BROKER_TEST_REDIS_URL): {type(exc).__name__}")
    return REDIS_URL


def require_postgres() -> str:
    """POSTGRES_URL when it answers, or skip/fail."""
    from sqlalchemy import create_engine
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        needs(f"needs PostgreSQL at {POSTGRES_URL} (BROKER_TEST_DATABASE_URL): {type(exc.orig or exc).__name__}")
    finally:
        engine.dispose()
    return POSTGRES_URL


def suite_database_url(tmp_path) -> str:
    if SUITE_DATABASE == "postgresql":
        return POSTGRES_URL
    return f"sqlite:///{tmp_path}/broker.sqlite3"


def fleet() -> list[Server]:
    """Servers covering the cases the tests need: running, stopped, shared and hostile names."""

    def server(n: int, name: str, status: str = "ACTIVE") -> Server:
        return Server(
            id=f"00000000-0000-4000-8000-{n:012d}",
            name=name,
            status=status,
            addresses={"private": [{"addr": f"10.1.0.{n}", "version": 4}]},
            az="az-1",
        )

    return [
        server(1, "web-01"),
        server(2, "web-02"),
        server(3, "db-01", "SHUTOFF"),
        server(4, "worker"),
        server(5, "worker"),
        server(6, "<b>bold</b>&<script>alert(1)</script>"),
        server(7, "build-01", "BUILD"),
    ]


def server_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def make_client(fake: FakeCloud, name: str = "lab", **kwargs) -> ComputeClient:
    session = keystone_session(fake, timeout=2)
    kwargs.setdefault("timeouts", Timeouts(connect=1, read=1))
    kwargs.setdefault("retry", RetryPolicy(attempts=3, base=0.01, cap=0.5))
    return ComputeClient(name, session, region_name=fake.region, **kwargs)


def broker_env(tmp_path, **extra) -> dict:
    env = {
        "BROKER_SECRET_KEY": "test-secret-key-0123456789",
        "BROKER_DATABASE_URL": suite_database_url(tmp_path),
        "BROKER_DEMO": "false",
    }
    env.update(extra)
    return env


def csrf_from(html: str) -> str:
    soup = BeautifulSoup(html, "html.parser")
    field = soup.find("input", {"name": "csrf_token"})
    if field:
        return field["value"]
    return soup.find("meta", {"name": "csrf-token"})["content"]


class AuthActions:
    """Sign in and out the way a browser does, CSRF token included."""

    def __init__(self, client):
        self.client = client

    def login(self, username: str = AGENT[0], password: str = AGENT[1], next: str | None = None):
        token = csrf_from(self.client.get("/login").get_data(as_text=True))
        data = {"username": username, "password": password, "csrf_token": token}
        if next is not None:
            data["next"] = next
        return self.client.post("/login", data=data)

    def csrf(self) -> str:
        """The CSRF token a page would carry (the list page once signed in)."""
        return csrf_from(self.client.get("/login", follow_redirects=True).get_data(as_text=True))

    def logout(self):
        return self.client.post("/logout", data={"csrf_token": self.csrf()})


# -- waiting for what another thread, process or browser does ----------------------

T = TypeVar("T")


def _polls(timeout: float, interval: float, message: str | Callable[[], str]) -> Iterator[float]:
    """Pause lengths until ``timeout`` has passed, then the AssertionError; one clock for both kinds of wait."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        yield min(interval, left)
    yield 0  # one last look at the deadline itself
    text = message() if callable(message) else message
    raise AssertionError(f"{text} (not within {timeout:g} s)")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """``predicate()``'s first truthy answer, asked every ``interval`` s; AssertionError with ``message``
    once ``timeout`` s pass without one (``message`` may be a callable, for a log read only on failure).

    For a condition another thread or process makes true: the test goes on as soon as it holds, and a
    slow machine gets the whole timeout rather than a guessed sleep."""
    for pause in _polls(timeout, interval, message):
        if value := predicate():
            return value
        time.sleep(pause)
    raise AssertionError("unreachable")  # _polls raises first


async def wait_until_async(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """``wait_until`` inside an event loop: the pause yields to the loop, so its tasks can make the condition true."""
    for pause in _polls(timeout, interval, message):
        if value := predicate():
            return value
        await asyncio.sleep(pause)
    raise AssertionError("unreachable")


# -- servers started by tests --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def procfile_web_line() -> str:
    """The Procfile's ``web:`` command, as an operator's process manager runs it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.partition(":")[2].strip()
    raise AssertionError("the Procfile has no web: line")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (gunicorn's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_for_health(url: str, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """Until ``url``/healthz answers; fails with the server's log if it exits or never answers."""

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            return requests.get(url + "/healthz", timeout=2).ok
        except requests.RequestException:
            return False

    wait_until(healthy, timeout, interval=0.1, message=lambda: f"{url} never answered:\n{log.read_text()[-3000:]}")


def nginx_conf(directory: Path, site: str, connections: int = 512, user: str | None = None) -> Path:
    """An nginx.conf that serves ``site`` with its pid, logs and temporary files in ``directory``.

    ``user``: the workers' account when nginx runs as root (else they would be nobody).
    """
    (directory / "site.conf").write_text(site)
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    who = f"user {user};\n" if user else ""
    main = f"""daemon off;
{who}worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections {connections}; }}
http {{
{temp}
    access_log off;
    include {directory / "site.conf"};
}}
"""
    path = directory / "nginx.conf"
    path.write_text(main)
    return path


def procfile_relay_line() -> str:
    """The Procfile's ``relay:`` command."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("relay:"):
            return line.partition(":")[2].strip()
    raise AssertionError("the Procfile has no relay: line")


@contextlib.contextmanager
def relay_listening(app, port: int = 0) -> Iterator[int]:
    """A real relay (broker.relayhost.relay) for ``app`` on loopback, on a loop of its own; yields its port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-relay", daemon=True)
    thread.start()
    relay = relayhost.relay(app)
    try:
        asyncio.run_coroutine_threadsafe(relay.start("127.0.0.1", port), loop).result(10)
        yield relay.port
    finally:
        asyncio.run_coroutine_threadsafe(relay.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def http_answering(status: int, body: bytes = b"", headers: dict | None = None) -> Iterator[tuple[int, list[str]]]:
    """A plain HTTP server on loopback that answers every GET alike (a web app, another program); yields
    its port and the paths it was asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield server.server_address[1], asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class Forwarder:
    """TCP from a local port to a server (PostgreSQL, in the outage tests), cut and restored at will: while
    cut, open connections are dropped and new ones closed at once, as a server that went away looks to its
    clients."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="pg-forwarder").start()

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            for sock in self.sockets:
                self._close(sock)
            self.sockets.clear()

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.down.is_set():
                self._close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._close(client)
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            self._close(sock)

    @staticmethod
    def _close(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
