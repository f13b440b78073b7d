"""Trusted-header sign-in behind nginx, set up from deploy/nginx-auth-header.conf as docs/deploy.md shows it.

nginx checks HTTP basic auth (an htpasswd file made with ``openssl passwd -apr1``), passes the
user on in X-Remote-User and connects to the broker from 127.0.0.2 (``proxy_bind``), the one
address in BROKER_AUTH_HEADER_FROM. Clients reaching the broker's port themselves come from
127.0.0.1: their X-Remote-User (and X-Forwarded-For) are not believed.
"""

from __future__ import annotations

import contextlib
import getpass
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import flask
import pytest
import requests
from sqlalchemy import select
from werkzeug.serving import make_server

from broker.extensions import db
from broker.models import AuditRecord
from broker.models import User
from broker.models import UserSession
from broker.services import policy
from broker.services import users
from tests.deploy.test_two_instances import DEPLOY
from tests.deploy.test_two_instances import free_port
from tests.deploy.test_two_instances import program
from tests.deploy.test_two_instances import self_signed_certificate
from tests.deploy.test_two_instances import stop
from tests.deploy.test_two_instances import substitute
from tests.support import ROOT
from tests.support import nginx_conf

SITE = DEPLOY / "nginx-auth-header.conf"
ALICE = ("alice", "alice-proxy-password-1")
BOB = ("bob", "bob-proxy-password-1")
# nginx's side of its connections to the broker (proxy_bind), and where everyone else comes from.
PROXY_ADDRESS = "127.0.0.2"


@pytest.fixture
def env_overrides() -> dict:
    """The settings docs/deploy.md gives for this file."""
    return {
        "BROKER_AUTH": "header,local",
        "BROKER_AUTH_HEADER": "X-Remote-User",
        "BROKER_AUTH_GROUPS_HEADER": "X-Remote-Groups",
        "BROKER_AUTH_HEADER_FROM": PROXY_ADDRESS,
        "BROKER_TRUSTED_PROXIES": "1",
        "BROKER_ADMIN_GROUPS": "broker-admins",
    }


def htpasswd(openssl: str, path: Path, *accounts: tuple[str, str]) -> Path:
    lines = []
    for name, password in accounts:
        done = subprocess.run(
            [openssl, "passwd", "-apr1", "-stdin"], input=password, capture_output=True, text=True, check=True
        )
        lines.append(f"{name}:{done.stdout.strip()}\n")
    path.write_text("".join(lines))
    return path


def nginx_configuration(directory: Path, broker_port: int, tls: int, cert: Path, key: Path, passwords: Path) -> Path:
    """deploy/nginx-auth-header.conf on the test's ports and files, in a main file for an unprivileged nginx."""
    site = substitute(
        SITE.read_text(),
        {
            "server 127.0.0.1:8001;": f"server 127.0.0.1:{broker_port};",
            "listen 443 ssl http2;": f"listen 127.0.0.1:{tls} ssl http2;",
            "/etc/ssl/certs/console-broker.crt": str(cert),
            "/etc/ssl/private/console-broker.key": str(key),
            "/etc/nginx/console-broker.htpasswd": str(passwords),
            '    default "";\n': f'    default "";\n    {BOB[0]} "helpdesk, broker-admins";\n',
        },
    )
    # Run as root (a CI container), nginx's workers would be nobody, who cannot read the test's password file.
    return nginx_conf(directory, site, connections=64, user=getpass.getuser())


