"""The console in Chromium against the lab: connect, refresh, typing through expiry, stopped servers."""

from __future__ import annotations

import re
import time

from conftest import DOCS
from conftest import TTL
from playwright.sync_api import Page
from playwright.sync_api import expect

from lab import Lab
from lab.browser import CONNECTED
from lab.browser import shows_boot_menu
from lab.browser import status_text
from lab.browser import text_rows
from lab.browser import wait_connected


def test_search_and_open_a_console(page: Page) -> None:
    page.goto("/")
    page.fill("#q", "web")
    expect(page.locator("#servers tbody tr:not([hidden])")).to_have_count(1)
    expect(page.locator("#shown-count")).to_have_text("1")
    page.screenshot(path=DOCS / "server-list.png")
    page.click("#servers tbody tr:not([hidden]) a.server-link")
    expect(page).to_have_url(re.compile(r"/console/"))
    frame = wait_connected(page)
    assert status_text(frame) == "Connected to QEMU (web-01)"
    expect(page.locator("#console")).to_have_attribute("data-state", "live")
    expect(page.locator("#server-name")).to_have_text("web-01")
    page.mouse.move(10, 10)
    page.screenshot(path=DOCS / "console.png")
