"""The shipped nginx.conf on a port that is not 443, under two host names, with relay mode on.

One instance (the Procfile's ``web:`` line) and the relay (its ``relay:`` line) on PostgreSQL and
Redis, behind ``deploy/nginx.conf`` with TLS on a random port: the broker must see the host with
its port, so that its links, the relay URL a ticket names and the origin the ticket is bound to
are the ones the browser uses, and the viewer's websocket connects through that port.
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from broker.demo import serve
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import make_servers
from tests.deploy.test_two_instances import METRICS_TOKEN
from tests.deploy.test_two_instances import Deployment
from tests.deploy.test_two_instances import clean_environment
from tests.deploy.test_two_instances import command_environment
from tests.deploy.test_two_instances import environment_file
from tests.deploy.test_two_instances import fresh_database
from tests.deploy.test_two_instances import nginx_configuration
from tests.deploy.test_two_instances import program
from tests.deploy.test_two_instances import redis_url
from tests.deploy.test_two_instances import self_signed_certificate
from tests.deploy.test_two_instances import start_instance
from tests.deploy.test_two_instances import stop
from tests.deploy.test_two_instances import systemd_environment
from tests.deploy.test_two_instances import wait_for_nginx
from tests.deploy.test_two_instances import wait_until_ready
from tests.support import AGENT
from tests.support import ROOT
from tests.support import csrf_from
from tests.support import free_port
from tests.support import procfile_relay_line

# The Redis database this module empties (test_two_instances.py has 14, the suite 15).
REDIS_DB = 13
HOSTS = ("127.0.0.1", "localhost")
PROBE_ANSWER = "console-broker relay\n"

# How long a websocket through nginx to the relay may take to open: these tests judge what it logs and
# whom it lets in, not its speed, and CI's machine runs the browser tests' guests at the same time.
RELAY_WAIT = 30


@dataclass
class Site:
    deployment: Deployment
    tls: int
    relay: int
    relay_log: Path
    check_report: str

    def url(self, host: str) -> str:
        return f"https://{host}:{self.tls}"


def wait_for_relay(port: int, process: subprocess.Popen, log: Path) -> None:
    """The relay answers its plain GET (it starts once the web instance has made the schema)."""
    for _ in range(300):
        assert process.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"http://127.0.0.1:{port}/relay", timeout=2).text == PROBE_ANSWER:
                return
        time.sleep(0.1)
    raise AssertionError(f"the relay never answered:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("finds gunicorn's workers through /proc")
    nginx = program("nginx", "nginx", "/usr/sbin/nginx")
    openssl = program("openssl", "openssl")
    shared = redis_url(REDIS_DB)
    directory = tmp_path_factory.mktemp("any-port")
    with contextlib.ExitStack() as cleanup:
        cloud = FakeCloud(secret="any-port", servers=make_servers(5), console_base="http://127.0.0.1:6080")
        cleanup.callback(serve.start(cloud).stop)
        database = cleanup.enter_context(fresh_database())
        cert, key = self_signed_certificate(openssl, directory, "IP:127.0.0.1,DNS:localhost")
        env_file = environment_file(directory, cloud, database, shared)
        relay_port, tls, plain = free_port(), free_port(), free_port()
        # The test's one addition to the example: relay mode, and where the relay listens (the
        # relay unit's RELAY_BIND; in this one file, so check and /readyz find it too).
        with env_file.open("a") as extra:
            extra.write(f"BROKER_CONSOLE_MODE=relay\nRELAY_BIND=127.0.0.1:{relay_port}\n")
        flask_env = command_environment(env_file)
        deployment = Deployment(directory, cert, cloud, database, flask_env)
        for args, stdin in [
            (("db", "upgrade"), None),
            (("users", "add", AGENT[0], "--password-stdin"), AGENT[1] + "\n"),
            (("rules", "add", "--user", AGENT[0], "--cloud", "envvars"), None),
        ]:
            done = deployment.flask(*args, stdin=stdin)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        server_env = {**clean_environment(), **systemd_environment(env_file)}
        instance = start_instance(directory, server_env)
        relay_log = directory / "relay.log"
        with open(relay_log, "w") as out:
            relay = subprocess.Popen(
                ["/bin/sh", "-c", "exec " + procfile_relay_line()],
                cwd=ROOT,
                env=server_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        conf = nginx_configuration(directory, [instance.port], tls, plain, cert, key, relay=relay_port)
        proxy = subprocess.Popen([nginx, "-p", f"{directory}/", "-c", str(conf), "-e", "stderr"])
        cleanup.callback(stop, proxy, relay, instance.process)
        wait_until_ready(instance, time.monotonic() + 60)
        wait_for_relay(relay_port, relay, relay_log)
        deployment.url = f"https://127.0.0.1:{tls}"
        wait_for_nginx(deployment, proxy, directory)
        check = deployment.flask("check")
        yield Site(deployment, tls, relay_port, relay_log, check.stdout + check.stderr)


class Browser(requests.Session):
    """Trusts the test's certificate (per request: a session-wide verify loses to REQUESTS_CA_BUNDLE)."""

    def __init__(self, ca: Path) -> None:
        super().__init__()
        self.ca = str(ca)

    def request(self, method, url, **kwargs):
        kwargs.setdefault("verify", self.ca)
        kwargs.setdefault("timeout", 30)
        return super().request(method, url, **kwargs)


