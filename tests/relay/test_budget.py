"""Each browser connection's budget: its rates, slices and merged pointer moves; through the relay, fairness."""

from __future__ import annotations

import asyncio
import struct

import pytest

from broker.relay import budget
from broker.relay import rfb
from broker.relay.budget import Budget
from tests.relay import eventually
from tests.relay import key
from tests.relay import run
from tests.relay.services import FakeServices
from tests.relay.services import connected
from tests.relay.services import open_browser
from tests.relay.services import relay_app
from tests.relay.services import running
from tests.relay.services import sent_keys


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The broker app whose tickets the relay's Services redeem (mints and records are faked)."""
    return relay_app(tmp_path_factory)


# As much as one websocket message from a browser can hold (the relay's max_size is a clipboard's).
FLOOD_EVENTS = (1 << 20) // 6


def pointer(buttons: int, x: int, y: int = 1) -> bytes:
    return struct.pack(">BBHH", rfb.POINTER_EVENT, buttons, x, y)


def clicks(count: int) -> bytes:
    """``count`` pointer events pressing and releasing in turn: nothing in them may be merged."""
    return b"".join(pointer(n % 2, n % 1000) for n in range(count))


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the budget ----------------------------------------------------------------------------------------


def test_a_burst_within_the_budget_goes_at_once_and_more_waits_its_share():
    clock = Clock()
    spending = Budget(clock)
    assert spending.charge([key(True, 1)] * budget.MESSAGE_BURST) == 0
    assert spending.charge([key(True, 1)] * 10) == pytest.approx(10 / budget.MESSAGES_PER_SECOND)
    clock.now += 10 / budget.MESSAGES_PER_SECOND  # the debt is paid...
    assert spending.charge([key(True, 1)] * 10) == pytest.approx(10 / budget.MESSAGES_PER_SECOND)  # ...no credit


def test_the_budget_refills_with_time_but_never_beyond_its_burst():
    clock = Clock()
    spending = Budget(clock)
    spending.charge([key(True, 1)] * budget.MESSAGE_BURST)
    clock.now += 0.5
    assert spending.charge([key(True, 1)] * (budget.MESSAGES_PER_SECOND // 2)) == 0
    clock.now += 3600
    assert spending.charge([key(True, 1)] * budget.MESSAGE_BURST) == 0
    assert spending.charge([key(True, 1)]) > 0


def test_a_whole_clipboard_is_pasted_at_once_and_a_second_waits_for_the_byte_rate():
    clock = Clock()
    spending = Budget(clock)
    paste = struct.pack(">BxxxI", rfb.CLIENT_CUT_TEXT, rfb.MAX_CUT_TEXT - 8) + bytes(rfb.MAX_CUT_TEXT - 8)
    assert spending.charge([paste]) == 0
    assert spending.charge([paste]) == pytest.approx(len(paste) / budget.BYTES_PER_SECOND)


def test_admit_merges_pointer_moves_and_keeps_presses_releases_and_keys_in_order():
    messages = [pointer(0, 1), pointer(0, 2), pointer(1, 3), key(True, 0x61), pointer(1, 4), pointer(0, 5)]
    merged = run(Budget().admit(messages))
    assert merged == [pointer(0, 2), pointer(1, 3), key(True, 0x61), pointer(1, 4), pointer(0, 5)]


def test_the_loop_runs_other_consoles_between_full_slices_and_a_lone_message_never_waits():
    async def scenario():
        spending = Budget()
        others: list[str] = []
        loop = asyncio.get_running_loop()
        loop.call_soon(others.append, "ran")
        await spending.admit([key(True, 1)])
        await spending.admit([pointer(n % 2, n) for n in range(spending.slice)])
        before = list(others)  # no other callback ran: nothing waited so far
        await spending.admit([key(False, 1)])  # the slice after a full one
        return before, others, spending.waited

    before, after, waited = run(scenario())
    assert before == [] and after == ["ran"]
    assert not waited


# -- through the relay -----------------------------------------------------------------------------------


def test_a_console_flooding_the_relay_with_pointer_events_slows_only_itself(app):
    """Another console's keys overtake the flood: it is cut a slice at a time, and held to its own rate."""
    fakes = FakeServices(app)
    fakes.issue()
    fakes.issue()
    flood = clicks(FLOOD_EVENTS)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            flooder = await connected(fakes, relay, proxy)
            other = await second_browser(fakes, relay)
            flooding, other_session = proxy.sessions
            # Fewer messages than the relay's websocket queues before it stops reading (16), so the
            # relay still reads the close at the end and the test ends at once.
            sending = asyncio.create_task(send(flooder, flood, times=8))
            try:
                await eventually(lambda: flooding.of_type(rfb.POINTER_EVENT))  # the flood is under way
                for n in range(5):  # typed one at a time, each waiting for the last to arrive
                    await other.websocket.send(key(True, 0x61 + n))
                    await eventually(lambda n=n: len(other_session.of_type(rfb.KEY_EVENT)) == n + 1, timeout=8)
                flooded = len(flooding.of_type(rfb.POINTER_EVENT))
            finally:
                sending.cancel()
            open_still = flooder.websocket.close_code is None
            return flooded, other_session.of_type(rfb.KEY_EVENT), open_still

    flooded, keys, open_still = run(scenario(), timeout=40)
    assert keys == [key(True, 0x61 + n) for n in range(5)]
    # Every key got through while less than one of the flood's messages had: nothing was merged
    # (presses and releases), so the flood was cut into slices and held to its rate.
    assert flooded < FLOOD_EVENTS
    assert open_still  # slowed, not closed


def test_pointer_moves_in_one_message_reach_the_cloud_merged_with_the_last_position_before_the_key(app):
    fakes = FakeServices(app)
    fakes.issue()
    moves = [pointer(0, x) for x in range(1000)]

    async def scenario():
        async with running(fakes) as (relay, proxy):
            browser = await connected(fakes, relay, proxy)
            await browser.websocket.send(b"".join(moves) + key(True, 0x61))
            await eventually(lambda: sent_keys(proxy))
            return proxy.sessions[0].messages

    messages = run(scenario())
    arrived = [m for m in messages if m[0] in (rfb.POINTER_EVENT, rfb.KEY_EVENT)]
    assert arrived[-2:] == [pointer(0, 999), key(True, 0x61)]
    assert len(arrived) - 1 <= -(-len(moves) // budget.SLICE)  # at most one move a slice
    assert arrived[:-1] == sorted(arrived[:-1])  # in the order sent


def test_a_flooding_browser_that_leaves_is_closed_without_its_flood_being_worked_through(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with running(fakes) as (relay, proxy):
            flooder = await connected(fakes, relay, proxy)
            for _ in range(3):  # half a minute of its budget
                await flooder.websocket.send(clicks(FLOOD_EVENTS))
            flooder.websocket.transport.abort()
            await eventually(lambda: fakes.closed, timeout=5)
            return len(proxy.sessions[0].of_type(rfb.POINTER_EVENT)), fakes.closed

    passed, [closed] = run(scenario())
    assert passed < FLOOD_EVENTS
    assert closed["reason"].startswith("the browser closed the connection")


async def second_browser(fakes, relay):
    """Another browser through the relay, on the first ticket (the flooder took the last), showing its first
    screen (the proxy's session 2)."""
    browser = await open_browser(fakes, relay, ticket=fakes.tokens[0])
    await browser.handshake()
    await browser.start()
    await eventually(lambda: browser.screens() == [2])
    return browser


async def send(browser, message: bytes, times: int) -> None:
    for _ in range(times):
        await browser.websocket.send(message)
