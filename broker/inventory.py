"""The server inventory: every configured cloud's servers, cached briefly, searchable.

Each cloud is listed from its own small thread pool, so a slow cloud holds only its own
thread. A cloud's list is fetched by one call at a time; everyone who needs it meanwhile
shares that call's outcome, waiting for it at most ``cold_wait`` seconds. A call that
outlives its waiters still fills the cache for the next request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field

from broker.cloud import errors
from broker.cloud.client import ServerInfo
from broker.cloud.registry import Cloud

log = logging.getLogger(__name__)

# Seconds a request waits for a cloud it has no list of; past that the page shows the others.
COLD_WAIT = 3.0
# A failed list fetch is answered from memory this long (at most the cache lifetime).
FAILURE_MEMORY = 10.0


@dataclass(frozen=True)
class Listing:
    """One cloud's servers as fetched at ``fetched_at`` (monotonic seconds)."""

    servers: tuple[ServerInfo, ...]
    haystacks: tuple[str, ...]
    by_id: dict
    fetched_at: float

    @classmethod
    def build(cls, servers: list[ServerInfo], fetched_at: float) -> Listing:
        haystacks = tuple("\n".join((s.name, s.id, *s.addresses)).lower() for s in servers)
        return cls(tuple(servers), haystacks, {s.id: s for s in servers}, fetched_at)


@dataclass(frozen=True)
class Stale:
    """A cloud whose refresh failed: its last good list is ``age`` seconds old."""

    age: float
    message: str


@dataclass
class Overview:
    """The servers of several clouds, the clouds that could not be listed, and stale ones."""

    servers: list[ServerInfo]
    failures: dict[str, str]
    stale: dict[str, Stale] = field(default_factory=dict)


@dataclass
class _State:
    """One cloud's list: the last good one, the fetch in flight, the last failure."""

    listing: Listing | None = None
    fetch: Future | None = None
    error: errors.CloudError | None = None
    failed_at: float = 0.0


def pending(name: str) -> errors.CloudPending:
    return errors.CloudPending(f"cloud {name} has not answered yet; its servers will appear when it does.")


def uncontained(what: str, name: str, exc: Exception) -> errors.CloudError:
    """A failure the client let through (a bug): logged, and still only that cloud's trouble."""
    log.error("cloud %s: %s failed", name, what, exc_info=exc)
    return errors.CloudError(f"{what}: cloud {name} failed in the broker ({type(exc).__name__}).")


