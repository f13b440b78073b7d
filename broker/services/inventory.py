"""The server inventory: every configured cloud's servers, cached briefly, searchable.

Each cloud is called from its own small thread pools, so a slow cloud holds only its own
threads. A cloud's list is fetched by one call at a time; everyone who needs it meanwhile
shares that call's outcome, waiting for it at most ``cold_wait`` seconds. A call that
outlives its waiters still fills the cache for the next request.

With the deployment's Redis, that one call per process first looks there: the lists are
shared by every worker and instance, and one of them (holding a lock in Redis) walks a
cloud once per cache lifetime for all. Each process keeps its own copy, so a request
answered within the lifetime asks Redis nothing. Without Redis, or while it is down, each
process fetches for itself as before.

The list is shared; trouble is not. A failed walk stays the walker's own (another instance
may reach the cloud well), and a process shows another's list only once its own calls to
that cloud have succeeded lately, checking with one small call of its own if they have not:
an instance with wrong credentials says so instead of hiding behind the others' lists.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Hashable
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field

from broker import metrics
from broker.cloud import errors
from broker.cloud.registry import Cloud
from broker.cloud.types import Details
from broker.cloud.types import ServerInfo
from broker.shared import SharedRedis

log = logging.getLogger(__name__)

# Seconds a request waits for a cloud it has no list of; past that the page shows the others.
COLD_WAIT = 3.0
# A failed list fetch is answered from memory this long (at most the cache lifetime).
FAILURE_MEMORY = 10.0
# ID lookups in flight per cloud (one GET per ID, however many wait for it); more wait their
# turn (each caller waits at most ``cold_wait``).
LOOKUP_THREADS = 4
# Remembered ID answers at most; the oldest go first.
MAX_REMEMBERED = 10_000
# A cloud's answer to GET /servers/{id}: 404, or a server of another project.
GONE = "gone"
# Keys in the deployment's Redis: the list, its fetch time, the refresher's lock.
SHARED_PREFIX = "broker:servers:"
# How long the refresher's lock lives: a walk that takes longer may be done twice.
LOCK_TTL = 60.0
# How often a process waiting for another's walk looks whether it has landed (seconds).
POLL = 0.1
# A shared list is kept long past its cache lifetime: it is the stale copy shown meanwhile.
KEEP_FOR = 24 * 3600
# Delete the lock only if it still holds our token: an expired lock may be someone else's now.
RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# What a Redis step returns when Redis cannot be used: the process then fetches for itself.
DOWN = object()


@dataclass(frozen=True)
class Listing:
    """One cloud's servers as fetched at ``fetched_at`` (monotonic seconds)."""

    servers: tuple[ServerInfo, ...]
    haystacks: tuple[str, ...]
    by_id: dict
    fetched_at: float
    # The same moment by the wall clock, which instances share (their monotonic clocks differ).
    wall: float = 0.0

    @classmethod
    def build(cls, servers: list[ServerInfo], fetched_at: float, wall: float = 0.0) -> Listing:
        by_id = {s.id: s for s in servers}
        return cls(tuple(servers), tuple(haystack(s) for s in servers), by_id, fetched_at, wall)

    def patched(self, server: ServerInfo) -> Listing:
        """This list with ``server``'s entry as the cloud gave it since (same age: the rest is as old)."""
        index = self.servers.index(self.by_id[server.id])
        servers = (*self.servers[:index], server, *self.servers[index + 1 :])
        haystacks = (*self.haystacks[:index], haystack(server), *self.haystacks[index + 1 :])
        return Listing(servers, haystacks, {**self.by_id, server.id: server}, self.fetched_at, self.wall)


def haystack(server: ServerInfo) -> str:
    """What a search matches in: name, ID and addresses."""
    return "\n".join((server.name, server.id, *server.addresses)).lower()


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


@dataclass(frozen=True)
class Sighting:
    """A server as the broker last saw it; ``fresh`` when that was within the cache lifetime."""

    server: ServerInfo
    fresh: bool


@dataclass(frozen=True)
class Lookup:
    """What asking clouds for one server ID found: the servers, the clouds that could not say, and
    the clouds not asked because the caller's lookups were spent."""

    servers: tuple[ServerInfo, ...] = ()
    trouble: dict[str, errors.CloudError] = field(default_factory=dict)
    unasked: tuple[str, ...] = ()

    @property
    def budget_spent(self) -> bool:
        return bool(self.unasked)


