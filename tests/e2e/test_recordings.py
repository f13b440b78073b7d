"""Console recordings in Chromium: an admin finds a recording in the list, plays it with noVNC, seeks with the
slider and the index (the screen becomes what it was at that time), and pruning takes old ones off the list.
A serial console's recording plays in xterm.js, and seeking shows the text as it stood then.

The recording of the first tests is written by the relay's own ``Recorder`` (tests.recordings) with a
screen of known colours at known times, so that what the canvas must show at each moment is known
exactly. The last test records a console opened through the lab's relay, once the relay records its
consoles (the console's calls to its recorder).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import Page
from playwright.sync_api import expect

from lab import Lab
from lab import LabServer
from lab.browser import lit_pixels_js
from lab.browser import sign_in
from lab.lab import REPO
from tests.recordings import make_recording
from tests.recordings import solid
from tests.support import wait_until

ADMIN = "recording-admin"
WIDTH, HEIGHT = 320, 240
RED, GREEN, BLUE, WHITE = (200, 0, 0), (0, 160, 0), (0, 0, 200), (255, 255, 255)
# The screen's colour from each time on (seconds): a keyframe at 40 s starts the second segment.
SCREEN = [(0.0, RED), (20.0, GREEN), (40.0, BLUE), (50.0, WHITE)]
LENGTH = 60.0

# The colour at the middle of the player's canvas (noVNC draws the recorded framebuffer there).
CENTRE_JS = """() => {
  const canvas = document.querySelector('#player-screen canvas');
  if (!canvas || !canvas.width) return null;
  const [r, g, b] = canvas.getContext('2d').getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data;
  return [r, g, b];
}"""
SEEK_JS = """(ms) => {
  const slider = document.getElementById('seek');
  slider.value = String(ms);
  slider.dispatchEvent(new Event('change', { bubbles: true }));
}"""
PLAYER_LIT_PIXELS_JS = lit_pixels_js("#player-screen canvas")
# A serial recording's text at known times (seconds): a line, another, then a cleared screen with a third.
SERIAL_TEXT = [
    (0.0, b"boot: serial-line-one\r\n"),
    (20.0, b"serial-line-two\r\n"),
    (40.0, b"\x1b[2J\x1b[Hserial-line-three\r\n"),
]
# What the serial player's terminal shows: xterm.js draws its visible rows as DOM.
PLAYER_ROWS = "#player-screen .xterm-rows"
# Installed in the page: each CSP violation it reports, as "directive blocked-uri".
VIOLATIONS_JS = """(() => {
  window.__violations = [];
  document.addEventListener("securitypolicyviolation", (event) => {
    window.__violations.push(`${event.effectiveDirective} ${event.blockedURI}`);
  });
})();"""


@dataclass(frozen=True)
class RecordingLab:
    lab: Lab
    password: str  # the admin's
    directory: Path  # BROKER_RECORDING_DIR of its broker and relay


@pytest.fixture(scope="module")
def recording_lab(lab_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordingLab]:
    """A relay-mode lab whose broker and relay record every console into a directory of the test's."""
    directory = tmp_path_factory.mktemp("recordings")
    workdir = tmp_path_factory.mktemp("recording-lab")
    with pytest.MonkeyPatch.context() as patch:
        # The lab's broker and relay (and each flask command) take the environment they are started in.
        patch.setenv("BROKER_RECORDING", "all")
        patch.setenv("BROKER_RECORDING_DIR", str(directory))
        with Lab(console_mode="relay", servers=[LabServer("web-01", ip="10.0.0.41")], workdir=workdir) as lab:
            password = secrets.token_urlsafe(12)
            lab.add_user(ADMIN, password, admin=True)
            yield RecordingLab(lab, password, directory)


@pytest.fixture(scope="module")
def recording_id(recording_lab: RecordingLab) -> str:
    frames = [(at, solid(WIDTH, HEIGHT, colour)) for at, colour in SCREEN]
    return make_recording(
        recording_lab.directory,
        frames,
        keyframes=(40.0,),
        events=((30.0, "ctrl-alt-del", ""), (45.0, "hand-over", "to lee")),
        end=LENGTH,
        width=WIDTH,
        height=HEIGHT,
        server_name="web-01",
    )


