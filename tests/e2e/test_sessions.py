"""Signing in around the console: bookmarks while signed out, and a session that ends."""

from __future__ import annotations

import re

from playwright.sync_api import Page
from playwright.sync_api import expect

from lab import Lab
from lab.browser import sign_in
from lab.browser import wait_connected


def test_bookmark_while_signed_out_signs_in_then_connects(anonymous: Page, lab: Lab) -> None:
    anonymous.goto("/console/web-01")
    expect(anonymous).to_have_url(re.compile(r"/login\?next=(/|%2F)console(/|%2F)web-01$"))
    sign_in(anonymous, lab)
    expect(anonymous).to_have_url(f"{lab.broker_url}/console/web-01")
    wait_connected(anonymous)


def test_session_ending_on_an_open_console_signs_in_back_to_it(page: Page, lab: Lab) -> None:
    page.goto("/console/web-01")
    wait_connected(page)
    page.context.clear_cookies()
    expect(page.locator("#console")).to_have_attribute("data-state", "signin", timeout=lab.console_ttl * 1000)
    expect(page.locator("#notice-signin")).to_be_visible()
    page.click("#notice-signin")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    sign_in(page, lab)
    expect(page).to_have_url(f"{lab.broker_url}/console/web-01")
    wait_connected(page)
