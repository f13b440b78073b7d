"""Two broker instances behind nginx, set up from the files docs/deploy.md shows.

Both run the Procfile's ``web:`` line (2 workers each) with the environment of
``deploy/broker.env.example`` on one PostgreSQL database and one Redis; nginx runs
``deploy/nginx.conf`` with TLS (a self-signed certificate made with openssl) and round robin.
The instances share one stand-in cloud served by this test, so its list calls can be counted.
Users and rules are made with ``deploy/console-broker-flask``, the operator's way in.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import requests
from requests.adapters import HTTPAdapter
from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import make_url

from broker.demo import serve
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import make_servers
from tests.support import ADMIN
from tests.support import AGENT
from tests.support import ROOT
from tests.support import children
from tests.support import csrf_from
from tests.support import free_port
from tests.support import needs
from tests.support import nginx_conf
from tests.support import procfile_web_line
from tests.support import require_postgres

DEPLOY = ROOT / "deploy"
FLASK = DEPLOY / "console-broker-flask"
# The Redis database this test empties (the suite's own tests use 15).
REDIS_DB = 14
# 2,500 servers in pages of 1,000 (the client's page size): one walk of the list is 3 calls.
SERVERS = 2500
PAGES = 3
# Long enough that the whole module runs within one cache lifetime (the default is 30 s).
CACHE_TTL = 300
# Where the sign-in guesses come from: an address of their own.
GUESSER = "127.0.0.66"
METRICS_TOKEN = "deploy-test-metrics-token-0123456789"
# A client's own X-Request-ID and X-Forwarded-For, which nginx must replace with what it knows.
FORGED = {"X-Request-ID": "chosen-by-the-client", "X-Forwarded-For": "203.0.113.9"}


def substitute(template: str, replacements: dict[str, str]) -> str:
    """Plain substitution of the example values a file holds; each must be there exactly once."""
    for old, new in replacements.items():
        assert template.count(old) == 1, f"expected {old!r} once in the template"
        template = template.replace(old, new)
    return template


def systemd_environment(path: Path) -> dict[str, str]:
    """An EnvironmentFile= as systemd reads it: NAME=value lines, ``#`` comment lines, quotes removed."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[name.strip()] = value
    return env


def shell_environment(path: Path) -> dict[str, str]:
    """The same file as deploy/console-broker-flask reads it: sourced by sh with ``set -a``."""
    script = 'set -a; . "$1"; set +a; env -0'
    done = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(path)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, check=True
    )
    pairs = (item.partition("=") for item in done.stdout.decode().split("\0") if item)
    return {name: value for name, _, value in pairs if name not in ("PATH", "PWD", "SHLVL", "_", "OLDPWD")}


def clean_environment() -> dict[str, str]:
    """This process's environment without anything of the broker's, the cloud's or the metrics'."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OS_", "PROMETHEUS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def command_environment(env_file: Path) -> dict:
    """What deploy/console-broker-flask needs to run a management command with the servers' environment file."""
    return {
        **clean_environment(),
        "CONSOLE_BROKER_ENV": str(env_file),
        "CONSOLE_BROKER_DIR": str(ROOT),
        "CONSOLE_BROKER_VENV": sys.prefix,
    }


# -- the pieces --------------------------------------------------------------------------


def redis_url(number: int = REDIS_DB) -> str:
    """Database 14 (or ``number``) of the test Redis (BROKER_TEST_REDIS_URL's server), emptied; or skip/fail."""
    parts = urlsplit(os.environ.get("BROKER_TEST_REDIS_URL", "redis://127.0.0.1:6379"))
    url = f"{parts.scheme}://{parts.netloc}/{number}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).flushdb()
    except redis.RedisError as exc:
        needs(f"needs Redis at {url} (BROKER_TEST_REDIS_URL): {type(exc).__name__}")
    return url


def program(name: str, package: str, *elsewhere: str) -> str:
    """The path of ``name`` (on PATH or at one of ``elsewhere``), or skip/fail naming its Debian package."""
    found = shutil.which(name) or next((path for path in elsewhere if os.access(path, os.X_OK)), None)
    if found is None:
        needs(f"needs {name} (Debian package {package})")
    return found


