"""Demo mode: the built-in cloud through the real client, its console page, and the banner."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import subprocess
import time
from urllib.parse import urlsplit

import pytest
import requests
from bs4 import BeautifulSoup
from websockets.sync.client import connect

from broker import create_app
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import make_servers
from broker.extensions import db
from broker.services import audit
from broker.services import users
from tests.support import ROOT
from tests.support import AuthActions
from tests.support import free_port
from tests.support import wait_for_health


@pytest.fixture
def demo_app(tmp_path):
    instance = tmp_path / "instance"
    return create_app(
        {"ENV": {"BROKER_DEMO": "1", "BROKER_CONSOLE_TTL": "30"}, "INSTANCE_PATH": str(instance), "TESTING": True}
    )


@pytest.fixture
def demo_client(demo_app, tmp_path):
    client = demo_app.test_client()
    password = (tmp_path / "instance" / "demo-credentials").read_text().strip()
    AuthActions(client).login("demo", password)
    return client


def mint(client, server_ref: str) -> dict:
    soup = BeautifulSoup(client.get(f"/console/{server_ref}").get_data(as_text=True), "html.parser")
    import json

    page = json.loads(soup.select_one("#console")["data-page"])
    token = soup.find("meta", {"name": "csrf-token"})["content"]
    return client.post(page["mintUrl"], headers={"X-CSRFToken": token}).get_json()


def test_demo_prints_sign_in_details(tmp_path, capsys):
    create_app({"ENV": {"BROKER_DEMO": "1"}, "INSTANCE_PATH": str(tmp_path / "i")})
    password = (tmp_path / "i" / "demo-credentials").read_text().strip()
    assert f"Sign in as 'demo' with password '{password}'" in capsys.readouterr().err


def test_demo_banner_on_every_page(demo_app, demo_client):
    for path in ("/", "/console/web-01"):
        soup = BeautifulSoup(demo_client.get(path).get_data(as_text=True), "html.parser")
        assert "Demo cloud" in soup.select_one("#demo-banner").get_text(), path
    login = demo_app.test_client().get("/login").get_data(as_text=True)
    assert 'id="demo-banner"' in login


def test_demo_lists_servers(demo_client):
    soup = BeautifulSoup(demo_client.get("/").get_data(as_text=True), "html.parser")
    assert len(soup.select("#servers tbody tr")) == 24
    assert "SHUTOFF" in soup.get_text()


def test_demo_console_round_trip(demo_client):
    body = mint(demo_client, "web-01")
    assert body["expires_in"] == 30
    assert body["url"].startswith("http://localhost/demo-console/vnc_auto.html?path=%3Ftoken%3D")
    page = demo_client.get(body["url"].removeprefix("http://localhost"))
    status = BeautifulSoup(page.get_data(as_text=True), "html.parser").select_one("#status").get_text()
    assert status == "Connected to web-01 (demo cloud)"


def test_demo_console_refuses_an_expired_token(demo_client, monkeypatch):
    url = mint(demo_client, "web-01")["url"].removeprefix("http://localhost")
    later = time.time() + 31
    monkeypatch.setattr(time, "time", lambda: later)
    page = demo_client.get(url).get_data(as_text=True)
    assert "Something went wrong, connection is closed" in page


def test_demo_console_refuses_a_forged_token(demo_client):
    page = demo_client.get("/demo-console/vnc_auto.html?path=%3Ftoken%3Dforged.abc").get_data(as_text=True)
    assert "Something went wrong, connection is closed" in page


def test_two_workers_agree(tmp_path, demo_client):
    """A second process (same instance folder) accepts the first one's tokens and sessions."""
    other = create_app({"ENV": {}, "INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True})
    url = mint(demo_client, "web-02")["url"].removeprefix("http://localhost")
    page = other.test_client().get(url).get_data(as_text=True)
    assert "Connected to web-02" in page


def user_names(app) -> list[str]:
    with app.app_context():
        return [u.username for u in users.all_users()]


def test_without_being_asked_for_demo_mode_creates_no_account(tmp_path, capsys):
    """A shell without cloud variables (flask --app app users ...) must not add a demo admin anywhere."""
    database = f"sqlite:///{tmp_path}/prod.sqlite3"
    app = create_app({"ENV": {"BROKER_DATABASE_URL": database}, "INSTANCE_PATH": str(tmp_path / "i")})
    assert user_names(app) == []
    assert not (tmp_path / "i" / "demo-credentials").exists()
    assert "BROKER_DEMO=1" in capsys.readouterr().err
    runner = app.test_cli_runner()
    assert runner.invoke(args=["users", "add", "olga", "--password-stdin"], input="olga-password-1\n").exit_code == 0
    assert user_names(app) == ["olga"]


def test_demo_refuses_a_database_with_real_users(tmp_path):
    database = f"sqlite:///{tmp_path}/prod.sqlite3"
    env = {"BROKER_SECRET_KEY": "k" * 32, "BROKER_DATABASE_URL": database, "OS_CLOUD": "prod"}
    prod = create_app({"ENV": env, "CLOUDS": [], "INSTANCE_PATH": str(tmp_path / "i")})
    with prod.app_context():
        users.add("olga", "olga-password-1", "admin")
        db.session.commit()
    with pytest.raises(SystemExit, match="BROKER_DATABASE_URL names a database with real users"):
        create_app({"ENV": {"BROKER_DEMO": "1", "BROKER_DATABASE_URL": database}, "INSTANCE_PATH": str(tmp_path / "i")})
    assert user_names(prod) == ["olga"]


def test_demo_keeps_its_own_database(tmp_path):
    app = create_app({"ENV": {"BROKER_DEMO": "1"}, "INSTANCE_PATH": str(tmp_path / "i")})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path}/i/demo.sqlite3"
    with app.app_context():
        [row] = audit.search(audit.Filter(action="admin"))[0]
        assert (row.detail, row.reason) == ("user_add", "added demo (admin) for demo mode")
    # Restarting the demo after playing with it (adding users) works.
    with app.app_context():
        users.add("trainee", "trainee-password-1")
        db.session.commit()
    again = create_app({"ENV": {"BROKER_DEMO": "1"}, "INSTANCE_PATH": str(tmp_path / "i")})
    assert user_names(again) == ["demo", "trainee"]


def demo_console_greets(session: requests.Session, url: str, page: str) -> bytes:
    """The demo's first server through its relay, as the viewer opens it: the RFB greeting."""
    server = session.get(f"{url}/api/servers?limit=1", timeout=10).json()["servers"][0]["id"]
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    answer = session.post(f"{url}/api/relay-tickets/{server}", headers={"X-CSRFToken": csrf}, timeout=10).json()
    # The relay starts beside gunicorn and listens once the web process has made the schema.
    relay = urlsplit(answer["url"])
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((relay.hostname, relay.port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the demo's relay never listened"
            time.sleep(0.1)
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    headers = {"Cookie": cookie, "Origin": url}
    offer = ["binary", "ticket." + answer["ticket"]]
    with connect(answer["url"], subprotocols=offer, additional_headers=headers, open_timeout=10) as ws:
        return ws.recv(timeout=10)


@contextlib.contextmanager
def only_demo_of_this_checkout():
    """Hold the checkout's one ``./dev demo`` to this test: two at once (CI's two passes run this test at the same
    time) would share instance/demo.sqlite3, its sign-in and its servers' state file."""
    (ROOT / "instance").mkdir(exist_ok=True)
    with open(ROOT / "instance" / "dev-demo-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def test_dev_demo_serves_with_the_procfiles_gunicorn_and_prints_the_sign_in_once(tmp_path):
    """The first impression: ./dev demo runs production's server line (not Flask's development server) and its relay."""
    with only_demo_of_this_checkout():
        dev_demo_serves_and_prints_the_sign_in_once(tmp_path)


def dev_demo_serves_and_prints_the_sign_in_once(tmp_path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OS_"))}
    env.update(PORT=str(port), RELAY_PORT=str(free_port()))
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["./dev", "demo"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, proc, log)
        session = requests.Session()
        page = session.get(url + "/login", timeout=10).text
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        password = (ROOT / "instance" / "demo-credentials").read_text().strip()
        signed_in = session.post(url + "/login", data={"username": "demo", "password": password, "csrf_token": token})
        assert signed_in.ok and "Sign out" in signed_in.text
        assert demo_console_greets(session, url, signed_in.text) == b"RFB 003.008\n"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    output = log.read_text()
    assert "Starting gunicorn" in output and "gthread" in output
    assert "development server" not in output
    assert output.count(f"Sign in as 'demo' with password '{password}'") == 1


def test_a_server_started_in_one_demo_process_runs_in_all(tmp_path):
    """gunicorn's workers and the relay each hold a demo cloud: a start in one must be seen by the others."""
    shared = tmp_path / "demo-servers.json"
    worker = FakeCloud(secret="s", servers=make_servers(12), state_file=shared)
    relay = FakeCloud(secret="s", servers=make_servers(12), state_file=shared)
    stopped = next(s for s in worker.servers.values() if s.status == "SHUTOFF")
    token, _ = worker.issue_keystone_token()
    answer = (
        worker.app()
        .test_client()
        .post(
            f"/compute/v2.1/{worker.project_id}/servers/{stopped.id}/action",
            json={"os-start": None},
            headers={"X-Auth-Token": token},
        )
    )
    assert answer.status_code == 202
    deadline = time.monotonic() + 5
    while worker.servers[stopped.id].status != "ACTIVE" and time.monotonic() < deadline:
        time.sleep(0.01)
    relay.load_state()
    assert relay.servers[stopped.id].status == "ACTIVE" and relay.servers[stopped.id].task_state is None
