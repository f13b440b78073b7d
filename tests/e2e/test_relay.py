"""Relay mode in Chromium against the lab: no console token in the browser, a console that outlives
its tokens, endings (admin, sign-out), and every websocket that may not connect.

The lab's proxy enforces token expiry (Nova's ``enforce_session_timeout``) on 20 s tokens, so the
relay has to resume the cloud's side every 20 s while the viewer sees nothing. One lab serves the
module; an iframe-mode lab is started for the one test that shows the cut the relay hides.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import Page
from playwright.sync_api import expect

from lab import Lab
from lab import LabServer
from lab.browser import ANNOUNCEMENTS_JS
from lab.browser import CONNECTED
from lab.browser import DESKTOP
from lab.browser import REFUSED
from lab.browser import VIEWER_LIT_PIXELS_JS
from lab.browser import VIEWER_STATES_JS
from lab.browser import announced
from lab.browser import press_keys
from lab.browser import said_in_order
from lab.browser import sign_in
from lab.browser import status_text
from lab.browser import wait_connected
from lab.lab import CLOUD_NAME
from lab.lab import REPO
from tests.axe import assert_accessible
from tests.support import wait_until

TTL = 20
PHONE = {"width": 390, "height": 844}
SHELL = "shell-01"
BIOS = "web-01"
ADMIN = "relay-admin"
# May open web-* only: a second sign-in for "another user's ticket" and a server it may not open.
WEB_AGENT = "web-agent"
# The relay polls its live consoles every 2 s; an ending reaches the viewer within one poll.
ENDING_SECONDS = 6

# Runs in a broker page: a relay ticket from the API, as the viewer asks for one.
TICKET_JS = """async ([serverId, cloud]) => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const response = await fetch(`/api/relay-tickets/${encodeURIComponent(serverId)}?cloud=${encodeURIComponent(cloud)}`,
    { method: "POST", headers: { "X-CSRFToken": csrf } });
  return { status: response.status, body: await response.json().catch(() => null) };
}"""

# Runs in any page: open the relay's websocket with a ticket as the viewer does; whether it opened.
OPEN_WEBSOCKET_JS = """([url, ticket]) => new Promise((resolve) => {
  const socket = new WebSocket(url, ["binary", "ticket." + ticket]);
  let opened = false;
  socket.onopen = () => { opened = true; socket.close(1000); };
  socket.onclose = (event) => resolve({ opened, code: event.code });
  setTimeout(() => resolve({ opened, code: null }), 10000);
})"""


@dataclass
class RelayLab:
    """The module's relay-mode lab, its extra accounts, and every console token its cloud minted."""

    lab: Lab
    passwords: dict[str, str]
    # (time.monotonic() of the mint, server name, token), appended by the cloud's thread.
    minted: list[tuple[float, str, str]] = field(default_factory=list)

    def tokens(self) -> list[str]:
        return [token for _, _, token in list(self.minted)]

    def mints_of(self, name: str) -> list[float]:
        return [at for at, server, _ in list(self.minted) if server == name]


