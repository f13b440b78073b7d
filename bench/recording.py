"""Recording in the relay bench (issue 23's targets): the relay's CPU on a busy console with and without
recording, the size of an hour of a mostly idle text console, and playback's first draw and seeks.

- **CPU**: a second relay process of the same broker (the Procfile's ``relay:`` line) with
  ``BROKER_RECORDING=all``; one console through each carries whole-screen raw updates as fast as they
  come (the bench viewer asks for the next as soon as one arrives), in rounds taken in turn, and each
  relay's CPU seconds (``/proc``, its writer thread included) per MB carried are compared.
- **Size**: an hour of a text console (720x400, hextile as QEMU sends it) simulated on a clock the
  bench moves, through the relay's own ``Recorder`` and writer (one flush per simulated second, as the
  writer thread does, and every keyframe the recorder asks for answered by a full screen): a cursor
  blink every 0.5 s, and once every two minutes a command whose ten lines of output scroll the whole
  screen ten times. Tile contents are random bytes, which compress worse than real text: an upper bound.
- **Playback**: that hour in the admin's player (Chromium through Playwright, a broker web process of
  its own reading the directory): page open to the first screen drawn, and seeks (slider) to points
  across the hour, each timed to the screen as it stood there.

``python -m bench.recording`` takes the size and playback figures alone (no relay stack needed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import struct
import sys
import time
from collections.abc import Awaitable
from collections.abc import Callable
from pathlib import Path

from bench import procs
from bench import relay  # its helpers are used at call time: bench.relay imports this module too
from bench.relaystack import RelayStack
from bench.relaystack import procfile_line
from bench.relaystack import wait_for_port
from bench.report import Row
from bench.report import ratio
from bench.report import verdict
from bench.viewer import Viewer
from broker.relay import rfb
from broker.relay.recording import FLUSH_INTERVAL
from broker.relay.recording import Recorder
from broker.relay.recording import Start
from broker.relay.recording import Writer

MB = 1 << 20
ROUNDS = 3
HOUR = 3600.0
TEXT_WIDTH, TEXT_HEIGHT = 720, 400
BLINK_EVERY = 0.5
COMMAND_EVERY = 120.0
SCROLLS_PER_COMMAND = 10
# noVNC's own pixel format (what the relay viewer asks for): 32 bpp, red at byte 0.
NOVNC_FORMAT = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0])
SEEKS = (0.5, 0.25, 0.999, 0.75, 0.1)
# Keystrokes echoed per --relay-keys: at the default 300, enough (1,500) that the relay's CPU, read in clock
# ticks of 10 ms, is measured to a few per cent.
ECHOES_PER_KEY = 5


# -- CPU -----------------------------------------------------------------------------------------------


def start_recording_relay(stack: contextlib.ExitStack, running: RelayStack, workdir: Path) -> tuple[int, int, Path]:
    """The Procfile's relay line again, recording every console; its port, pid and directory."""
    port = procs.free_port()
    directory = workdir / "recordings"
    env = running.env | {
        "RELAY_BIND": f"127.0.0.1:{port}",
        "BROKER_RECORDING": "all",
        "BROKER_RECORDING_DIR": str(directory),
    }
    proc = procs.spawn("relay-recording", ["sh", "-c", "exec " + procfile_line("relay")], env, workdir)
    stack.callback(proc.stop)
    wait_for_port(proc, port, "recording relay")
    return port, proc.popen.pid, directory


async def cpu_with_and_without(
    running: RelayStack, port: int, pid: int, work: Callable[[Viewer], Awaitable[int]]
) -> dict[str, tuple[float, int]]:
    """CPU seconds of each relay (without recording, and with it on ``port``) and the amount of ``work`` done
    through a console on each (one round's bytes or keystrokes), ``ROUNDS`` rounds taken in turn."""
    plain = await running.through_relay("steady")
    recorded = await running.through_relay_at(port, "steady")
    totals = {"without": (0.0, 0), "with": (0.0, 0)}
    pids = {"without": running.relay.popen.pid, "with": pid}
    try:
        for viewer in (plain, recorded):
            await relay.first_screen(viewer)
        for _ in range(ROUNDS):
            for name, viewer in (("without", plain), ("with", recorded)):
                before = relay.cpu_seconds(pids[name])
                done = await work(viewer)
                cpu, amount = totals[name]
                totals[name] = (cpu + relay.cpu_seconds(pids[name]) - before, amount + done)
    finally:
        await asyncio.gather(plain.close(), recorded.close())
    return totals


