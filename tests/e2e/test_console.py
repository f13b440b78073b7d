"""The console page in Chromium against the lab: connect, refresh, typing through expiry, layout."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page
from playwright.sync_api import expect

from lab import Lab
from lab.browser import CONNECTED
from lab.browser import TEXT_ROWS_JS
from lab.browser import shows_boot_menu
from lab.browser import status_text
from lab.browser import text_rows
from lab.browser import wait_connected

# SeaBIOS just after a reset: "Press ESC for boot menu." on row 2 and no boot attempt yet.
AT_BOOT_PROMPT = f"() => {{ const rows = ({TEXT_ROWS_JS})(); return rows[2] > 0 && rows[4] === 0; }}"


def test_search_and_open_a_console(page: Page, artefacts: Path) -> None:
    page.goto("/")
    page.fill("#q", "web")
    expect(page.locator("#servers tbody tr:not([hidden])")).to_have_count(1)
    expect(page.locator("#shown-count")).to_have_text("1")
    page.screenshot(path=artefacts / "e2e-server-list.png")
    page.click("#servers tbody tr:not([hidden]) a.server-link")
    expect(page).to_have_url(re.compile(r"/console/"))
    frame = wait_connected(page)
    assert status_text(frame) == "Connected to QEMU (web-01)"
    expect(page.locator("#console")).to_have_attribute("data-state", "live")
    expect(page.locator("#server-name")).to_have_text("web-01")
    page.mouse.move(10, 10)
    page.screenshot(path=artefacts / "e2e-console.png")


def test_fresh_url_swaps_in_before_expiry_when_idle(page: Page, lab: Lab) -> None:
    page.goto("/console/web-01")
    opened = time.monotonic()
    wait_connected(page)
    first = page.get_attribute("#console-frame", "src")
    page.mouse.move(5, 5)  # on the toolbar: nobody is using the console
    wait_connected(page, swaps=2, timeout=lab.console_ttl)
    assert time.monotonic() - opened < lab.console_ttl, "the fresh URL came after the first one expired"
    assert page.get_attribute("#console-frame", "src") != first
    expect(page.locator("#console")).to_have_attribute("data-state", "live")


def test_typing_survives_expiry_and_reconnect_uses_fresh_url(page: Page, lab: Lab) -> None:
    page.goto("/console/db-01")
    opened = time.monotonic()
    frame = wait_connected(page)
    first = page.get_attribute("#console-frame", "src")
    frame.click("#screen canvas")  # focus and pointer inside: the person is using the console
    expect(page.locator("#console")).to_have_attribute("data-state", "pending", timeout=lab.console_ttl * 1000)
    time.sleep(max(0.0, opened + lab.console_ttl + 1 - time.monotonic()))
    expect(page.locator("#console")).to_have_attribute("data-swaps", "1")
    assert status_text(frame).startswith(CONNECTED), "the session dropped when its token expired"

    lab.reset_guest("db-01")
    frame.wait_for_function(AT_BOOT_PROMPT, timeout=10_000)
    page.keyboard.press("Escape")
    frame.wait_for_function(f"() => ({TEXT_ROWS_JS})()[6] > 0", timeout=10_000)
    assert shows_boot_menu(text_rows(frame)), "Esc typed after expiry did not reach the guest"

    page.click("#reconnect")
    frame = wait_connected(page, swaps=2)
    assert page.get_attribute("#console-frame", "src") != first
    assert shows_boot_menu(text_rows(frame))


def test_stopped_server_says_so_without_a_frame(page: Page) -> None:
    page.goto("/console/batch-01")
    expect(page.locator("#console")).to_have_attribute("data-state", "not-running")
    expect(page.locator("#notice")).to_be_visible()
    expect(page.locator("#notice-text")).to_contain_text("not running")
    expect(page.locator("#notice-text")).to_contain_text("SHUTOFF")
    expect(page.locator("#server-status")).to_have_text("SHUTOFF")
    expect(page.locator("#console-frame")).to_be_hidden()
    assert page.get_attribute("#console-frame", "src") is None


def test_a_cloud_without_a_graphical_console_offers_the_serial_one_first(page: Page, lab: Lab) -> None:
    lab.cloud.faults.unavailable_consoles = ["novnc"]  # Nova's 400 "VNC disabled"
    try:
        page.goto("/console/db-01")
        expect(page.locator("#console-frame")).to_be_hidden()
        expect(page.locator("#notice-text")).to_contain_text("Its serial console may still answer.")
        offer = page.locator("#notice-serial")
        expect(offer).to_be_visible()
        expect(offer).to_be_focused()
        with page.expect_navigation():
            offer.click()
    finally:
        lab.cloud.faults.unavailable_consoles = []
    # The serial console of the same server, connected through the relay.
    assert "/serial" in page.url
    expect(page.locator("#server-name")).to_have_text("db-01")
    expect(page.locator("#console")).to_have_attribute("data-state", "live", timeout=15000)


@pytest.mark.parametrize(
    "viewport", [{"width": 1280, "height": 800}, {"width": 390, "height": 844}], ids=["1280x800", "390x844"]
)
def test_toolbar_usable_and_frame_fills_the_rest(
    make_page: Callable[..., Page], viewport: dict, artefacts: Path
) -> None:
    page = make_page(viewport=viewport)
    page.goto("/console/web-01")
    wait_connected(page)
    width, height = viewport["width"], viewport["height"]
    for control in ("#reconnect", "#fullscreen", "#open-tab", "#copy-link"):
        box = page.locator(control).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width and box["y"] + box["height"] <= height
    toolbar = page.locator("#toolbar").bounding_box()
    frame = page.locator("#console-frame").bounding_box()
    assert abs(frame["x"]) <= 1 and abs(frame["width"] - width) <= 1
    assert abs(frame["y"] - (toolbar["y"] + toolbar["height"])) <= 2
    assert abs(frame["y"] + frame["height"] - height) <= 2
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    if width < 600:
        page.mouse.move(5, 5)
        page.screenshot(path=artefacts / "e2e-console-phone.png")
    page.click("#reconnect")
    wait_connected(page, swaps=2)