def flask(lab: Lab, *args: str, stdin: str = "") -> None:
    """``flask --app app ARGS`` on the lab's broker database, as an operator would run it."""
    argv = [sys.executable, "-m", "flask", "--app", "app", *args]
    done = subprocess.run(
        argv, input=stdin + "\n", env=lab.broker_env(), cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"flask {' '.join(args)}: {done.stderr or done.stdout}"


def record_mints(lab: Lab, minted: list[tuple[float, str, str]]) -> None:
    """Wrap the cloud's mint hook (it runs in this process) so every token is known to the tests."""
    register = lab.cloud.on_console
    lock = threading.Lock()

    def recorded(token: str, server, ttl: int) -> None:
        with lock:
            minted.append((time.monotonic(), server.name, token))
        register(token, server, ttl)

    lab.cloud.on_console = recorded


@pytest.fixture(scope="module")
def relay(linux_lab_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayLab]:
    servers = [
        LabServer(SHELL, guest="linux", ip="10.0.0.21"),
        LabServer(BIOS, ip="10.0.0.22"),
        LabServer("batch-01", status="SHUTOFF", ip="10.0.0.23"),
    ]
    workdir = tmp_path_factory.mktemp("relay-lab")
    with Lab(
        console_mode="relay",
        enforce_session_timeout=True,
        console_ttl=TTL,
        servers=servers,
        workdir=workdir,
        power=True,
    ) as lab:
        setup = RelayLab(lab, {ADMIN: secrets.token_urlsafe(12), WEB_AGENT: secrets.token_urlsafe(12)})
        record_mints(lab, setup.minted)
        flask(lab, "users", "add", ADMIN, "--admin", "--password-stdin", stdin=setup.passwords[ADMIN])
        flask(lab, "users", "add", WEB_AGENT, "--password-stdin", stdin=setup.passwords[WEB_AGENT])
        flask(lab, "rules", "add", "--user", WEB_AGENT, "--cloud", CLOUD_NAME, "--name-pattern", "web-*")
        lab.wait_for_shell(SHELL)
        yield setup


def live_consoles(lab: Lab) -> int:
    """Consoles the relay counts as connected (a row each, gone when its connection is)."""
    with closing(database(lab)) as db:
        return db.execute("SELECT COUNT(*) FROM live_consoles").fetchone()[0]


def last_audit_id(lab: Lab) -> int:
    with closing(database(lab)) as db:
        return db.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0]


@pytest.fixture
def settled(relay: RelayLab) -> int:
    """The module's lab as a test run alone finds it; the id of the last audit record before the test, so that
    the test reads only the records it caused.

    Waits until no console an earlier test opened is still live (its browser context is closed, and the relay
    drops the row once it sees the connection go): such a console would count towards the user's limit,
    mint for its server and show on the admin's page. batch-01 is SHUTOFF again, whoever started it."""
    wait_until(lambda: live_consoles(relay.lab) == 0, timeout=30, interval=0.1, message="earlier consoles ended")
    if relay.lab.server("batch-01").status != "SHUTOFF":
        relay.lab.shut_off("batch-01")
    return last_audit_id(relay.lab)


@pytest.fixture
def sign_in_context(browser: Browser, relay: RelayLab, settled: int) -> Iterator[Callable[..., BrowserContext]]:
    """Contexts each signed in once (own sign-in session): ``sign_in_context(user=None, viewport, color_scheme)``.

    Depends on ``settled``: every test that signs in starts from the lab a test alone would find."""
    contexts: list[BrowserContext] = []

    def make(user: str | None = None, viewport: dict = DESKTOP, color_scheme: str = "light") -> BrowserContext:
        lab = relay.lab
        context = browser.new_context(base_url=lab.broker_url, viewport=viewport, color_scheme=color_scheme)
        context.add_init_script(VIEWER_STATES_JS)
        contexts.append(context)
        page = context.new_page()
        page.goto("/login")
        page.fill("#username", user or lab.username)
        page.fill("#password", relay.passwords[user] if user else lab.password)
        with page.expect_navigation():
            page.click("#sign-in")
        expect(page.locator("#current-user")).to_have_text(user or lab.username)
        page.close()
        return context

    yield make
    for context in contexts:
        context.close()


# -- helpers -------------------------------------------------------------------------------------------


def open_console(context: BrowserContext, name: str) -> Page:
    """The console page of ``name``, connected through the relay with the guest on screen."""
    page = context.new_page()
    page.goto(f"/console/{name}")
    wait_live(page)
    return page


def wait_live(page: Page, timeout: float = 20.0) -> None:
    expect(page.locator("#console")).to_have_attribute("data-state", "live", timeout=timeout * 1000)
    wait_until(
        lambda: page.evaluate(VIEWER_LIT_PIXELS_JS) >= 500,
        timeout=timeout,
        interval=0.1,
        message="connected, but the guest's screen never showed",
    )


