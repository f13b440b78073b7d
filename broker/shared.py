"""The deployment's shared Redis, and what the broker does when it is down.

State kept here (sign-in counters, the server-list cache) is an optimisation shared
by every worker and instance, never the only copy of anything: while Redis is down,
callers fall back to per-process state, the log and ``/readyz`` say so once, and the
next attempt after ``retry_after`` seconds finds out whether it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

log = logging.getLogger(__name__)

T = TypeVar("T")
# Redis answers in well under a millisecond on a LAN; waiting longer only delays the fallback.
TIMEOUT = 0.5
RETRY_AFTER = 5.0


def describe(url: str) -> str:
    """The URL without its password, for logs and /readyz."""
    pool = redis.ConnectionPool.from_url(url)
    kwargs = pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    return f"redis {where}/{kwargs.get('db', 0)}"


class SharedRedis:
    """One client per process (redis-py's pool reconnects after a fork) and whether Redis is usable."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = TIMEOUT,
        retry_after: float = RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.url = url
        self.where = describe(url)
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.retry_after = retry_after
        self.clock = clock
        self._down_since: float | None = None
        self._reason = ""
        self._lock = threading.Lock()

    def usable(self) -> bool:
        """False for ``retry_after`` seconds after a failure, so callers do not wait on a dead server."""
        with self._lock:
            return self._down_since is None or self.clock() - self._down_since >= self.retry_after

    def failed(self, exc: Exception) -> None:
        with self._lock:
            was_up = self._down_since is None
            self._down_since, self._reason = self.clock(), f"{type(exc).__name__}: {exc}"
        if was_up:
            log.warning(
                "%s is unreachable (%s): sign-in limits and the server-list cache are per process until it is back",
                self.where,
                self._reason,
            )

    def succeeded(self) -> None:
        with self._lock:
            was_down = self._down_since is not None
            self._down_since, self._reason = None, ""
        if was_down:
            log.info("%s is back: shared sign-in limits and server-list cache again", self.where)

    def run(self, work: Callable[[redis.Redis], T], fallback: Callable[[], T]) -> T:
        """``work(client)``, or ``fallback()`` when Redis is down or fails now."""
        if not self.usable():
            return fallback()
        try:
            result = work(self.client)
        except redis.RedisError as exc:
            self.failed(exc)
            return fallback()
        self.succeeded()
        return result

    def status(self) -> tuple[bool, str]:
        """(up, reason) from a PING now; for /readyz and ``check``."""
        try:
            self.client.ping()
        except redis.RedisError as exc:
            self.failed(exc)
            return False, f"{self.where} unreachable ({type(exc).__name__})"
        self.succeeded()
        return True, f"{self.where} answers"