@dataclass
class Setup:
    url: str
    broker_url: str
    ca: Path

    def through_nginx(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        return requests.get(self.url + path, verify=str(self.ca), timeout=10, **kwargs)

    def straight_to_the_broker(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.broker_url + path, allow_redirects=False, timeout=10, **kwargs)


def wait_for(url: str, process: subprocess.Popen, directory: Path, ca: Path) -> None:
    errors = directory / "error.log"
    for _ in range(100):
        assert process.poll() is None, errors.read_text() if errors.exists() else ""
        with contextlib.suppress(requests.RequestException):
            requests.get(url + "/healthz", verify=str(ca), timeout=2)
            return
        time.sleep(0.1)
    raise AssertionError("nginx did not answer")


@pytest.fixture
def setup(app, tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("nginx connects from 127.0.0.2, a loopback address only Linux answers on without setup")
    nginx = program("nginx", "nginx", "/usr/sbin/nginx")
    openssl = program("openssl", "openssl")
    with app.app_context():
        for name in ("helpdesk", "dba"):
            policy.add_group(name)
        db.session.commit()
    # The broker: a threaded werkzeug server on 127.0.0.1, as gunicorn's bind would be.
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    directory = tmp_path / "nginx"
    directory.mkdir()
    cert, key = self_signed_certificate(openssl, directory)
    passwords = htpasswd(openssl, directory / "htpasswd", ALICE, BOB)
    tls = free_port()
    conf = nginx_configuration(directory, server.server_port, tls, cert, key, passwords)
    proxy = subprocess.Popen([nginx, "-p", f"{directory}/", "-c", str(conf), "-e", "stderr"])
    try:
        setup = Setup(f"https://127.0.0.1:{tls}", f"http://127.0.0.1:{server.server_port}", cert)
        wait_for(setup.url, proxy, directory, cert)
        yield setup
    finally:
        stop(proxy)
        server.shutdown()
        thread.join(timeout=10)


def live_sessions(app) -> list[tuple[str, str]]:
    with app.app_context():
        query = select(User.username, UserSession.method).join(User, User.id == UserSession.user_id)
        return [tuple(row) for row in db.session.execute(query.where(UserSession.ended_at.is_(None)))]


def names(app) -> set[str]:
    with app.app_context():
        return {user.username for user in users.all_users()}


def test_the_docs_show_the_file_this_test_runs():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert SITE.read_text().strip() in doc, "docs/deploy.md does not show deploy/nginx-auth-header.conf as it is"
    for setting in ("BROKER_AUTH_HEADER=X-Remote-User", f"BROKER_AUTH_HEADER_FROM={PROXY_ADDRESS}"):
        assert setting in doc


def test_the_broker_sees_the_host_and_port_the_browser_used(setup, app):
    """The test's nginx listens on a random port, not 443: the port must reach the broker (links, relay origin)."""
    seen = []

    def record(sender, **extra) -> None:
        seen.append(flask.request.host_url)

    flask.request_started.connect(record, app)
    try:
        assert setup.through_nginx("/healthz", auth=ALICE).status_code == 200
    finally:
        flask.request_started.disconnect(record, app)
    assert seen == [setup.url + "/"]
    # http:// on the https port: to https on the same port.
    plain = requests.get(setup.url.replace("https://", "http://") + "/login", allow_redirects=False, timeout=10)
    assert (plain.status_code, plain.headers["Location"]) == (301, setup.url + "/login")


def test_a_person_nginx_authenticated_is_signed_in(setup, app):
    # A client's own X-Remote-User is replaced by the user nginx checked.
    forged = {"X-Remote-User": "mallory", "X-Remote-Groups": "broker-admins"}
    response = setup.through_nginx("/api/servers", auth=ALICE, headers=forged)
    assert response.status_code == 200, response.text
    assert live_sessions(app) == [(ALICE[0], "header")]
    with app.app_context():
        alice = users.find(ALICE[0])
        assert (alice.source, alice.role) == ("header", "agent")
        [entry] = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "sign_in"))
        # ProxyFix's client: the address nginx saw, not the one the client claimed.
        assert (entry.username, entry.outcome, entry.client) == (ALICE[0], "ok", "127.0.0.1")
    # The page, too, without a redirect; and nginx answers strangers itself.
    assert setup.through_nginx("/", auth=ALICE).status_code == 200
    assert setup.through_nginx("/api/servers", headers=forged).status_code == 401
    assert "mallory" not in names(app)


def test_groups_from_the_proxy_make_an_admin(setup, app):
    response = setup.through_nginx("/admin/", auth=BOB)
    assert response.status_code == 200, response.text
    with app.app_context():
        bob = users.find(BOB[0])
        assert bob.role == "admin"
        assert [g.name for g in policy.all_groups() if bob in g.members] == ["helpdesk"]


def test_the_header_sent_straight_to_the_broker_is_not_believed(setup, app):
    before = names(app)
    forged = {"X-Remote-User": ALICE[0]}
    assert setup.straight_to_the_broker("/api/servers", headers=forged).status_code == 401
    # Claiming to come through nginx changes nothing: the TCP peer is still 127.0.0.1.
    via = {**forged, "X-Forwarded-For": PROXY_ADDRESS}
    assert setup.straight_to_the_broker("/api/servers", headers=via).status_code == 401
    page = setup.straight_to_the_broker("/", headers=forged)
    assert page.status_code == 302 and page.headers["Location"].startswith("/login")
    assert live_sessions(app) == [] and names(app) == before
    with app.app_context():
        refused = list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == "sign_in")))
    assert refused and all(entry.outcome == "refused" and entry.detail == "header" for entry in refused)
    assert all("untrusted address 127.0.0.1" in entry.reason for entry in refused)
