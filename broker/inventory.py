"""The server inventory: every configured cloud's servers, cached briefly, searchable."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field

from broker.cloud import errors
from broker.cloud.client import ServerInfo
from broker.cloud.registry import Cloud


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


class Inventory:
    """Cached server lists per cloud; a cold cloud is fetched once even under concurrent requests."""

    def __init__(self, clouds: list[Cloud], ttl: float, clock: Callable[[], float] = time.monotonic):
        self.clouds = {cloud.name: cloud for cloud in clouds}
        self.ttl = ttl
        self.clock = clock
        self._listings: dict[str, Listing] = {}
        self._locks = {name: threading.Lock() for name in self.clouds}
        self._errors: dict[str, str] = {}

    def cloud(self, name: str) -> Cloud | None:
        return self.clouds.get(name)

    def fresh(self, listing: Listing | None) -> bool:
        return listing is not None and self.clock() - listing.fetched_at < self.ttl

    def listing(self, name: str) -> Listing:
        """One cloud's listing: cached; refreshed by one caller while the others keep the old one."""
        current = self._listings.get(name)
        if self.fresh(current):
            return current
        lock = self._locks[name]
        # A stale list is served at once while one request refreshes it; only a
        # cloud never listed makes callers wait (once) for the fetch.
        if not lock.acquire(blocking=current is None):
            return current
        try:
            current = self._listings.get(name)
            if self.fresh(current):
                return current
            try:
                servers = self.clouds[name].client.list_servers()
            except errors.CloudError as exc:
                if current is None:
                    raise
                self._errors[name] = exc.message
                return current
            current = Listing.build(servers, self.clock())
            self._listings[name] = current
            self._errors.pop(name, None)
            return current
        finally:
            lock.release()

    def staleness(self, name: str) -> Stale | None:
        """Why and how old a cloud's list is, when its last refresh failed."""
        message = self._errors.get(name)
        listing = self._listings.get(name)
        if message is None or listing is None:
            return None
        return Stale(self.clock() - listing.fetched_at, message)

    def _names(self, cloud: str | None) -> list[str]:
        if cloud is None:
            return list(self.clouds)
        return [cloud] if cloud in self.clouds else []

    def overview(self, query: str = "", cloud: str | None = None, within: Iterable[str] | None = None) -> Overview:
        """Servers matching ``query`` (part of a name, ID or address) across clouds (only ``within``, if given)."""
        needle = query.strip().lower()
        found: list[ServerInfo] = []
        failures: dict[str, str] = {}
        overview = Overview(found, failures)
        names = self._names(cloud)
        if within is not None:
            allowed = set(within)
            names = [name for name in names if name in allowed]
        for name in names:
            try:
                listing = self.listing(name)
            except errors.CloudError as exc:
                failures[name] = exc.message
                continue
            stale = self.staleness(name)
            if stale:
                overview.stale[name] = stale
            if not needle:
                found.extend(listing.servers)
                continue
            found.extend(s for s, hay in zip(listing.servers, listing.haystacks, strict=True) if needle in hay)
        return overview

    def by_id(self, server_id: str, cloud: str | None = None) -> ServerInfo | None:
        """A server by ID: from the cache, else asked of each cloud (it may be new)."""
        names = self._names(cloud)
        for name in names:
            try:
                hit = self.listing(name).by_id.get(server_id)
            except errors.CloudError:
                continue
            if hit:
                return hit
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

    def by_name(self, name: str, cloud: str | None = None) -> list[ServerInfo]:
        """Every server whose name is exactly ``name``."""
        matches = []
        for cloud_name in self._names(cloud):
            try:
                listing = self.listing(cloud_name)
            except errors.CloudError:
                continue
            matches.extend(s for s in listing.servers if s.name == name)
        return matches

    def forget(self, cloud: str) -> None:
        """Drop a cloud's cached list (a server changed state under us)."""
        self._listings.pop(cloud, None)