def signed_in(site: Site, host: str) -> Browser:
    """The agent, signed in through nginx at ``host`` and the https port."""
    browser = Browser(site.deployment.ca)
    form = browser.get(site.url(host) + "/login")
    data = {"username": AGENT[0], "password": AGENT[1], "csrf_token": csrf_from(form.text)}
    signed = browser.post(site.url(host) + "/login", data=data, allow_redirects=False)
    assert signed.status_code == 302, signed.text[:500]
    return browser


def first_server(site: Site, browser: Browser, host: str) -> dict:
    servers = browser.get(site.url(host) + "/api/servers?limit=5").json()["servers"]
    return next(server for server in servers if server["status"] == "ACTIVE")


@pytest.mark.parametrize("host", HOSTS)
def test_the_broker_sees_the_host_with_its_port(site, host):
    browser = signed_in(site, host)
    server = first_server(site, browser, host)
    page = browser.get(f"{site.url(host)}/console/{server['id']}")
    assert page.status_code == 200
    # The page's own link (Copy link) is built from Host and X-Forwarded-Host.
    assert f"{site.url(host)}/console/{server['id']}" in page.text


def test_browsers_on_http2_are_seen_with_the_port_too(site):
    """Browsers speak HTTP/2 to nginx, where the host comes as :authority, not a Host header."""
    curl = program("curl", "curl")
    host = "localhost"
    browser = signed_in(site, host)
    server = first_server(site, browser, host)
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    argv = [curl, "--http2", "-sS", "--cacert", str(site.deployment.ca), "-H", f"Cookie: {cookie}"]
    argv += ["-w", "\\n%{http_version}", f"{site.url(host)}/console/{server['id']}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    body, _, version = done.stdout.rpartition("\n")
    assert version == "2"
    assert f"{site.url(host)}/console/{server['id']}" in body


@pytest.mark.parametrize("host", HOSTS)
def test_the_relay_url_keeps_the_port_and_its_websocket_connects(site, host):
    browser = signed_in(site, host)
    server = first_server(site, browser, host)
    token = csrf_from(browser.get(site.url(host) + "/").text)
    issued = browser.post(
        f"{site.url(host)}/api/relay-tickets/{server['id']}?cloud=envvars", headers={"X-CSRFToken": token}
    )
    assert issued.status_code == 201, issued.text
    assert issued.json()["url"] == f"wss://{host}:{site.tls}/relay?console=envvars%2F{server['id']}"
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    context = ssl.create_default_context(cafile=str(site.deployment.ca))
    with connect(
        issued.json()["url"],
        ssl=context,
        subprotocols=["binary", f"ticket.{issued.json()['ticket']}"],
        additional_headers={"Cookie": cookie, "Origin": site.url(host)},
        open_timeout=RELAY_WAIT,
    ) as websocket:
        # Through nginx to the relay, which checked the ticket's origin (with the port) and the session.
        assert websocket.subprotocol == "binary"


def test_no_log_of_nginx_or_the_relay_holds_a_relay_ticket(site):
    """Item 7 of issue 18: nginx's error log kept "GET /relay?ticket=..." request lines. The ticket now rides
    in the Sec-WebSocket-Protocol header, so the request line nginx logs (access and error alike) has none."""
    browser = signed_in(site, "127.0.0.1")
    server = first_server(site, browser, "127.0.0.1")
    token = csrf_from(browser.get(site.url("127.0.0.1") + "/").text)
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    context = ssl.create_default_context(cafile=str(site.deployment.ca))
    tickets = []
    for _ in range(2):
        issued = browser.post(
            f"{site.url('127.0.0.1')}/api/relay-tickets/{server['id']}?cloud=envvars", headers={"X-CSRFToken": token}
        ).json()
        tickets.append(issued["ticket"])
        headers = {"Cookie": cookie, "Origin": site.url("127.0.0.1")}
        with connect(
            issued["url"],
            ssl=context,
            subprotocols=["binary", f"ticket.{issued['ticket']}"],
            additional_headers=headers,
            open_timeout=RELAY_WAIT,
        ) as websocket:
            websocket.recv(timeout=RELAY_WAIT)  # the relay's RFB greeting: the console is under way
    # A replayed ticket is refused before the upgrade (and audited), and logged by nginx as a 403.
    with pytest.raises(InvalidStatus) as replayed:
        connect(
            issued["url"],
            ssl=context,
            subprotocols=["binary", f"ticket.{tickets[-1]}"],
            additional_headers=headers,
            open_timeout=RELAY_WAIT,
        )
    assert replayed.value.response.status_code == 403
    directory = site.deployment.directory
    logs = {path.name: path.read_text() for path in [*directory.glob("*.log"), site.relay_log]}
    assert "GET /relay HTTP/1.1" in logs[site.deployment.access_log.name].replace('"', "")
    for name, text in logs.items():
        for ticket in tickets:
            assert ticket not in text, f"a relay ticket is in {name}"


def test_plain_http_on_the_https_port_is_sent_to_https_on_that_port(site):
    plain = requests.get(f"http://127.0.0.1:{site.tls}/login?next=/", allow_redirects=False, timeout=10)
    assert (plain.status_code, plain.headers["Location"]) == (301, f"https://127.0.0.1:{site.tls}/login?next=/")
    followed = requests.get(plain.headers["Location"], verify=str(site.deployment.ca), timeout=10)
    assert followed.status_code == 200 and "csrf_token" in followed.text


def test_check_and_readyz_find_the_relay(site):
    assert f"ok    relay answers at http://127.0.0.1:{site.relay}/relay" in site.check_report.splitlines()
    assert "FAIL" not in site.check_report, site.check_report
    # The route to it, too: nginx's /relay location leads to the relay, not to the web app.
    assert requests.get(site.url("localhost") + "/relay", verify=str(site.deployment.ca), timeout=10).text == (
        PROBE_ANSWER
    )
    bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    ready = requests.get(site.url("localhost") + "/readyz", headers=bearer, verify=str(site.deployment.ca), timeout=10)
    assert ready.json()["checks"]["relay"] == {
        "ok": True,
        "reason": f"relay answers at http://127.0.0.1:{site.relay}/relay",
    }
    stranger = requests.get(site.url("localhost") + "/readyz", verify=str(site.deployment.ca), timeout=10)
    assert stranger.json() == {"status": "ready"}
