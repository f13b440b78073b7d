"""Fixtures for the browser tests: one console lab and one Chromium for the whole package.

Package-scoped, not session-scoped: Playwright's sync API keeps an asyncio loop running in the
main thread while it is open, and the tests after these (the relay's) run asyncio themselves.

Without Chromium, QEMU or noVNC the tests skip with the reason, except under ``CI=true``,
where a missing tool fails them: CI installs the tools, so a skip there would hide a gap.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import Page
from playwright.sync_api import sync_playwright

from lab import Lab
from lab import LabServer
from lab.browser import CHROMIUM
from lab.browser import CHROMIUM_ARGS
from lab.browser import CLICKED_AT_JS
from lab.browser import CONNECTED_AT_JS
from lab.browser import DESKTOP
from lab.browser import sign_in
from lab.lab import default_servers
from lab.lab import missing_tools

# Short lifetimes so expiry is seen within the run: refresh after max(20 - 8, 10) = 12 s.
TTL = 20
MARGIN = 8
IDLE_SWAP_AFTER = 2
# The name two servers share, so opening it by name shows the chooser.
TWIN = "twin-01"


def lab_servers() -> list[LabServer]:
    """The lab's three (two running, batch-01 SHUTOFF), one in ERROR with Nova's fault, and two of one name."""
    twins = [
        LabServer(TWIN, status="SHUTOFF", ip=f"10.0.0.{n}", id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"lab/{TWIN}/{n}")))
        for n in (31, 32)
    ]
    return [*default_servers(), LabServer("broken-01", status="ERROR", ip="10.0.0.15"), *twins]


def require(missing: list[str]) -> None:
    """Skip (or, under CI=true, fail) when a tool the test needs is missing."""
    if not missing:
        return
    reason = "browser tests need " + ", ".join(missing)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " (CI=true: install them, see .ci/run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="package")
def artefacts(tmp_path_factory: pytest.TempPathFactory):
    """Where screenshots and timings go: a temporary folder, so a test run changes no tracked file.

    ``BROKER_TEST_ARTEFACTS=docs ./dev test tests/e2e`` keeps them (screenshots as ``e2e-*.png``, beside
    the README's own pictures, which ``./dev screenshots`` makes, and ``timing.txt``, which the README quotes).
    """
    from pathlib import Path

    chosen = os.environ.get("BROKER_TEST_ARTEFACTS")
    return Path(chosen) if chosen else tmp_path_factory.mktemp("artefacts")


@pytest.fixture(scope="package")
def lab_tools() -> None:
    require(missing_tools())


@pytest.fixture(scope="package")
def linux_lab_tools() -> None:
    """What a lab with a Linux guest needs: the lab's tools, a kernel and busybox-static."""
    require(missing_tools(linux=True))


@pytest.fixture(scope="package")
def chromium() -> None:
    require([] if CHROMIUM.is_file() else [f"{CHROMIUM} (Debian package chromium)"])


@pytest.fixture(scope="package")
def lab(lab_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("console-lab")
    with Lab(
        console_ttl=TTL, refresh_margin=MARGIN, idle_swap_after=IDLE_SWAP_AFTER, servers=lab_servers(), workdir=workdir
    ) as running:
        yield running


@pytest.fixture(scope="package")
def browser(chromium: None) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="package")
def signed_in_state(browser: Browser, lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Cookies of one sign-in, shared by the tests that start signed in."""
    context = browser.new_context(base_url=lab.broker_url)
    page = context.new_page()
    page.goto("/login")
    sign_in(page, lab)
    path = tmp_path_factory.mktemp("state") / "signed-in.json"
    context.storage_state(path=path)
    context.close()
    return str(path)


@pytest.fixture(scope="package")
def accounts(lab: Lab) -> Callable[..., str]:
    """More users on the package's broker, each made once: ``accounts(name, power=False, admin=False)`` -> password.

    Tests that pin, open consoles or need a permission use their own user, so none sees another's traces.
    """
    made: dict[str, str] = {}

    def account(name: str, power: bool = False, admin: bool = False) -> str:
        if name not in made:
            made[name] = secrets.token_urlsafe(12)
            lab.add_user(name, made[name], admin=admin, power=power)
        return made[name]

    return account


def new_context(
    browser: Browser, lab: Lab, state: str | None = None, viewport: dict | None = None, color_scheme: str = "light"
) -> BrowserContext:
    context = browser.new_context(
        base_url=lab.broker_url, storage_state=state, viewport=viewport or DESKTOP, color_scheme=color_scheme
    )
    context.add_init_script(CONNECTED_AT_JS)
    context.add_init_script(CLICKED_AT_JS)
    return context


@pytest.fixture
def make_page(
    browser: Browser, lab: Lab, signed_in_state: str, accounts: Callable[..., str]
) -> Iterator[Callable[..., Page]]:
    """Open pages in fresh contexts: ``make_page(signed_in=True, viewport=None, color_scheme="light", user=None)``.

    ``user``: signed in as that user of ``accounts`` (made first if need be) instead of the lab's.
    """
    contexts: list[BrowserContext] = []

    def make(signed_in: bool = True, viewport: dict | None = None, color_scheme: str = "light", user=None) -> Page:
        contexts.append(
            new_context(browser, lab, signed_in_state if signed_in and not user else None, viewport, color_scheme)
        )
        page = contexts[-1].new_page()
        if user:
            page.goto("/login")
            sign_in(page, lab, user, accounts(user))
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def anonymous(make_page: Callable[..., Page]) -> Page:
    """A page with no session."""
    return make_page(signed_in=False)


@pytest.fixture
def page(make_page: Callable[..., Page]) -> Page:
    """A page signed in as the lab's user."""
    return make_page()