def states(page: Page) -> list[tuple[str, str]]:
    """(attribute, value) of every change of #console's data-state and data-connects so far."""
    return [(name, value) for _, name, value in page.evaluate("window.__states")]


def database(lab: Lab) -> sqlite3.Connection:
    connection = sqlite3.connect(lab.workdir / "broker.db", timeout=10)
    connection.row_factory = sqlite3.Row
    return connection


def audit_rows(lab: Lab, action: str, detail: str, outcome: str, after: int = 0) -> list[dict]:
    """Audit records of one kind, oldest first; ``after``: only those with a greater id (a test's own)."""
    with closing(database(lab)) as db:
        rows = db.execute(
            "SELECT * FROM audit WHERE action = ? AND detail = ? AND outcome = ? AND id > ? ORDER BY id",
            (action, detail, outcome, after),
        )
        return [dict(row) for row in rows]


def refusals(lab: Lab, after: int = 0) -> list[dict]:
    """The relay's refused websockets (and tickets), as audited (after the record ``after``)."""
    return audit_rows(lab, "console", "relay", "refused", after)


def refused_with(lab: Lab, reason: str, after: int) -> dict:
    """The one refusal since ``after`` whose reason starts with ``reason`` (waited for: the relay writes it)."""
    found = wait_until(
        lambda: [row for row in refusals(lab, after) if row["reason"].startswith(reason)],
        timeout=10,
        interval=0.1,
        message=f"a refusal {reason!r}",
    )
    assert len(found) == 1, found
    return found[0]


def ticket(page: Page, name: str, relay: RelayLab) -> dict:
    """POST /api/relay-tickets for server ``name`` from ``page`` (a broker page): status and body."""
    return page.evaluate(TICKET_JS, [relay.lab.server(name).id, CLOUD_NAME])


def fresh_ticket(page: Page, name: str, relay: RelayLab) -> str:
    answer = ticket(page, name, relay)
    assert answer["status"] == 201, answer
    assert answer["body"]["url"] == f"{relay.lab.relay_url}?console={CLOUD_NAME}%2F{relay.lab.server(name).id}"
    return answer["body"]["ticket"]


def try_websocket(page: Page, relay: RelayLab, token: str) -> dict:
    return page.evaluate(OPEN_WEBSOCKET_JS, [relay.lab.relay_url, token])


def assert_refused(page: Page, relay: RelayLab, token: str) -> None:
    """The relay answers the handshake with an HTTP error: the browser sees 1006, never an open socket."""
    assert try_websocket(page, relay, token) == {"opened": False, "code": 1006}


def broker_page(context: BrowserContext) -> Page:
    page = context.new_page()
    page.goto("/")
    return page


# -- 1. no token in the browser ------------------------------------------------------------------------


def test_relay_connects_and_no_console_token_reaches_the_browser(
    sign_in_context: Callable[..., BrowserContext], relay: RelayLab
) -> None:
    lab = relay.lab
    context = sign_in_context()
    seen: list[str] = []
    responses = []
    page = context.new_page()
    page.on("request", lambda request: seen.append(request.url))
    page.on("response", lambda response: responses.append(response))
    page.on("websocket", lambda socket: seen.append(socket.url))
    page.on("framenavigated", lambda frame: seen.append(frame.url))
    before = len(relay.minted)
    page.goto(f"/console/{BIOS}")
    wait_live(page)
    expect(page.locator("#console")).to_have_attribute("data-connects", "1")
    expect(page.locator("#server-name")).to_have_text(BIOS)

    tokens = relay.tokens()[before:]
    assert tokens, "the relay minted no console URL, so there was nothing to keep from the browser"
    bodies = [response.text() for response in responses if response.request.resource_type in ("document", "fetch")]
    everything = "\n".join([*seen, page.url, page.content(), *bodies])
    for token in tokens:
        for form in {token, quote(token, safe=""), quote("?token=" + token, safe="")}:
            assert form not in everything, "a console token reached the browser"
    assert not [url for url in seen if url.startswith(lab.proxy_url)], "the browser contacted the cloud's proxy"
    assert [url for url in seen if url.startswith("ws")] == [url for url in seen if url.startswith(lab.relay_url)]
    # The ticket travels in a subprotocol offer: the websocket's URL carries nothing a log could keep, only which
    # console it is (for a load balancer).
    assert f"{lab.relay_url}?console={CLOUD_NAME}%2F{lab.server(BIOS).id}" in seen