@contextlib.contextmanager
def fresh_database():
    """A database of its own on the test PostgreSQL, dropped (with its connections) afterwards."""
    server = make_url(require_postgres())
    name = f"broker_deploy_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def self_signed_certificate(openssl: str, directory: Path, names: str = "IP:127.0.0.1") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (or the subjectAltName ``names``), which the test's clients trust."""
    cert, key = directory / "broker.crt", directory / "broker.key"
    argv = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    argv += ["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", f"subjectAltName={names}"]
    subprocess.run([*argv, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=30)
    return cert, key


def environment_file(directory: Path, cloud: FakeCloud, database: str, redis: str) -> Path:
    """deploy/broker.env.example with the test's values in place of the examples."""
    os_vars = serve.environment(cloud)
    replacements = {
        "OS_CLOUD=prod\n": "".join(f"{name}={value}\n" for name, value in os_vars.items()),
        "BROKER_CONSOLE_HOSTS=novnc.example.com\n": "BROKER_CONSOLE_HOSTS=127.0.0.1\n",
        "BROKER_SECRET_KEY=\n": "BROKER_SECRET_KEY=deploy-test-secret-key-0123456789abcdef\n",
        "BROKER_METRICS_TOKEN=\n": f"BROKER_METRICS_TOKEN={METRICS_TOKEN}\n",
        "postgresql+psycopg://console_broker:CHANGE-ME@db.example.com:5432/console_broker": database,
        "redis://redis.example.com:6379/0": redis,
        "BROKER_SERVER_CACHE_TTL=30\n": f"BROKER_SERVER_CACHE_TTL={CACHE_TTL}\n",
    }
    path = directory / "broker.env"
    path.write_text(substitute((DEPLOY / "broker.env.example").read_text(), replacements))
    path.chmod(0o600)
    return path


def nginx_configuration(
    directory: Path, ports: list[int], tls: int, plain: int, cert: Path, key: Path, relay: int = 5001
) -> Path:
    """deploy/nginx.conf on the test's ports (instances, relay), certificate and log, inside a main file
    for an unprivileged nginx.

    The one addition: each response names the instance that answered (X-Upstream).
    """
    hsts = '    add_header Strict-Transport-Security "max-age=63072000" always;\n'
    site = substitute(
        (DEPLOY / "nginx.conf").read_text(),
        {
            "server 127.0.0.1:8001;": f"server 127.0.0.1:{ports[0]};",
            "server 127.0.0.1:8002;": f"server 127.0.0.1:{ports[-1]};",
            "server 127.0.0.1:5001;": f"server 127.0.0.1:{relay};",
            "listen 80;": f"listen 127.0.0.1:{plain};",
            "listen 443 ssl http2;": f"listen 127.0.0.1:{tls} ssl http2;",
            "/etc/ssl/certs/console-broker.crt": str(cert),
            "/etc/ssl/private/console-broker.key": str(key),
            "/var/log/nginx/console-broker.access.log": str(directory / "access.log"),
            hsts: hsts + "    add_header X-Upstream $upstream_addr always;\n",
        },
    )
    return nginx_conf(directory, site)


@dataclass
class Instance:
    """One broker instance: the Procfile's line on its own port."""

    port: int
    process: subprocess.Popen
    log: Path
    metrics: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        return children(self.process.pid)


def start_instance(directory: Path, env: dict[str, str]) -> Instance:
    port = free_port()
    metrics = directory / f"metrics-{port}"
    metrics.mkdir()
    log = directory / f"instance-{port}.log"
    # As the unit does: a runtime directory per instance for gunicorn's control socket.
    runtime = directory / f"run-{port}"
    runtime.mkdir(mode=0o700)
    env = {**env, "BIND": f"127.0.0.1:{port}", "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    with open(log, "w") as out:
        # exec: the shell expands the line's ${...} and becomes gunicorn's master.
        process = subprocess.Popen(
            ["/bin/sh", "-c", "exec " + procfile_web_line()], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return Instance(port, process, log, metrics)


def wait_until_ready(instance: Instance, deadline: float) -> None:
    """/readyz answers 200 and both workers are there."""
    while time.monotonic() < deadline:
        assert instance.process.poll() is None, instance.log.read_text()[-3000:]
        with contextlib.suppress(requests.RequestException):
            if requests.get(instance.url + "/readyz", timeout=2).ok and len(instance.workers()) == 2:
                return
        time.sleep(0.1)
    raise AssertionError(f"instance {instance.port} not ready:\n{instance.log.read_text()[-3000:]}")


def stop(*processes: subprocess.Popen) -> None:
    """gunicorn's quick shutdown (SIGQUIT) and nginx's (SIGTERM), all at once; then wait for each."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT if "gunicorn" in str(process.args) else signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Deployment:
    """What the tests reach: nginx's URLs, the instances by nginx's name for them, the cloud, the database."""

    directory: Path
    ca: Path
    cloud: FakeCloud
    database: str
    flask_env: dict[str, str]
    url: str = ""
    plain_url: str = ""
    instances: dict[str, Instance] = field(default_factory=dict)
    list_calls_before: int = 0
    check_report: str = ""

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def flask(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        """deploy/console-broker-flask with the test's env file, as an operator runs it."""
        return subprocess.run(
            [str(FLASK), *args], env=self.flask_env, input=stdin, capture_output=True, text=True, timeout=60
        )

    def query(self, sql: str, **params) -> list:
        engine = create_engine(self.database)
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(sql), params))
        finally:
            engine.dispose()


def run_all(deployment: Deployment, steps: list[tuple[tuple[str, ...], str | None]]) -> list:
    """Commands one after the other (each may need the one before)."""
    return [deployment.flask(*args, stdin=stdin) for args, stdin in steps]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("finds gunicorn's workers through /proc")
    nginx = program("nginx", "nginx", "/usr/sbin/nginx")
    openssl = program("openssl", "openssl")
    shared = redis_url()
    directory = tmp_path_factory.mktemp("deploy")
    with contextlib.ExitStack() as cleanup:
        # Undone in reverse: the processes stop before their database goes.
        cleanup.callback(lambda: redis.Redis.from_url(shared, socket_connect_timeout=1).flushdb())
        cloud = FakeCloud(secret="deploy-test", servers=make_servers(SERVERS), console_base="http://127.0.0.1:6080")
        cleanup.callback(serve.start(cloud).stop)
        database = cleanup.enter_context(fresh_database())
        cert, key = self_signed_certificate(openssl, directory)
        env_file = environment_file(directory, cloud, database, shared)
        flask_env = command_environment(env_file)
        deployment = Deployment(directory, cert, cloud, database, flask_env)
        # The deploy step: the schema first, then the servers.
        upgraded = deployment.flask("db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        server_env = {**clean_environment(), **systemd_environment(env_file)}
        instances = [start_instance(directory, server_env) for _ in range(2)]
        tls, plain = free_port(), free_port()
        conf = nginx_configuration(directory, [i.port for i in instances], tls, plain, cert, key)
        proxy = subprocess.Popen([nginx, "-p", f"{directory}/", "-c", str(conf), "-e", "stderr"])
        cleanup.callback(stop, proxy, *(instance.process for instance in instances))
        # Users and rules while the instances start: two chains of commands side by side.
        with ThreadPoolExecutor(2) as pool:
            admins = pool.submit(
                run_all,
                deployment,
                [
                    (("users", "add", ADMIN[0], "--admin", "--password-stdin"), ADMIN[1] + "\n"),
                    (("check",), None),
                ],
            )
            agents = pool.submit(
                run_all,
                deployment,
                [
                    (("users", "add", AGENT[0], "--password-stdin"), AGENT[1] + "\n"),
                    (("rules", "add", "--user", AGENT[0], "--cloud", "envvars"), None),
                ],
            )
            deadline = time.monotonic() + 60
            for instance in instances:
                wait_until_ready(instance, deadline)
            commands = admins.result() + agents.result()
        for done in commands:
            assert done.returncode == 0, (done.args, done.stdout, done.stderr)
        deployment.check_report = commands[1].stdout
        deployment.url = f"https://127.0.0.1:{tls}"
        deployment.plain_url = f"http://127.0.0.1:{plain}"
        deployment.instances = {instance.address: instance for instance in instances}
        wait_for_nginx(deployment, proxy, directory)
        deployment.list_calls_before = cloud.counts["list"]
        yield deployment


def wait_for_nginx(deployment: Deployment, process: subprocess.Popen, directory: Path) -> None:
    for _ in range(100):
        assert process.poll() is None, (
            (directory / "error.log").read_text() if (directory / "error.log").exists() else ""
        )
        with contextlib.suppress(requests.RequestException):
            requests.get(deployment.url + "/healthz", verify=str(deployment.ca), timeout=2)
            return
        time.sleep(0.1)
    raise AssertionError("nginx did not answer")


# -- a browser that knows which instance answered ------------------------------------------


class FromAddress(HTTPAdapter):
    """Connections from one loopback address (Linux answers on all of 127.0.0.0/8), so nginx sees another client."""

    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


class Browser:
    """Requests through nginx with one cookie jar; ``answered_by`` lists the instance of each response."""

    def __init__(self, deployment: Deployment, source: str | None = None):
        self.deployment = deployment
        self.http = requests.Session()
        if source:
            self.http.mount("https://", FromAddress(source))
        self.answered_by: list[str] = []

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        kwargs.setdefault("timeout", 30)
        # Per request: a session-wide verify loses to REQUESTS_CA_BUNDLE (requests' own rule).
        kwargs.setdefault("verify", str(self.deployment.ca))
        response = self.http.request(method, self.deployment.url + path, **kwargs)
        self.answered_by.append(response.headers.get("X-Upstream", "?"))
        return response

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def sign_in(self, username: str, password: str) -> requests.Response:
        token = csrf_from(self.get("/login").text)
        return self.post("/login", data={"username": username, "password": password, "csrf_token": token})

    def csrf(self, page: str = "/") -> str:
        return csrf_from(self.get(page).text)

    def copy(self) -> Browser:
        """Another client holding a copy of this one's cookies (a stolen cookie, or a second tab)."""
        other = Browser(self.deployment)
        other.http.cookies.update(self.http.cookies)
        return other

    def statuses(self, path: str, times: int = 4) -> tuple[set[int], set[str]]:
        """``times`` GETs of ``path``: their statuses and the instances that answered."""
        before = len(self.answered_by)
        codes = {self.get(path).status_code for _ in range(times)}
        return codes, set(self.answered_by[before:])


def signed_in(deployment: Deployment, username: str, password: str) -> Browser:
    browser = Browser(deployment)
    response = browser.sign_in(username, password)
    assert response.status_code == 302, (response.status_code, response.text[:500])
    return browser


# -- the files the docs show ---------------------------------------------------------------


def test_the_docs_show_the_files_this_test_runs():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    files = ("nginx.conf", "console-broker@.service", "console-broker-relay.service", "broker.env.example")
    for name in (*files, "console-broker-flask"):
        assert (DEPLOY / name).read_text().strip() in doc, f"docs/deploy.md does not show deploy/{name} as it is"


def test_the_unit_runs_the_procfile_line():
    unit = (DEPLOY / "console-broker@.service").read_text()
    exec_start = re.search(r"^ExecStart=/bin/sh -c '(.*)'$", unit, re.MULTILINE)
    assert exec_start, "ExecStart= runs the Procfile's line through /bin/sh -c '...'"
    # systemd writes a literal $ as $$.
    assert exec_start.group(1).replace("$$", "$") == "exec " + procfile_web_line()
    assert "EnvironmentFile=/etc/console-broker/broker.env" in unit
    assert "ExecStartPre" not in unit, "schema upgrades are a deploy step, not part of every start"
    verify = shutil.which("systemd-analyze")
    if verify:
        done = subprocess.run(
            [verify, "verify", str(DEPLOY / "console-broker@.service")], capture_output=True, text=True
        )
        assert (done.returncode, done.stderr) == (0, "")


# gunicorn's settings for the Procfile's line, read by gunicorn itself (nothing is started).
GUNICORN_SETTINGS = """
import json
from gunicorn.app.wsgiapp import WSGIApplication
cfg = WSGIApplication().cfg
print(json.dumps({"bind": cfg.bind, "control_socket": cfg.control_socket, "off": cfg.control_socket_disable}))
"""


def gunicorn_settings(env: dict[str, str]) -> dict:
    """What the Procfile's line configures in gunicorn under ``env``."""
    args = procfile_web_line().removeprefix("gunicorn ")
    argv = ["/bin/sh", "-c", f'exec "$PYTHON" -c "$SETTINGS" {args}']
    env = {**env, "PYTHON": sys.executable, "SETTINGS": GUNICORN_SETTINGS}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def control_sockets(tmp_path: Path, **per_instance: dict[str, str]) -> list[str | None]:
    """The control socket of two instances (ports 8001, 8002) of one user on one host."""
    base = {k: v for k, v in clean_environment().items() if k != "XDG_RUNTIME_DIR"}
    base.update(HOME=str(tmp_path), PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    found = []
    for port in (8001, 8002):
        env = {**base, "BIND": f"127.0.0.1:{port}"}
        env.update({name: value.format(port=port) for name, value in per_instance.items()})
        settings = gunicorn_settings(env)
        assert settings["bind"] == [f"127.0.0.1:{port}"]
        found.append(None if settings["off"] else settings["control_socket"])
    return found


def test_two_instances_on_one_host_share_no_control_socket(tmp_path):
    """gunicorn >= 25.1 gives every master of one user the same control socket path, so a second
    instance would take it from the first; gunicorn.conf.py turns it off (with or without the unit's
    runtime directory per instance)."""
    for port in (8001, 8002):
        (tmp_path / f"run-{port}").mkdir()
    assert control_sockets(tmp_path) == [None, None]
    assert control_sockets(tmp_path, XDG_RUNTIME_DIR=str(tmp_path / "run-{port}")) == [None, None]


def test_the_environment_file_reads_the_same_in_systemd_and_sh(tmp_path):
    example = DEPLOY / "broker.env.example"
    from_systemd = systemd_environment(example)
    assert shell_environment(example) == from_systemd
    assert from_systemd["BROKER_TRUSTED_PROXIES"] == "1"
    assert from_systemd["BROKER_LOGIN_LIMIT"] == "5 per 5 minutes"
    # No secret in an example: an unreplaced key stops start-up instead of signing sessions.
    assert from_systemd["BROKER_SECRET_KEY"] == ""


# -- two instances behind nginx ------------------------------------------------------------


def test_a_session_made_on_one_instance_works_on_the_other(deployment):
    browser = Browser(deployment)
    form = browser.get("/login")
    signed = browser.post(
        "/login", data={"username": AGENT[0], "password": AGENT[1], "csrf_token": csrf_from(form.text)}
    )
    assert signed.status_code == 302
    # Round robin without stickiness: the form came from one instance, the sign-in went to the other.
    assert browser.answered_by[0] != browser.answered_by[1]
    codes, answered = browser.statuses("/api/servers?limit=1")
    assert codes == {200}
    assert answered == set(deployment.instances)
    # X-Forwarded-Proto and -Host: the broker's own links are https on nginx's address and port.
    server = browser.get("/api/servers?limit=1").json()["servers"][0]
    page = browser.get(f"/console/{server['id']}")
    assert page.status_code == 200
    assert f"{deployment.url}/console/{server['id']}" in page.text


def add_user_on_the_admin_page(deployment: Deployment, name: str, password: str) -> int:
    """An agent added by the admin through nginx; its user ID."""
    admin = signed_in(deployment, *ADMIN)
    form = {"username": name, "password": password, "role": "agent", "csrf_token": admin.csrf("/admin/")}
    assert admin.post("/admin/users", data=form).status_code in (302, 303)
    return deployment.query("SELECT id FROM users WHERE username = :name", name=name)[0].id


def test_five_failed_sign_ins_in_total_not_per_instance(deployment):
    target, password = f"target-{uuid.uuid4().hex[:6]}", "target-password-1"
    add_user_on_the_admin_page(deployment, target, password)
    guesser = Browser(deployment, source=GUESSER)
    token = guesser.csrf("/login")
    answers = []
    for _ in range(8):
        response = guesser.post("/login", data={"username": target, "password": "wrong-guess-123", "csrf_token": token})
        answers.append((response.status_code, response.headers.get("Retry-After")))
    statuses = [status for status, _ in answers]
    assert statuses == [401] * 5 + [429] * 3, answers
    # The five guesses went to both instances, and so did the refusals.
    assert set(guesser.answered_by[1:6]) == set(guesser.answered_by[6:]) == set(deployment.instances)
    assert all(int(wait) > 0 for status, wait in answers if status == 429)
    # The account is held for everyone without its device cookie, from any address.
    assert Browser(deployment).sign_in(target, password).status_code == 429
    # nginx passed on the guesser's own address: the audit trail and the limits saw 127.0.0.66.
    failed = deployment.query(
        "SELECT client FROM audit WHERE action = 'sign_in' AND outcome = 'failed' AND username = :name",
        name=target,
    )
    assert [row.client for row in failed] == [GUESSER] * 5


def test_sign_out_on_one_instance_is_honoured_by_the_other(deployment):
    browser = signed_in(deployment, *AGENT)
    copy = browser.copy()
    assert copy.statuses("/api/servers?limit=1") == ({200}, set(deployment.instances))
    token = browser.csrf()
    signed_out = browser.post("/logout", data={"csrf_token": token})
    assert signed_out.status_code in (302, 303)
    assert copy.statuses("/api/servers?limit=1") == ({401}, set(deployment.instances))


def test_a_password_change_on_one_instance_ends_sessions_on_the_other(deployment):
    name, first, second = f"pat-{uuid.uuid4().hex[:6]}", "pat-password-number-1", "pat-password-number-2"
    user_id = add_user_on_the_admin_page(deployment, name, first)
    admin = signed_in(deployment, *ADMIN)

    # On the admin page of one instance...
    pat = signed_in(deployment, name, first)
    assert pat.statuses("/api/servers?limit=1") == ({200}, set(deployment.instances))
    token = admin.csrf("/admin/")
    changed = admin.post(f"/admin/users/{user_id}/password", data={"password": second, "csrf_token": token})
    assert changed.status_code in (302, 303)
    assert pat.statuses("/api/servers?limit=1") == ({401}, set(deployment.instances))

    # ...and with the command, which runs on neither.
    pat = signed_in(deployment, name, second)
    assert pat.statuses("/api/servers?limit=1") == ({200}, set(deployment.instances))
    done = deployment.flask("users", "set-password", name, "--password-stdin", stdin=first + "\n")
    assert done.returncode == 0, done.stderr
    assert pat.statuses("/api/servers?limit=1") == ({401}, set(deployment.instances))
    assert signed_in(deployment, name, first).get("/api/servers?limit=1").status_code == 200


def list_metrics_of(instance: Instance) -> set[int]:
    """The workers of ``instance`` that answered from a server list (each sets its list-age gauge)."""
    return {w for w in instance.workers() if (instance.metrics / f"gauge_livemax_{w}.db").exists()}


def test_the_list_is_walked_once_for_both_instances_and_all_their_workers(deployment):
    cookies = signed_in(deployment, *AGENT).http.cookies
    answered: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def fetch(_: int) -> None:
        session = requests.Session()
        session.cookies.update(cookies)
        response = session.get(deployment.url + "/api/servers?limit=5", verify=str(deployment.ca), timeout=30)
        with lock:
            answered.append((response.status_code, response.json()["total"], response.headers["X-Upstream"]))

    # Many requests at once: each opens its own upstream connection, which either worker may accept.
    for _ in range(10):
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(fetch, range(24)))
        served = {address: list_metrics_of(instance) for address, instance in deployment.instances.items()}
        if all(len(workers) == 2 for workers in served.values()):
            break
    assert {(status, total) for status, total, _ in answered} == {(200, SERVERS)}
    assert {address for _, _, address in answered} == set(deployment.instances)
    assert all(len(workers) == 2 for workers in served.values()), served
    # One walk (3 pages) for 2 instances x 2 workers, however many requests; and each of the other
    # three workers checks its own access to the cloud once before it shows the shared list (a list
    # of one server each).
    own_checks = deployment.cloud.counts["list"] - deployment.list_calls_before - PAGES
    assert 0 <= own_checks <= 2 * 2 - 1, len(answered)


def test_every_worker_has_all_its_request_threads_before_a_burst_needs_them(deployment):
    # Started one per new connection, in the thread that dispatches every request, a burst of slow
    # mints held up every other request while the pool grew (gunicorn.conf.py's start_threads).
    threads = int(systemd_environment(deployment.directory / "broker.env")["GUNICORN_THREADS"])
    for instance in deployment.instances.values():
        for worker in instance.workers():
            started = len(os.listdir(f"/proc/{worker}/task"))
            assert started > threads, (worker, started)


def test_every_mint_from_both_instances_is_in_the_one_audit_trail(deployment):
    browser = signed_in(deployment, *AGENT)
    servers = browser.get("/api/servers?limit=20").json()["servers"]
    server = next(s for s in servers if s["status"] == "ACTIVE")
    token = browser.csrf()
    minted = []
    for _ in range(6):
        response = browser.post(f"/api/consoles/{server['id']}", headers={"X-CSRFToken": token, **FORGED})
        assert response.status_code == 200, response.text
        assert response.json()["url"].startswith("http://127.0.0.1:6080/")
        minted.append(response.headers["X-Request-ID"])
    assert set(browser.answered_by[-6:]) == set(deployment.instances)
    # nginx's request IDs, one per mint, never the client's.
    assert len(set(minted)) == 6 and all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in minted), minted
    rows = deployment.query(
        "SELECT request_id, username, client, server_id FROM audit WHERE action = 'console' AND outcome = 'ok'"
    )
    assert sorted(row.request_id for row in rows) == sorted(minted)
    assert {(row.username, row.client, row.server_id) for row in rows} == {(AGENT[0], "127.0.0.1", server["id"])}
    # The same records in the admin page's CSV export, through nginx.
    admin = signed_in(deployment, *ADMIN)
    export = admin.get("/admin/audit.csv?action=console")
    assert export.status_code == 200
    assert all(rid in export.text for rid in minted)


def test_nginx_in_front_as_the_docs_configure_it(deployment):
    plain = requests.get(deployment.plain_url + "/login?next=/", allow_redirects=False, timeout=10)
    assert (plain.status_code, plain.headers["Location"]) == (301, "https://127.0.0.1/login?next=/")
    browser = Browser(deployment)
    # /readyz: its status for anyone, the details (Redis's address among them) for the token's holder.
    bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert browser.get("/readyz").json() == {"status": "ready"}
    ready = browser.get("/readyz", headers=bearer)
    assert ready.status_code == 200 and ready.json()["checks"]["redis"]["ok"]
    assert ready.headers["Strict-Transport-Security"].startswith("max-age=")
    # /metrics is each instance's own count: scraped from each instance, hidden by nginx.
    assert browser.get("/metrics", headers=bearer).status_code == 404
    for instance in deployment.instances.values():
        scraped = requests.get(instance.url + "/metrics", headers=bearer, timeout=10)
        assert scraped.status_code == 200 and "broker_sign_ins_total" in scraped.text
    # The websocket location reaches the instances (which have no relay yet: 404).
    relay = browser.get("/relay/anything", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert relay.status_code == 404 and relay.headers["X-Upstream"] in deployment.instances
    # The access log: request IDs and instances, no query strings.
    secret = f"q-{uuid.uuid4().hex}"
    seen = browser.get(f"/login?next=/{secret}")
    rid = seen.headers["X-Request-ID"]
    for _ in range(50):
        log = deployment.access_log.read_text()
        if f"id={rid}" in log:
            break
        time.sleep(0.05)
    line = next(line for line in log.splitlines() if f"id={rid}" in line)
    assert '"GET /login HTTP/1.1" 200' in line and f"upstream={seen.headers['X-Upstream']}" in line
    assert secret not in log


def test_check_after_the_deploy_finds_nothing_to_fix(deployment):
    report = deployment.check_report.splitlines()
    assert not [line for line in report if line.startswith("FAIL")], report
    assert any(line.startswith("ok") and "database schema is current" in line for line in report), report
    assert any(line.startswith("ok") and "answers" in line and "redis" in line.lower() for line in report), report
    assert any(line.startswith("ok") and "cloud envvars: lists servers" in line for line in report), report


def libpq(url: str) -> str:
    """A SQLAlchemy URL as PostgreSQL's own tools take it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def audit_summary(database: str) -> tuple:
    engine = create_engine(database)
    try:
        with engine.connect() as connection:
            return tuple(connection.execute(text("SELECT count(*), max(id), max(at) FROM audit")).one())
    finally:
        engine.dispose()


@pytest.mark.parametrize("only", [[], ["--table=audit"]], ids=["database", "audit-table"])
def test_a_backup_restores_the_audit_trail(deployment, only):
    pg_dump, pg_restore = program("pg_dump", "postgresql-client"), program("pg_restore", "postgresql-client")
    dump = deployment.directory / f"broker-{uuid.uuid4().hex[:6]}.dump"
    # The commands docs/deploy.md shows, with the test server's address instead of the local socket.
    subprocess.run([pg_dump, "--format=custom", *only, f"--file={dump}", libpq(deployment.database)], check=True)
    live = audit_summary(deployment.database)
    assert live[0] > 0
    with fresh_database() as scratch:
        subprocess.run([pg_restore, "--no-owner", f"--dbname={libpq(scratch)}", str(dump)], check=True)
        assert audit_summary(scratch) == live
