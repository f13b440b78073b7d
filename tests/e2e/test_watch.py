"""Two people, one console, in Chromium against the lab: an invite, a watcher whose keys go nowhere (the
guest's serial log shows it), control handed over and back, an admin observing in plain sight, an invite
to someone without a rule refused, and the console's end ending the watcher's page.

The module's lab is test_relay's (a Linux guest with a shell on ttyS0, behind an enforcing proxy).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from collections.abc import Iterator

import pytest
from playwright.sync_api import BrowserContext
from playwright.sync_api import Page
from playwright.sync_api import expect

from lab.browser import press_keys
from lab.lab import CLOUD_NAME
from tests.e2e.test_relay import ADMIN
from tests.e2e.test_relay import SHELL
from tests.e2e.test_relay import WEB_AGENT
from tests.e2e.test_relay import RelayLab
from tests.e2e.test_relay import audit_rows
from tests.e2e.test_relay import broker_page
from tests.e2e.test_relay import flask
from tests.e2e.test_relay import open_console
from tests.e2e.test_relay import relay  # noqa: F401 - the module's lab
from tests.e2e.test_relay import settled  # noqa: F401
from tests.e2e.test_relay import sign_in_context  # noqa: F401
from tests.e2e.test_relay import wait_live
from tests.support import wait_until

# Another helpdesk agent who may open shell-* (the invitee), made once for the module.
COLLEAGUE = "colleague"


@pytest.fixture(scope="module")
def colleague(relay: RelayLab) -> Iterator[str]:  # noqa: F811
    relay.passwords[COLLEAGUE] = secrets.token_urlsafe(12)
    flask(relay.lab, "users", "add", COLLEAGUE, "--password-stdin", stdin=relay.passwords[COLLEAGUE])
    flask(relay.lab, "rules", "add", "--user", COLLEAGUE, "--cloud", CLOUD_NAME, "--name-pattern", "shell-*")
    yield COLLEAGUE


def invite(page: Page, user: str | None) -> str:
    """Invite ``user`` (or make a link) from the opener's page with its dialog; the link it shows."""
    page.click("#invite")
    if user:
        page.fill("#invite-user", user)
        page.click("#invite-send")
    else:
        page.click("#invite-link")
    expect(page.locator("#invite-result")).to_be_visible()
    url = page.locator("#invite-url").input_value()
    page.click("#invite-close")
    return url


def typed(page: Page, marker: str) -> None:
    """Type a line that writes ``marker`` to the guest's serial port, with the console focused."""
    page.click("#screen")
    press_keys(page, f"echo {marker} > /dev/ttyS0\n")


def test_a_watcher_sees_the_console_types_nothing_until_given_control_and_hands_it_back(
    sign_in_context: Callable[..., BrowserContext],  # noqa: F811
    relay: RelayLab,  # noqa: F811
    colleague: str,
    settled: int,  # noqa: F811
) -> None:
    lab = relay.lab
    tag = secrets.token_hex(3)
    opener = open_console(sign_in_context(), SHELL)
    url = invite(opener, colleague)
    assert "/watch?invite=" in url

    watcher = sign_in_context(colleague).new_page()
    watcher.goto(url)
    wait_live(watcher)
    expect(opener.locator("#people")).to_have_text(f"{lab.username} (you) drives · {colleague} watches")
    expect(watcher.locator("#people")).to_have_text(f"{lab.username} drives · {colleague} (you) watches")
    expect(watcher.locator("#control")).to_have_text("Ask for control")
    expect(watcher.locator("#type-text")).to_be_disabled()

    # The watcher's keys go nowhere; the opener's reach the guest after them.
    typed(watcher, f"W1-{tag}")
    typed(opener, f"O1-{tag}")
    lab.wait_for_serial(SHELL, f"O1-{tag}", timeout=15)
    assert f"W1-{tag}" not in lab.serial_log(SHELL)

    # Asked for, given: now the watcher types and the opener does not.
    watcher.click("#control")
    expect(opener.locator("#asks-text")).to_have_text(f"{colleague} asks for control.")
    opener.click("#asks-give")
    expect(watcher.locator("#control")).to_have_text("Give control back")
    expect(opener.locator("#people")).to_contain_text(f"{colleague} drives")
    expect(opener.locator("#control")).to_have_text("Take control back")
    typed(opener, f"O2-{tag}")
    typed(watcher, f"W2-{tag}")
    lab.wait_for_serial(SHELL, f"W2-{tag}", timeout=15)
    assert f"O2-{tag}" not in lab.serial_log(SHELL)

    # Given back: the opener types again.
    watcher.click("#control")
    expect(opener.locator("#people")).to_contain_text(f"{lab.username} (you) drives")
    typed(opener, f"O3-{tag}")
    lab.wait_for_serial(SHELL, f"O3-{tag}", timeout=15)

    records = audit_rows(lab, "watch", "join", "ok", after=settled)
    assert [row["username"] for row in records] == [colleague]
    console_id = records[0]["console_id"]
    hand_overs = [row["reason"] for row in audit_rows(lab, "watch", "hand-over", "ok", after=settled)]
    assert hand_overs == [
        f"{lab.username} gave control to {colleague}",
        f"{colleague} gave control back to {lab.username}",
    ]
    assert {row["console_id"] for row in audit_rows(lab, "watch", "hand-over", "ok", after=settled)} == {console_id}

    # The opener leaves: the watcher's page ends for good; a watcher leaving had ended nothing.
    opener.close()
    expect(watcher.locator("#console")).to_have_attribute("data-state", "ended", timeout=10000)
    expect(watcher.locator("#notice-text")).to_contain_text("The console you were watching has ended")
    leaves = wait_until(
        lambda: audit_rows(lab, "watch", "leave", "ok", after=settled), timeout=10, message="the watcher's leave"
    )
    assert [row["console_id"] for row in leaves] == [console_id]


def test_an_admin_observes_in_plain_sight_and_an_invite_needs_a_rule(
    sign_in_context: Callable[..., BrowserContext],  # noqa: F811
    relay: RelayLab,  # noqa: F811
    settled: int,  # noqa: F811
) -> None:
    lab = relay.lab
    opener = open_console(sign_in_context(), SHELL)

    # web-agent may open web-* only: no invite to shell-01 for them.
    opener.click("#invite")
    opener.fill("#invite-user", WEB_AGENT)
    opener.click("#invite-send")
    expect(opener.locator("#invite-message")).to_contain_text(f"{WEB_AGENT} may not open {SHELL}")
    expect(opener.locator("#invite-result")).to_be_hidden()
    opener.click("#invite-close")
    refused = audit_rows(lab, "watch", "invite", "refused", after=settled)
    assert [row["reason"] for row in refused] == [f"{WEB_AGENT} may not open this server"]

    admin = broker_page(sign_in_context(ADMIN))
    admin.goto("/admin/sessions")
    row = admin.locator("#live-consoles tbody tr").filter(has_text=lab.username).filter(has_text=SHELL)
    with admin.expect_navigation():
        row.locator(".observe").click()
    wait_live(admin)
    expect(opener.locator("#people")).to_contain_text(f"{ADMIN} observes (admin)")
    expect(admin.locator("#people")).to_contain_text(f"{lab.username} drives")
    observed = audit_rows(lab, "watch", "observe", "ok", after=settled)
    assert [row["username"] for row in observed] == [ADMIN]
