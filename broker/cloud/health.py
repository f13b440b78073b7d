"""How each cloud is doing as the broker last saw it, with one log line each time that changes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("broker.cloud")

# The keystoneauth1 plugin attributes that say who the broker is, and never a secret.
IDENTITY_FIELDS = (
    ("auth_url", "auth_url"),
    ("username", "user"),
    ("user_id", "user_id"),
    ("application_credential_id", "application_credential"),
    ("application_credential_name", "application_credential"),
    ("user_domain_name", "user_domain"),
    ("user_domain_id", "user_domain"),
    ("project_name", "project"),
    ("project_id", "project"),
    ("project_domain_name", "project_domain"),
    ("project_domain_id", "project_domain"),
)


def describe_identity(auth: object, region: str | None) -> str:
    """``auth_url=... user=... project=... region=...`` from a keystoneauth1 plugin (no secret)."""
    sources = [auth, *(getattr(auth, "auth_methods", None) or [])]
    seen: dict[str, str] = {}
    for attribute, label in IDENTITY_FIELDS:
        for source in sources:
            value = getattr(source, attribute, None)
            if isinstance(value, str) and value and label not in seen:
                seen[label] = value
    if region:
        seen["region"] = region
    return " ".join(f"{label}={value}" for label, value in seen.items())


@dataclass(frozen=True)
class Finding:
    """One line of ``flask --app app check``: ``ok``, ``fail`` (exit non-zero) or ``note``."""

    level: str
    text: str


@dataclass(frozen=True)
class Snapshot:
    """A cloud's state for people: ``ok``, ``failing`` or ``unknown`` (not called yet); times are epoch seconds."""

    state: str
    last_success: float | None
    last_error: str
    last_error_at: float | None
    upstream_status: int | None


class Health:
    """Successes and failures of one cloud's calls; a change of state is logged once, with who the broker is."""

    def __init__(self, cloud: str, identity: str, clock: Callable[[], float] = time.time):
        self.cloud = cloud
        self.identity = identity
        self.clock = clock
        self._lock = threading.Lock()
        self._state = "unknown"
        self._since = clock()
        self._last_success: float | None = None
        self._last_error = ""
        self._last_error_at: float | None = None
        self._status: int | None = None

    def succeeded(self) -> None:
        with self._lock:
            now = self.clock()
            self._last_success = now
            if self._state == "ok":
                return
            was, since = self._state, self._since
            self._state, self._since = "ok", now
        if was == "failing":
            log.warning("cloud %s answers again (it was failing for %.0f s)", self.cloud, now - since)

    def failed(self, message: str, upstream_status: int | None = None) -> None:
        with self._lock:
            now = self.clock()
            self._last_error, self._last_error_at, self._status = message, now, upstream_status
            if self._state == "failing":
                return
            self._state, self._since = "failing", now
        status = f"upstream status {upstream_status}" if upstream_status else "no upstream status"
        log.error("cloud %s is failing: %s (%s; %s)", self.cloud, message, status, self.identity)

    def answered_within(self, seconds: float) -> bool:
        """True when this process's last call to the cloud succeeded, less than ``seconds`` ago."""
        with self._lock:
            last = self._last_success
            return self._state == "ok" and last is not None and self.clock() - last < seconds

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._state, self._last_success, self._last_error, self._last_error_at, self._status)
