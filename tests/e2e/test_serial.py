"""The serial console in Chromium against the lab: xterm.js on the relay, typed at, shared, with history,
alive across enforced token lifetimes, pastes bounded, and a CSP that loosens for this page only.

One lab serves the module: relay mode, a Linux guest with a shell on its serial port, and a stand-in
nova-serialproxy that closes each websocket when its token expires, on tokens of the shortest lifetime
the broker accepts (10 s), so the relay replaces its side every 7.5 s in every test here.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import Page
from playwright.sync_api import expect

from broker.web.presentation import PASTE_LIMIT
from lab import Lab
from lab import LabServer
from lab.browser import DESKTOP
from lab.browser import VIEWER_STATES_JS
from lab.browser import sign_in
from lab.lab import CLOUD_NAME
from lab.novncproxy import EXPIRED
from tests.e2e.test_relay import live_consoles
from tests.e2e.test_relay import sleep_until
from tests.e2e.test_relay import wait_live
from tests.support import wait_until

SHELL = "shell-01"
# The second agent: a rule for every lab server, so it may open the shell's serial console too.
PEER = "night-agent"
# BROKER_CONSOLE_TTL's minimum; the proxy enforces it.
TTL = 10
# The relay replaces the cloud's side a quarter of the token's life (at most 5 s) before it expires.
SWITCH_AFTER = TTL - min(5, TTL / 4)
# The relay's log line for each replacement of a serial console's side (broker.relay.serial names it by ID).
SWITCHED = f"serial {{}} ({CLOUD_NAME}): replaced the cloud's side before expiry"
# What the terminal shows: xterm.js draws its visible rows as DOM in .xterm-rows.
ROWS = "#screen .xterm-rows"

# Installed in every frame: each CSP violation the page reports, as "directive blocked-uri".
VIOLATIONS_JS = """(() => {
  window.__violations = [];
  document.addEventListener("securitypolicyviolation", (event) => {
    window.__violations.push(`${event.effectiveDirective} ${event.blockedURI}`);
  });
})();"""

# Runs in the serial page: a paste of ``text`` into the terminal, as the browser delivers Ctrl+V's.
PASTE_JS = """(text) => {
  const data = new DataTransfer();
  data.setData("text/plain", text);
  const target = document.querySelector("#screen .xterm-helper-textarea");
  target.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }));
}"""


@dataclass
class SerialLab:
    """The module's lab, the second agent's password, and when each serial console URL was minted."""

    lab: Lab
    peer_password: str
    # time.monotonic() of each serial mint, appended by the cloud's thread.
    serial_mints: list[float] = field(default_factory=list)

    def relay_switches(self) -> int:
        """How many times the relay has replaced the shell's serial side before its token expired."""
        return self._log("relay.log").count(SWITCHED.format(self.lab.server(SHELL).id))

    def proxy_cuts(self) -> int:
        """How many serial websockets the stand-in nova-serialproxy has closed at their token's expiry."""
        return self._log("serialproxy.log").count("token expired: closing the websocket")

    def _log(self, name: str) -> str:
        return (self.lab.workdir / name).read_text(errors="replace")


def record_serial_mints(lab: Lab, minted: list[float]) -> None:
    """Wrap the cloud's serial mint hook (it runs in this process) so each mint's moment is known."""
    register = lab.cloud.on_serial_console
    lock = threading.Lock()

    def recorded(token: str, server, ttl: int) -> None:
        with lock:
            minted.append(time.monotonic())
        register(token, server, ttl)

    lab.cloud.on_serial_console = recorded


@pytest.fixture(scope="module")
def serial_lab(linux_lab_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SerialLab]:
    workdir = tmp_path_factory.mktemp("serial-lab")
    with Lab(
        console_mode="relay",
        enforce_session_timeout=True,
        console_ttl=TTL,
        servers=[LabServer(SHELL, guest="linux", ip="10.0.0.51")],
        workdir=workdir,
    ) as lab:
        setup = SerialLab(lab, secrets.token_urlsafe(12))
        lab.add_user(PEER, setup.peer_password)
        record_serial_mints(lab, setup.serial_mints)
        lab.wait_for_shell(SHELL, timeout=90)
        yield setup


@pytest.fixture
def agent(browser: Browser, serial_lab: SerialLab) -> Iterator[Callable[..., BrowserContext]]:
    """``agent(user=None)``: a browser context signed in as the lab's user (or PEER), with the test's watchers.

    Waits first until no serial console of an earlier test is live: the relay forgets a console, and
    its history, once the last browser on it has gone, so each test starts on a console of its own.
    """
    lab = serial_lab.lab
    wait_until(lambda: live_consoles(lab) == 0, timeout=30, interval=0.1, message="earlier consoles ended")
    contexts: list[BrowserContext] = []

    def make(user: str | None = None) -> BrowserContext:
        context = browser.new_context(base_url=lab.broker_url, viewport=DESKTOP)
        context.add_init_script(VIEWER_STATES_JS)
        context.add_init_script(VIOLATIONS_JS)
        contexts.append(context)
        page = context.new_page()
        page.goto("/login")
        sign_in(page, lab, user or "", serial_lab.peer_password if user == PEER else "")
        expect(page.locator("#current-user")).to_have_text(user or lab.username)
        page.close()
        return context

    yield make
    for context in contexts:
        context.close()


