"""What watchers cost the person driving: keystroke to echo on a console five people watch, against
another console of the same relay that nobody watches, taken in turn.

The watchers are an admin observing (no invite needed), each a viewer reading everything the relay
sends it, as a page that keeps up does.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable

from bench import clients
from bench import procs
from bench import relay  # its helpers are used at call time: bench.relay imports this module too
from bench.relaystack import RelayStack
from bench.report import Row
from bench.report import ratio
from bench.report import verdict
from bench.stats import Samples
from bench.stats import median_p95
from bench.stats import ms
from bench.viewer import Viewer

WATCHERS = 5


async def rows(running: RelayStack, count: int, step: Callable[[str], None]) -> list[Row]:
    """Five watchers on one console; ``count`` keystrokes on it and on an unwatched one, in turn."""
    step(f"relay: {count} keystrokes on a console {WATCHERS} people watch, and on one nobody watches")
    observer = await asyncio.to_thread(admin, running)
    watched = await running.through_relay("steady")
    alone = await running.through_relay("steady")
    watchers: list[Viewer] = []
    readers: list[asyncio.Task] = []
    try:
        for viewer in (watched, alone):
            await relay.first_screen(viewer)
        console_id = await console_of(watched)
        for _ in range(WATCHERS):
            url, ticket = await asyncio.to_thread(watch_ticket, observer, console_id)
            viewer = await Viewer.open(url, origin=running.origin, cookie=running.cookie(observer), ticket=ticket)
            watchers.append(viewer)
            readers.append(asyncio.create_task(drain(viewer)))
        through_watched, through_alone = await relay.keystrokes(watched, alone, count)
    finally:
        for reader in readers:
            reader.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(viewer.close() for viewer in [*watchers, watched, alone]))
        observer.close()
    return [row(through_watched, through_alone)]


def admin(running: RelayStack) -> clients.BrokerClient:
    """Another admin, signed in: the opener cannot watch their own console."""
    password = secrets.token_urlsafe(16)
    procs.add_user(running.env, "bench-observer", password)
    return clients.BrokerClient.sign_in(running.broker.url, "bench-observer", password)


async def console_of(viewer: Viewer) -> int:
    """The live console's ID, from the people message the relay sends its opener when it opens."""
    for _ in range(100):
        for said in viewer.said:
            if "console" in said:
                return said["console"]
        await asyncio.sleep(0.05)
    raise RuntimeError("the relay never said which console this is")


def watch_ticket(client: clients.BrokerClient, console_id: int) -> tuple[str, str]:
    """``POST /api/consoles/live/<id>/watch-tickets`` as an admin observing: the URL and a fresh ticket."""
    response = client.http.post(
        f"{client.url}/api/consoles/live/{console_id}/watch-tickets",
        headers={"X-CSRFToken": client.csrf},
        timeout=30,
    )
    body = clients.expect(response, 201).json()
    return body["url"], body["ticket"]


async def drain(viewer: Viewer) -> None:
    """Read everything, as a page that keeps up does."""
    with contextlib.suppress(Exception):
        while True:
            await viewer.websocket.recv()


def row(watched: Samples, alone: Samples) -> Row:
    added = watched.median - alone.median
    return Row(
        f"keystroke to echo on a console {WATCHERS} people watch / on one nobody watches, p50 / p95 "
        f"(n={len(watched.seconds)})",
        f"{median_p95(watched)} / {median_p95(alone)}: the watchers add {ms(added)} at p50",
        "<= 1 ms at p50",
        verdict(added <= 0.001, ratio(watched.median, alone.median)),
    )
