"""axe-core on every page and state an agent or admin meets, light and dark, desktop and 390 px wide.

No ``serious`` or ``critical`` violation may remain (contrast included, so the dark theme is judged
as closely as the light one). The relay viewer is checked in test_relay.py, on that module's lab.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import Page
from playwright.sync_api import expect

from lab import Lab
from lab.browser import DESKTOP
from lab.browser import sign_in
from lab.browser import wait_connected
from lab.lab import CLOUD_NAME
from tests.axe import assert_accessible
from tests.axe import report
from tests.axe import violations
from tests.e2e.conftest import TWIN
from tests.e2e.conftest import new_context

PHONE = {"width": 390, "height": 844}
AGENT = "a11y-agent"
ADMIN = "a11y-admin"
PIN_JS = """async (url) => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  return (await fetch(url, { method: "PUT", headers: { "X-CSRFToken": csrf } })).status;
}"""


@pytest.fixture(scope="module")
def sessions(
    browser: Browser, lab: Lab, accounts: Callable[..., str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Saved sign-ins: the agent (may power, one console opened, one server pinned) and an admin."""
    folder = tmp_path_factory.mktemp("a11y")
    saved = {}
    for user, admin in ((AGENT, False), (ADMIN, True)):
        context = browser.new_context(base_url=lab.broker_url, viewport=DESKTOP)
        page = context.new_page()
        page.goto("/login")
        sign_in(page, lab, user, accounts(user, power=not admin, admin=admin))
        if not admin:
            page.goto("/console/web-01")
            wait_connected(page)
            page.goto("/")
            assert page.evaluate(PIN_JS, f"/api/pins/{lab.server('db-01').id}?cloud={CLOUD_NAME}") in (200, 201)
        saved[user] = str(folder / f"{user}.json")
        context.storage_state(path=saved[user])
        context.close()
    return saved


# -- the states: each leaves the page showing one of them ------------------------------------------------


def login(page: Page) -> None:
    page.goto("/login")
    expect(page.locator("#sign-in")).to_be_visible()


def server_list(page: Page) -> None:
    page.goto("/")
    expect(page.locator("#pinned a", has_text="db-01")).to_be_visible()
    expect(page.locator("#recent a", has_text="web-01")).to_be_visible()


def server_panel(page: Page) -> None:
    """The list with the details of a server in ERROR open: the fault is shown prominently."""
    page.goto("/")
    link = page.locator("a.server-link", has_text=re.compile("^broken-01$"))
    page.locator("#servers tbody tr").filter(has=link).locator("button.details").click()
    expect(page.locator("#server-panel")).to_contain_text("No valid host was found")


def console_live(page: Page) -> None:
    page.goto("/console/web-01")
    wait_connected(page)


def serial_live(page: Page) -> None:
    """The serial console (xterm.js on the relay), connected."""
    page.goto("/console/web-01/serial")
    expect(page.locator("#console")).to_have_attribute("data-state", "live", timeout=15000)


def console_not_running(page: Page) -> None:
    page.goto("/console/batch-01")
    expect(page.locator("#console")).to_have_attribute("data-state", "not-running")
    expect(page.locator("#power-start")).to_be_visible()


def power_dialog(page: Page) -> None:
    """The confirmation the agent must answer before a start (not answered here: batch-01 stays off)."""
    console_not_running(page)
    page.click("#power-start")
    expect(page.locator("#power-dialog")).to_contain_text("Start server batch-01?")
    expect(page.locator("#power-confirm")).to_be_enabled()


def console_details(page: Page) -> None:
    console_live(page)
    page.click("#details-toggle")
    expect(page.locator("#server-panel")).to_contain_text("m1.small")


def chooser(page: Page) -> None:
    page.goto(f"/console/{TWIN}")
    expect(page.locator("#chooser a.choice")).to_have_count(2)


def error_page(page: Page) -> None:
    response = page.goto("/console/no-such-server")
    assert response.status == 404


def admin_index(page: Page) -> None:
    page.goto("/admin/")
    expect(page.get_by_role("heading", name="Users")).to_be_visible()


def admin_audit(page: Page) -> None:
    page.goto("/admin/audit")
    expect(page.locator("table").first).to_be_visible()


def admin_sessions(page: Page) -> None:
    page.goto("/admin/sessions")
    expect(page.get_by_role("link", name="Live consoles")).to_be_visible()


# (who, how the page gets there); who: None (signed out), AGENT or ADMIN.
STATES = {
    "login": (None, login),
    "list": (AGENT, server_list),
    "list-panel": (AGENT, server_panel),
    "console-live": (AGENT, console_live),
    "console-details": (AGENT, console_details),
    "serial-live": (AGENT, serial_live),
    "console-not-running": (AGENT, console_not_running),
    "console-power-dialog": (AGENT, power_dialog),
    "chooser": (AGENT, chooser),
    "error-404": (AGENT, error_page),
    "admin-index": (ADMIN, admin_index),
    "admin-audit": (ADMIN, admin_audit),
    "admin-sessions": (ADMIN, admin_sessions),
}
# Colour scheme and window: light and dark, desktop and a phone.
LOOKS = {
    "light": ("light", DESKTOP),
    "dark": ("dark", DESKTOP),
    "light-390": ("light", PHONE),
    "dark-390": ("dark", PHONE),
}


