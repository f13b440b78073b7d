"""Timing helpers: run a call, keep its duration, summarise as median and p95."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field


@dataclass
class Samples:
    """Durations in seconds of one kind of call."""

    name: str
    seconds: list[float] = field(default_factory=list)

    def time(self, call: Callable[[], object]) -> object:
        """Run ``call`` once and keep how long it took."""
        start = time.perf_counter()
        result = call()
        self.seconds.append(time.perf_counter() - start)
        return result

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p95(self) -> float:
        return percentile(self.seconds, 95)


def percentile(values: list[float], pct: int) -> float:
    """The ``pct``-th percentile, interpolated between the nearest ranks."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def ms(seconds: float) -> str:
    """Seconds as milliseconds for the table."""
    return f"{seconds * 1000:.1f} ms"


def median_p95(samples: Samples) -> str:
    return f"{ms(samples.median)} / {ms(samples.p95)}"
