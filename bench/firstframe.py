"""Relay first frame: from navigation to the first painted frame, the relay's console page against the bare noVNC page.

In the console lab (``lab/``): one SeaBIOS guest (its boot menu is a real screen, drawn by QEMU's own
VNC server) behind websockify and Debian's noVNC, the stand-in Nova, and the broker in relay mode with
its relay. Debian's Chromium (Playwright, headless) opens, in turn, the broker's console page
``/console/<id>?cloud=...`` (signed in, as the server list links it) and noVNC's own ``vnc_lite.html``
on the proxy with a console URL minted straight from the stand-in Nova, both showing the same guest.

Both pages get the same detector (``DETECTOR_JS``, installed before any page script): it notes, on the
page's clock (``performance.now()``: milliseconds since navigation start), every websocket's creation,
opening and first messages, when noVNC says it is connected, and the first animation frame at which
noVNC's canvas holds an opaque pixel (it is transparent until the first FramebufferUpdate is drawn).
``python -m bench.firstframe`` runs it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.report import Row
from bench.report import ratio
from bench.report import verdict
from lab.browser import CHROMIUM
from lab.browser import CHROMIUM_ARGS
from lab.browser import DESKTOP
from lab.browser import sign_in as fill_and_submit
from lab.lab import CLOUD_NAME
from lab.lab import Lab
from lab.lab import LabServer
from lab.lab import missing_tools

if TYPE_CHECKING:
    # Playwright is test and bench tooling (requirements-dev.txt), imported only when the lab runs.
    from playwright.sync_api import Page

TARGET = 0.150
TARGET_TEXT = f"within {TARGET * 1000:.0f} ms of bare"
SERVER = "web-01"
WARMUP = 2
# Between runs the page is left (about:blank) and this long given to the relay and the proxy to close it.
SETTLE = 0.5
TIMEOUT_MS = 30_000
METRIC = "relay first frame vs bare noVNC page: navigation to the first painted frame"

# Installed in every document before its scripts. Canvases: noVNC's (inside #screen on both pages),
# not the relay viewer's kept last frame.
DETECTOR_JS = """(() => {
  if (location.protocol === "about:") return;
  const marks = (window.__ff = { ws: [], connected: null, frame: null });
  const now = () => performance.now();
  const Native = window.WebSocket;
  // A native WebSocket, noted: noVNC checks the object's own prototype, so no subclass.
  function Noted(...args) {
    const socket = new Native(...args);
    const noted = { created: now(), open: null, messages: [], sent: [] };
    marks.ws.push(noted);
    const send = socket.send.bind(socket);
    socket.send = (data) => {
      if (noted.sent.length < 8) noted.sent.push([now(), data.byteLength ?? data.length]);
      return send(data);
    };
    socket.addEventListener("open", () => (noted.open = now()));
    socket.addEventListener("message", (event) => {
      if (noted.messages.length < 8) noted.messages.push([now(), event.data.byteLength ?? event.data.length]);
    });
    return socket;
  }
  Noted.prototype = Native.prototype;
  for (const name of ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]) Noted[name] = Native[name];
  window.WebSocket = Noted;
  const isConnected = () =>
    document.getElementById("console")?.dataset.state === "live" ||
    (document.getElementById("status")?.textContent || "").startsWith("Connected to ");
  new MutationObserver(() => {
    if (marks.connected === null && isConnected()) marks.connected = now();
  }).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
  // Read through a copy made for reading, so noVNC's own canvas is left as it draws it.
  const probe = document.createElement("canvas").getContext("2d", { willReadFrequently: true });
  const painted = (canvas) => {
    if (!canvas || !canvas.width || !canvas.height) return false;
    const { width, height } = canvas;
    if (probe.canvas.width !== width || probe.canvas.height !== height) Object.assign(probe.canvas, { width, height });
    probe.clearRect(0, 0, width, height);
    probe.drawImage(canvas, 0, 0);
    const data = probe.getImageData(0, 0, width, height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] === 255) return true;
    return false;
  };
  const check = () => {
    if (painted(document.querySelector("#screen canvas:not(#last-frame-canvas)"))) marks.frame = now();
    else requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})();"""

# What the page tells of one load, once its frame is painted: the detector's marks and the Performance API's.
COLLECT_JS = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const ticket = performance.getEntriesByType("resource").find((entry) => entry.name.includes("/relay-tickets/"));
  const scripts = performance.getEntriesByType("resource").filter((entry) => entry.initiatorType === "script"
    || entry.name.endsWith(".js"));
  return {
    ...window.__ff,
    response: nav.responseEnd,
    dcl: nav.domContentLoadedEventEnd,
    scriptsEnd: Math.max(0, ...scripts.map((entry) => entry.responseEnd)),
    scripts: scripts.length,
    ticketStart: ticket ? ticket.startTime : null,
    ticketEnd: ticket ? ticket.responseEnd : null,
  };
}"""


@dataclass
class Load:
    """One page load's marks, in ms since navigation start (None: not seen)."""

    marks: dict

    @property
    def frame(self) -> float:
        return self.marks["frame"]

    def socket(self) -> dict:
        """The console's websocket: the last one the page opened (there is one, unless it retried)."""
        return self.marks["ws"][-1] if self.marks["ws"] else {}

    def stages(self) -> dict[str, float | None]:
        """Where the time went, as cumulative times from navigation start."""
        socket = self.socket()
        messages = socket.get("messages", [])
        return {
            "HTML received": self.marks["response"],
            "scripts received": self.marks["scriptsEnd"] or None,
            "DOMContentLoaded": self.marks["dcl"],
            "ticket POST sent": self.marks["ticketStart"],
            "ticket answered": self.marks["ticketEnd"],
            "websocket created": socket.get("created"),
            "websocket open": socket.get("open"),
            "RFB version received": messages[0][0] if messages else None,
            "RFB connected": self.marks["connected"],
            "first frame": self.frame,
        }