@pytest.fixture
def open_as(browser: Browser, lab: Lab, sessions: dict[str, str]) -> Iterator[Callable[..., Page]]:
    contexts = []

    def make(user: str | None, look: str) -> Page:
        scheme, viewport = LOOKS[look]
        contexts.append(new_context(browser, lab, sessions[user] if user else None, viewport, scheme))
        return contexts[-1].new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.mark.parametrize("look", LOOKS)
@pytest.mark.parametrize("state", STATES)
def test_no_serious_accessibility_violations(open_as: Callable[..., Page], state: str, look: str) -> None:
    user, reach = STATES[state]
    page = open_as(user, look)
    reach(page)
    assert_accessible(page, f"{state} ({look})")


def test_axe_reports_what_it_finds(open_as: Callable[..., Page]) -> None:
    """The check itself: a picture without a text alternative and grey-on-grey text are reported, with where."""
    page = open_as(None, "light")
    login(page)
    page.evaluate("""() => {
      const img = document.createElement("img");
      img.id = "no-alt"; img.src = "/favicon.ico";
      const faint = document.createElement("p");
      faint.id = "faint"; faint.textContent = "Hard to read";
      faint.style.color = "#bbb"; faint.style.background = "#fff";
      document.querySelector("main").append(img, faint);
    }""")
    found = violations(page)
    assert {v["id"] for v in found} >= {"image-alt", "color-contrast"}
    text = report(found, "login with two faults")
    assert "#no-alt" in text and "#faint" in text


# What has the keyboard focus now, and whether it shows: an outline of at least 2 px (or a focus ring
# drawn with box-shadow). null between documents (the body, or noVNC's page in the iframe, not ours);
# "again" once the walk has come round to an element it met before.
FOCUSED_JS = """() => {
  const el = document.activeElement;
  if (!el || el === document.body || el.tagName === "IFRAME") return null;
  if (el.dataset.tabStop) return { again: true };
  el.dataset.tabStop = "1";
  // xterm.js takes keys through a hidden textarea: what shows its focus is the terminal's own ring.
  const style = getComputedStyle(el.classList.contains("xterm-helper-textarea") ? el.closest(".screen") : el);
  const outline = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2;
  const text = el.textContent.trim().slice(0, 30) || el.getAttribute("aria-label") || "";
  const label = el.id ? `#${el.id}` : `${el.tagName.toLowerCase()}.${el.className} "${text}"`;
  return { label, visible: outline || style.boxShadow !== "none" };
}"""


@pytest.mark.parametrize("look", ["light", "dark"])
@pytest.mark.parametrize("state", ["list", "console-live", "serial-live"])
def test_focus_is_visible_at_every_tab_stop(open_as: Callable[..., Page], state: str, look: str) -> None:
    user, reach = STATES[state]
    page = open_as(user, look)
    reach(page)
    if state == "serial-live":
        # The terminal has the focus once connected, and Tab is the shell's: F6 is the way out.
        page.keyboard.press("F6")
        expect(page.locator("#toolbar a.back")).to_be_focused()
    stops, hidden = [], []
    for _ in range(100):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUSED_JS)
        if focused and focused.get("again"):
            break
        if focused:
            stops.append(focused["label"])
            hidden += [] if focused["visible"] else [focused["label"]]
    assert len(stops) >= 5, f"Tab reached only {stops}"
    assert not hidden, f"no visible focus on {hidden} ({state}, {look})"


@pytest.mark.parametrize(
    "state",
    [
        "list",
        "list-panel",
        "console-live",
        "console-details",
        "console-not-running",
        "console-power-dialog",
        "serial-live",
    ],
)
def test_nothing_scrolls_sideways_at_390_px(open_as: Callable[..., Page], state: str) -> None:
    """On a phone the lists, the panel, the toolbar and the dialog wrap instead of widening the page."""
    user, reach = STATES[state]
    page = open_as(user, "light-390")
    reach(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    wider = page.evaluate(
        """(limit) => [...document.querySelectorAll("body *")]
          .filter((el) => el.getClientRects().length && el.getBoundingClientRect().right > limit + 1)
          .filter((el) => !el.closest("#console-frame, .server-panel[hidden], dialog:not([open])"))
          .map((el) => el.id ? `#${el.id}` : `${el.tagName.toLowerCase()}.${el.className}`)""",
        PHONE["width"],
    )
    assert not wider, f"wider than the window: {wider}"
