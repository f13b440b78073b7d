"""Demo mode: the built-in cloud through the real client, its console page, and the banner."""

from __future__ import annotations

import time

import pytest
from bs4 import BeautifulSoup
from conftest import AuthActions

from broker import create_app


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
