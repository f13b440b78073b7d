"""The relay part of the bench: one console through the relay against the same console straight to the proxy.

On loopback, against the demo console proxy and demo VNC server (``bench.vncproxy``): keystroke
to echo, one console's throughput, the gap a resumed upstream leaves, memory per idle console,
and the weight of the page that draws it; a serial console's round trip and memory (``bench.serial``).
Runs once, on SQLite, after the backends' column sets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from websockets.protocol import State

from bench import assets
from bench import clients
from bench import firstframe
from bench import recording
from bench import relaystack
from bench import serial
from bench import watchers
from bench.relaystack import EXPIRING_TTL
from bench.relaystack import RelayStack
from bench.report import Row
from bench.report import Section
from bench.report import ratio
from bench.report import verdict
from bench.stats import Samples
from bench.stats import median_p95
from bench.stats import ms
from bench.stats import percentile
from bench.viewer import BACKSPACE
from bench.viewer import Viewer
from bench.viewer import ViewerError
from bench.viewer import pointer_events
from broker.relay.upstream import websocket_target

TITLE = "Relay mode"
KEY = ord("a")
WARMUP = 10
# Throughput: each path's seconds are split into rounds taken in turn, so drift hits both alike.
ROUNDS = 3
# Idle consoles are opened this many at a time (a ticket, a websocket, an RFB handshake each).
OPENERS = 16
# Long enough for the relay's live-console poll (every 2 s) to have reported every console twice.
SETTLE = 5.0
MB = 1 << 20
BUDGET = 200 * MB
# One agent's script sent the largest websocket messages the relay takes from a browser (a
# pasted clipboard's size), each one full of pointer events.
FLOOD_EVENTS = MB // 6
# The flood runs this long before the other console's keystrokes are timed, so they meet it in full;
# the relay's CPU is taken over the second half, while it carries nothing else.
FLOOD_LEAD = 2.0
# The floods timed: moves the relay may merge, and presses and releases it must pass on one by one.
FLOODS = {"pointer moves": False, "button presses and releases": True}
# After a flood, the next figure waits until keystrokes echo this fast again (at most CALM_WAIT s).
CALM = 0.010
CALM_WAIT = 120.0


def run(args: argparse.Namespace, workdir: Path, step: Callable[[str], None]) -> Section:
    """Start the relay's stack, take every relay figure asked for, stop everything."""
    # Per idle console: one socket here, two in the relay, one in the proxy.
    relaystack.raise_fd_limit(2 * args.relay_idle + 1024)
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        step("relay: starting the console proxy, three stand-in clouds, the broker and its relay")
        running = relaystack.start(stack, workdir, serial.servers_needed(args))
        step("relay: console page assets")
        rows = assets.rows(running.client, running.server, "steady")
        unbudgeted = None
        if args.relay_keys:
            step("relay: starting a second relay without per-connection budgets")
            unbudgeted = relaystack.start_unbudgeted(stack, running, workdir)
        rows += asyncio.run(measure(running, args, step, unbudgeted))
        if args.relay_recording:
            rows += asyncio.run(recording.rows(running, args, workdir, step))
        setup = setup_line(running, time.monotonic() - began)
    # In the console lab, on processes of its own: after the stack above is gone, so it has the machine to itself.
    rows += firstframe.rows(args.relay_first_frame, workdir / "firstframe", step)
    return Section(TITLE, setup, rows)


def setup_line(running: RelayStack, seconds: float) -> str:
    return (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {seconds:.0f} s with start-up; "
        f"broker: the Procfile's `web:` line ({len(running.broker.workers())} workers) and `relay:` line "
        f"(`{relaystack.procfile_line('relay')}`), `BROKER_CONSOLE_MODE=relay`, SQLite; the demo console proxy "
        "and VNC server (`python -m bench.vncproxy`: `broker.demo.consoleproxy.handle`, enforce_session_timeout on, "
        f"no cursor blink) and two stand-in clouds whose console tokens last {relaystack.STEADY_TTL} s and "
        f"{EXPIRING_TTL} s, each in its own process; the viewer is the bench's own (`bench/viewer.py`), "
        "in the bench's process; beside the relay, the same relay without per-connection budgets "
        "(`python -m bench.unbudgeted`) for the budget's cost; for the serial rows, a third stand-in cloud with "
        "serial consoles only and its serial proxy (`python -m bench.serial`: `broker.demo.serialproxy`, the "
        "demo's line shell) in one process, and a relay process of their own (the same `relay:` line)"
    )


