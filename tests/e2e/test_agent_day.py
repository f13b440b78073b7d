"""A helpdesk agent's day in Chromium against the lab: Recent and Pinned, the keyboard path, and power.

Each test signs in as a user of its own (``accounts``), so pins and recent consoles never leak
between tests; the start test puts batch-01 back to SHUTOFF for the tests after it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Iterator

import pytest
from playwright.sync_api import Locator
from playwright.sync_api import Page
from playwright.sync_api import expect

from lab import Lab
from lab.browser import ANNOUNCEMENTS_JS
from lab.browser import CONNECTED
from lab.browser import LIT_PIXELS_JS
from lab.browser import announced
from lab.browser import console_frame
from lab.browser import said_in_order
from lab.browser import sign_in
from lab.browser import status_text
from lab.browser import wait_connected
from lab.browser import wait_status
from lab.lab import CLOUD_NAME

# Runs in a broker page: ask for a power confirmation as the dialog does; the status and error code.
CONFIRMATION_JS = """async ([url, action]) => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const response = await fetch(url, { method: "POST", body: JSON.stringify({ action }),
    headers: { "X-CSRFToken": csrf, "Content-Type": "application/json" } });
  const body = await response.json().catch(() => ({}));
  return { status: response.status, code: body.error?.code || null };
}"""


@pytest.fixture(scope="module")
def power_agent(accounts: Callable[..., str]) -> str:
    """An agent whose rule has the power permission."""
    accounts("power-agent", power=True)
    return "power-agent"


def row(page: Page, name: str) -> Locator:
    """The list's table row of server ``name``."""
    link = page.locator("a.server-link", has_text=re.compile(f"^{re.escape(name)}$"))
    return page.locator("#servers tbody tr").filter(has=link)


def shortcut(page: Page, section: str, name: str) -> Locator:
    """The link to ``name`` in the list's Pinned or Recent section."""
    return page.locator(f"#{section} a", has_text=re.compile(f"^{re.escape(name)}$"))


def console_state(page: Page) -> Locator:
    return page.locator("#console")


def test_recent_and_pinned_follow_the_agent(make_page: Callable[..., Page], lab: Lab, accounts) -> None:
    page = make_page(user="pin-agent")
    expect(page.locator("#recent")).to_be_hidden()
    expect(page.locator("#pinned")).to_be_hidden()

    row(page, "web-01").locator("a.server-link").click()
    wait_connected(page)
    page.go_back()
    expect(shortcut(page, "recent", "web-01")).to_be_visible()
    expect(page.locator("#recent a")).to_have_count(1)

    pin = row(page, "db-01").locator("button.pin")
    expect(pin).to_have_attribute("aria-pressed", "false")
    expect(pin).to_have_accessible_name("Pin db-01")
    pin.click()
    # The Pinned section shows it at once, without a reload.
    expect(pin).to_have_attribute("aria-pressed", "true")
    # A toggle names the server either way; aria-pressed says whether it is pinned.
    expect(pin).to_have_accessible_name(re.compile(r"^(Pin|Unpin) db-01$"))
    expect(shortcut(page, "pinned", "db-01")).to_be_visible()

    page.click("#sign-out")
    expect(page).to_have_url(re.compile(r"/login"))
    sign_in(page, lab, "pin-agent", accounts("pin-agent"))
    expect(shortcut(page, "pinned", "db-01")).to_be_visible()
    expect(shortcut(page, "recent", "web-01")).to_be_visible()
    expect(row(page, "db-01").locator("button.pin")).to_have_attribute("aria-pressed", "true")

    shortcut(page, "pinned", "db-01").click()
    frame = wait_connected(page)
    assert status_text(frame) == "Connected to QEMU (db-01)"

    page.goto("/")
    row(page, "db-01").locator("button.pin").click()
    expect(page.locator("#pinned")).to_be_hidden()
    page.reload()
    expect(page.locator("#pinned")).to_be_hidden()
    expect(row(page, "db-01").locator("button.pin")).to_have_attribute("aria-pressed", "false")