# -- 2. the console that never drops ---------------------------------------------------------------------


def type_marker(page: Page, marker: str, delay_ms: float = 30) -> None:
    press_keys(page, f"echo {marker} > /dev/ttyS0\n", delay_ms)


def proxy_cuts(lab: Lab) -> int:
    """How many websockets the lab's proxy has closed at their token's expiry so far."""
    return (lab.workdir / "websockify.log").read_text(errors="replace").count("token expired: closing the websocket")


def relay_switches(lab: Lab) -> int:
    """How many times the relay has replaced a console's cloud side before its token expired."""
    return (lab.workdir / "relay.log").read_text(errors="replace").count("replaced the cloud's side before expiry")


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


# The relay replaces the cloud's side a quarter of the token's life (at most 5 s) before it expires.
SWITCH_AFTER = TTL - min(5, TTL / 4)


def test_console_outlives_three_token_lifetimes_without_losing_a_key(
    sign_in_context: Callable[..., BrowserContext], relay: RelayLab, artefacts: Path
) -> None:
    lab = relay.lab
    tag = secrets.token_hex(3)
    markers: list[str] = []

    def mark(label: str, delay_ms: float = 30) -> None:
        markers.append(f"M{len(markers) + 1}-{label}-{tag}")
        type_marker(page, markers[-1], delay_ms)

    before = len(relay.mints_of(SHELL))
    cuts, switches = proxy_cuts(lab), relay_switches(lab)
    page = open_console(sign_in_context(), SHELL)
    page.click("#screen")  # the console has the keyboard, as when someone clicks into it
    mark("first")
    for lifetime in range(3):
        mints = wait_until(
            lambda: relay.mints_of(SHELL)[before + lifetime :], timeout=10, interval=0.1, message="the latest mint"
        )
        switch = mints[0] + SWITCH_AFTER  # the relay opens the next side and moves over to it
        sleep_until(switch - 3)
        mark("before")  # done about 1.5 s before the switch
        sleep_until(switch - 0.8)
        mark("across", delay_ms=80)  # its keys straddle the switch
        sleep_until(switch + 0.3)
        mark("after")  # typed just after it
    # The last side lives past the token expiry the proxy would have enforced on the first one.
    wait_until(lambda: len(relay.mints_of(SHELL)) >= before + 4, timeout=10, interval=0.1, message="the third switch")
    mark("last")

    lab.wait_for_serial(SHELL, markers[-1], timeout=10)
    log = lab.serial_log(SHELL)
    positions = [log.find(marker) for marker in markers]
    assert -1 not in positions, f"lost: {[m for m, at in zip(markers, positions, strict=True) if at < 0]}"
    assert positions == sorted(positions), "markers arrived out of order"
    expect(page.locator("#console")).to_have_attribute("data-connects", "1")
    changes = states(page)
    assert ("data-state", "live") in changes
    after_live = changes[changes.index(("data-state", "live")) :]
    assert {value for name, value in after_live if name == "data-state"} == {"live"}, changes
    assert [value for name, value in changes if name == "data-connects"] == ["1"], changes
    assert len(relay.mints_of(SHELL)) - before >= 4
    # Each side was replaced while it still worked: the enforcing proxy never had to cut one.
    assert relay_switches(lab) - switches >= 3
    assert proxy_cuts(lab) == cuts, "the proxy cut a console the relay should have left before its expiry"
    page.mouse.move(5, 5)  # off the screen: no pointer drawn on the shot the README shows
    page.screenshot(path=artefacts / "e2e-console-relay.png")


