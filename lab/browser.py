"""Driving the lab in Chromium (Playwright): launch options and what noVNC's page shows.

The checks run inside noVNC's own page (``vnc_lite.html``), which is cross-origin to the
broker, so callers pass a Playwright ``Frame`` or ``Page`` showing it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Frame
    from playwright.sync_api import Page

    from lab.lab import Lab

CHROMIUM = Path(os.environ.get("LAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
CONNECTED = "Connected to "
REFUSED = "Something went wrong, connection is closed"


def lit_pixels_js(canvas: str) -> str:
    """JS counting lit pixels on the canvas ``canvas`` selects: a threshold, not a hash (the cursor blinks)."""
    return f"""() => {{
  const canvas = document.querySelector("{canvas}");
  if (!canvas || !canvas.width) return 0;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 60) lit += 1;
  return lit;
}}"""


# noVNC's own page (in the iframe), and the relay viewer (its live canvas, not the kept last frame).
LIT_PIXELS_JS = lit_pixels_js("#screen canvas")
VIEWER_LIT_PIXELS_JS = lit_pixels_js("#screen > :not(#last-frame) canvas")

# Lit pixels per 16-pixel text row of the guest's 720x400 text mode (25 rows of 80 columns).
TEXT_ROWS_JS = """() => {
  const canvas = document.querySelector("#screen canvas");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const rows = new Array(Math.ceil(canvas.height / 16)).fill(0);
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] + data[i + 1] + data[i + 2] > 60) rows[Math.floor(i / 4 / canvas.width / 16)] += 1;
  }
  return rows;
}"""

# Installed in every frame: noVNC's page notes (in epoch ms) when it first reports a connection.
CONNECTED_AT_JS = """(() => {
  if (!location.pathname.endsWith("/vnc_lite.html")) return;
  const watch = () => {
    const status = document.getElementById("status");
    if (!status) return;
    new MutationObserver(() => {
      if (!window.__connectedAt && status.textContent.startsWith("Connected to ")) window.__connectedAt = Date.now();
    }).observe(status, { childList: true, characterData: true, subtree: true });
  };
  document.addEventListener("DOMContentLoaded", watch);
})();"""

# Installed in every frame: the broker's list notes (in epoch ms) when a server link is clicked.
CLICKED_AT_JS = """document.addEventListener("click", (event) => {
  if (event.target.closest && event.target.closest("a.server-link")) sessionStorage.setItem("clickedAt", Date.now());
}, true);"""


def status_text(frame: Frame) -> str:
    """noVNC's status line (``#status``)."""
    return frame.text_content("#status") or ""


def wait_status(frame: Frame, prefix: str, timeout: float = 15.0) -> str:
    """Wait until noVNC's status line starts with ``prefix``; return it."""
    frame.wait_for_function(
        "prefix => (document.getElementById('status')?.textContent || '').startsWith(prefix)",
        arg=prefix,
        timeout=timeout * 1000,
    )
    return status_text(frame)


def wait_screen(frame: Frame, minimum: int = 500, timeout: float = 15.0) -> int:
    """Wait until the guest's screen has at least ``minimum`` lit pixels; return the count."""
    frame.wait_for_function(f"() => ({LIT_PIXELS_JS})() >= {minimum}", timeout=timeout * 1000)
    return frame.evaluate(LIT_PIXELS_JS)


def text_rows(frame: Frame) -> list[int]:
    """Lit pixels per text row of the guest's screen."""
    return frame.evaluate(TEXT_ROWS_JS)


def shows_boot_menu(rows: list[int]) -> bool:
    """SeaBIOS's boot menu: "Select boot device:" on row 4, a blank row 5, entries from row 6.

    Without Esc, row 5 holds "Boot failed: ..." instead, and rows 10-12 fill up.
    """
    return rows[4] > 0 and rows[5] == 0 and rows[6] > 0 and rows[10] == 0


