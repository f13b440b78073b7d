"""Keeping one misbehaving cloud from hurting the rest: retries, a circuit breaker, a bulkhead."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from broker.cloud import errors


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter."""

    attempts: int = 3
    base: float = 0.2
    cap: float = 2.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before retry ``attempt`` (1-based), or None when not worth waiting."""
        if attempt >= self.attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.cap else None
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


class CircuitBreaker:
    """After ``threshold`` failures in a row, fail fast for ``cooldown`` seconds, then let one probe through."""

    def __init__(self, threshold: int = 5, cooldown: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.reason = ""
        # Told True when the breaker opens and False when it closes (metrics); called outside the lock.
        self.listener: Callable[[bool], None] | None = None
        self._lock = threading.Lock()

    def before(self, cloud: str, what: str) -> None:
        """Raise CloudUnreachable while open; in half-open state admit a single probe."""
        with self._lock:
            if self.opened_at is None:
                return
            wait = self.opened_at + self.cooldown - self.clock()
            if wait > 0 or self.probing:
                # Keep the cause in sight: "failing" alone tells nobody what to fix.
                cause = f" (last error: {self.reason})" if self.reason else ""
                again = max(1, round(wait))
                raise errors.CircuitOpen(
                    f"{what}: cloud {cloud} is failing{cause}; the broker will try it again in {again} s.",
                    retry_after=max(1.0, wait),
                )
            self.probing = True

    def succeeded(self) -> None:
        with self._lock:
            closing = self.opened_at is not None
            self.failures, self.opened_at, self.probing = 0, None, False
        if closing:
            self._tell(False)

    def failed(self, reason: str = "") -> None:
        with self._lock:
            self.reason = reason or self.reason
            self.failures += 1
            self.probing = False
            opening = self.opened_at is None and self.failures >= self.threshold
            if self.failures >= self.threshold:
                self.opened_at = self.clock()
        if opening:
            self._tell(True)

    def _tell(self, is_open: bool) -> None:
        if self.listener is not None:
            self.listener(is_open)

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None


class Bulkhead:
    """At most ``limit`` calls in flight to one cloud, so a slow cloud cannot take every worker thread."""

    def __init__(self, limit: int = 80):
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def __enter__(self) -> Bulkhead:
        if not self._slots.acquire(blocking=False):
            raise errors.CloudBusyHere(
                "Too many calls to this cloud are already waiting; try again shortly.", retry_after=1.0
            )
        return self

    def __exit__(self, *exc) -> None:
        self._slots.release()
