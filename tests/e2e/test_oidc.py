"""The wiki link with single sign-on, in Chromium against real components: a broker on the lab with
``BROKER_AUTH=oidc`` only, npm's oidc-provider (tests/oidc) as the company's provider.

A console link opened while signed out goes to the provider's login page and straight back to
that console, which connects; signing out at the provider (its end-session page, in another tab)
makes it post a back-channel logout to the broker, after which the open console page says "Sign in
again" at its next refresh and the API refuses the browser's cookie.
"""

from __future__ import annotations

import re
import secrets
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Browser
from playwright.sync_api import expect
from sqlalchemy import select

from broker import create_app
from broker import state
from broker.extensions import db
from broker.models import AuditRecord
from broker.services import management
from lab import Lab
from lab.browser import DESKTOP
from lab.browser import status_text
from lab.browser import wait_connected
from lab.lab import CLOUD_NAME
from lab.lab import REPO
from lab.processes import Child
from lab.processes import LabError
from lab.processes import free_port
from lab.processes import spawn
from lab.processes import wait_for_port
from tests.oidc import ACCOUNTS
from tests.oidc import CLIENT_ID
from tests.oidc import CLIENT_SECRET
from tests.oidc import RunningProvider
from tests.oidc import provider
from tests.support import wait_until

# A provider account, and the broker group of the same name the test grants the lab's web servers.
PERSON = "alice"
GROUP = "helpdesk"
assert GROUP in ACCOUNTS[PERSON]["groups"]


@dataclass
class SsoBroker:
    url: str
    provider: RunningProvider
    child: Child
    app: Flask  # the same database, for reading its audit


def sign_outs(app: Flask) -> list[AuditRecord]:
    with app.app_context():
        query = select(AuditRecord).where(AuditRecord.action == "sign_out", AuditRecord.outcome == "ok")
        found = list(db.session.scalars(query))
        db.session.remove()
        return found


def grant_group(env: dict[str, str], instance: Path) -> Flask:
    """Create the broker group and its rule in the broker's database, as ``flask groups add`` and
    ``flask rules add`` would (the same services, audited), in this process: one app start, not two.

    The app reads its clouds from the process environment (openstack.config), so ``env`` is set for the while.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        app = create_app({"INSTANCE_PATH": str(instance)})
    with app.app_context():
        management.add_group("e2e-test", GROUP)
        clouds = state.consoles().inventory.names()  # what the admin page offers a rule
        management.add_rule("e2e-test", clouds, group=GROUP, cloud=CLOUD_NAME, name_pattern="web-*")
        db.session.commit()  # as the command would: the services only stage
        db.engine.dispose()
    return app


def wait_healthy(url: str, child: Child, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise LabError(f"broker not healthy within {timeout:.0f} s; log {child.log}:\n{child.tail()}")


@pytest.fixture
def sso_broker(lab: Lab, tmp_path: Path) -> Iterator[SsoBroker]:
    """gunicorn serving the broker on the lab's cloud, signing in only through the test provider."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (tmp_path / "provider").mkdir()
    # The provider's client names this broker's callback, post-logout and back-channel logout URIs.
    with provider(tmp_path / "provider", url) as running:
        env = lab.broker_env()
        env.update(
            BROKER_SECRET_KEY=secrets.token_urlsafe(32),
            BROKER_DATABASE_URL=f"sqlite:///{tmp_path / 'sso-broker.db'}",
            BROKER_AUTH="oidc",
            BROKER_OIDC_ISSUER=running.issuer,
            BROKER_OIDC_CLIENT_ID=CLIENT_ID,
            BROKER_OIDC_CLIENT_SECRET=CLIENT_SECRET,
            BROKER_OIDC_NAME="Company SSO",
            BROKER_OIDC_SCOPES="openid profile groups",
        )
        # The group exists before anyone signs in; the sign-in makes alice a member (her provider groups).
        app = grant_group(env, tmp_path / "instance")
        argv = [
            sys.executable, "-m", "gunicorn",
            "--worker-class", "gthread", "--workers", "2", "--threads", "8",
            "--bind", f"127.0.0.1:{port}",
            "app:app",
        ]  # fmt: skip
        child = spawn("sso-broker", argv, tmp_path / "sso-broker.log", env=env, cwd=REPO)
        try:
            wait_for_port(child, port, timeout=30)
            wait_healthy(url, child)
            yield SsoBroker(url, running, child, app)
        finally:
            child.stop()


def test_wiki_link_signs_in_at_the_provider_and_its_logout_ends_the_open_console(
    browser: Browser, lab: Lab, sso_broker: SsoBroker
) -> None:
    broker, issuer = sso_broker.url, sso_broker.provider.issuer
    context = browser.new_context(base_url=broker, viewport=DESKTOP)
    # The provider's stock pages import a web font; the test machine need not reach the internet.
    context.route("https://fonts.googleapis.com/**", lambda route: route.abort())
    try:
        page = context.new_page()
        wiki_link = f"/console/{lab.server('web-01').id}"

        # Signed out, the link goes straight to the provider's login page (no broker login page).
        page.goto(wiki_link)
        expect(page).to_have_url(re.compile("^" + re.escape(issuer) + "/interaction/"))
        page.fill("input[name=login]", PERSON)
        page.fill("input[name=password]", ACCOUNTS[PERSON]["password"])
        page.click("button[type=submit]")

        # ... and straight back to that console, which connects through the lab's proxy.
        expect(page).to_have_url(broker + wiki_link)
        frame = wait_connected(page)
        assert status_text(frame) == "Connected to QEMU (web-01)"
        expect(page.locator("#console")).to_have_attribute("data-state", "live")
        assert page.request.get("/api/servers").status == 200

        # The person signs out at the provider, in another tab: it posts a logout token to the broker.
        provider_tab = context.new_page()
        provider_tab.goto(f"{issuer}/session/end")
        provider_tab.click("button[name=logout][value=yes]")
        expect(provider_tab).to_have_url(re.compile("^" + re.escape(issuer) + "/session/end/success"))
        signed_out = time.monotonic()
        provider_tab.close()
        page.bring_to_front()
        wait_until(
            lambda: "backchannel logout sent to console-broker" in sso_broker.provider.log.read_text(),
            interval=0.1,
            message="the provider's back-channel logout",
        )
        (record,) = wait_until(lambda: sign_outs(sso_broker.app), interval=0.1, message="the sign-out's record")
        assert (record.username, record.detail) == (PERSON, "oidc")
        assert record.reason.startswith("back-channel logout from the provider ended 1 session(s)")

        # The open console page learns it at its next refresh (due at most TTL - MARGIN s after its last URL).
        due = max(lab.console_ttl - lab.refresh_margin, 10) + 3
        expect(page.locator("#console")).to_have_attribute("data-state", "signin", timeout=due * 1000)
        expect(page.locator("#notice-signin")).to_be_visible()
        expect(page.locator("#notice-signin")).to_have_text("Sign in again")
        assert time.monotonic() - signed_out < due
        assert page.request.get("/api/servers").status == 401
        expect(page).to_have_url(broker + wiki_link)  # the page said so in place, nothing navigated away
    finally:
        context.close()