class Recent:
    """A bounded, thread-safe map whose entries count for ``ttl`` seconds after they were put."""

    def __init__(self, clock: Callable[[], float], max_entries: int = MAX_REMEMBERED):
        self.clock = clock
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, ttl: float) -> object | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self.clock() - entry[0] >= ttl:
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: Hashable, value: object) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (self.clock(), value)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def drop(self, doomed: Callable[[Hashable], bool]) -> None:
        with self._lock:
            for key in [key for key in self._entries if doomed(key)]:
                del self._entries[key]


@dataclass
class _State:
    """One cloud's list: the last good one, the fetch in flight, the last failure."""

    listing: Listing | None = None
    fetch: Future | None = None
    error: errors.CloudError | None = None
    failed_at: float = 0.0


class SharedLists:
    """Each cloud's list in the deployment's Redis: its copy and fetch time, and the refresher's lock.

    Every step returns ``DOWN`` (after SharedRedis noted why) when Redis cannot be used now.
    """

    def __init__(self, redis: SharedRedis, lock_ttl: float = LOCK_TTL):
        self.redis = redis
        self.lock_ttl = lock_ttl

    def stamp(self, cloud: str) -> float | None | object:
        """When the shared list was fetched (wall clock), or None when there is none."""

        def work(client) -> float | None:
            at = client.get(f"{SHARED_PREFIX}{cloud}:at")
            return float(at) if at else None

        return self.redis.run(work, lambda: DOWN)

    def read(self, cloud: str) -> tuple[float, list[ServerInfo]] | None | object:
        """The shared list and its fetch time, or None when there is none (or it does not parse)."""
        raw = self.redis.run(lambda client: client.get(f"{SHARED_PREFIX}{cloud}"), lambda: DOWN)
        if raw is DOWN or raw is None:
            return raw
        try:
            body = json.loads(raw)
            return float(body["at"]), [server_from_json(item, cloud) for item in body["servers"]]
        except (ValueError, TypeError, KeyError, IndexError):
            log.warning("cloud %s: the shared server list in Redis does not parse; fetching it again", cloud)
            return None

    def write(self, cloud: str, listing: Listing) -> None:
        """Publish a fresh list; its fetch time last, so whoever sees the time finds the list."""
        body = json.dumps({"at": listing.wall, "servers": [server_to_json(s) for s in listing.servers]})

        def work(client) -> None:
            with client.pipeline(transaction=True) as pipe:
                pipe.set(f"{SHARED_PREFIX}{cloud}", body, ex=KEEP_FOR)
                pipe.set(f"{SHARED_PREFIX}{cloud}:at", repr(listing.wall), ex=KEEP_FOR)
                # The previous release shared a failed walk under this key: a fresh list ends it (rolling update).
                pipe.delete(f"{SHARED_PREFIX}{cloud}:error")
                pipe.execute()

        self.redis.run(work, lambda: None)

    def lock(self, cloud: str, token: str) -> bool | object:
        """Take the cloud's refresh lock (True), or learn someone holds it (False)."""
        key = f"{SHARED_PREFIX}{cloud}:lock"
        ms = int(self.lock_ttl * 1000)
        return self.redis.run(lambda client: bool(client.set(key, token, nx=True, px=ms)), lambda: DOWN)

    def release(self, cloud: str, token: str) -> None:
        """Give the lock back if it is still ours (after its lifetime it may be another's)."""
        key = f"{SHARED_PREFIX}{cloud}:lock"
        self.redis.run(lambda client: client.eval(RELEASE, 1, key, token), lambda: None)


def server_to_json(server: ServerInfo) -> list:
    details = dataclasses.astuple(server.details)
    return [server.id, server.name, server.status, list(server.addresses), server.az, server.metadata, details]