async def measure(
    running: RelayStack, args: argparse.Namespace, step: Callable[[str], None], unbudgeted: int | None
) -> list[Row]:
    rows: list[Row] = []
    if args.relay_keys or args.relay_seconds:
        step("relay: a console through the relay and one straight to the proxy")
        relayed = await running.through_relay("steady")
        direct = await direct_viewer(running)
        try:
            for viewer in (relayed, direct):
                await first_screen(viewer)
            if args.relay_keys:
                step(f"relay: {args.relay_keys} keystrokes each way, interleaved")
                rows += keystroke_rows(*await keystrokes(relayed, direct, args.relay_keys))
                step(f"relay: {args.relay_keys} keystrokes each way, with and without per-connection budgets")
                rows.append(budget_row(*await budget_cost(running, relayed, unbudgeted, args.relay_keys)))
                rows += await watchers.rows(running, args.relay_keys, step)
            if args.relay_seconds:
                step(f"relay: full-screen updates for {args.relay_seconds:g} s each way")
                rows.append(throughput_row(await throughput(relayed, direct, args.relay_seconds)))
        finally:
            await asyncio.gather(relayed.close(), direct.close())
    if args.relay_resumes:
        step(f"relay: {args.relay_resumes} upstream closes at token expiry ({EXPIRING_TTL} s tokens)")
        rows.append(resume_row(await resumes(running, args.relay_resumes), args.relay_resumes))
    if args.relay_keys or args.relay_idle:
        rows += await serial.rows(running, args, step)
    if args.relay_idle:
        step(f"relay: {args.relay_idle:,} idle consoles")
        rows.append(await idle(running, args.relay_idle))
    if args.relay_keys:
        rows += await floods(running, args.relay_keys, step)
    return rows


async def direct_viewer(running: RelayStack) -> Viewer:
    """The baseline: a console URL minted straight from the cloud, its websocket opened as the relay opens it."""
    adapter = clients.direct_adapter(running.clouds["steady"].os_env)
    url = await asyncio.to_thread(clients.direct_mint, adapter, running.server)
    target = websocket_target(url)
    return await Viewer.open(target.url, origin=target.origin)


async def first_screen(viewer: Viewer) -> None:
    """What a viewer does first: the whole screen, then an incremental request kept outstanding."""
    await viewer.request(False)
    await viewer.update()
    await viewer.request(True)


# -- keystroke to echo ----------------------------------------------------------------------------


async def echo(viewer: Viewer) -> float:
    """Seconds from a key press (down and up) to the whole update that draws its echo; then erased again."""
    start = time.monotonic()
    await viewer.key(KEY)
    update = await viewer.update()
    if not update.lit():
        raise ViewerError("the update after a keystroke drew no glyph")
    await viewer.request(True)
    # Erased, so that every keystroke lands on the same cell and the line never fills up.
    await viewer.key(BACKSPACE)
    await viewer.update()
    await viewer.request(True)
    return update.arrived - start


async def keystrokes(
    relayed: Viewer, direct: Viewer, count: int, timed: Callable[[Viewer], Awaitable[float]] = echo
) -> tuple[Samples, Samples]:
    """``count`` echoes each way after a warm-up, taken in turn (relay first, then direct first); ``timed`` times
    one (a serial console's terminal has its own)."""
    for _ in range(WARMUP):
        await timed(relayed)
        await timed(direct)
    through, straight = Samples("relay"), Samples("direct")
    for n in range(count):
        pair = [(through, relayed), (straight, direct)]
        for samples, viewer in pair if n % 2 == 0 else reversed(pair):
            samples.seconds.append(await timed(viewer))
    return through, straight


def keystroke_rows(through: Samples, straight: Samples, what: str = "keystroke to echo") -> list[Row]:
    count = len(through.seconds)
    added, added_p95 = through.median - straight.median, through.p95 - straight.p95
    return [
        Row(f"{what} through the relay, p50 / p95 (n={count})", median_p95(through)),
        Row(f"{what} straight to the proxy, p50 / p95 (n={count})", median_p95(straight)),
        Row(
            f"{what}: added by the relay at p50 / p95",
            f"{ms(added)} / {ms(added_p95)}",
            "<= 1 ms at p50",
            verdict(added <= 0.001, f"{ratio(through.median, straight.median)} / {ratio(through.p95, straight.p95)}"),
        ),
    ]


# -- the per-connection budget's cost -------------------------------------------------------------------


async def budget_cost(running: RelayStack, relayed: Viewer, port: int, count: int) -> tuple[Samples, Samples]:
    """``count`` echoes through the relay and as many through the relay without budgets on ``port``, in turn."""
    unbudgeted = await running.through_relay_at(port, "steady")
    try:
        await first_screen(unbudgeted)
        return await keystrokes(relayed, unbudgeted, count)
    finally:
        await unbudgeted.close()