def test_keyboard_path_from_slash_to_a_connected_console(make_page: Callable[..., Page]) -> None:
    page = make_page(user="keys-agent")
    search = page.locator("#q")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Slash")
    expect(search).to_be_focused()
    expect(search).to_have_value("")  # the "/" only moved the focus

    page.keyboard.type("zz")
    page.keyboard.press("Escape")
    expect(search).to_have_value("")
    page.keyboard.type("db")
    expect(page.locator("#servers tbody tr:not([hidden])")).to_have_count(1)
    page.keyboard.press("ArrowDown")
    expect(row(page, "db-01").locator("a.server-link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/console/"))
    frame = wait_connected(page)
    assert status_text(frame) == "Connected to QEMU (db-01)"


FOCUS_JS = """() => {
  const el = document.activeElement;
  return el.id === "q" ? "search" : `${el.closest("#pinned, #recent, #servers")?.id}:${el.textContent.trim()}`;
}"""


def test_arrow_keys_walk_pinned_then_recent_then_the_table(make_page: Callable[..., Page]) -> None:
    page = make_page(user="walk-agent")
    page.goto("/console/web-01")
    wait_connected(page)
    page.goto("/")
    row(page, "db-01").locator("button.pin").click()
    expect(shortcut(page, "pinned", "db-01")).to_be_visible()
    page.keyboard.press("Slash")
    table = [f"servers:{name}" for name in page.locator("#servers tbody a.server-link").all_text_contents()]
    order = ["pinned:db-01", "recent:web-01", *table]
    walked = []
    for _ in order:
        page.keyboard.press("ArrowDown")
        walked.append(page.evaluate(FOCUS_JS))
    assert walked == order
    page.keyboard.press("ArrowDown")  # the last link stays put
    assert page.evaluate(FOCUS_JS) == order[-1]
    for _ in order:
        page.keyboard.press("ArrowUp")
    assert page.evaluate(FOCUS_JS) == "search"


@pytest.fixture
def batch_stays_off(lab: Lab) -> Iterator[str]:
    """batch-01 as the lab has it (SHUTOFF), and so again after the test, whatever it did."""
    assert lab.server("batch-01").status == "SHUTOFF"
    yield "batch-01"
    lab.cloud.faults.fail_next.pop("action", None)
    lab.shut_off("batch-01")


