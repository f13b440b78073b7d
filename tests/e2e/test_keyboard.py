"""Keys that mean what the keyboard means: a US-layout Linux guest reads the physical keys pressed.

Keys go to QEMU as scancodes (noVNC's QEMU extended key events), so a German keyboard's physical Z
key, which the browser reports as ``key`` "y" and ``code`` "KeyZ", is a Z to a US guest, on both
console modes: the broker's relay viewer and the cloud's own noVNC page in the iframe. Type text
sends the keys the chosen layout types a text with: German "yz" is the physical keys Z and Y.

What the guest read comes back through its serial log: the keys typed make the command
``echo WORD > /dev/ttyS0``, and WORD is written as the guest's shell read it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import Frame
from playwright.sync_api import Page
from playwright.sync_api import expect

from lab import Lab
from lab import LabServer
from lab.browser import DESKTOP
from lab.browser import VIEWER_LIT_PIXELS_JS
from lab.browser import press_keys
from lab.browser import sign_in
from lab.browser import wait_connected
from tests.axe import assert_accessible
from tests.support import wait_until

GUEST = "keys-01"
# Long enough that no console URL expires, nor is swapped for a fresh one, while a test types.
TTL = 600
# Letters on the same key in every layout the tests use (us, de, fr): a word's unique tail.
SAME_EVERYWHERE = "bcdefghijklnoprstuvx"
SHIFT = 8  # CDP's modifier bit for Shift
PHONE = {"width": 390, "height": 844}

# Installed in every frame (the iframe's noVNC page too): each keydown's key and code, as the page saw it.
KEYDOWNS_JS = """window.__keydowns = [];
addEventListener("keydown", (event) => window.__keydowns.push([event.key, event.code]), true);"""


def lab_for(mode: str, workdir: Path) -> Lab:
    return Lab(
        console_mode=mode,
        console_ttl=TTL,
        servers=[LabServer(GUEST, guest="linux", ip="10.0.0.41")],
        workdir=workdir,
    )


@pytest.fixture(scope="module")
def relay_lab(linux_lab_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_for("relay", tmp_path_factory.mktemp("keyboard-relay")) as lab:
        lab.wait_for_shell(GUEST)
        yield lab


@pytest.fixture
def iframe_lab(linux_lab_tools: None, tmp_path: Path) -> Iterator[Lab]:
    """Function-scoped: one test uses it, and its guest need not run beside the relay lab's."""
    with lab_for("iframe", tmp_path / "keyboard-iframe") as lab:
        lab.wait_for_shell(GUEST)
        yield lab