def test_a_side_the_proxy_cuts_anyway_is_resumed_without_a_dialog(
    sign_in_context: Callable[..., BrowserContext], relay: RelayLab
) -> None:
    """A cut the relay did not see coming (a proxy restart, a shorter token than configured): resumed unseen."""
    lab = relay.lab
    page = open_console(sign_in_context(), SHELL)
    page.click("#screen")
    before = len(relay.mints_of(SHELL))
    lab.restart_proxy()
    marker = f"R-{secrets.token_hex(3)}"
    type_marker(page, marker)
    lab.wait_for_serial(SHELL, marker, timeout=20)
    assert len(relay.mints_of(SHELL)) > before
    expect(page.locator("#console")).to_have_attribute("data-connects", "1")
    changes = states(page)
    after_live = changes[changes.index(("data-state", "live")) :]
    assert {value for name, value in after_live if name == "data-state"} == {"live"}, changes


# -- 3. the same in iframe mode: the cut shows ------------------------------------------------------------


@pytest.fixture
def iframe_lab(lab_tools: None, tmp_path: Path) -> Iterator[Lab]:
    with Lab(
        console_mode="iframe",
        enforce_session_timeout=True,
        console_ttl=TTL,
        servers=[LabServer(BIOS, ip="10.0.0.31")],
        workdir=tmp_path / "iframe-lab",
    ) as lab:
        yield lab


