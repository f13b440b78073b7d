"""The broker's Prometheus metrics, defined once; every layer records through these functions.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` (set by ``gunicorn.conf.py`` before workers start)
makes prometheus_client keep each worker's values in files that ``/metrics`` adds up.
This module never imports Flask, so the cloud client can record its own calls.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import REGISTRY
from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client import multiprocess

# Upstream calls take from milliseconds to the read timeout (30 s by default).
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

MINTS = Counter("broker_console_mints_total", "Console URLs asked for, by cloud and outcome.", ["cloud", "outcome"])
# By HTTP status: a 401 answered in a millisecond must not hide a 504 that took 30 s.
MINT_SECONDS = Histogram(
    "broker_console_mint_seconds",
    "Time to answer a mint request, end to end in the broker, by HTTP status.",
    ["status"],
    buckets=UPSTREAM_BUCKETS,
)
UPSTREAM_SECONDS = Histogram(
    "broker_upstream_call_seconds",
    "Calls to a cloud's APIs, by cloud, operation and outcome (ok or the error's code).",
    ["cloud", "operation", "outcome"],
    buckets=UPSTREAM_BUCKETS,
)
# Per worker: each process keeps its own breaker, so the worst live one counts ("live": a
# worker that died with its circuit open must not report it forever).
CIRCUIT_OPEN = Gauge(
    "broker_circuit_open",
    "1 while a cloud's circuit breaker is open (calls fail fast).",
    ["cloud", "circuit"],
    multiprocess_mode="livemax",
)
LIST_AGE = Gauge(
    "broker_server_list_age_seconds",
    "Age of the cached server list a cloud's last request was answered from.",
    ["cloud"],
    multiprocess_mode="livemax",
)
POWER_ACTIONS = Counter(
    "broker_power_actions_total",
    "Power actions asked for, by cloud, action and outcome.",
    ["cloud", "action", "outcome"],
)
SIGN_INS = Counter("broker_sign_ins_total", "Sign-in attempts by method and outcome.", ["method", "outcome"])
# The clouds this process serves (as their inventories name them). Anyone signed in can put any text
# in ?cloud=, and each new label value is a new series: other names are counted as "none".
CLOUDS: set[str] = set()


def serve_clouds(names: Iterable[str]) -> None:
    """Count these clouds under their own names from now on."""
    CLOUDS.update(names)


def cloud_label(name: str) -> str:
    """``name`` when this process serves that cloud, else "none"."""
    return name if name in CLOUDS else "none"


def mint(cloud: str, outcome: str) -> None:
    """One console mint asked for (``outcome`` as in its audit record: ok, failed, refused)."""
    MINTS.labels(cloud_label(cloud), outcome).inc()


def mint_time(seconds: float, status: int) -> None:
    """How long one mint request took, answered with HTTP ``status``."""
    MINT_SECONDS.labels(str(status)).observe(seconds)


def upstream(cloud: str, operation: str, outcome: str, seconds: float) -> None:
    """One call to a cloud: ``operation`` such as list_servers, get_server, create_console, token."""
    UPSTREAM_SECONDS.labels(cloud, operation, outcome).observe(seconds)


def circuit(cloud: str, name: str, is_open: bool) -> None:
    """A breaker changed state; ``name`` tells which of a cloud's breakers (lists, consoles)."""
    CIRCUIT_OPEN.labels(cloud, name).set(1 if is_open else 0)


def list_age(cloud: str, seconds: float) -> None:
    LIST_AGE.labels(cloud).set(seconds)


def power(cloud: str, action: str, outcome: str) -> None:
    """One power action (start, reboot-soft, reboot-hard) that was sent, refused or failed."""
    POWER_ACTIONS.labels(cloud_label(cloud), action, outcome).inc()


def sign_in(method: str, outcome: str) -> None:
    """One sign-in attempt by ``method`` (local, oidc, ...) with its audit outcome."""
    SIGN_INS.labels(method, outcome).inc()


def multiprocess_dir() -> str | None:
    """Where the workers' values are kept when running under gunicorn, else None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> tuple[bytes, str]:
    """All values in Prometheus text format, and its content type; summed over workers under gunicorn."""
    if multiprocess_dir():
        # A fresh registry per scrape: the collector reads every worker's files each time.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