async def cpu_per_mb(running: RelayStack, port: int, pid: int, seconds: float) -> dict[str, tuple[float, int]]:
    """CPU seconds and bytes of each relay carrying whole screens."""

    async def screens(viewer: Viewer) -> int:
        size, _, _ = await relay.full_screens(viewer, seconds / ROUNDS)
        return size

    return await cpu_with_and_without(running, port, pid, screens)


def cpu_row(totals: dict[str, tuple[float, int]], directory: Path, log: Path) -> Row:
    label = "relay CPU per MB carried on a busy console (whole-screen raw updates), with / without recording"
    metas = [json.loads(path.read_text()) for path in directory.glob("*/meta.json")] if directory.exists() else []
    recorded = sum(meta.get("bytes", 0) for meta in metas)
    if not recorded:
        return Row(label, "not measured: the recording relay recorded nothing (the console does not call its recorder)")
    stopped = [line for line in log.read_text().splitlines() if "recording" in line and "stopped" in line]
    if stopped:
        return Row(
            label, f"not measured: the recording stopped ({stopped[0].strip()[-160:]})", "<= +10%", verdict(False)
        )
    written = sum(path.stat().st_size for path in directory.rglob("seg-*.gz"))
    per = {name: cpu / max(1, size) * MB * 1000 for name, (cpu, size) in totals.items()}
    return Row(
        label,
        f"{per['with']:.2f} ms/MB vs {per['without']:.2f} ms/MB ({recorded / MB:.0f} MB recorded of "
        f"{totals['with'][1] / MB:.0f} MB carried, {written / MB:.1f} MB on disk)",
        "<= +10%",
        verdict(per["with"] <= per["without"] * 1.10, ratio(per["with"], per["without"])),
    )


