"""The rolling update docs/deploy.md shows loses no request (issue 19, item 11).

Two instances of the Procfile's line behind the shipped nginx.conf, as in test_two_instances.py;
clients read the server list and mint consoles through nginx throughout, while the docs' loop runs
as it is, with only the ports changed. Its ``sudo systemctl restart console-broker@PORT`` reaches
stand-ins that ask this test to do what systemd does: SIGTERM to gunicorn's master (KillMode=mixed),
wait for it to exit, start the same line again on the same port.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from broker.demo import serve
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import make_servers
from tests.deploy.test_two_instances import Deployment
from tests.deploy.test_two_instances import Instance
from tests.deploy.test_two_instances import clean_environment
from tests.deploy.test_two_instances import command_environment
from tests.deploy.test_two_instances import environment_file
from tests.deploy.test_two_instances import fresh_database
from tests.deploy.test_two_instances import nginx_configuration
from tests.deploy.test_two_instances import program
from tests.deploy.test_two_instances import redis_url
from tests.deploy.test_two_instances import self_signed_certificate
from tests.deploy.test_two_instances import stop
from tests.deploy.test_two_instances import substitute
from tests.deploy.test_two_instances import systemd_environment
from tests.deploy.test_two_instances import wait_for_nginx
from tests.deploy.test_two_instances import wait_until_ready
from tests.support import AGENT
from tests.support import ROOT
from tests.support import csrf_from
from tests.support import free_port
from tests.support import procfile_web_line

# The Redis database this module empties (test_two_instances.py has 14, test_any_port.py 13, the suite 15).
REDIS_DB = 12
CLIENTS = 4
# Between a client's rounds: a 502 comes at once, and a client without a pause would only spin.
PAUSE = 0.05
# Every cloud call takes this long, so a stopping instance always holds mints that must finish.
CLOUD_LATENCY = 0.3
# The unit's TimeoutStopSec=: then systemd kills what is left.
STOP_TIMEOUT = 100
SUDO = '#!/bin/sh\nexec "$@"\n'
# Says which port to restart, and returns once it has been started again (as systemctl does); when
# the restart failed, ends the loop that called it (which would wait for /readyz for ever).
SYSTEMCTL = """#!/bin/sh
[ "$1" = restart ] || exit 64
echo "${2#console-broker@}" > "$RESTARTS"
read -r started < "$STARTED"
[ "$started" = ok ] || kill "$PPID"
"""


@dataclass
class Result:
    at: float
    method: str
    status: int | str
    upstream: str


def documented_update(ports: list[int]) -> str:
    """The rolling update's shell block in docs/deploy.md, on the test's ports."""
    section = (ROOT / "docs" / "deploy.md").read_text().split("**Rolling update:**")[1]
    block = textwrap.dedent(re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1))
    return substitute(block, {"for port in 8001 8002;": f"for port in {ports[0]} {ports[1]};"})


def launch(directory: Path, env: dict[str, str], port: int) -> Instance:
    """The unit's ExecStart on ``port`` (the Procfile's line), as start_instance runs it."""
    metrics = directory / f"metrics-{port}-{time.monotonic_ns()}"
    metrics.mkdir()
    log = directory / f"{metrics.name}.log"
    env = {**env, "BIND": f"127.0.0.1:{port}", "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["/bin/sh", "-c", "exec " + procfile_web_line()], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return Instance(port, process, log, metrics)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@dataclass
class Site:
    deployment: Deployment
    env: dict[str, str]
    instances: dict[int, Instance]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("runs /bin/sh stand-ins for sudo and systemctl")
    nginx = program("nginx", "nginx", "/usr/sbin/nginx")
    openssl = program("openssl", "openssl")
    program("curl", "curl")
    shared = redis_url(REDIS_DB)
    directory = tmp_path_factory.mktemp("rolling")
    with contextlib.ExitStack() as cleanup:
        cloud = FakeCloud(secret="rolling", servers=make_servers(5), console_base="http://127.0.0.1:6080")
        cleanup.callback(serve.start(cloud).stop)
        database = cleanup.enter_context(fresh_database())
        cert, key = self_signed_certificate(openssl, directory)
        env_file = environment_file(directory, cloud, database, shared)
        flask_env = command_environment(env_file)
        deployment = Deployment(directory, cert, cloud, database, flask_env)
        upgraded = deployment.flask("db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        env = {**clean_environment(), **systemd_environment(env_file)}
        site = Site(deployment, env, {})
        for port in (free_port(), free_port()):
            site.instances[port] = launch(directory, env, port)
        tls, plain = free_port(), free_port()
        conf = nginx_configuration(directory, list(site.instances), tls, plain, cert, key)
        proxy = subprocess.Popen([nginx, "-p", f"{directory}/", "-c", str(conf), "-e", "stderr"])
        cleanup.callback(lambda: stop(proxy, *(instance.process for instance in site.instances.values())))
        # The agent and its rule while the instances start.
        for args, stdin in [
            (("users", "add", AGENT[0], "--password-stdin"), AGENT[1] + "\n"),
            (("rules", "add", "--user", AGENT[0], "--cloud", "envvars"), None),
        ]:
            done = deployment.flask(*args, stdin=stdin)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        for instance in site.instances.values():
            wait_until_ready(instance, time.monotonic() + 60)
        deployment.url = f"https://127.0.0.1:{tls}"
        wait_for_nginx(deployment, proxy, directory)
        yield site


class Agent:
    """The agent signed in through nginx once: its cookies, a server to open and its CSRF token."""

    def __init__(self, deployment: Deployment):
        self.deployment = deployment
        self.http = requests.Session()
        form = self.call("GET", "/login")
        data = {"username": AGENT[0], "password": AGENT[1], "csrf_token": csrf_from(form.text)}
        assert self.call("POST", "/login", data=data, allow_redirects=False).status_code == 302
        self.server = self.call("GET", "/api/servers?limit=1").json()["servers"][0]["id"]
        self.token = csrf_from(self.call("GET", "/").text)

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        # verify per request: a session-wide one loses to REQUESTS_CA_BUNDLE.
        url = self.deployment.url + path
        return self.http.request(method, url, verify=str(self.deployment.ca), timeout=30, **kwargs)


class Client(threading.Thread):
    """A tab of the agent's, reading the server list and minting a console in turn until ``done``."""

    def __init__(self, agent: Agent, results: list[Result], done: threading.Event):
        super().__init__(daemon=True)
        self.agent, self.results, self.done = agent, results, done
        self.http = requests.Session()
        self.http.cookies.update(agent.http.cookies)

    def send(self, method: str, path: str, **kwargs) -> None:
        at = time.monotonic()
        url = self.agent.deployment.url + path
        try:
            response = self.http.request(method, url, verify=str(self.agent.deployment.ca), timeout=30, **kwargs)
            status, upstream = response.status_code, response.headers.get("X-Upstream", "-")
        except requests.RequestException as exc:
            status, upstream = type(exc).__name__, "-"
        self.results.append(Result(at, method, status, upstream))

    def run(self) -> None:
        mint = f"/api/consoles/{self.agent.server}"
        while not self.done.is_set():
            self.send("GET", "/api/servers?limit=1")
            self.send("POST", mint, headers={"X-CSRFToken": self.agent.token})
            self.done.wait(PAUSE)