class Inventory:
    """Cached server lists per cloud, fetched concurrently, one fetch per cloud at a time."""

    def __init__(
        self,
        clouds: list[Cloud],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        cold_wait: float = COLD_WAIT,
    ):
        self.clouds = {cloud.name: cloud for cloud in clouds}
        self.ttl = ttl
        self.clock = clock
        self.cold_wait = cold_wait
        self._states = {name: _State() for name in self.clouds}
        self._lock = threading.Lock()  # guards _states; never held across a call to a cloud
        # Threads start on first use, so a gunicorn fork before any request inherits none.
        self._list_pools = {name: ThreadPoolExecutor(1, f"list-{name}") for name in self.clouds}

    @property
    def failure_memory(self) -> float:
        return min(self.ttl, FAILURE_MEMORY)

    def cloud(self, name: str) -> Cloud | None:
        return self.clouds.get(name)

    def names(self, cloud: str | None = None) -> list[str]:
        """Every configured cloud, or just ``cloud`` when it is one."""
        if cloud is None:
            return list(self.clouds)
        return [cloud] if cloud in self.clouds else []

    def fresh(self, listing: Listing | None) -> bool:
        return listing is not None and self.clock() - listing.fetched_at < self.ttl

    # -- lists ------------------------------------------------------------------

    def _gather(self, names: Iterable[str]) -> dict[str, Listing | errors.CloudError]:
        """Listings of ``names``: fetches that are due start together, then each is waited for until one deadline."""
        started = {name: self._due(name) for name in names}
        deadline = time.monotonic() + self.cold_wait
        return {name: self._settle(name, *plan, deadline) for name, plan in started.items()}

    def _due(self, name: str) -> tuple[Future | None, bool]:
        """The cloud's fetch in flight (started here if needed, then True), or None when none is due."""
        with self._lock:
            state = self._states[name]
            if self.fresh(state.listing):
                return None, False
            if state.fetch is not None:
                return state.fetch, False
            if state.error is not None and self.clock() - state.failed_at < self.failure_memory:
                return None, False  # it failed a moment ago: say so at once
            state.fetch = self._list_pools[name].submit(self._fetch, name)
            return state.fetch, True

    def _settle(self, name: str, fetch: Future | None, started: bool, deadline: float) -> Listing | errors.CloudError:
        """Wait for ``fetch`` if there is no list to show meanwhile (or this caller started it)."""
        outcome: Listing | errors.CloudError | None = None
        if fetch is not None and (started or self._states[name].listing is None):
            try:
                outcome = fetch.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                outcome = pending(name)
        if isinstance(outcome, Listing):
            return outcome
        state = self._states[name]
        if state.listing is not None:
            return state.listing  # stale, but better than nothing; staleness() says why
        return outcome or state.error or pending(name)

    def _fetch(self, name: str) -> Listing | errors.CloudError:
        """List one cloud (in its pool) and record the outcome; returned, never raised, to every waiter."""
        try:
            outcome: Listing | errors.CloudError = Listing.build(self.clouds[name].client.list_servers(), self.clock())
        except errors.CloudError as exc:
            outcome = exc
        except Exception as exc:  # the client contains its failures; this guards the single-flight
            outcome = uncontained("Listing servers", name, exc)
        with self._lock:
            state = self._states[name]
            if isinstance(outcome, Listing):
                state.listing, state.error = outcome, None
            else:
                state.error, state.failed_at = outcome, self.clock()
            state.fetch = None
        return outcome

    def staleness(self, name: str) -> Stale | None:
        """Why and how old a cloud's list is, when its last refresh failed."""
        state = self._states[name]
        error, listing = state.error, state.listing
        if error is None or listing is None:
            return None
        return Stale(self.clock() - listing.fetched_at, error.message)

    def overview(self, query: str = "", cloud: str | None = None, within: Iterable[str] | None = None) -> Overview:
        """Servers matching ``query`` (part of a name, ID or address) across clouds (only ``within``, if given)."""
        needle = query.strip().lower()
        names = self.names(cloud)
        if within is not None:
            allowed = set(within)
            names = [name for name in names if name in allowed]
        overview = Overview([], {})
        for name, found in self._gather(names).items():
            if isinstance(found, errors.CloudError):
                overview.failures[name] = found.message
                continue
            stale = self.staleness(name)
            if stale:
                overview.stale[name] = stale
            if not needle:
                overview.servers.extend(found.servers)
                continue
            pairs = zip(found.servers, found.haystacks, strict=True)
            overview.servers.extend(s for s, hay in pairs if needle in hay)
        return overview

    def by_name(self, name: str, cloud: str | None = None) -> list[ServerInfo]:
        """Every listed server whose name is exactly ``name``."""
        matches = []
        for found in self._gather(self.names(cloud)).values():
            if isinstance(found, Listing):
                matches.extend(s for s in found.servers if s.name == name)
        return matches

    def by_id(self, server_id: str, cloud: str | None = None) -> ServerInfo | None:
        """A server by ID: from the lists, else asked of each cloud (it may be new)."""
        names = self.names(cloud)
        for found in self._gather(names).values():
            if isinstance(found, Listing) and server_id in found.by_id:
                return found.by_id[server_id]
        trouble: errors.CloudError | None = None
        for name in names:
            try:
                return self.clouds[name].client.get_server(server_id)
            except errors.ServerNotFound:
                continue
            except errors.CloudError as exc:
                trouble = trouble or exc  # another cloud may still have it
        if trouble:
            raise trouble
        return None

    def forget(self, cloud: str) -> None:
        """Drop a cloud's cached list (a server changed state under us)."""
        with self._lock:
            self._states[cloud].listing = None