def test_start_a_stopped_server_and_the_page_connects_by_itself(
    make_page: Callable[..., Page], lab: Lab, power_agent: str, batch_stays_off: str
) -> None:
    server = lab.server(batch_stays_off)
    page = make_page(user=power_agent)
    page.context.add_init_script(ANNOUNCEMENTS_JS)
    page.goto(f"/console/{server.name}")
    expect(page.get_by_role("status")).to_have_count(1)
    expect(console_state(page)).to_have_attribute("data-state", "not-running")
    start = page.locator("#power-start")
    expect(start).to_be_visible()
    asked = len(lab.cloud.actions)

    start.click()
    dialog = page.locator("#power-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(f"Start server {server.name}?")
    page.click("#power-cancel")
    expect(dialog).to_be_hidden()
    assert len(lab.cloud.actions) == asked, "Cancel still asked the cloud"

    start.click()
    page.click("#power-confirm")
    expect(dialog).to_be_hidden()
    expect(console_state(page)).to_have_attribute("data-state", "starting")
    # The page follows the server to ACTIVE and connects with no click: noVNC shows the new guest.
    expect(console_state(page)).to_have_attribute("data-state", "live", timeout=30_000)
    frame = console_frame(page)
    assert wait_status(frame, CONNECTED) == f"Connected to QEMU ({server.name})"
    frame.wait_for_function(f"() => ({LIT_PIXELS_JS})() >= 500", timeout=15_000)
    expect(page.locator("#server-status")).to_have_text("ACTIVE")
    assert lab.cloud.actions[asked:] == [(server.id, "os-start")]
    # A screen reader heard each step, in order.
    name = server.name
    steps = ["Server not running", f"Server {name} is starting", f"Server {name} is running", "Console connected"]
    assert said_in_order(announced(page), steps), announced(page)


def test_the_power_dialog_by_keyboard(
    make_page: Callable[..., Page], lab: Lab, power_agent: str, batch_stays_off: str
) -> None:
    """Enter opens it with the focus inside, Escape closes it asking nothing, the focus goes back to Start."""
    page = make_page(user=power_agent)
    page.goto(f"/console/{batch_stays_off}")
    start = page.locator("#power-start")
    expect(start).to_be_visible()
    asked = len(lab.cloud.actions)
    start.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#power-question")).to_contain_text(f"{batch_stays_off}?")
    assert page.evaluate("document.activeElement.closest('#power-dialog') !== null"), "the focus stayed outside"
    page.keyboard.press("Escape")
    expect(page.locator("#power-dialog")).to_be_hidden()
    expect(start).to_be_focused()
    assert len(lab.cloud.actions) == asked
    expect(page.locator("#console")).to_have_attribute("data-state", "not-running")


@pytest.mark.parametrize("refusal", [409, 403], ids=["busy", "policy"])
def test_the_clouds_refusal_is_shown_and_nothing_changes(
    make_page: Callable[..., Page], lab: Lab, power_agent: str, batch_stays_off: str, refusal: int
) -> None:
    """Nova says no (a task in progress, or its policy): the agent reads the cloud's reason in the dialog."""
    page = make_page(user=power_agent)
    page.goto(f"/console/{batch_stays_off}")
    page.click("#power-start")
    expect(page.locator("#power-question")).to_contain_text(f"{batch_stays_off}?")
    lab.cloud.faults.fail_next["action"] = [refusal]
    page.click("#power-confirm")
    expect(page.locator("#power-message")).to_contain_text(f"Injected failure {refusal} for action")
    expect(page.locator("#power-dialog")).to_be_visible()
    expect(console_state(page)).to_have_attribute("data-state", "not-running")
    assert lab.cloud.servers[lab.server(batch_stays_off).id].status == "SHUTOFF"
    page.click("#power-cancel")
    expect(page.locator("#power-dialog")).to_be_hidden()


@pytest.mark.parametrize(
    ("button", "question", "action"),
    [
        ("#power-reboot-soft", r"^Reboot (server )?web-01\?", "reboot-SOFT"),
        # A hard reboot warns what it costs.
        ("#power-reboot-hard", r"^Hard reboot (server )?web-01\?.*Unsaved work in the guest is lost", "reboot-HARD"),
    ],
    ids=["soft", "hard"],
)
def test_reboot_follows_the_server_back_to_live(
    make_page: Callable[..., Page], lab: Lab, power_agent: str, button: str, question: str, action: str
) -> None:
    server = lab.server("web-01")
    page = make_page(user=power_agent)
    page.goto(f"/console/{server.name}")
    wait_connected(page)
    booted, asked = server.started_at, len(lab.cloud.actions)

    page.click(button)
    expect(page.locator("#power-question")).to_contain_text("web-01?")  # the broker's question has come
    words = page.locator("#power-question, #power-warning:not([hidden])").all_text_contents()
    assert re.search(question, " ".join(words), re.IGNORECASE), words
    page.click("#power-confirm")
    expect(console_state(page)).to_have_attribute("data-state", "rebooting")
    expect(console_state(page)).to_have_attribute("data-state", "live", timeout=30_000)
    assert lab.cloud.actions[asked:] == [(server.id, action)]
    assert server.started_at > booted, "the guest was not reset"
    frame = console_frame(page)
    assert wait_status(frame, CONNECTED).startswith(CONNECTED)
    frame.wait_for_function(f"() => ({LIT_PIXELS_JS})() >= 500", timeout=15_000)
    expect(page.locator("#server-status")).to_have_text("ACTIVE")


def test_no_power_without_the_permission(make_page: Callable[..., Page], lab: Lab) -> None:
    page = make_page(user="plain-agent")
    page.goto("/console/web-01")
    wait_connected(page)
    expect(page.locator("#power-reboot-soft")).to_be_hidden()
    expect(page.locator("#power-reboot-hard")).to_be_hidden()
    page.goto("/console/batch-01")
    expect(console_state(page)).to_have_attribute("data-state", "not-running")
    expect(page.locator("#power-start")).to_be_hidden()
    # Nor does the API give a way round the missing buttons.
    url = f"/api/servers/{lab.server('batch-01').id}/power-confirmations?cloud={CLOUD_NAME}"
    assert page.evaluate(CONFIRMATION_JS, [url, "start"]) == {"status": 403, "code": "power_not_allowed"}