@dataclass
class Runs:
    """Each page's timed loads."""

    relay: list[Load] = field(default_factory=list)
    bare: list[Load] = field(default_factory=list)


def missing() -> str:
    """Why the lab cannot run here ("" when it can)."""
    gaps = missing_tools()
    if not CHROMIUM.is_file():
        gaps.append(f"{CHROMIUM} (Debian package chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        gaps.append("playwright (requirements-dev.txt)")
    return ", ".join(gaps)


def measure(runs: int, workdir: Path, step: Callable[[str], None], warmup: int = WARMUP) -> Runs:
    """Start the lab in relay mode and Chromium; ``warmup`` loads of each page, then ``runs`` timed, alternating."""
    from playwright.sync_api import sync_playwright

    # The lab's stand-in Nova serves in this process: its request lines are not the figures.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    step("relay first frame: starting the console lab (QEMU SeaBIOS guest, websockify, Nova, broker, relay)")
    lab = Lab(console_mode="relay", servers=[LabServer(SERVER)], console_ttl=600, refresh_margin=60, workdir=workdir)
    with lab, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(base_url=lab.broker_url, viewport=DESKTOP)
            context.add_init_script(DETECTOR_JS)
            page = context.new_page()
            sign_in(page, lab)
            relay_url = console_path(lab)
            step(f"relay first frame: {warmup} warm-up loads of each page, then {runs} timed, alternating")
            result = Runs()
            for n in range(warmup + runs):
                pair = [(result.relay, lambda: relay_url), (result.bare, lambda: lab.console_url(SERVER))]
                for loads, url in pair if n % 2 == 0 else reversed(pair):
                    load = timed_load(page, url())
                    if n >= warmup:
                        loads.append(load)
            return result
        finally:
            browser.close()


def sign_in(page: Page, lab: Lab) -> None:
    page.goto("/login")
    fill_and_submit(page, lab)


def console_path(lab: Lab) -> str:
    """The console page's link as the server list gives it: by ID, with its cloud."""
    return f"{lab.broker_url}/console/{lab.server(SERVER).id}?cloud={CLOUD_NAME}"


def timed_load(page: Page, url: str) -> Load:
    """Navigate to ``url`` and wait for its first painted frame; then leave the page, and let its console close."""
    page.goto(url, wait_until="commit")
    page.wait_for_function("() => window.__ff && window.__ff.frame !== null", timeout=TIMEOUT_MS, polling=50)
    load = Load(page.evaluate(COLLECT_JS))
    page.goto("about:blank")
    time.sleep(SETTLE)
    return load


# -- the table -------------------------------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def rows(runs: int, workdir: Path, step: Callable[[str], None]) -> list[Row]:
    """The bench's rows: the target, and where the relay page's time goes; or why it was not measured."""
    if not runs:
        return []
    gap = missing()
    if gap:
        return [Row(f"{METRIC} (n={runs})", f"not measured: the lab needs {gap}", TARGET_TEXT)]
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        measured = measure(runs, workdir, step)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        # The lab is the bench's guest here: its failure is said in the row, the relay's other figures stay.
        print(f"relay first frame failed: {exc!r}", file=sys.stderr)
        return [Row(f"{METRIC} (n={runs})", f"not measured: {type(exc).__name__}: {exc}"[:300], TARGET_TEXT)]
    return [target_row(measured), breakdown_row(measured)]


def target_row(runs: Runs) -> Row:
    relay, bare = median([load.frame for load in runs.relay]), median([load.frame for load in runs.bare])
    added = relay - bare
    pages = (("relay", runs.relay), ("bare", runs.bare))
    each = "; ".join(f"{name}: {', '.join(fmt(load.frame) for load in loads)}" for name, loads in pages)
    return Row(
        f"{METRIC}, median of {len(runs.relay)} warm runs",
        f"relay page {relay:.0f} ms vs bare noVNC page {bare:.0f} ms: +{added:.0f} ms (runs, ms: {each})",
        TARGET_TEXT,
        verdict(added <= TARGET * 1000, f"+{added:.0f} ms, {ratio(relay, bare)}"),
    )


def breakdown_row(runs: Runs) -> Row:
    return Row(
        "relay first frame: where the time goes, medians in ms from navigation start, relay page / bare page",
        "; ".join(f"{stage} {fmt(relay)} / {fmt(bare)}" for stage, relay, bare in stage_medians(runs)),
    )


def stage_medians(runs: Runs) -> list[tuple[str, float | None, float | None]]:
    relay = [load.stages() for load in runs.relay]
    bare = [load.stages() for load in runs.bare]
    return [
        (stage, median([stages[stage] for stages in relay]), median([stages[stage] for stages in bare]))
        for stage in relay[0]
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.firstframe [--runs N]``: only this figure, printed as table rows and per-run stages."""
    parser = argparse.ArgumentParser(prog="python -m bench.firstframe", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="timed loads of each page")
    args = parser.parse_args(argv)
    gap = missing()
    if gap:
        print(f"not measured: the lab needs {gap}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="firstframe-") as tmp:
        measured = measure(args.runs, Path(tmp), lambda line: print(line, file=sys.stderr, flush=True))
    for kind, loads in (("relay", measured.relay), ("bare", measured.bare)):
        for load in loads:
            print(kind, " ".join(f"{stage}={fmt(value)}" for stage, value in load.stages().items()))
    for row in (target_row(measured), breakdown_row(measured)):
        print(f"| {row.metric} | {row.value} | {row.target} | {row.verdict} |")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
