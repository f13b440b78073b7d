"""The built-in demo cloud: a stand-in Keystone and Nova reached in process, and its console page."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import requests
from flask import Blueprint
from flask import current_app
from flask import has_request_context
from flask import render_template
from flask import request
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from broker import state
from broker.cloud.client import ComputeClient
from broker.cloud.registry import Cloud
from broker.cloud.types import Timeouts
from broker.demo import consoleproxy as consoleproxy
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import break_server
from broker.demo.cloud import make_servers
from broker.demo.transport import WSGITransport

DEMO_BASE = "http://demo-cloud.invalid"
DEMO_CLOUD_NAME = "demo"
DEMO_ACTION_SECONDS = 4.0

bp = Blueprint("demo", __name__, url_prefix="/demo-console")


def _console_base() -> dict:
    """Console URLs point back at this broker's own demo console page."""
    if has_request_context():
        return {"X-Console-Base": request.host_url.rstrip("/") + bp.url_prefix}
    return {}


def build_demo_cloud(
    secret_key: str,
    *,
    servers: int,
    console_ttl: int,
    timeouts: Timeouts,
    console_mode: str = "iframe",
    state_file: Path | None = None,
    console_types: tuple[str, ...] = ("novnc",),
) -> tuple[Cloud, FakeCloud]:
    """The demo cloud and a client that reaches it in process over its HTTP API."""
    # Derived from the broker's key so every worker signs and checks the same tokens.
    secret = hashlib.sha256(b"demo-cloud:" + secret_key.encode()).hexdigest()
    fleet = make_servers(servers)
    if len(fleet) > 13:
        break_server(fleet[13])  # one server a helpdesk would be asked about: its panel shows why
    fake = FakeCloud(
        secret=secret,
        servers=fleet,
        password=secrets.token_urlsafe(16),
        console_ttl=console_ttl,
        console_base="http://127.0.0.1:5000" + bp.url_prefix,
        state_file=state_file,
    )
    # Long enough to watch a server start (the console page follows it), short enough not to bore.
    fake.action_seconds = DEMO_ACTION_SECONDS
    fake.public_base = DEMO_BASE
    transport = requests.Session()
    transport.mount(DEMO_BASE + "/", WSGITransport(fake.app(), headers=_console_base))
    session = keystone_session(fake, timeout=timeouts.read, transport=transport)
    client = ComputeClient(DEMO_CLOUD_NAME, session, region_name=fake.region, timeouts=timeouts)
    return Cloud(DEMO_CLOUD_NAME, client, console_ttl, "idle", console_mode, console_types), fake


def keystone_session(
    fake: FakeCloud, *, timeout: float, transport: requests.Session | None = None
) -> ks_session.Session:
    """A keystoneauth1 session holding the stand-in cloud's service account."""
    auth = v3.Password(
        auth_url=fake.auth_url,
        username=fake.username,
        password=fake.password,
        project_id=fake.project_id,
        user_domain_id="default",
    )
    return ks_session.Session(auth=auth, session=transport, timeout=timeout)


def demo_password_file(instance_path: str) -> Path:
    return Path(instance_path) / "demo-credentials"


@bp.get("/vnc_auto.html")
def console_page():
    """The demo cloud's console: refuses an unknown or expired token, as a proxy would."""
    fake = state.of().demo_cloud
    path = request.args.get("path", "")
    token = request.args.get("token") or path.partition("token=")[2].partition("&")[0]
    server = fake.check_console_token(token)
    response = current_app.make_response(render_template("demo/console.html", server=server))
    response.headers["Cache-Control"] = "no-store"
    return response
