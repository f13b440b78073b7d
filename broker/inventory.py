"""The server inventory: every configured cloud's servers, cached briefly, searchable."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class Overview:
    """The servers of several clouds, and the clouds that could not be listed."""

    servers: list[ServerInfo]
    failures: dict[str, str]


class Inventory:
    """Cached server lists per cloud; a cold cloud is fetched once even under concurrent requests."""

    def __init__(self, clouds: list[Cloud], ttl: float, clock: Callable[[], float] = time.monotonic):
        self.clouds = {cloud.name: cloud for cloud in clouds}
        self.ttl = ttl
        self.clock = clock
        self._listings: dict[str, Listing] = {}
        self._locks = {name: threading.Lock() for name in self.clouds}

    def cloud(self, name: str) -> Cloud | None:
        return self.clouds.get(name)

    def listing(self, name: str) -> Listing:
        """The cached listing of one cloud, fetched when missing or older than the TTL."""
        current = self._listings.get(name)
        if current and self.clock() - current.fetched_at < self.ttl:
            return current
        with self._locks[name]:
            current = self._listings.get(name)
            if current and self.clock() - current.fetched_at < self.ttl:
                return current
            servers = self.clouds[name].client.list_servers()
            current = Listing.build(servers, self.clock())
            self._listings[name] = current
            return current

    def _names(self, cloud: str | None) -> list[str]:
        if cloud is None:
            return list(self.clouds)
        return [cloud] if cloud in self.clouds else []

    def overview(self, query: str = "", cloud: str | None = None) -> Overview:
        """Servers matching ``query`` (part of a name, ID or address) across clouds."""
        needle = query.strip().lower()
        found: list[ServerInfo] = []
        failures: dict[str, str] = {}
        for name in self._names(cloud):
            try:
                listing = self.listing(name)
            except errors.CloudError as exc:
                failures[name] = exc.message
                continue
            if not needle:
                found.extend(listing.servers)
                continue
            found.extend(s for s, hay in zip(listing.servers, listing.haystacks, strict=True) if needle in hay)
        return Overview(found, failures)

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
        for name in names:
            try:
                return self.clouds[name].client.get_server(server_id)
            except errors.ServerNotFound:
                continue
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
