"""The processes under test: fake clouds and the broker as the Procfile runs it, all stopped at the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``check`` until it is true; raise naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException, OSError):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


@dataclass
class Proc:
    """A started process in its own session, so its children stop with it."""

    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")


def spawn(name: str, argv: list[str], env: dict[str, str], logdir: Path) -> Proc:
    """Start ``argv`` in the repository root, output to ``logdir/name.log``."""
    log = logdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def clean_env() -> dict[str, str]:
    """This environment without any OS_* or BROKER_* variable, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "BROKER_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class FakeCloud:
    """A ``broker.demo.serve`` process with its control endpoint."""

    proc: Proc
    url: str
    os_env: dict[str, str]

    def control(self, **change: object) -> dict:
        """POST a fault change (or GET the counters when none) to ``/_control``."""
        if change:
            response = requests.post(f"{self.url}/_control", json=change, timeout=10)
        else:
            response = requests.get(f"{self.url}/_control", timeout=10)
        response.raise_for_status()
        return response.json()

    def counts(self) -> dict[str, int]:
        return self.control()["counts"]

    def clouds_yaml_entry(self) -> dict:
        """This cloud as a clouds.yaml entry."""
        env = self.os_env
        auth = {
            "auth_url": env["OS_AUTH_URL"],
            "username": env["OS_USERNAME"],
            "password": env["OS_PASSWORD"],
            "project_id": env["OS_PROJECT_ID"],
            "user_domain_name": env["OS_USER_DOMAIN_NAME"],
        }
        return {"auth": auth, "region_name": env["OS_REGION_NAME"], "identity_api_version": "3"}


def exported(log: Path) -> dict[str, str]:
    """The ``export NAME=value`` lines a fake cloud printed."""
    pairs = {}
    for line in log.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            pairs[name] = value
    return pairs


def start_cloud(name: str, servers: int, logdir: Path) -> FakeCloud:
    """A fake Keystone + Nova with ``servers`` servers and ``/_control``, in its own process."""
    port = free_port()
    argv = [sys.executable, "-m", "broker.demo.serve", "--port", str(port), "--servers", str(servers), "--control"]
    proc = spawn(name, argv, clean_env(), logdir)
    cloud = FakeCloud(proc, f"http://127.0.0.1:{port}", {})

    def ready() -> bool:
        proc.check_alive()
        return "OS_AUTH_URL" in exported(proc.log) and bool(cloud.counts() is not None)

    try:
        wait_for(ready, f"fake cloud {name}")
    except BaseException:
        proc.stop()
        raise
    cloud.os_env = exported(proc.log)
    return cloud


def write_clouds_yaml(clouds: dict[str, FakeCloud], path: Path) -> None:
    """A clouds.yaml (JSON is YAML) naming every fake cloud."""
    path.write_text(json.dumps({"clouds": {name: c.clouds_yaml_entry() for name, c in clouds.items()}}, indent=2))


def procfile_command() -> str:
    """The ``web:`` line of the Procfile."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line[len("web:") :].strip()
    raise RuntimeError("Procfile has no web: line")


@dataclass
class Broker:
    """The broker under gunicorn, as the Procfile starts it."""

    proc: Proc
    url: str
    command: str

    def workers(self) -> list[int]:
        """PIDs of the gunicorn master's children."""
        return children(self.proc.popen.pid)

    def threads(self) -> list[int]:
        """Threads in each worker (gthread starts them as connections need them)."""
        return [len(list(Path(f"/proc/{pid}/task").iterdir())) for pid in self.workers()]


def children(pid: int) -> list[int]:
    """Direct child PIDs of ``pid``, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def broker_env(clouds_yaml: Path, cloud_names: list[str], port: int, backend: dict[str, str]) -> dict[str, str]:
    """Settings for a broker that uses the fake clouds and ``backend``'s fresh database (and Redis)."""
    env = clean_env()
    env.update(
        BROKER_SECRET_KEY=os.urandom(24).hex(),
        BROKER_SERVER_CACHE_TTL="900",
        BROKER_CLOUDS=",".join(cloud_names),
        OS_CLIENT_CONFIG_FILE=str(clouds_yaml),
        PORT=str(port),
        BIND=f"127.0.0.1:{port}",
    )
    env.update(backend)
    return env


def on_port(env: dict[str, str], port: int, **change: str) -> dict[str, str]:
    """The same broker settings (secret key and database included) for another instance on ``port``."""
    return env | {"PORT": str(port), "BIND": f"127.0.0.1:{port}"} | change


def add_user(env: dict[str, str], name: str, password: str) -> None:
    """``flask users add NAME --admin --password-stdin``."""
    argv = [sys.executable, "-m", "flask", "--app", "app", "users", "add", name, "--admin", "--password-stdin"]
    done = subprocess.run(argv, cwd=ROOT, env=env, input=password + "\n", capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise RuntimeError(f"users add failed: {done.stderr.strip() or done.stdout.strip()}")


def bare_flask_command() -> str:
    """The Procfile's ``web:`` gunicorn flags serving ``bench.bareflask:app``, without the broker's config file."""
    command = procfile_command().replace("--config gunicorn.conf.py ", "")
    if not command.endswith(" app:app"):
        raise RuntimeError(f"the Procfile's web line no longer ends with app:app: {command}")
    return command.removesuffix("app:app") + "bench.bareflask:app"


def start_bare_flask(logdir: Path) -> Broker:
    """The floor's reference app on a free port, started like the broker; wait for /healthz."""
    port = free_port()
    env = clean_env() | {"PORT": str(port), "BIND": f"127.0.0.1:{port}"}
    return start_broker(env, logdir, "bare-flask", bare_flask_command())


def start_broker(env: dict[str, str], logdir: Path, name: str = "broker", command: str = "") -> Broker:
    """Run the Procfile's web line (or ``command``); wait for /healthz."""
    command = command or procfile_command()
    proc = spawn(name, ["sh", "-c", "exec " + command], env, logdir)
    url = f"http://{env['BIND']}"

    def ready() -> bool:
        proc.check_alive()
        return requests.get(f"{url}/healthz", timeout=2).status_code == 200

    try:
        wait_for(ready, "broker", timeout=60)
    except BaseException:
        proc.stop()
        raise
    return Broker(proc, url, command)