def budget_row(budgeted: Samples, unbudgeted: Samples) -> Row:
    added = budgeted.median - unbudgeted.median
    return Row(
        f"keystroke to echo through the relay with / without per-connection budgets, p50 / p95 "
        f"(n={len(budgeted.seconds)})",
        f"{median_p95(budgeted)} / {median_p95(unbudgeted)}: the budget adds {added * 1e6:.0f} µs at p50",
        "<= 0.1 ms at p50",
        verdict(added <= 0.0001, f"{ratio(budgeted.median, unbudgeted.median)}"),
    )


# -- one console flooding ------------------------------------------------------------------------------


@dataclass
class Flood:
    """One console sending the same message over and over, as fast as the relay takes it."""

    viewer: Viewer
    message: bytes
    sent: int = 0

    async def run(self) -> None:
        while True:
            await self.viewer.websocket.send(self.message)
            self.sent += 1


@dataclass
class Flooded:
    """Another console's echoes during a flood; the flood's messages sent before and during them; the relay's CPU."""

    samples: Samples
    before: int
    during: int
    seconds: float
    cpu: float  # the relay's, with the flood alone


async def floods(running: RelayStack, count: int, step: Callable[[str], None]) -> list[Row]:
    """Each flood in turn against one other console. Last of all: a flooding console that leaves
    outlives it in the relay until the websocket's keepalive gives up on it (about 40 s), holding
    its queued messages, which would be charged to any figure after it."""
    other = await running.through_relay("steady")
    rows = []
    try:
        await first_screen(other)
        for kind, clicks in FLOODS.items():
            step(f"relay: {count} keystrokes while another console floods the relay with {kind}")
            rows.append(flood_row(kind, await flooded(running, other, count, clicks)))
    finally:
        await other.close()
    return rows


async def flooded(running: RelayStack, other: Viewer, count: int, clicks: bool) -> Flooded:
    """``count`` echoes on ``other`` while a second console through the relay floods it with pointer events."""
    flooder = await running.through_relay("steady")
    flood = Flood(flooder, pointer_events(FLOOD_EVENTS, clicks=clicks))
    task = asyncio.create_task(flood.run())
    try:
        await asyncio.sleep(FLOOD_LEAD / 2)
        cpu = cpu_seconds(running.relay.popen.pid)
        await asyncio.sleep(FLOOD_LEAD / 2)
        busy = (cpu_seconds(running.relay.popen.pid) - cpu) / (FLOOD_LEAD / 2)
        samples = Samples("flooded")
        before, start = flood.sent, time.monotonic()
        for _ in range(count):
            samples.seconds.append(await echo(other))
        result = Flooded(samples, before, flood.sent - before, time.monotonic() - start, busy)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await flooder.abandon()
    await calm(other)
    return result


async def calm(viewer: Viewer) -> None:
    """Wait until ``viewer``'s keystrokes echo quickly again (three in a row), so a flood's leftovers
    (in the relay, or in the proxy's queue) are not charged to the next figure."""
    deadline = time.monotonic() + CALM_WAIT
    quick = 0
    while quick < 3 and time.monotonic() < deadline:
        quick = quick + 1 if await echo(viewer) < CALM else 0


def flood_row(kind: str, flood: Flooded) -> Row:
    samples = flood.samples
    return Row(
        f"keystroke to echo through the relay while another console floods it with 1 MB websocket messages "
        f"of {kind}, p50 / p95 (n={len(samples.seconds)})",
        f"{median_p95(samples)}; the flooding console sent {flood.before} messages in the first "
        f"{FLOOD_LEAD:g} s, {flood.during} more in the {flood.seconds:.1f} s timed; the relay's CPU for the "
        f"flood alone {flood.cpu:.0%} of a core",
        "< 50 ms at p95",
        verdict(samples.p95 < 0.050, f"{samples.p95 / 0.050:.0%} of target"),
    )


# -- throughput -------------------------------------------------------------------------------------


async def full_screens(viewer: Viewer, seconds: float) -> tuple[int, float, int]:
    """Non-incremental whole-screen requests one after another for ``seconds``: bytes, elapsed, updates."""
    total = frames = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        await viewer.request(False)
        total += (await viewer.update()).size
        frames += 1
    return total, time.monotonic() - start, frames


async def throughput(relayed: Viewer, direct: Viewer, seconds: float) -> dict[str, tuple[int, float, int]]:
    """Each path's totals over ROUNDS rounds taken in turn."""
    totals = {"relay": (0, 0.0, 0), "direct": (0, 0.0, 0)}
    for _ in range(ROUNDS):
        for name, viewer in (("direct", direct), ("relay", relayed)):
            measured = await full_screens(viewer, seconds / ROUNDS)
            totals[name] = tuple(a + b for a, b in zip(totals[name], measured, strict=True))
    return totals