# -- helpers -------------------------------------------------------------------------------------------


def serial_url(lab: Lab) -> str:
    return f"/console/{lab.server(SHELL).id}/serial?cloud={CLOUD_NAME}"


def open_serial(context: BrowserContext, lab: Lab) -> Page:
    """The shell's serial console page, connected through the relay (data-state "live")."""
    return goto_serial(context.new_page(), lab)


def goto_serial(page: Page, lab: Lab) -> Page:
    """``page`` on the shell's serial console, once connected through the relay (data-state "live")."""
    page.goto(serial_url(lab))
    expect(page.locator("#console")).to_have_attribute("data-state", "live", timeout=20_000)
    return page


def run(page: Page, command: str) -> None:
    """Type ``command`` and Enter into the terminal as key presses."""
    page.click("#screen")
    page.keyboard.type(command, delay=10)
    page.keyboard.press("Enter")


def expect_shown(page: Page, text: str, timeout: float = 15.0) -> None:
    """``text`` shows in the terminal's visible rows within ``timeout`` seconds."""
    expect(page.locator(ROWS)).to_contain_text(text, timeout=timeout * 1000)


def states(page: Page) -> list[str]:
    """Every value #console's data-state was set to since the page's script ran, in order."""
    return [value for _, name, value in page.evaluate("window.__states") if name == "data-state"]


def tag() -> str:
    """A few random hex digits, so that one test's output is never mistaken for another's."""
    return secrets.token_hex(3)


# -- 1. typing -------------------------------------------------------------------------------------------


def test_a_command_typed_in_the_serial_console_shows_its_output(
    agent: Callable[..., BrowserContext], serial_lab: SerialLab
) -> None:
    page = open_serial(agent(), serial_lab.lab)
    expect(page.locator("#live-status")).to_have_text("Connected")
    # The shell's arithmetic, not the echo of the keys, writes "serial-42".
    run(page, "echo serial-$((6*7))")
    expect_shown(page, "serial-42")
    expect(page.locator("#people")).to_have_text("")


# -- 2. two agents ------------------------------------------------------------------------------------------


def test_two_agents_share_the_console_see_each_other_and_both_type(
    agent: Callable[..., BrowserContext], serial_lab: SerialLab
) -> None:
    lab = serial_lab.lab
    mine = open_serial(agent(), lab)
    theirs = open_serial(agent(PEER), lab)
    expect(mine.locator("#people")).to_have_text(f"Also connected: {PEER}")
    expect(theirs.locator("#people")).to_have_text(f"Also connected: {lab.username}")

    marker = tag()
    run(mine, f"echo mine-{marker}-$((2*3))")
    for page in (mine, theirs):
        expect_shown(page, f"mine-{marker}-6")
    run(theirs, f"echo theirs-{marker}-$((4*5))")
    for page in (mine, theirs):
        expect_shown(page, f"theirs-{marker}-20")

    theirs.close()
    expect(mine.locator("#people")).to_have_text("")
    expect(mine.locator("#console")).to_have_attribute("data-state", "live")


# -- 3. history ---------------------------------------------------------------------------------------------


def test_an_agent_who_joins_sees_what_the_server_printed_before(
    agent: Callable[..., BrowserContext], serial_lab: SerialLab
) -> None:
    lab = serial_lab.lab
    marker = tag()
    first = open_serial(agent(), lab)
    run(first, f"echo before-{marker}-$((1+1))")
    expect_shown(first, f"before-{marker}-2")

    # QEMU replays nothing to a new client: only the relay's history can show this to the newcomer.
    later = open_serial(agent(PEER), lab)
    expect_shown(later, f"before-{marker}-2", timeout=5)
    expect(later.locator("#people")).to_have_text(f"Also connected: {lab.username}")


# -- 4. continuation ----------------------------------------------------------------------------------------


