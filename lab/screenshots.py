"""``python -m lab.screenshots`` (``./dev screenshots``): the README's pictures, taken from a running lab.

Starts an iframe-mode lab (then a relay-mode one), signs in as an agent allowed to start and reboot,
leaves the traces of a working day (two consoles opened, one server pinned) and saves:

    server-list.png        the list with Pinned, Recent and the details panel of a server in ERROR
    server-list-dark.png   the same in dark mode
    server-list-phone.png  the list at 390 px (Pinned, Recent, the table; the panel would cover it)
    console.png            a console page on a Linux guest's shell, details open
    console-relay.png      the relay mode's viewer on the same kind of guest

into ``docs/`` (``--out`` to choose). Needs what the lab needs, and Debian's Chromium.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser
from playwright.sync_api import Page
from playwright.sync_api import expect
from playwright.sync_api import sync_playwright

from lab.browser import CHROMIUM
from lab.browser import CHROMIUM_ARGS
from lab.browser import DESKTOP
from lab.browser import VIEWER_LIT_PIXELS_JS
from lab.browser import press_keys
from lab.browser import sign_in
from lab.browser import wait_connected
from lab.lab import CLOUD_NAME
from lab.lab import REPO
from lab.lab import Lab
from lab.lab import LabServer
from lab.lab import default_servers
from lab.processes import LabError

PHONE = {"width": 390, "height": 844}
# Nova's own console token lifetime, so the pages show what a real cloud's would.
LIFETIMES = {"console_ttl": 600, "refresh_margin": 60, "idle_swap_after": 20}
SHELL = "shell-01"
BROKEN = "broken-01"
# Typed into the guest's shell so the console shows something a person would.
COMMAND = "uname -sr\n"
PIN_JS = """async (url) => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const response = await fetch(url, { method: "PUT", headers: { "X-CSRFToken": csrf } });
  return response.status;
}"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder for the PNG files (default docs/)")
    return parser.parse_args(argv)


def servers() -> list[LabServer]:
    """The lab's servers, a Linux guest with a shell, and one in ERROR (its panel shows Nova's fault)."""
    return [
        *default_servers(),
        LabServer(SHELL, guest="linux", ip="10.0.0.14"),
        LabServer(BROKEN, status="ERROR", ip="10.0.0.15"),
    ]


@contextmanager
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        raise LabError(f"missing: {CHROMIUM} (Debian package chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def signed_in(browser: Browser, lab: Lab, viewport: dict = DESKTOP, color_scheme: str = "light") -> Page:
    context = browser.new_context(base_url=lab.broker_url, viewport=viewport, color_scheme=color_scheme)
    page = context.new_page()
    page.goto("/login")
    sign_in(page, lab)
    return page


def working_day(page: Page, lab: Lab) -> None:
    """Open two consoles (they land in Recent) and pin a third server, as an agent's morning would."""
    for name in ("web-01", SHELL):
        page.goto(f"/console/{name}")
        wait_connected(page, timeout=30)
    page.goto("/")
    status = page.evaluate(PIN_JS, f"/api/pins/{lab.server('db-01').id}?cloud={CLOUD_NAME}")
    if status not in (200, 201):
        raise LabError(f"pinning db-01 answered HTTP {status}")


def open_details(page: Page, name: str) -> None:
    """The list with ``name``'s details panel open and filled."""
    page.goto("/")
    page.locator(f"#servers tbody tr:has(a.server-link:text-is('{name}')) button.details").click()
    expect(page.locator("#server-panel")).to_be_visible()
    expect(page.locator("#server-panel")).to_contain_text(name)
    page.mouse.move(0, 0)


def list_shots(browser: Browser, lab: Lab, out: Path) -> None:
    for viewport, scheme, name in (
        (DESKTOP, "light", "server-list.png"),
        (DESKTOP, "dark", "server-list-dark.png"),
        (PHONE, "light", "server-list-phone.png"),
    ):
        page = signed_in(browser, lab, viewport, scheme)
        if viewport is PHONE:
            expect(page.locator("#pinned")).to_be_visible()
        else:
            open_details(page, BROKEN)
        page.screenshot(path=out / name)
        page.context.close()
        print(f"wrote {out / name}", flush=True)


def console_shot(browser: Browser, lab: Lab, out: Path) -> None:
    page = signed_in(browser, lab)
    page.goto(f"/console/{SHELL}")
    frame = wait_connected(page, timeout=30)
    frame.click("#screen canvas")
    press_keys(page, COMMAND)
    page.click("#details-toggle")
    expect(page.locator("#server-panel")).to_be_visible()
    page.mouse.move(5, 5)
    page.wait_for_timeout(500)
    page.screenshot(path=out / "console.png")
    page.context.close()
    print(f"wrote {out / 'console.png'}", flush=True)


def relay_shot(browser: Browser, out: Path) -> None:
    with Lab(console_mode="relay", power=True, servers=[LabServer(SHELL, guest="linux")], **LIFETIMES) as lab:
        lab.wait_for_shell(SHELL)
        page = signed_in(browser, lab)
        page.goto(f"/console/{SHELL}")
        expect(page.locator("#console")).to_have_attribute("data-state", "live", timeout=30_000)
        page.wait_for_function(f"() => ({VIEWER_LIT_PIXELS_JS})() >= 500", timeout=30_000)
        page.click("#screen")
        press_keys(page, COMMAND)
        page.mouse.move(5, 5)
        page.wait_for_timeout(500)
        page.screenshot(path=out / "console-relay.png")
        page.context.close()
        print(f"wrote {out / 'console-relay.png'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with chromium() as browser:
            with Lab(power=True, servers=servers(), **LIFETIMES) as lab:
                lab.wait_for_shell(SHELL)
                morning = signed_in(browser, lab)
                working_day(morning, lab)
                morning.context.close()
                list_shots(browser, lab, args.out)
                console_shot(browser, lab, args.out)
            relay_shot(browser, args.out)
    except LabError as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
