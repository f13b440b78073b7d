"""A long run of relay mode: one console kept open while the cloud cuts it at every token expiry.

    .venv/bin/python -m lab.soak --minutes 30

A lab whose proxy enforces token expiry (Nova's ``enforce_session_timeout``) on 20 s tokens, a
Linux guest, and Chromium on the relay-mode console page, signed in as a helpdesk agent would be.
Every few seconds it types ``echo S<n>-<tag> > /dev/ttyS0`` into the console; at the end every
marker must be in the guest's serial log, in order, the page must never have left "live", and it
must have connected exactly once. It prints one summary line per minute and a verdict, and exits
1 when anything was lost or shown.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import time

from playwright.sync_api import sync_playwright

from lab.browser import CHROMIUM
from lab.browser import CHROMIUM_ARGS
from lab.browser import DESKTOP
from lab.browser import VIEWER_STATES_JS
from lab.browser import press_keys
from lab.browser import sign_in
from lab.lab import Lab
from lab.lab import LabServer

SHELL = "shell-01"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to keep the console open")
    parser.add_argument("--ttl", type=int, default=20, help="console token lifetime the proxy enforces (s)")
    parser.add_argument("--every", type=float, default=7.0, help="seconds between typed markers")
    return parser.parse_args(argv)


def soak(lab: Lab, minutes: float, every: float) -> bool:
    """Type markers for ``minutes``; True when every one arrived and the page never showed a drop."""
    tag = secrets.token_hex(3)
    markers: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(base_url=lab.broker_url, viewport=DESKTOP)
        context.add_init_script(VIEWER_STATES_JS)
        page = context.new_page()
        page.goto("/login")
        sign_in(page, lab)
        page.goto(f"/console/{SHELL}")
        page.wait_for_selector('#console[data-state="live"]', timeout=30_000)
        page.click("#screen")
        started = time.monotonic()
        mints_before = lab.cloud.counts["console"]
        next_report = started + 60
        while time.monotonic() - started < minutes * 60:
            markers.append(f"S{len(markers) + 1}-{tag}")
            press_keys(page, f"echo {markers[-1]} > /dev/ttyS0\n")
            if time.monotonic() >= next_report:
                next_report += 60
                resumes = lab.cloud.counts["console"] - mints_before
                phase = page.get_attribute("#console", "data-state")
                elapsed = (time.monotonic() - started) / 60
                print(f"{elapsed:4.1f} min: {len(markers)} markers typed, {resumes} resumes, {phase}", flush=True)
            page.wait_for_timeout(every * 1000)
        lab.wait_for_serial(SHELL, markers[-1], timeout=15)
        changes = page.evaluate("window.__states")
        connects = page.get_attribute("#console", "data-connects")
        browser.close()
    return report(lab, markers, changes, connects, lab.cloud.counts["console"] - mints_before)


def report(lab: Lab, markers: list[str], changes: list, connects: str | None, resumes: int) -> bool:
    log = lab.serial_log(SHELL)
    positions = [log.find(marker) for marker in markers]
    lost = [marker for marker, at in zip(markers, positions, strict=True) if at < 0]
    states = [value for _, name, value in changes if name == "data-state"]
    shown = sorted(set(states[states.index("live") :]) - {"live"}) if "live" in states else ["never live"]
    in_order = positions == sorted(positions)
    print(
        f"markers typed {len(markers)}, arrived {len(markers) - len(lost)}, in order {in_order}; "
        f"resumes (mints after the first) {resumes}; connects {connects}; states other than live: {shown or 'none'}"
    )
    ok = not lost and in_order and connects == "1" and not shown
    print("PASS: the console never dropped" if ok else f"FAIL: lost {lost[:5]}")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the lab stops its guests, proxy, broker and relay.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    servers = [LabServer(SHELL, guest="linux", ip="10.0.0.41")]
    with Lab(console_mode="relay", enforce_session_timeout=True, console_ttl=args.ttl, servers=servers) as lab:
        lab.wait_for_shell(SHELL, timeout=120)
        return 0 if soak(lab, args.minutes, args.every) else 1


if __name__ == "__main__":
    sys.exit(main())