@pytest.fixture(scope="module")
def serial_recording_id(recording_lab: RecordingLab) -> str:
    return make_recording(
        recording_lab.directory,
        SERIAL_TEXT,
        events=((30.0, "join", "lee"),),
        end=LENGTH,
        kind="serial",
        server_name="web-01",
    )


@pytest.fixture
def admin_page(browser: Browser, recording_lab: RecordingLab) -> Iterator[Page]:
    context = browser.new_context(base_url=recording_lab.lab.broker_url)
    page = context.new_page()
    page.goto("/login")
    sign_in(page, recording_lab.lab, ADMIN, recording_lab.password)
    yield page
    context.close()


def colour(page: Page) -> tuple[int, int, int] | None:
    found = page.evaluate(CENTRE_JS)
    return tuple(found) if found else None


def shows(page: Page, expected: tuple[int, int, int], timeout: float = 10.0) -> None:
    wait_until(lambda: colour(page) == expected, timeout=timeout, interval=0.05, message=f"the screen {expected}")


def open_player(page: Page, recording_id: str) -> None:
    page.goto(f"/admin/recordings/{recording_id}")
    expect(page.locator("#player")).to_have_attribute("data-ready", "true", timeout=15_000)


def test_a_recording_is_listed_and_plays_from_its_start(admin_page: Page, recording_id: str):
    admin_page.goto("/admin/recordings")
    row = admin_page.locator(f'#recordings tr[data-id="{recording_id}"]')
    expect(row).to_contain_text("web-01")
    expect(row).to_contain_text("1:00")
    row.get_by_role("link", name="Play").click()
    expect(admin_page.locator("#player")).to_have_attribute("data-ready", "true", timeout=15_000)
    shows(admin_page, RED)
    admin_page.select_option("#speed", "8")
    admin_page.get_by_role("button", name="Play").click()
    # 20 s of recording at 8x: the green screen comes about 2.5 s later, and the blue one (next segment) after it.
    shows(admin_page, GREEN)
    shows(admin_page, BLUE)
    admin_page.get_by_role("button", name="Pause").click()
    expect(admin_page.get_by_role("button", name="Play")).to_have_attribute("aria-pressed", "false")


def test_seeking_shows_the_screen_as_it_was_then(admin_page: Page, recording_id: str):
    open_player(admin_page, recording_id)
    for seconds, expected in [(25, GREEN), (55, WHITE), (10, RED), (45, BLUE), (39, GREEN)]:
        admin_page.evaluate(SEEK_JS, seconds * 1000)
        shows(admin_page, expected)
        expect(admin_page.locator("#player")).to_have_attribute("data-position", str(seconds * 1000))


def test_the_index_jumps_to_what_happened(admin_page: Page, recording_id: str):
    open_player(admin_page, recording_id)
    events = admin_page.locator("#recording-events button")
    expect(events.first).to_contain_text("0:00 Connected")
    admin_page.get_by_role("button", name="0:45 Hand-over: to lee").click()
    shows(admin_page, BLUE)
    admin_page.get_by_role("button", name="0:30 Ctrl-Alt-Del").click()
    shows(admin_page, GREEN)
    expect(admin_page.locator("#position")).to_have_text("0:30 / 1:00")


def shows_text(page: Page, shown: list[str], hidden: list[str]) -> None:
    """The serial player's terminal shows every line of ``shown`` and none of ``hidden``."""
    rows = page.locator(PLAYER_ROWS)
    for line in shown:
        expect(rows).to_contain_text(line)
    for line in hidden:
        expect(rows).not_to_contain_text(line)


