"""Counting attempts atomically before the work they guard, on the ``limits`` library's storage.

Flask-Limiter counts a request after its response when told to count only failures,
so every request already in flight gets through. Here each attempt takes its slot
first (one atomic increment per key, in memory or in Redis); an attempt that turns
out not to need it (a refused one, a successful sign-in) hands the slot back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits import RateLimitItem
from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter


class ThrottleConfigError(ValueError):
    """A limit string or storage URL that cannot work."""


def parse_limit(text: str) -> RateLimitItem:
    """``"5 per 5 minutes"`` -> a limit; one limit only, or ThrottleConfigError."""
    try:
        items = parse_many(text)
    except ValueError:
        items = []
    if len(items) != 1:
        raise ThrottleConfigError(f"{text!r} is not a limit such as '5 per 5 minutes'")
    return items[0]


@dataclass
class Ticket:
    """Slots one attempt took; give them back with :meth:`Throttle.refund`."""

    item: RateLimitItem
    keys: tuple[str, ...]
    retry_after: int = 0

    @property
    def granted(self) -> bool:
        return self.retry_after == 0


class Throttle:
    """Fixed-window counters shared by every thread (and, on Redis, every instance)."""

    def __init__(self, storage_url: str = "memory://", namespace: str = "broker"):
        try:
            self.storage = storage_from_string(storage_url)
        except Exception as exc:  # limits raises ConfigurationError or ValueError, by scheme
            raise ThrottleConfigError(f"{storage_url!r} is not a usable limits storage URL: {exc}") from None
        self.strategy = FixedWindowRateLimiter(self.storage)
        self.namespace = namespace

    def take(self, item: RateLimitItem, *keys: str) -> Ticket:
        """Take one slot under every key; if any is spent, give back all and say how long to wait."""
        taken: list[str] = []
        for key in keys:
            if self.strategy.hit(item, self.namespace, key):
                taken.append(key)
                continue
            self.refund(Ticket(item, tuple(taken)))
            self.refund(Ticket(item, (key,)))
            return Ticket(item, (), retry_after=self._wait(item, key))
        return Ticket(item, tuple(taken))

    def refund(self, ticket: Ticket) -> None:
        """Hand back the slots of an attempt that did not use them."""
        for key in ticket.keys:
            self.storage.incr(ticket.item.key_for(self.namespace, key), ticket.item.get_expiry(), amount=-1)

    def _wait(self, item: RateLimitItem, key: str) -> int:
        reset = self.strategy.get_window_stats(item, self.namespace, key).reset_time
        return max(1, int(reset - time.time() + 0.999))

    def reset(self) -> None:
        self.storage.reset()