async def cpu_per_echo(running: RelayStack, port: int, pid: int, count: int) -> dict[str, tuple[float, int]]:
    """CPU seconds of each relay for ``count`` keystrokes echoed (small updates, as typing in a text console
    makes them)."""

    async def echoes(viewer: Viewer) -> int:
        for _ in range(count // ROUNDS):
            await relay.echo(viewer)
        return count // ROUNDS

    return await cpu_with_and_without(running, port, pid, echoes)


def echo_row(totals: dict[str, tuple[float, int]]) -> Row:
    per = {name: cpu / max(1, count) * 1e6 for name, (cpu, count) in totals.items()}
    return Row(
        f"relay CPU per keystroke echoed on a typing console (small updates, n={totals['with'][1]}), "
        "with / without recording",
        f"{per['with']:.0f} µs vs {per['without']:.0f} µs",
        "<= +10%",
        verdict(per["with"] <= per["without"] * 1.10, ratio(per["with"], per["without"])),
    )


# -- an hour of a text console -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def text_tile(rng: random.Random) -> bytes:
    """A hextile tile of text: background, foreground, a glyph's worth of one-colour subrectangles."""
    count = rng.randrange(4, 14)
    return bytes([14]) + bytes(4) + bytes([200, 200, 200, 0, count]) + rng.randbytes(2 * count)


def text_screen(rng: random.Random, rows: int = TEXT_HEIGHT // 16, filled: float = 0.35) -> bytes:
    """A FramebufferUpdate of ``rows`` text rows in hextile, ``filled`` of its tiles holding text."""
    tiles = []
    for _ in range(rows * (TEXT_WIDTH // 16)):
        tiles.append(text_tile(rng) if rng.random() < filled else bytes([2]) + bytes(4))
    header = rfb.rectangle(0, 0, TEXT_WIDTH, rows * 16, rfb.HEXTILE)
    return struct.pack(">BxH", 0, 1) + header + b"".join(tiles)


def blink(on: bool) -> bytes:
    """The cursor cell redrawn: one tile, a background colour and maybe the underline."""
    tile = bytes([2 | 4 | 8]) + bytes(4) + bytes([200, 200, 200, 0, 1, 0x0E, 0x71]) if on else bytes([2]) + bytes(4)
    return struct.pack(">BxH", 0, 1) + rfb.rectangle(8, 384, 8, 16, rfb.HEXTILE) + tile


def simulate_hour(directory: Path, seconds: float = HOUR) -> tuple[str, int, int, float]:
    """An hour of a mostly idle text console through the relay's recorder: id, bytes carried, on disk, wall s."""
    rng = random.Random(23)
    clock = Clock()
    writer = Writer(interval=3600)
    init = rfb.ServerInit(TEXT_WIDTH, TEXT_HEIGHT, rfb.PixelFormat(NOVNC_FORMAT), b"QEMU (text-01)").to_bytes()
    start = Start(1, "bench", "bench-text-01", "text-01", "bench", "novnc", "bench:0", "127.0.0.1", init, NOVNC_FORMAT)
    began = time.perf_counter()
    recorder = Recorder(start, directory, writer, clock=clock)
    recorder.server(text_screen(rng))
    carried, step, on = 0, 0, False
    while clock.now < seconds:
        step += 1
        clock.now = step * BLINK_EVERY
        on = not on
        updates = [blink(on)]
        if clock.now % COMMAND_EVERY == 0:
            recorder.event("typing")
            updates += [text_screen(rng) for _ in range(SCROLLS_PER_COMMAND)]
        if recorder.keyframe_due():
            recorder.keyframe(TEXT_WIDTH, TEXT_HEIGHT)
            updates.append(text_screen(rng))
        for update in updates:
            recorder.server(update)
            carried += len(update)
        if step % 2 == 0:
            writer.write_all()  # one flush a second, as the writer thread
    recorder.close("the bench's hour is over")
    recorder.wait(60)
    writer.stop()
    wall = time.perf_counter() - began
    on_disk = sum(path.stat().st_size for path in recorder.path.iterdir())
    return recorder.id, carried, on_disk, wall


def size_row(carried: int, on_disk: int, wall: float) -> Row:
    return Row(
        "an hour of a mostly idle text console (720x400 hextile; blink every 0.5 s, a command every 2 min), on disk",
        f"{on_disk / MB:.2f} MB ({carried / MB:.1f} MB of RFB; simulated in {wall:.1f} s)",
        "< 20 MB",
        verdict(on_disk < 20 * MB),
    )


# -- playback ------------------------------------------------------------------------------------------

LIT_JS = """() => {
  const canvas = document.querySelector('#player-screen canvas');
  if (!canvas || !canvas.width) return 0;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 60) lit += 1;
  return lit;
}"""
SEEK_JS = """(ms) => {
  const slider = document.getElementById('seek');
  slider.value = String(ms);
  slider.dispatchEvent(new Event('change', { bubbles: true }));
}"""


# The player's position once a seek is done (its status is cleared then), else null.
SETTLED_JS = """() => {
  const done = document.getElementById('player-status').textContent === '';
  return done ? document.getElementById('player').dataset.position : null;
}"""


def poll(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Look every 5 ms (the page's CSP refuses Playwright's wait_for_function, which evaluates a string)."""
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError("the player did not get there")
        time.sleep(0.005)


def playback_times(broker_url: str, user: str, password: str, recording_id: str) -> tuple[float, list[float]]:
    """Seconds from page open to the first screen drawn, and for each seek to the screen as it stood there."""
    from playwright.sync_api import sync_playwright

    from lab.browser import CHROMIUM
    from lab.browser import CHROMIUM_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(base_url=broker_url)
        page.goto("/login")
        page.fill("#username", user)
        page.fill("#password", password)
        with page.expect_navigation():
            page.click("#sign-in")
        began = time.perf_counter()
        page.goto(f"/admin/recordings/{recording_id}")
        poll(lambda: page.evaluate(LIT_JS) > 1000)
        first = time.perf_counter() - began
        duration = int(page.eval_on_selector("#seek", "slider => slider.max"))
        seeks = []
        for fraction in SEEKS:
            target = int(duration * fraction) // 1000 * 1000
            began = time.perf_counter()
            page.evaluate(SEEK_JS, target)
            poll(lambda target=target: page.evaluate(SETTLED_JS) == str(target))
            seeks.append(time.perf_counter() - began)
        browser.close()
    return first, seeks


def playback_rows(first: float, seeks: list[float]) -> list[Row]:
    return [
        Row(
            "playback of the hour: page open to the first screen drawn",
            f"{first * 1000:.0f} ms",
            "< 1 s",
            verdict(first < 1),
        ),
        Row(
            f"playback of the hour: seek to {len(seeks)} points across it (slider), to the screen as it stood, "
            "median / max",
            f"{sorted(seeks)[len(seeks) // 2] * 1000:.0f} ms / {max(seeks) * 1000:.0f} ms",
            "< 2 s",
            verdict(max(seeks) < 2),
        ),
    ]


def start_player_broker(stack: contextlib.ExitStack, env: dict[str, str], directory: Path, logdir: Path) -> str:
    """A broker web process (the Procfile's ``web:`` line) reading ``directory``; its URL."""
    port = procs.free_port()
    broker = procs.start_broker(
        procs.on_port(env, port) | {"BROKER_RECORDING_DIR": str(directory)}, logdir, name="broker-recordings"
    )
    stack.callback(broker.proc.stop)
    return broker.url


# -- the parts together ----------------------------------------------------------------------------------


async def rows(running: RelayStack, args: argparse.Namespace, workdir: Path, step: Callable[[str], None]) -> list[Row]:
    """Every recording figure, on the relay bench's stack."""
    found: list[Row] = []
    with contextlib.ExitStack() as stack:
        if args.relay_seconds:
            step("recording: a second relay recording every console; whole screens through each")
            port, pid, directory = start_recording_relay(stack, running, workdir)
            totals = await cpu_per_mb(running, port, pid, args.relay_seconds)
            await asyncio.sleep(2 * FLUSH_INTERVAL)  # the recording's close is written by the writer thread
            found.append(cpu_row(totals, directory, workdir / "relay-recording.log"))
            echoes = max(ROUNDS, args.relay_keys * ECHOES_PER_KEY)
            step(f"recording: {echoes} keystrokes echoed through each relay")
            found.append(echo_row(await cpu_per_echo(running, port, pid, echoes)))
        step("recording: an hour of a mostly idle text console, simulated")
        hour = workdir / "hour"
        recording_id, carried, on_disk, wall = simulate_hour(hour)
        found.append(size_row(carried, on_disk, wall))
        step("recording: the hour in the player (Chromium)")
        password = secrets.token_urlsafe(16)
        procs.add_user(running.env, "bench-player", password)
        url = start_player_broker(stack, running.env, hour, workdir)
        found += playback_rows(*await asyncio.to_thread(playback_times, url, "bench-player", password, recording_id))
    return found


def main() -> None:
    """The size and playback figures alone: a simulated hour, a broker web process of its own, Chromium."""
    import tempfile

    from bench.report import table

    with tempfile.TemporaryDirectory(prefix="bench-recording-") as temporary, contextlib.ExitStack() as stack:
        workdir = Path(temporary)
        recording_id, carried, on_disk, wall = simulate_hour(workdir / "hour")
        found = [size_row(carried, on_disk, wall)]
        cloud = procs.start_cloud("main", 24, workdir)
        stack.callback(cloud.proc.stop)
        procs.write_clouds_yaml({"main": cloud}, workdir / "clouds.yaml")
        database = {"BROKER_DATABASE_URL": f"sqlite:///{workdir / 'broker.db'}"}
        env = procs.broker_env(workdir / "clouds.yaml", ["main"], procs.free_port(), database)
        password = secrets.token_urlsafe(16)
        procs.add_user(env, "bench", password)
        url = start_player_broker(stack, env, workdir / "hour", workdir)
        found += playback_rows(*playback_times(url, "bench", password, recording_id))
        print(table({"recording": found}))


if __name__ == "__main__":
    sys.exit(main())
