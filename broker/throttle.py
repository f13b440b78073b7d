"""Counting attempts atomically before the work they guard, on the ``limits`` library's storage.

Flask-Limiter counts a request after its response when told to count only failures,
so every request already in flight gets through. Here each attempt takes its slot
first (one atomic increment per key, in memory or in Redis); an attempt that turns
out not to need it (a refused one, a successful sign-in) hands the slot back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from limits import RateLimitItem
from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

if TYPE_CHECKING:
    from broker.shared import SharedRedis

# A shared counter store answers at once or is treated as down (then this process counts alone).
STORAGE_TIMEOUT = 0.5


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
    # Taken from this process's own counters because the shared store was down.
    local: bool = False

    @property
    def granted(self) -> bool:
        return self.retry_after == 0


class Throttle:
    """Fixed-window counters shared by every thread (and, on Redis, every worker and instance).

    With ``shared`` (the deployment's Redis), a Redis that fails makes this process count
    on its own until Redis answers again, instead of failing the sign-in.
    """

    def __init__(self, storage_url: str = "memory://", namespace: str = "broker", shared: SharedRedis | None = None):
        try:
            options = {"socket_timeout": STORAGE_TIMEOUT, "socket_connect_timeout": STORAGE_TIMEOUT}
            self.storage = storage_from_string(storage_url, **(options if storage_url.startswith("redis") else {}))
        except Exception as exc:  # limits raises ConfigurationError or ValueError, by scheme
            raise ThrottleConfigError(f"{storage_url!r} is not a usable limits storage URL: {exc}") from None
        self.strategy = FixedWindowRateLimiter(self.storage)
        self.local = FixedWindowRateLimiter(storage_from_string("memory://"))
        self.namespace = namespace
        self.shared = shared if storage_url.startswith("redis") else None

    def take(self, item: RateLimitItem, *keys: str) -> Ticket:
        """Take one slot under every key; if any is spent, give back all and say how long to wait."""
        return self._either(lambda strategy: self._take(strategy, item, keys))

    def refund(self, ticket: Ticket) -> None:
        """Hand back the slots of an attempt that did not use them."""
        if ticket.local or self.shared is None:
            self._refund(self.local if ticket.local else self.strategy, ticket)
        else:
            # With Redis down the slot cannot be handed back; it lapses with its window.
            self.shared.run(lambda _client: self._refund(self.strategy, ticket), lambda: None)

    def _either(self, work: Callable[[FixedWindowRateLimiter], Ticket | None]) -> Ticket | None:
        """``work`` on the shared counters, or on this process's own while they are down."""
        if self.shared is None:
            return work(self.strategy)
        return self.shared.run(lambda _client: work(self.strategy), lambda: work(self.local))

    def _take(self, strategy: FixedWindowRateLimiter, item: RateLimitItem, keys: tuple[str, ...]) -> Ticket:
        local = strategy is self.local and self.shared is not None
        taken: list[str] = []
        for key in keys:
            if strategy.hit(item, self.namespace, key):
                taken.append(key)
                continue
            self._refund(strategy, Ticket(item, (*taken, key)))
            return Ticket(item, (), retry_after=self._wait(strategy, item, key), local=local)
        return Ticket(item, tuple(taken), local=local)

    def _refund(self, strategy: FixedWindowRateLimiter, ticket: Ticket) -> None:
        for key in ticket.keys:
            strategy.storage.incr(ticket.item.key_for(self.namespace, key), ticket.item.get_expiry(), amount=-1)

    def _wait(self, strategy: FixedWindowRateLimiter, item: RateLimitItem, key: str) -> int:
        reset = strategy.get_window_stats(item, self.namespace, key).reset_time
        return max(1, int(reset - time.time() + 0.999))

    def reset(self) -> None:
        self.storage.reset()
        self.local.storage.reset()
