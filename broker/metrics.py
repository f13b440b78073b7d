"""The broker's Prometheus metrics, defined once; every layer records through these functions.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` (set by ``gunicorn.conf.py`` before workers start)
makes prometheus_client keep each worker's values in files that ``/metrics`` adds up.
This module never imports Flask, so the cloud client can record its own calls.
"""

from __future__ import annotations

from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram

# Upstream calls take from milliseconds to the read timeout (30 s by default).
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

MINTS = Counter("broker_console_mints_total", "Console URLs asked for, by cloud and outcome.", ["cloud", "outcome"])
MINT_SECONDS = Histogram(
    "broker_console_mint_seconds", "Time to answer a mint request, end to end in the broker.", buckets=UPSTREAM_BUCKETS
)
UPSTREAM_SECONDS = Histogram(
    "broker_upstream_call_seconds",
    "Calls to a cloud's APIs, by cloud, operation and outcome (ok or the error's code).",
    ["cloud", "operation", "outcome"],
    buckets=UPSTREAM_BUCKETS,
)
# Per worker: each process keeps its own breaker, so the worst one counts.
CIRCUIT_OPEN = Gauge(
    "broker_circuit_open",
    "1 while a cloud's circuit breaker is open (calls fail fast).",
    ["cloud", "circuit"],
    multiprocess_mode="max",
)
LIST_AGE = Gauge(
    "broker_server_list_age_seconds",
    "Age of the cached server list a cloud's last request was answered from.",
    ["cloud"],
    multiprocess_mode="max",
)
SIGN_INS = Counter("broker_sign_ins_total", "Sign-in attempts by method and outcome.", ["method", "outcome"])


def mint(cloud: str, outcome: str) -> None:
    MINTS.labels(cloud or "none", outcome).inc()


def mint_time(seconds: float) -> None:
    MINT_SECONDS.observe(seconds)


def upstream(cloud: str, operation: str, outcome: str, seconds: float) -> None:
    """One call to a cloud: ``operation`` such as list_servers, get_server, create_console, token."""
    UPSTREAM_SECONDS.labels(cloud, operation, outcome).observe(seconds)


def circuit(cloud: str, name: str, is_open: bool) -> None:
    """A breaker changed state; ``name`` tells which of a cloud's breakers (lists, consoles)."""
    CIRCUIT_OPEN.labels(cloud, name).set(1 if is_open else 0)


def list_age(cloud: str, seconds: float) -> None:
    LIST_AGE.labels(cloud).set(seconds)


def sign_in(method: str, outcome: str) -> None:
    SIGN_INS.labels(method, outcome).inc()