def server_from_json(item: list, cloud: str) -> ServerInfo:
    # A list written by an instance from before the server panel has six fields and no details.
    server_id, name, status, addresses, az, metadata, *rest = item
    details = Details(*rest[0]) if rest else Details()
    return ServerInfo(
        str(server_id), str(name), str(status), cloud, tuple(map(str, addresses)), str(az), dict(metadata), details
    )


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
        shared: SharedRedis | None = None,
        wall: Callable[[], float] = time.time,
    ):
        self.clouds = {cloud.name: cloud for cloud in clouds}
        metrics.serve_clouds(self.clouds)
        self.ttl = ttl
        self.clock = clock
        self.wall = wall
        self.cold_wait = cold_wait
        self.shared = SharedLists(shared) if shared is not None else None
        self._states = {name: _State() for name in self.clouds}
        self._lock = threading.Lock()  # guards _states; never held across a call to a cloud
        # Answers of GET /servers/{id}: a ServerInfo or GONE, per (cloud, id).
        self._known = Recent(clock)
        # The GET of each (cloud, id) in flight: everyone who needs that answer meanwhile shares it.
        self._asking: dict[tuple[str, str], Future] = {}
        self._asking_lock = threading.Lock()
        # Threads start on first use, so a gunicorn fork before any request inherits none.
        self._list_pools = {name: ThreadPoolExecutor(1, f"list-{name}") for name in self.clouds}
        self._lookup_pools = {name: ThreadPoolExecutor(LOOKUP_THREADS, f"lookup-{name}") for name in self.clouds}

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
        outcome = None
        try:
            outcome = self._fetch_shared(name) if self.shared else None
        except Exception as exc:  # a bug here must not cost the list: fetch it as without Redis
            log.error("cloud %s: the shared server list failed", name, exc_info=exc)
        if outcome is None:
            outcome = self._walk(name)
        with self._lock:
            state = self._states[name]
            if isinstance(outcome, Listing):
                state.listing, state.error = outcome, None
            else:
                state.error, state.failed_at = outcome, self.clock()
            state.fetch = None
        return outcome

    def _walk(self, name: str) -> Listing | errors.CloudError:
        """List one cloud upstream, every page; a failure is returned, not raised."""
        try:
            return Listing.build(self.clouds[name].client.list_servers(), self.clock(), self.wall())
        except errors.CloudError as exc:
            return exc
        except Exception as exc:  # the client contains its failures; this guards the single-flight
            return uncontained("Listing servers", name, exc)

    def _fetch_shared(self, name: str) -> Listing | errors.CloudError | None:
        """The deployment's list of a cloud, walked by whoever takes the lock; None when Redis is unusable.

        Runs in the cloud's list pool (the process's one fetch of it); waits for another
        process's walk at most the lock's lifetime, and shows the shared stale copy meanwhile.
        Another's list is shown only if this process reaches the cloud itself (``_own_trouble``).
        """
        token = secrets.token_hex(16)
        deadline = time.monotonic() + self.shared.lock_ttl + 1
        while True:
            at = self.shared.stamp(name)
            if at is DOWN:
                return None
            if at is not None and self._newer(name, at):
                copy = self._load(name)
                if copy is DOWN:
                    return None
                trouble = self._own_trouble(name) if copy is not None else None
                if trouble is not None:
                    return trouble
                if copy is not None and self.fresh(copy):
                    return copy
                if copy is not None:
                    self._offer(name, copy)  # stale, but shown while the refresh runs
            won = self.shared.lock(name, token)
            if won is DOWN:
                return None
            if won:
                return self._refresh(name, token)
            if time.monotonic() >= deadline:
                return pending(name)
            time.sleep(POLL)

    def _own_trouble(self, name: str) -> errors.CloudError | None:
        """What keeps this process from the cloud, before it shows another's list of it; None when nothing.

        Its own calls that succeeded within the cache lifetime say enough; otherwise one small
        call of its own does (sign in, find the endpoint, list one server: ``probe``), at most
        once per lifetime while it works, and once per failure memory while it does not.
        """
        client = self.clouds[name].client
        if client.health.answered_within(self.ttl):
            return None
        failed = next((finding for finding in client.probe() if finding.level == "fail"), None)
        return errors.CloudError(failed.text) if failed else None

    def _newer(self, name: str, at: float) -> bool:
        """True when the shared list fetched at ``at`` is newer than this process's copy."""
        listing = self._states[name].listing
        return listing is None or at > listing.wall

    def _load(self, name: str) -> Listing | None | object:
        """The shared list as a Listing whose age is the same for every process that loads it."""
        found = self.shared.read(name)
        if found is DOWN or found is None:
            return found
        at, servers = found
        return Listing.build(servers, self.clock() - max(0.0, self.wall() - at), at)

    def _offer(self, name: str, listing: Listing) -> None:
        """Keep ``listing`` as the one to show if it is newer than this process's copy."""
        with self._lock:
            state = self._states[name]
            if state.listing is None or listing.wall > state.listing.wall:
                state.listing = listing

    def _refresh(self, name: str, token: str) -> Listing | errors.CloudError:
        """Holding the lock: walk the cloud and publish the list, unless someone just did."""
        try:
            at = self.shared.stamp(name)
            if at is not DOWN and at is not None and self.wall() - at < self.ttl:
                copy = self._load(name)  # published between our look and our lock
                if isinstance(copy, Listing):
                    return self._own_trouble(name) or copy
            outcome = self._walk(name)
            if isinstance(outcome, Listing):
                self.shared.write(name, outcome)
            # A failure is not published: it may be this instance's alone (its credentials, its network).
            return outcome
        finally:
            self.shared.release(name, token)

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
            self._answered_from(name, found)
            stale = self.staleness(name)
            if stale:
                overview.stale[name] = stale
            if not needle:
                overview.servers.extend(found.servers)
                continue
            pairs = zip(found.servers, found.haystacks, strict=True)
            overview.servers.extend(s for s, hay in pairs if needle in hay)
        return overview

    def by_name(self, name: str, cloud: str | None = None, wait: bool = True) -> list[ServerInfo]:
        """Every listed server whose name is exactly ``name`` (with ``wait`` False: in the lists at hand)."""
        matches = []
        names = self.names(cloud) if wait else self.listed(self.names(cloud))
        for cloud_name, found in self._gather(names).items():
            if isinstance(found, Listing):
                self._answered_from(cloud_name, found)
                matches.extend(s for s in found.servers if s.name == name)
        return matches

    def listed(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` this process has a list of (fresh or not)."""
        return [name for name in names if self._states[name].listing is not None]

    def warm(self, names: Iterable[str]) -> None:
        """Start fetching the lists of ``names`` that this process has none of yet; wait for none."""
        for name in names:
            if self._states[name].listing is None:
                self._due(name)

    def _answered_from(self, name: str, listing: Listing) -> None:
        metrics.list_age(name, max(0.0, self.clock() - listing.fetched_at))

    # -- single servers ---------------------------------------------------------

    def sightings(self, server_id: str, cloud: str | None = None, wait: bool = True) -> list[Sighting]:
        """Where the broker has seen ``server_id``: its own lookups, then the lists (no call but listing).

        With ``wait`` False a cloud this process has no list of yet is not waited for: whoever
        asks looks the ID up instead (one GET) rather than walking every page first.
        """
        names = self.names(cloud)
        known = {name: self._known.get((name, server_id), self.ttl) for name in names}
        unknown = [name for name in names if known[name] is None]
        listings = self._gather(unknown if wait else self.listed(unknown))
        seen = []
        for name in names:
            listing = listings.get(name)
            if isinstance(known[name], ServerInfo):
                seen.append(Sighting(known[name], fresh=True))
            elif isinstance(listing, Listing) and server_id in listing.by_id:
                self._answered_from(name, listing)
                seen.append(Sighting(listing.by_id[server_id], self.fresh(listing)))
        return seen

    def look_up(self, server_id: str, names: list[str], budget: Callable[[], bool]) -> Lookup:
        """Ask clouds ``names`` for one server by ID, in parallel, one GET per cloud and ID at a time.

        An answer given within the cache lifetime is reused, and a GET already in flight is
        joined: neither calls the cloud, so neither needs ``budget()``. Only a GET this caller
        starts does, once for all the clouds it asks; when it refuses, those clouds are
        ``unasked``. Waits at most ``cold_wait``; a cloud that failed or is still answering is
        ``trouble`` (its GET goes on, and its answer is kept for the next caller).
        """
        servers, calls, ask = [], {}, []
        for name in names:
            call = self._in_flight(name, server_id)  # before the memory: a GET leaves it after answering
            if call is not None:
                calls[name] = call
                continue
            known = self._known.get((name, server_id), self.ttl)
            if isinstance(known, ServerInfo):
                servers.append(known)
            elif known is None:
                ask.append(name)
        if ask and not budget():
            return self._collect(servers, calls, unasked=tuple(ask))
        calls.update({name: self._ask(name, server_id) for name in ask})
        lookup = self._collect(servers, calls)
        # Only now: a cold cloud's list walk must not compete with the lookup it would have delayed.
        self.warm(calls)
        return lookup

    def _collect(self, servers: list[ServerInfo], calls: dict[str, Future], unasked: tuple[str, ...] = ()) -> Lookup:
        """The servers known and found by ``calls`` (waited for until one deadline), and the clouds in trouble."""
        deadline = time.monotonic() + self.cold_wait
        trouble = {}
        for name, call in calls.items():
            outcome = self._outcome(name, call, deadline)
            if isinstance(outcome, ServerInfo):
                servers.append(outcome)
            elif not isinstance(outcome, errors.ServerNotFound):
                trouble[name] = outcome
        return Lookup(tuple(servers), trouble, unasked)

    def listed_as(self, server_id: str, names: list[str]) -> tuple[list[Sighting], dict[str, errors.CloudError]]:
        """Where the lists of ``names`` have ``server_id`` (a cold one waited for at most ``cold_wait``),
        and the clouds that have no list to tell."""
        seen, trouble = [], {}
        for name, listing in self._gather(names).items():
            if isinstance(listing, errors.CloudError):
                trouble[name] = listing
            elif server_id in listing.by_id:
                self._answered_from(name, listing)
                seen.append(Sighting(listing.by_id[server_id], self.fresh(listing)))
        return seen, trouble

    def current(self, server: ServerInfo) -> ServerInfo:
        """``server`` as its cloud has it now (GET by ID, waiting at most ``cold_wait``), or a CloudError."""
        call = self._ask(server.cloud, server.id)
        outcome = self._outcome(server.cloud, call, time.monotonic() + self.cold_wait)
        if isinstance(outcome, errors.CloudError):
            raise outcome
        return outcome

    def _in_flight(self, name: str, server_id: str) -> Future | None:
        with self._asking_lock:
            return self._asking.get((name, server_id))

    def _ask(self, name: str, server_id: str) -> Future:
        """The GET of ``server_id`` on cloud ``name``: the one in flight, else a new one (single flight)."""
        key = (name, server_id)
        with self._asking_lock:
            call = self._asking.get(key)
            if call is None:
                call = self._asking[key] = self._lookup_pools[name].submit(self._get, name, server_id)
            return call

    def _outcome(self, name: str, call: Future, deadline: float) -> ServerInfo | errors.CloudError:
        try:
            return call.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return errors.CloudPending(f"cloud {name} has not answered yet.")

    def _get(self, name: str, server_id: str) -> ServerInfo | errors.CloudError:
        """GET one server (in the cloud's pool) and remember the answer; errors are returned, not raised.

        The answer is remembered before the call leaves ``_asking``, so whoever finds no call
        in flight finds its answer (a failure is not remembered: the next caller asks again).
        """
        try:
            return self._answer(name, server_id)
        finally:
            with self._asking_lock:
                self._asking.pop((name, server_id), None)

    def _answer(self, name: str, server_id: str) -> ServerInfo | errors.CloudError:
        try:
            server = self.clouds[name].client.get_server(server_id)
        except errors.ServerNotFound as exc:
            self._known.put((name, server_id), GONE)
            return exc
        except errors.CloudError as exc:
            return exc
        except Exception as exc:  # the client contains its failures; this keeps the pool's answer typed
            return uncontained("Looking up the server", name, exc)
        self.saw(server)
        return server

    def saw(self, server: ServerInfo) -> None:
        """The cloud's answer for one server now: remembered, and its entry in the cached list brought up to date.

        One server's change (a 409 said it stopped) is no reason to drop the whole list: a
        list fetched again would make every request of this process wait for a full walk.
        """
        self._known.put((server.cloud, server.id), server)
        with self._lock:
            state = self._states[server.cloud]
            if state.listing is not None and server.id in state.listing.by_id:
                state.listing = state.listing.patched(server)

    def forget(self, cloud: str) -> None:
        """Drop what is cached of a cloud."""
        with self._lock:
            self._states[cloud].listing = None
        self._known.drop(lambda key: key[0] == cloud)