def throughput_row(totals: dict[str, tuple[int, float, int]]) -> Row:
    rate = {name: size / elapsed / MB for name, (size, elapsed, _) in totals.items()}
    frames = {name: count for name, (_, _, count) in totals.items()}
    frame = totals["relay"][0] / max(1, frames["relay"]) / MB
    return Row(
        f"one console's throughput, whole-screen raw updates (32 bpp, {frame:.2f} MB each), relay vs direct",
        f"{rate['relay']:.0f} MB/s vs {rate['direct']:.0f} MB/s ({frames['relay']} vs {frames['direct']} updates)",
        "",
        ratio(rate["relay"], rate["direct"]),
    )


# -- resume --------------------------------------------------------------------------------------------


async def resumes(running: RelayStack, count: int) -> list[float]:
    """Seconds from each close of the upstream by the proxy to the first whole update the viewer then receives."""
    since = time.monotonic()
    viewer = await running.through_relay("expiring")
    arrivals = []
    try:
        await first_screen(viewer)
        for _ in range(count):
            # Nothing changes on the screen: the only update coming is the full screen a resume asks for.
            update = await asyncio.wait_for(viewer.update(), EXPIRING_TTL + 30)
            arrivals.append(update.arrived)
            await viewer.request(True)
    finally:
        await viewer.close()
    gaps = []
    for closed in relaystack.expiries(running.proxy):
        later = [arrived for arrived in arrivals if arrived > closed]
        if closed > since and later:
            gaps.append(later[0] - closed)
    return gaps


def resume_row(gaps: list[float], count: int) -> Row:
    label = (
        f"reconnect gap: upstream closed by the proxy at token expiry to the first fresh update at the viewer, "
        f"p50 / max (n={len(gaps)})"
    )
    if not gaps:
        return Row(label, "no resume observed", "< 300 ms", verdict(False))
    short = f"; {count - len(gaps)} of {count} not timed" if len(gaps) < count else ""
    return Row(
        label,
        f"{ms(percentile(gaps, 50))} / {ms(max(gaps))}{short}",
        "< 300 ms",
        verdict(max(gaps) < 0.3, f"max {max(gaps) / 0.3:.0%} of target"),
    )


# -- idle consoles -------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def open_idle(running: RelayStack, count: int) -> list[Viewer]:
    """``count`` consoles, OPENERS at a time, each on a ticket of its own; all closed again on a failure."""
    viewers: list[Viewer] = []
    tabs = [running.client.clone() for _ in range(OPENERS)]
    left = [count]

    async def opener(tab: clients.BrokerClient) -> None:
        while left[0] > 0:
            left[0] -= 1
            viewers.append(await running.through_relay("steady", tab))

    try:
        async with asyncio.TaskGroup() as group:
            for tab in tabs:
                group.create_task(opener(tab))
    except BaseException:
        await close_all(viewers)
        raise
    finally:
        for tab in tabs:
            tab.close()
    return viewers


async def close_all(viewers: list[Viewer]) -> None:
    for start in range(0, len(viewers), 100):
        await asyncio.gather(*(v.close() for v in viewers[start : start + 100]), return_exceptions=True)


async def idle(running: RelayStack, count: int) -> Row:
    """The relay's RSS before and after ``count`` consoles are open and idle (handshake done, nothing asked)."""
    pid = running.relay.popen.pid
    before = running.rss()
    start = time.monotonic()
    viewers = await open_idle(running, count)
    try:
        opened = time.monotonic() - start
        cpu = cpu_seconds(pid)
        await asyncio.sleep(SETTLE)
        busy = (cpu_seconds(pid) - cpu) / SETTLE
        after = running.rss()
        still = sum(v.websocket.state is State.OPEN for v in viewers)
    finally:
        await close_all(viewers)
    per = (after - before) / count
    return Row(
        f"{count:,} idle consoles on one relay process: RSS at start / before / after, per console",
        f"{running.rss_at_start / MB:.0f} MB / {before / MB:.0f} MB / {after / MB:.0f} MB, "
        f"{per / 1024:.0f} KB per console; opened in "
        f"{opened:.1f} s ({count / opened:.0f} per s); {still:,} still open after {SETTLE:g} s idle, "
        f"relay CPU meanwhile {busy:.0%} of a core",
        "whole process < 200 MB",
        verdict(after < BUDGET and still == count, f"{after / BUDGET:.0%} of budget"),
    )