def sign_in(page: Page, lab: Lab, username: str = "", password: str = "") -> None:
    """Fill the sign-in form the page shows now (as the lab's user unless told another) and submit it."""
    page.fill("#username", username or lab.username)
    page.fill("#password", password or lab.password)
    with page.expect_navigation():
        page.click("#sign-in")


def console_frame(page: Page) -> Frame:
    """The frame inside the console page's iframe (noVNC, on the proxy's origin)."""
    frame = page.wait_for_selector("#console-frame[src]").content_frame()
    assert frame is not None
    return frame


def wait_connected(page: Page, swaps: int = 1, timeout: float = 15.0) -> Frame:
    """Wait for the iframe's ``swaps``-th URL to load, noVNC to connect and the guest screen to show."""
    page.wait_for_selector(f"#console[data-swaps='{swaps}']", timeout=timeout * 1000)
    src = page.get_attribute("#console-frame", "src")
    frame = console_frame(page)
    frame.wait_for_url(src, timeout=timeout * 1000)
    frame.wait_for_load_state()
    assert wait_status(frame, CONNECTED, timeout).startswith(CONNECTED)
    assert wait_screen(frame, timeout=timeout) >= 500
    return frame


# -- relay mode: the broker's own viewer (templates/console/viewer.html) ---------------------------

# Installed in every frame: each change of the viewer's data-state and data-connects, in order, as
# [epoch ms, attribute, value] in window.__states (a page's own attributes, set before it ran, are not).
VIEWER_STATES_JS = """(() => {
  window.__states = [];
  new MutationObserver((records) => {
    for (const { target, attributeName } of records) {
      if (target.id !== "console") continue;
      window.__states.push([Date.now(), attributeName, target.getAttribute(attributeName)]);
    }
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state", "data-connects"] });
})();"""

# Playwright key names for a US keyboard. Keys are pressed by code, with Shift held where the
# character needs it: QEMU types by scancode when noVNC sends it, so a ">" without Shift is a ".".
KEY_CODES = {" ": "Space", "-": "Minus", "/": "Slash", ".": "Period", ">": "Shift+Period", "\n": "Enter"}


def key_for(char: str) -> str:
    """The Playwright key (with Shift when needed) that types ``char`` on a US keyboard."""
    if char in KEY_CODES:
        return KEY_CODES[char]
    if char.isascii() and char.isdigit():
        return f"Digit{char}"
    if char.isascii() and char.isalpha():
        return f"Shift+Key{char}" if char.isupper() else f"Key{char.upper()}"
    raise ValueError(f"no key for {char!r}")


def press_keys(page: Page, text: str, delay_ms: float = 30) -> None:
    """Type ``text`` as real key presses into whatever has the focus (letters, digits, space, - / . > and Enter)."""
    for char in text:
        page.keyboard.press(key_for(char), delay=delay_ms / 2)
        page.wait_for_timeout(delay_ms / 2)


# Installed in every frame: each new text of the page's polite live region (role="status"), in order, in
# window.__said: what a screen reader would have announced.
ANNOUNCEMENTS_JS = """(() => {
  window.__said = [];
  document.addEventListener("DOMContentLoaded", () => {
    const region = document.querySelector('[role="status"]');
    if (!region) return;
    new MutationObserver(() => {
      const text = region.textContent.trim();
      if (text && window.__said.at(-1) !== text) window.__said.push(text);
    }).observe(region, { childList: true, characterData: true, subtree: true });
  });
})();"""


def announced(page: Page) -> list[str]:
    """What the page's live region has said since it loaded (``ANNOUNCEMENTS_JS`` must be installed)."""
    return page.evaluate("window.__said || []")


def said_in_order(said: list[str], expected: list[str]) -> bool:
    """Whether each of ``expected`` was announced (as the start of an announcement), in this order."""
    rest = iter(said)
    return all(any(text.startswith(want) for text in rest) for want in expected)