def test_the_console_stays_live_across_several_enforced_token_lifetimes(
    agent: Callable[..., BrowserContext], serial_lab: SerialLab
) -> None:
    """A command typed on each side, and one whose keys straddle each switch, for over three token lifetimes:
    every answer arrives, and the page shows nothing but "live" once connected (nor opens a second websocket).
    """
    lab = serial_lab.lab
    marker = tag()
    answers: list[str] = []
    sockets: list[str] = []

    def ask(label: str, delay_ms: float = 10) -> None:
        n = len(answers) + 1
        answers.append(f"{label}-{marker}-{n * 7}")
        page.click("#screen")
        page.keyboard.type(f"echo {label}-{marker}-$(({n}*7))", delay=delay_ms)
        page.keyboard.press("Enter")
        expect_shown(page, answers[-1])

    page = agent().new_page()
    page.on("websocket", lambda socket: sockets.append(socket.url))
    before, switches, cuts = len(serial_lab.serial_mints), serial_lab.relay_switches(), serial_lab.proxy_cuts()
    goto_serial(page, lab)
    ask("first")
    # Four switches take 4 * 7.5 s: the page outlives three tokens' enforced expiry and types on a fifth side.
    for side in range(4):
        mints = wait_until(
            lambda: serial_lab.serial_mints[before + side :], timeout=TTL, interval=0.1, message="the side's mint"
        )
        switch = mints[0] + SWITCH_AFTER
        sleep_until(switch - 2.5)
        ask("during")
        sleep_until(switch - 0.6)
        # About 2 s of keys: the relay closes the old side and opens the new one while they come.
        ask("across", delay_ms=70)
    wait_until(lambda: serial_lab.relay_switches() >= switches + 4, timeout=TTL, interval=0.1, message="4 switches")
    ask("last")

    assert time.monotonic() - serial_lab.serial_mints[before] >= 3 * TTL
    seen = states(page)
    assert set(seen[seen.index("live") :]) == {"live"}, f"data-state left live: {seen}"
    assert len(sockets) == 1, "the page reconnected"
    assert serial_lab.proxy_cuts() == cuts, f"the proxy closed a side in use at its expiry ({EXPIRED!r})"
    log = lab.serial_log(SHELL)
    assert [answer for answer in answers if answer not in log] == []


# -- 5. paste -----------------------------------------------------------------------------------------------


def test_a_paste_over_the_limit_is_refused_with_a_notice_and_a_small_one_is_sent(
    agent: Callable[..., BrowserContext], serial_lab: SerialLab
) -> None:
    lab = serial_lab.lab
    page = open_serial(agent(), lab)
    limit = page.evaluate("JSON.parse(document.getElementById('console').dataset.page).pasteLimit")
    assert limit == PASTE_LIMIT
    marker = tag()
    too_long = f"echo toolong-{marker} " + "x" * limit
    page.evaluate(PASTE_JS, too_long)
    expect(page.locator("#notice")).to_be_visible()
    expect(page.locator("#notice-text")).to_contain_text(f"at most {limit}")
    expect(page.locator("#notice-text")).to_contain_text("Nothing was sent.")

    page.click("#notice-dismiss")
    expect(page.locator("#notice")).to_be_hidden()
    page.evaluate(PASTE_JS, f"echo pasted-{marker}-$((5*5))\n")
    expect_shown(page, f"pasted-{marker}-25")
    # Input keeps its order on the one websocket: had the long paste gone, the guest would have echoed it first.
    lab.wait_for_serial(SHELL, f"pasted-{marker}-25", timeout=10)
    assert f"toolong-{marker}" not in lab.serial_log(SHELL)


# -- 6. content security policy -----------------------------------------------------------------------------


def test_the_serial_page_runs_without_csp_violations_and_only_it_allows_inline_styles(
    agent: Callable[..., BrowserContext], serial_lab: SerialLab
) -> None:
    lab = serial_lab.lab
    page = agent().new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))

    response = page.goto(serial_url(lab))
    assert "style-src 'self' 'unsafe-inline'" in response.headers["content-security-policy"]
    assert "script-src 'self';" in response.headers["content-security-policy"]
    expect(page.locator("#console")).to_have_attribute("data-state", "live", timeout=20_000)
    marker = tag()
    run(page, f"echo styled-{marker}-$((3*3))")
    expect_shown(page, f"styled-{marker}-9")
    # xterm.js wrote its own <style> (cell sizes it measured) and the page let it.
    assert page.evaluate("document.querySelectorAll('style').length") > 0
    assert page.evaluate("window.__violations") == []
    assert errors == []

    response = page.goto("/")
    policy = response.headers["content-security-policy"]
    assert "style-src 'self';" in policy
    assert "unsafe-inline" not in policy
    # The list still refuses an inline style: the watcher sees the browser block one.
    page.evaluate("document.head.appendChild(document.createElement('style')).textContent = 'body { color: red }'")
    wait_until(lambda: page.evaluate("window.__violations"), timeout=5, interval=0.05, message="a blocked style")
    assert page.evaluate("window.__violations")[0].startswith("style-src")


# -- 7. offered from the graphical console --------------------------------------------------------------------


def test_the_graphical_console_links_to_the_serial_console(
    agent: Callable[..., BrowserContext], serial_lab: SerialLab
) -> None:
    lab = serial_lab.lab
    page = agent().new_page()
    page.goto(f"/console/{SHELL}")
    wait_live(page)
    link = page.locator("#serial-link")
    expect(link).to_have_attribute("href", serial_url(lab))
    link.click()
    page.wait_for_url(f"**{serial_url(lab)}")
    expect(page.locator("#console")).to_have_attribute("data-state", "live", timeout=20_000)
    marker = tag()
    run(page, f"echo linked-{marker}-$((8*8))")
    expect_shown(page, f"linked-{marker}-64")