class Systemd(threading.Thread):
    """The stand-in systemctl's other end: restarts each port it names as systemd does, and answers."""

    def __init__(self, site: Site, directory: Path):
        super().__init__(daemon=True)
        self.site, self.restarts, self.started = site, directory / "restarts", directory / "started"
        os.mkfifo(self.restarts)
        os.mkfifo(self.started)
        # What /readyz said, on a connection kept open, once each stopping instance refused new ones.
        self.readiness: list[str] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        while True:
            with open(self.restarts) as fifo:
                port = int(fifo.read())
            answer = "ok"
            try:
                self.restart(self.site.instances[port])
            except BaseException as exc:
                self.errors.append(exc)
                answer = "failed"
            with open(self.started, "w") as fifo:
                fifo.write(answer + "\n")

    def restart(self, old: Instance) -> None:
        probe = requests.Session()
        assert probe.get(old.url + "/readyz", timeout=5).ok
        old.process.send_signal(signal.SIGTERM)
        while not refused(old.port) and old.process.poll() is None:
            time.sleep(0.01)
        try:
            self.readiness.append(probe.get(old.url + "/readyz", timeout=5).json()["status"])
        except requests.RequestException as exc:
            self.readiness.append(type(exc).__name__)
        try:
            old.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            old.process.kill()
            old.process.wait()
        self.site.instances[old.port] = launch(self.site.deployment.directory, self.site.env, old.port)


def run_documented_update(site: Site, tmp_path: Path) -> Systemd:
    for name, script in (("sudo", SUDO), ("systemctl", SYSTEMCTL)):
        (tmp_path / name).write_text(script)
        (tmp_path / name).chmod(0o755)
    systemd = Systemd(site, tmp_path)
    systemd.start()
    env = {
        **os.environ,
        "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
        "RESTARTS": str(systemd.restarts),
        "STARTED": str(systemd.started),
    }
    loop = documented_update(list(site.instances))
    done = subprocess.run(["/bin/sh", "-c", loop], env=env, capture_output=True, text=True, timeout=300)
    assert (done.returncode, systemd.errors) == (0, []), (loop, done.stdout, done.stderr)
    return systemd


def test_the_documented_rolling_update_loses_no_request(site, tmp_path):
    results: list[Result] = []
    done = threading.Event()
    agent = Agent(site.deployment)
    site.deployment.cloud.faults.latency = CLOUD_LATENCY
    clients = [Client(agent, results, done) for _ in range(CLIENTS)]
    began = time.monotonic()
    for client in clients:
        client.start()
    try:
        systemd = run_documented_update(site, tmp_path)
    finally:
        done.set()
        for client in clients:
            client.join()
    failed = [result for result in results if result.status != 200]
    window = [round(result.at - began, 1) for result in failed[:1] + failed[-1:]]
    summary = Counter((result.method, result.status) for result in failed)
    assert not failed, f"{len(failed)} of {len(results)} requests failed between {window} s: {summary}"
    # A stopping instance said so while it finished its requests...
    assert systemd.readiness == ["stopping", "stopping"]
    # ...and nginx did meet both, and passed what they refused on to the other (X-Upstream names both).
    assert sum(", " in result.upstream for result in results) >= 2, Counter(r.upstream for r in results)