def test_a_serial_recording_plays_in_a_terminal_and_seeking_shows_the_text_as_it_was_then(
    admin_page: Page, serial_recording_id: str
):
    errors: list[str] = []
    admin_page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    admin_page.on("pageerror", lambda error: errors.append(str(error)))
    admin_page.add_init_script(VIOLATIONS_JS)
    admin_page.goto("/admin/recordings")
    row = admin_page.locator(f'#recordings tr[data-id="{serial_recording_id}"]')
    expect(row).to_contain_text("serial")
    row.get_by_role("link", name="Play").click()
    expect(admin_page.locator("#player")).to_have_attribute("data-ready", "true", timeout=15_000)
    expect(admin_page.locator("#player")).to_have_attribute("data-kind", "serial")
    assert admin_page.locator("#player-screen canvas").count() == 0  # no noVNC
    shows_text(admin_page, ["serial-line-one"], ["serial-line-two"])
    for seconds, shown, hidden in [
        (25, ["serial-line-one", "serial-line-two"], ["serial-line-three"]),
        (45, ["serial-line-three"], ["serial-line-one", "serial-line-two"]),
        (10, ["serial-line-one"], ["serial-line-two", "serial-line-three"]),
    ]:
        admin_page.evaluate(SEEK_JS, seconds * 1000)
        expect(admin_page.locator("#player")).to_have_attribute("data-position", str(seconds * 1000))
        shows_text(admin_page, shown, hidden)
    admin_page.get_by_role("button", name="0:30 Joined: lee").click()
    shows_text(admin_page, ["serial-line-one", "serial-line-two"], ["serial-line-three"])
    expect(admin_page.locator("#position")).to_have_text("0:30 / 1:00")
    # 10 s of recording at 8x: the cleared screen about 1.25 s later.
    admin_page.select_option("#speed", "8")
    admin_page.get_by_role("button", name="Play").click()
    shows_text(admin_page, ["serial-line-three"], ["serial-line-one"])
    # xterm.js wrote its own <style> and the page's policy let it (only this kind of recording's page does).
    assert admin_page.evaluate("window.__violations") == []
    assert errors == []


def test_pruning_takes_old_recordings_off_the_list(admin_page: Page, recording_lab: RecordingLab):
    lab = recording_lab.lab
    old = make_recording(recording_lab.directory, started=datetime.now(UTC) - timedelta(days=120), server_name="old-01")
    admin_page.goto("/admin/recordings")
    expect(admin_page.locator(f'tr[data-id="{old}"]')).to_have_count(1)
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "recordings", "prune"],
        env=lab.broker_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"deleted {old}" in done.stdout
    admin_page.reload()
    expect(admin_page.locator(f'tr[data-id="{old}"]')).to_have_count(0)


def test_a_console_through_the_relay_is_recorded_says_so_and_plays_back(
    browser: Browser, admin_page: Page, recording_lab: RecordingLab
):
    lab, directory = recording_lab.lab, recording_lab.directory
    before = {path.name for path in directory.iterdir()}
    context = browser.new_context(base_url=lab.broker_url)
    page = context.new_page()
    page.goto("/login")
    sign_in(page, lab)
    page.goto("/console/web-01")
    expect(page.locator("#console")).to_have_attribute("data-state", "live", timeout=20_000)
    # The person at the console is told, on its toolbar.
    expect(page.locator("#recorded")).to_have_text("Recorded")
    # The guest's screen is in the recording once its writer has flushed the first screen (about a second).
    new = wait_until(
        lambda: [
            p.name
            for p in directory.iterdir()
            if p.name not in before and (p / "seg-000000.gz").is_file() and (p / "seg-000000.gz").stat().st_size > 100
        ],
        timeout=20,
        interval=0.2,
        message="a recording of the console with its first screen",
    )
    context.close()
    wait_until(lambda: '"complete": true' in (directory / new[0] / "meta.json").read_text(), timeout=20, interval=0.2)
    open_player(admin_page, new[0])
    # The guest's boot screen: text on black, as the relay tests wait for it on the live console.
    wait_until(
        lambda: admin_page.evaluate(PLAYER_LIT_PIXELS_JS) >= 500, timeout=10, interval=0.1, message="the guest's screen"
    )