def test_iframe_mode_console_is_cut_at_its_token_expiry(browser: Browser, iframe_lab: Lab) -> None:
    context = browser.new_context(base_url=iframe_lab.broker_url, viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto("/login")
        sign_in(page, iframe_lab)
        opened = time.monotonic()  # before the mint: the cut comes at least TTL after this
        page.goto(f"/console/{BIOS}")
        frame = wait_connected(page)
        frame.click("#screen canvas")  # in use: the page keeps this URL rather than swap in a fresh one
        assert status_text(frame).startswith(CONNECTED)
        left = opened + TTL + 5 - time.monotonic()
        frame.wait_for_function(
            "() => !(document.getElementById('status')?.textContent || '').startsWith('Connected to ')",
            timeout=max(left, 1) * 1000,
        )
        assert time.monotonic() - opened > TTL - 1, "cut before its token expired"
        assert frame.text_content("#status") in ("Disconnected", REFUSED)
        expect(page.locator("#console")).to_have_attribute("data-swaps", "1")
    finally:
        context.close()


# -- 4. an administrator ends a live console -----------------------------------------------------------------


def test_admin_ends_a_live_console_and_that_sign_in(
    sign_in_context: Callable[..., BrowserContext], relay: RelayLab, settled: int
) -> None:
    """The console stays ended, and so does the sign-in it belonged to: the next page asks to sign in again."""
    lab = relay.lab
    agent = open_console(sign_in_context(), BIOS)
    admin = broker_page(sign_in_context(ADMIN))
    admin.goto("/admin/sessions")
    rows = admin.locator("#live-consoles tbody tr").filter(has_text=lab.username).filter(has_text=BIOS)
    expect(rows).to_have_count(1)
    for column, text in enumerate((lab.username, BIOS, CLOUD_NAME)):
        expect(rows.locator("td").nth(column)).to_have_text(text)
    rows.locator(".end-session").click()
    expect(admin.locator("#flashes")).to_contain_text("ended the console of web-01")

    expect(agent.locator("#console")).to_have_attribute("data-state", "ended", timeout=ENDING_SECONDS * 1000)
    expect(agent.locator("#notice-text")).to_contain_text("administrator")
    time.sleep(5)  # long enough for any reconnect to have happened
    expect(agent.locator("#console")).to_have_attribute("data-state", "ended")
    expect(agent.locator("#console")).to_have_attribute("data-connects", "1")

    ended = audit_rows(lab, "admin", "relay_end", "ok", after=settled)
    assert [(row["username"], row["reason"]) for row in ended] == [
        (
            ADMIN,
            f"ended the console of {BIOS} ({CLOUD_NAME}) opened by {lab.username}, "
            f"and that sign-in session: {lab.username} must sign in again",
        )
    ]
    summary = re.compile(
        r"ended by an administrator; \d+ console URLs? minted; "
        r"\d+ s, \d+ bytes to the cloud, [1-9]\d* bytes to the browser"
    )
    disconnects = wait_until(
        lambda: [
            row
            for row in audit_rows(lab, "relay", "disconnect", "ok", after=settled)
            if row["username"] == lab.username and summary.fullmatch(row["reason"])
        ],
        timeout=10,
        message="the disconnect's record",
    )
    assert [(row["server_name"], row["cloud"]) for row in disconnects] == [(BIOS, CLOUD_NAME)]
    # The same browser, the same cookie: its next page is the sign-in page.
    agent.goto(f"/console/{BIOS}")
    expect(agent).to_have_url(re.compile(r"/login\?next="))
    expect(agent.locator("#username")).to_be_visible()


# -- 5. signing out ends the console -----------------------------------------------------------------------


def test_signing_out_in_another_tab_ends_the_console(
    sign_in_context: Callable[..., BrowserContext], relay: RelayLab, settled: int
) -> None:
    context = sign_in_context()
    console = open_console(context, BIOS)
    other_tab = broker_page(context)
    with other_tab.expect_navigation():
        other_tab.click("#sign-out")
    expect(console.locator("#console")).to_have_attribute("data-state", "signin", timeout=ENDING_SECONDS * 1000)
    expect(console.locator("#notice-signin")).to_be_visible()
    expect(console.locator("#console")).to_have_attribute("data-connects", "1")
    # The relay closed it (4401), not a drop the viewer then failed to come back from.
    closed = wait_until(
        lambda: [
            row
            for row in audit_rows(relay.lab, "relay", "disconnect", "ok", after=settled)
            if row["reason"].startswith("the sign-in session ended; ")
        ],
        timeout=10,
        message="the disconnect's record",
    )
    assert [(row["username"], row["server_name"]) for row in closed] == [(relay.lab.username, BIOS)]


# -- a stopped server -------------------------------------------------------------------------------------


def test_a_stopped_server_says_so(sign_in_context: Callable[..., BrowserContext]) -> None:
    page = sign_in_context().new_page()
    page.goto("/console/batch-01")
    expect(page.locator("#console")).to_have_attribute("data-state", "not-running")
    expect(page.locator("#notice-text")).to_contain_text("SHUTOFF")
    expect(page.locator("#server-status")).to_have_text("SHUTOFF")
    expect(page.locator("#notice-retry")).to_be_visible()
    expect(page.locator("#console")).to_have_attribute("data-connects", "0")


def test_no_graphical_console_stops_the_retries_and_offers_the_serial_one(
    relay: RelayLab, sign_in_context: Callable[..., BrowserContext]
) -> None:
    page = sign_in_context().new_page()
    relay.lab.cloud.faults.unavailable_consoles = ["novnc"]  # Nova's 400 "VNC disabled"
    try:
        page.goto(f"/console/{SHELL}")
        expect(page.locator("#console")).to_have_attribute("data-state", "failed")
        expect(page.locator("#notice-text")).to_contain_text("Its serial console may still answer.")
        expect(page.locator("#notice-serial")).to_be_visible()
        expect(page.locator("#serial-link")).to_be_visible()  # the toolbar's link is there all along
    finally:
        relay.lab.cloud.faults.unavailable_consoles = []
    with page.expect_navigation():
        page.locator("#notice-serial").click()
    expect(page.locator("#console")).to_have_attribute("data-state", "live", timeout=15000)
    page.locator("#screen").click()
    page.keyboard.type("echo offered-$((40+2))\n")
    expect(page.locator(".xterm-rows")).to_contain_text("offered-42")


@pytest.fixture
def batch_stays_off(relay: RelayLab, settled: int) -> Iterator[str]:
    """batch-01 SHUTOFF, and so again after the test, whatever it did."""
    assert relay.lab.server("batch-01").status == "SHUTOFF"
    yield "batch-01"
    relay.lab.shut_off("batch-01")


def test_start_a_stopped_server_and_the_viewer_connects_by_itself(
    sign_in_context: Callable[..., BrowserContext], relay: RelayLab, batch_stays_off: str
) -> None:
    lab = relay.lab
    page = sign_in_context().new_page()
    page.context.add_init_script(ANNOUNCEMENTS_JS)
    page.goto(f"/console/{batch_stays_off}")
    expect(page.locator("#console")).to_have_attribute("data-state", "not-running")
    expect(page.get_by_role("status")).to_have_count(1)
    asked = len(lab.cloud.actions)
    page.click("#power-start")
    expect(page.locator("#power-dialog")).to_contain_text(f"Start server {batch_stays_off}?")
    page.click("#power-confirm")
    expect(page.locator("#console")).to_have_attribute("data-state", "starting")
    wait_live(page, timeout=30)
    expect(page.locator("#server-status")).to_have_text("ACTIVE")
    # One connection: the one made once the server ran, with a ticket asked for then.
    expect(page.locator("#console")).to_have_attribute("data-connects", "1")
    assert lab.cloud.actions[asked:] == [(lab.server(batch_stays_off).id, "os-start")]
    steps = ["Server not running", f"Server {batch_stays_off} is starting", "Connected"]
    assert said_in_order(announced(page), steps), announced(page)


def test_reboot_keeps_the_viewers_connection(sign_in_context: Callable[..., BrowserContext], relay: RelayLab) -> None:
    """The guest is reset under the same QEMU: the relay's websocket stays, and the viewer follows the status."""
    lab = relay.lab
    server = lab.server(BIOS)
    page = open_console(sign_in_context(), BIOS)
    booted, asked = server.started_at, len(lab.cloud.actions)
    page.click("#power-reboot-soft")
    expect(page.locator("#power-question")).to_contain_text(f"{BIOS}?")
    page.click("#power-confirm")
    expect(page.locator("#console")).to_have_attribute("data-state", "rebooting")
    wait_live(page, timeout=30)
    expect(page.locator("#server-status")).to_have_text("ACTIVE")
    expect(page.locator("#console")).to_have_attribute("data-connects", "1")
    assert lab.cloud.actions[asked:] == [(server.id, "reboot-SOFT")]
    assert server.started_at > booted, "the guest was not reset"


@pytest.mark.parametrize("look", ["light", "dark", "light-390", "dark-390"])
def test_viewer_has_no_serious_accessibility_violations(
    sign_in_context: Callable[..., BrowserContext], look: str
) -> None:
    scheme, _, narrow = look.partition("-")
    context = sign_in_context(viewport=PHONE if narrow else DESKTOP, color_scheme=scheme)
    page = open_console(context, BIOS)
    assert_accessible(page, f"relay viewer, live ({look})")
    page.click("#details-toggle")
    expect(page.locator("#server-panel")).to_contain_text(BIOS)
    assert_accessible(page, f"relay viewer, details open ({look})")
    page.goto("/console/batch-01")
    expect(page.locator("#console")).to_have_attribute("data-state", "not-running")
    page.click("#power-start")
    expect(page.locator("#power-dialog")).to_be_visible()
    assert_accessible(page, f"relay viewer, not running, start dialog open ({look})")


# -- 6. websockets that may not connect -----------------------------------------------------------------------


def test_a_ticket_works_once(sign_in_context: Callable[..., BrowserContext], relay: RelayLab, settled: int) -> None:
    page = broker_page(sign_in_context())
    token = fresh_ticket(page, BIOS, relay)
    assert try_websocket(page, relay, token)["opened"]
    assert_refused(page, relay, token)
    row = refused_with(relay.lab, "ticket already used", settled)
    assert (row["username"], row["server_name"]) == (relay.lab.username, BIOS)


def test_an_expired_ticket_is_refused(
    sign_in_context: Callable[..., BrowserContext], relay: RelayLab, settled: int
) -> None:
    page = broker_page(sign_in_context())
    token = fresh_ticket(page, BIOS, relay)
    past = (datetime.now(UTC) - timedelta(seconds=1)).replace(tzinfo=None)
    with closing(database(relay.lab)) as db, db:
        changed = db.execute(
            "UPDATE single_use_tokens SET expires_at = ? WHERE digest = ? AND purpose = 'relay'",
            (past.isoformat(sep=" "), hashlib.sha256(token.encode()).hexdigest()),
        ).rowcount
    assert changed == 1
    assert_refused(page, relay, token)
    row = refused_with(relay.lab, "ticket expired", settled)
    assert (row["username"], row["server_name"]) == (relay.lab.username, BIOS)


def test_a_forged_ticket_is_refused(
    sign_in_context: Callable[..., BrowserContext], relay: RelayLab, settled: int
) -> None:
    page = broker_page(sign_in_context())
    assert_refused(page, relay, secrets.token_urlsafe(32))
    assert refused_with(relay.lab, "unknown ticket", settled)["username"] == ""


def test_another_users_ticket_is_refused(
    sign_in_context: Callable[..., BrowserContext], relay: RelayLab, settled: int
) -> None:
    theirs = fresh_ticket(broker_page(sign_in_context(WEB_AGENT)), BIOS, relay)
    mine = broker_page(sign_in_context())
    assert_refused(mine, relay, theirs)
    assert refused_with(relay.lab, "ticket of another sign-in session", settled)["username"] == WEB_AGENT


def test_a_websocket_from_another_origin_is_refused(
    sign_in_context: Callable[..., BrowserContext], relay: RelayLab, settled: int
) -> None:
    context = sign_in_context()
    token = fresh_ticket(broker_page(context), BIOS, relay)
    # Another port of the same host: the session cookie goes along (cookies ignore ports), the Origin differs.
    elsewhere = context.new_page()
    elsewhere.goto(relay.lab.proxy_url + "/vnc_lite.html")
    assert_refused(elsewhere, relay, token)
    row = refused_with(relay.lab, f"websocket from another origin ({relay.lab.proxy_url})", settled)
    assert row["username"] == relay.lab.username


def test_no_ticket_for_a_server_the_user_may_not_open(
    sign_in_context: Callable[..., BrowserContext], relay: RelayLab, settled: int
) -> None:
    page = broker_page(sign_in_context(WEB_AGENT))
    answer = ticket(page, SHELL, relay)
    assert answer["status"] == 404
    assert "ticket" not in (answer["body"] or {})
    found = [
        row
        for row in refusals(relay.lab, settled)
        if row["username"] == WEB_AGENT and row["server_id"] == relay.lab.server(SHELL).id
    ]
    assert len(found) == 1, found
    assert fresh_ticket(page, BIOS, relay)  # the same user may open web-*


def test_copy_link_copies_the_brokers_link_never_a_cloud_url(
    sign_in_context: Callable[..., BrowserContext], relay: RelayLab
) -> None:
    context = sign_in_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=relay.lab.broker_url)
    page = open_console(context, BIOS)
    page.click("#copy-link")
    expect(page.locator("#copy-link")).to_have_text("Link copied")
    assert page.evaluate("navigator.clipboard.readText()") == f"{relay.lab.broker_url}/console/{BIOS}"
    expect(page.locator("#copy-link")).to_have_text("Copy link", timeout=5000)
