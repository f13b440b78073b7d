"""Each browser connection's budget: how much of the relay, and of the console proxy behind it, one console may use.

One asyncio loop carries every console, so a browser sending faster than any person can
(an agent's script: megabyte websocket messages of pointer events) would take the loop from
all the others while its events are cut, and the cloud's proxy, which serves other consoles
too, would then have to read every one of them. So a connection's messages are taken a
slice at a time with the loop free for others between slices, pointer moves that a later
move makes pointless are merged, and past its rate a connection waits. While it waits the
relay reads nothing more from it: its messages queue in its own websocket and then in TCP,
so a flooding console slows only itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from broker.relay import rfb

# A person sends a few dozen messages a second (noVNC sends a pointer move at most every 17 ms,
# a key's press and release as two); a script typing as fast as each echo comes back (the
# bench's keystroke loop, with its update requests) about 13,000. This passes both untouched,
# and holds a flood of megabyte messages of pointer events (close to a million events a second
# unchecked) to a few percent of a core here and a trickle for the proxy.
MESSAGES_PER_SECOND = 20_000
MESSAGE_BURST = 20_000
# Bytes: a pasted clipboard (rfb.MAX_CUT_TEXT at most) is the largest thing a person sends, and
# goes at once; another straight after it waits its turn (2 s for the largest).
BYTES_PER_SECOND = 512 << 10
BYTE_BURST = rfb.MAX_CUT_TEXT
# Messages cut at a time: 256 take the relay about half a millisecond; the loop runs every
# other console before the next slice.
SLICE = 256


class Bucket:
    """A token bucket that lends: what is spent beyond the balance is paid back by waiting."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.balance = burst
        self.at = now

    def spend(self, amount: float, now: float) -> float:
        """Take ``amount`` at ``now``; the seconds to wait before going on (0 while within the balance)."""
        self.balance = min(self.burst, self.balance + (now - self.at) * self.rate) - amount
        self.at = now
        return max(0.0, -self.balance / self.rate)


class Budget:
    """One browser connection's budget: ``admit`` each slice of its messages before passing them on."""

    slice = SLICE

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        now = clock()
        self._messages = Bucket(MESSAGES_PER_SECOND, MESSAGE_BURST, now)
        self._bytes = Bucket(BYTES_PER_SECOND, BYTE_BURST, now)
        self._full = False
        # True when the last slice had to wait for the budget: the browser may have left meanwhile.
        self.waited = False

    def charge(self, messages: list[bytes]) -> float:
        """Seconds to wait before ``messages`` may go on: 0 within the budget."""
        now = self._clock()
        count = self._messages.spend(len(messages), now)
        size = self._bytes.spend(sum(map(len, messages)), now)
        return max(count, size)

    async def admit(self, messages: list[bytes]) -> list[bytes]:
        """``messages`` with pointer moves merged, once the budget allows them.

        A slice that follows a full one waits at least for the loop's next turn, so that a
        burst within the budget still lets every other console run between its slices.
        """
        delay = self.charge(messages)
        if delay or self._full:
            await asyncio.sleep(delay)
        self.waited = delay > 0
        self._full = len(messages) >= self.slice
        return rfb.coalesce(messages)