@pytest.fixture
def signed_in(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    """Browser contexts signed in to a lab's broker as its user: ``make(lab, viewport, color_scheme)``."""
    contexts: list[BrowserContext] = []

    def make(lab: Lab, viewport: dict = DESKTOP, color_scheme: str = "light") -> BrowserContext:
        context = browser.new_context(base_url=lab.broker_url, viewport=viewport, color_scheme=color_scheme)
        context.add_init_script(KEYDOWNS_JS)
        contexts.append(context)
        page = context.new_page()
        page.goto("/login")
        sign_in(page, lab)
        page.close()
        return context

    yield make
    for context in contexts:
        context.close()


def open_viewer(context: BrowserContext) -> Page:
    """The relay viewer of the guest, live with its screen drawn, the keyboard in the console."""
    page = context.new_page()
    page.goto(f"/console/{GUEST}")
    expect(page.locator("#console")).to_have_attribute("data-state", "live", timeout=20000)
    wait_until(lambda: page.evaluate(VIEWER_LIT_PIXELS_JS) >= 500, timeout=20, message="the guest's screen")
    page.click("#screen")
    return page


def word(start: str) -> str:
    """``start`` and a random tail no layout here types differently: a word no earlier test typed."""
    return start + "".join(secrets.choice(SAME_EVERYWHERE) for _ in range(8))


def german_key(char: str) -> tuple[str, int]:
    """The physical key (code) of a letter on a German keyboard and its Windows virtual key code."""
    physical = {"y": "KeyZ", "z": "KeyY"}.get(char.lower(), f"Key{char.upper()}")
    return physical, ord(char.upper())


def press_as_german(page: Page, letters: str) -> None:
    """Letters as a German keyboard gives them to the browser: ``key`` the letter, ``code`` its physical key.

    Through Chromium's own input path (CDP Input.dispatchKeyEvent), so the page gets real keydown
    and keyup events, in whichever frame has the focus; capitals with Shift held.
    """
    cdp = page.context.new_cdp_session(page)
    shift = {"key": "Shift", "code": "ShiftLeft", "windowsVirtualKeyCode": 16, "location": 1}
    try:
        for char in letters:
            code, virtual = german_key(char)
            key = {"key": char, "code": code, "windowsVirtualKeyCode": virtual, "nativeVirtualKeyCode": virtual}
            held = SHIFT if char.isupper() else 0
            if held:
                cdp.send("Input.dispatchKeyEvent", {"type": "rawKeyDown", "modifiers": SHIFT, **shift})
            cdp.send("Input.dispatchKeyEvent", {"type": "keyDown", "text": char, "modifiers": held, **key})
            cdp.send("Input.dispatchKeyEvent", {"type": "keyUp", "modifiers": held, **key})
            if held:
                cdp.send("Input.dispatchKeyEvent", {"type": "keyUp", **shift})
    finally:
        cdp.detach()


def us_reading(letters: str) -> str:
    """What a US-layout guest reads from a German keyboard's keys for ``letters``: Y and Z trade places."""
    return letters.translate(str.maketrans("yzYZ", "zyZY"))


def keydowns(target: Page | Frame) -> list[list[str]]:
    """(key, code) of every keydown the page (or frame) has seen, Shift's own included."""
    return [pair for pair in target.evaluate("window.__keydowns") if pair[0] != "Shift"]


def assert_read(lab: Lab, typed: str, read: str) -> None:
    """The guest's shell read ``read`` (its echo reached the serial port), and never ``typed`` itself."""
    lab.wait_for_serial(GUEST, read, timeout=20)
    assert typed == read or typed not in lab.serial_log(GUEST), f"the guest read {typed!r} as the browser named it"


# -- item 8: a German keyboard's keys, on both console modes ------------------------------------------------


def test_relay_viewer_sends_the_physical_keys_of_a_german_keyboard(
    relay_lab: Lab, signed_in: Callable[..., BrowserContext]
) -> None:
    page = open_viewer(signed_in(relay_lab))
    typed = word("yzZ")
    press_keys(page, "echo ")
    press_as_german(page, typed)
    press_keys(page, " > /dev/ttyS0\n")
    assert_read(relay_lab, typed, us_reading(typed))
    # The browser saw what a German keyboard reports: the key "y" from the physical Z key.
    assert keydowns(page)[5:8] == [["y", "KeyZ"], ["z", "KeyY"], ["Z", "KeyY"]]


def test_clouds_novnc_page_sends_the_physical_keys_of_a_german_keyboard(
    iframe_lab: Lab, signed_in: Callable[..., BrowserContext]
) -> None:
    page = signed_in(iframe_lab).new_page()
    page.goto(f"/console/{GUEST}")
    frame = wait_connected(page)
    frame.click("#screen canvas")
    typed = word("yzZ")
    press_keys(page, "echo ")
    press_as_german(page, typed)
    press_keys(page, " > /dev/ttyS0\n")
    assert_read(iframe_lab, typed, us_reading(typed))
    # The keys reached noVNC's page in the iframe (the cloud's origin), as a German keyboard names them.
    assert keydowns(frame)[5:8] == [["y", "KeyZ"], ["z", "KeyY"], ["Z", "KeyY"]]


# -- item 9: Type text in the server's layout ---------------------------------------------------------------


def type_text(page: Page, layout: str, text: str) -> None:
    """Type text with ``layout`` chosen, and wait until every key has gone."""
    page.click("#type-text")
    page.select_option("#type-layout", layout)
    page.fill("#type-input", text)
    page.click("#type-send")
    expect(page.locator("#type-dialog")).not_to_be_visible()
    expect(page.locator("#type-text")).to_be_enabled(timeout=10000)  # disabled while typing


@pytest.mark.parametrize(
    ("layout", "start", "read"),
    [
        ("us", "yz", "yz"),
        # Y and Z trade places; a capital is Shift and the key.
        ("de", "yzZ", "zyY"),
        # AZERTY: A and Q trade places, and digits are typed with Shift (Shift+2 is "@" to a US guest).
        ("fr", "aqQ2", "qaA@"),
    ],
)
def test_type_text_sends_the_keys_the_chosen_layout_types_the_text_with(
    relay_lab: Lab, signed_in: Callable[..., BrowserContext], layout: str, start: str, read: str
) -> None:
    page = open_viewer(signed_in(relay_lab))
    typed = word(start)
    press_keys(page, "echo ")
    type_text(page, layout, typed)
    press_keys(page, " > /dev/ttyS0\n")
    assert_read(relay_lab, typed, read + typed[len(start) :])


def test_type_text_remembers_the_layout_and_refuses_what_it_has_no_key_for(
    relay_lab: Lab, signed_in: Callable[..., BrowserContext]
) -> None:
    page = open_viewer(signed_in(relay_lab))
    page.click("#type-text")
    layout = page.get_by_label("The server's keyboard layout")
    expect(layout).to_have_value("us")
    names = layout.locator("option").all_text_contents()
    assert names == ["English (US)", "English (UK)", "German", "French (AZERTY)"]
    page.fill("#type-input", "grüß")
    page.click("#type-send")
    expect(page.locator("#type-message")).to_have_text(
        "“ü” cannot be typed: the English (US) keyboard layout has no key for it."
    )
    expect(page.locator("#type-dialog")).to_be_visible()
    layout.select_option("de")
    page.fill("#type-input", "Привет")
    page.click("#type-send")
    expect(page.locator("#type-message")).to_have_text(
        "“П” cannot be typed: the German keyboard layout has no key for it."
    )
    page.click("#type-cancel")
    # The next time, in this browser, German is already chosen.
    page.reload()
    expect(page.locator("#console")).to_have_attribute("data-state", "live", timeout=20000)
    page.click("#type-text")
    expect(layout).to_have_value("de")


@pytest.mark.parametrize("look", ["light", "dark", "light-390", "dark-390"])
def test_type_text_dialog_has_no_serious_accessibility_violations(
    relay_lab: Lab, signed_in: Callable[..., BrowserContext], look: str
) -> None:
    scheme, _, narrow = look.partition("-")
    page = open_viewer(signed_in(relay_lab, viewport=PHONE if narrow else DESKTOP, color_scheme=scheme))
    page.click("#type-text")
    expect(page.locator("#type-input")).to_be_focused()
    assert_accessible(page, f"relay viewer, Type text dialog open ({look})")


# The key events Type text sends, by layout: read from the viewer's own tables, beside the page's
# scripts (static URLs carry the static files' version).
IMPORT_LAYOUTS_JS = 'import(new URL("layouts.js", [...document.scripts].find((s) => s.src.includes("/js/")).src))'
KEY_EVENTS_JS = f"""async ([layout, char]) => {{
  const {{ keyEvents }} = await {IMPORT_LAYOUTS_JS};
  const events = keyEvents(layout, char);
  return events && events.map(([, code, down]) => (down ? "+" : "-") + code).join(" ");
}}"""
PRINTABLE_ASCII = "".join(chr(code) for code in range(0x20, 0x7F))
ALL_TYPED_JS = f"""async ([layout, text]) => {{
  const {{ keyEvents }} = await {IMPORT_LAYOUTS_JS};
  return [...text].filter((char) => !keyEvents(layout, char)).join("");
}}"""


@pytest.mark.parametrize(
    ("layout", "char", "keys"),
    [
        ("us", '"', "+ShiftLeft +Quote -Quote -ShiftLeft"),
        ("gb", "@", "+ShiftLeft +Quote -Quote -ShiftLeft"),
        ("gb", '"', "+ShiftLeft +Digit2 -Digit2 -ShiftLeft"),
        ("gb", "#", "+Backslash -Backslash"),
        ("gb", "\\", "+IntlBackslash -IntlBackslash"),
        ("de", "@", "+AltRight +KeyQ -KeyQ -AltRight"),
        ("de", "-", "+Slash -Slash"),
        ("de", "/", "+ShiftLeft +Digit7 -Digit7 -ShiftLeft"),
        ("de", "ä", "+Quote -Quote"),
        # A dead key, then Space: the character alone.
        ("de", "^", "+Backquote -Backquote +Space -Space"),
        ("fr", "m", "+Semicolon -Semicolon"),
        ("fr", "1", "+ShiftLeft +Digit1 -Digit1 -ShiftLeft"),
        ("fr", "é", "+Digit2 -Digit2"),
        ("fr", "\n", "+Enter -Enter"),
    ],
)
def test_each_layout_presses_the_keys_it_types_a_character_with(
    relay_lab: Lab, signed_in: Callable[..., BrowserContext], layout: str, char: str, keys: str
) -> None:
    page = signed_in(relay_lab).new_page()
    page.goto("/")
    assert page.evaluate(KEY_EVENTS_JS, [layout, char]) == keys


def test_every_layout_types_all_of_printable_ascii(relay_lab: Lab, signed_in: Callable[..., BrowserContext]) -> None:
    """A password or a command in ASCII can be typed whatever layout the server has."""
    page = signed_in(relay_lab).new_page()
    page.goto("/")
    for layout in ("us", "gb", "de", "fr"):
        assert page.evaluate(ALL_TYPED_JS, [layout, PRINTABLE_ASCII + "\t\n"]) == "", layout
