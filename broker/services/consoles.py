"""The console service: find the server, mint its console URL, check the URL, audit it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from urllib.parse import urlsplit

from broker.cloud import errors
from broker.cloud.client import check_console_url
from broker.cloud.types import Console
from broker.cloud.types import ServerInfo
from broker.extensions import hand_back_connection
from broker.services import audit
from broker.services.inventory import Inventory
from broker.services.inventory import Lookup
from broker.services.inventory import Overview
from broker.services.inventory import Recent
from broker.services.inventory import Sighting
from broker.services.policy import Access
from broker.services.policy import access_for
from broker.services.users import User

# Nova and Huawei ECS server IDs are UUIDs; nothing else may reach an upstream URL path.
SERVER_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{0,63}$")
# An ID the cache does not hold is asked of the clouds only if it is a UUID: a mistyped
# name on the console page never costs a call upstream.
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MINT_DETAILS = ("load", "refresh", "reconnect", "popout", "resume")
# The relay process mints with this detail; only it may mint for a cloud in relay mode.
RELAY = "relay"
# "view" marks a console page (not a mint) that was refused.

# The one answer for every ID that ends without a server the user may open, whatever the
# reason (unknown, forbidden, lookups spent): the reason goes to the audit. A cloud that could
# not answer is not such a reason: that is cloud trouble (see ``undecided``).
NOT_FOUND = "No server with this ID that you may open."
# Seconds a person is told to wait when a cloud kept an ID from being judged (or the cloud's own, if longer).
UNDECIDED_RETRY = 5.0


class NoSuchServer(errors.ServerNotFound):
    """The reference matches no server the user can see."""


class ViewerOnly(Exception):
    """A cloud in relay mode: its console URLs go to the relay, never to a browser."""


@dataclass(frozen=True)
class Denial:
    """Why a server ID ended without a server the user may open; for the audit, never for the user."""

    outcome: str  # "refused": the server exists and no rule grants it; "failed": anything else
    reason: str
    server: ServerInfo | None = None


@dataclass(frozen=True)
class Minted:
    """A fresh console URL and what the page needs to keep it fresh."""

    console: Console
    server: ServerInfo
    expires_in: int
    expires_at: datetime
    swap: str

    def to_json(self) -> dict:
        return {
            "url": self.console.url,
            "type": self.console.type,
            "protocol": self.console.protocol,
            "expires_in": self.expires_in,
            "expires_at": self.expires_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "swap": self.swap,
            "server": {
                "id": self.server.id,
                "name": self.server.name,
                "status": self.server.status,
                "cloud": self.server.cloud,
            },
        }


def looks_like_id(value: str) -> bool:
    return bool(SERVER_ID.match(value or ""))


def undecided(trouble: dict[str, errors.CloudError]) -> errors.CloudError:
    """The answer when clouds the user may use could not say whether they hold an ID.

    It names those clouds and nothing of the ID: a cloud's trouble is the same whatever is
    asked of it, so an unknown and a forbidden ID get the same answer, as they get the same 404.
    A cloud still answering is 504 (its lookup goes on, and its answer is kept); a failure, 503.
    """
    names = ", ".join(sorted(trouble))
    retry = max([UNDECIDED_RETRY, *(exc.retry_after or 0.0 for exc in trouble.values())])
    if all(isinstance(exc, errors.CloudPending) for exc in trouble.values()):
        error: errors.CloudError = errors.CloudPending(
            f"Cloud {names} has not answered in time, so the broker cannot tell yet whether you may open "
            "this server. Try again in a moment.",
            retry_after=retry,
        )
    else:
        error = errors.ServerUnconfirmed(
            f"Cloud {names} could not answer, so the broker cannot tell yet whether you may open this server. "
            "Try again in a moment.",
            retry_after=retry,
        )
    error.__cause__ = next(iter(trouble.values()))  # the cloud's own words, for the audit
    return error


def audit_reason(exc: errors.CloudError) -> str:
    """The error's message, and the cloud's own when it caused this one."""
    cause = exc.__cause__
    return f"{exc.message} ({cause.message})" if isinstance(cause, errors.CloudError) else exc.message


class ConsoleService:
    """Authorizes, mints and audits consoles; the one path every mint goes through."""

    def __init__(
        self,
        inventory: Inventory,
        console_hosts: tuple[str, ...] = (),
        lookup_budget: Callable[[str], bool] = lambda username: True,
    ):
        self.inventory = inventory
        self.console_hosts = console_hosts
        # Called with a user name before an ID missing from the cache is asked of the
        # clouds; False means that user has spent their upstream lookups for now.
        self.lookup_budget = lookup_budget
        # (user, cloud, id) -> Denial: a repeated probe is answered at once, whatever the reason.
        self._denied = Recent(inventory.clock)

    def _access(self, user: User) -> Access:
        """What ``user`` may open; then the pooled DB connection goes back before any cloud is waited for.

        Every path here reads the database first (the rules) and then may wait seconds on
        a cloud: a connection held through that wait would starve every other request.
        """
        access = access_for(user)
        hand_back_connection()
        return access

    def overview(self, user: User, query: str = "", cloud: str | None = None) -> Overview:
        """The servers ``user`` may open, matching ``query``, and trouble only of clouds they may use."""
        access = self._access(user)
        # Clouds the user has no rule on are neither waited for nor reported: their trouble
        # (and its text) is none of this user's business.
        usable = [name for name in self.inventory.names(cloud) if access.may_use_cloud(name)]
        overview = self.inventory.overview(query, cloud, within=usable)
        overview.servers = access.filter(overview.servers)
        return overview

    def resolve(self, user: User, ref: str, cloud: str | None = None) -> list[ServerInfo]:
        """Servers ``ref`` names that ``user`` may open: an ID, else every server with exactly that name."""
        access = self._access(user)
        note = {"username": user.username, "cloud": cloud or "", "server_id": ref[:64], "detail": "view"}
        seen = self._sightings(ref, cloud) if looks_like_id(ref) else []
        if not any(access.allows(s.server) for s in seen):
            # A UUID is looked for by name only in the lists at hand: a cold worker asks for the ID instead.
            named = self.inventory.by_name(ref, cloud, wait=not UUID.match(ref))
            # A mistyped name is not worth a call to every cloud: only a UUID or a cached ID is looked up.
            if named or not (seen or UUID.match(ref)):
                return self._named(access, named, note)
        try:
            found = self._by_id(user, access, ref, cloud, seen)
        except errors.CloudError as exc:
            audit.stage("console", "failed", reason=audit_reason(exc), **note)
            raise
        if isinstance(found, Denial):
            self._record(found, note)
            return []
        return [found]

    def _named(self, access: Access, named: list[ServerInfo], note: dict) -> list[ServerInfo]:
        """The servers of one name that ``access`` grants; a refusal is audited."""
        allowed = access.filter(named)
        if named and not allowed:
            refusal = Denial("refused", "no access rule grants this server", named[0])
            self._record(refusal, {**note, "server_id": named[0].id})
        return allowed

    def _sightings(self, server_id: str, cloud: str | None) -> list[Sighting]:
        """Where the cache has seen an ID; a cloud with no list yet is not waited for when a UUID can be asked for."""
        return self.inventory.sightings(server_id, cloud, wait=not UUID.match(server_id))

    def _by_id(
        self, user: User, access: Access, server_id: str, cloud: str | None, seen: list[Sighting]
    ) -> ServerInfo | Denial:
        """The one path for a server ID: granted from a fresh cache, re-read when old, else looked up."""
        cached = self._granted(access, seen)
        if cached is not None:
            return cached
        key = (user.username, cloud or "", server_id)
        remembered = self._denied.get(key, self.inventory.ttl)
        if isinstance(remembered, Denial):
            return replace(remembered, reason=f"{remembered.reason} (answered from memory)")
        found = self._look_up(user, access, server_id, cloud, seen)
        if isinstance(found, Denial):
            self._denied.put(key, found)
        return found

    def _granted(self, access: Access, seen: list[Sighting]) -> ServerInfo | Denial | None:
        """A sighting ``access`` grants: as seen when fresh, re-read when old; None when none is granted."""
        granted = sorted((s for s in seen if access.allows(s.server)), key=lambda s: not s.fresh)
        if not granted:
            return None
        sighting = granted[0]
        return sighting.server if sighting.fresh else self._current(sighting.server, access)

    def _current(self, server: ServerInfo, access: Access) -> ServerInfo | Denial:
        """A server known only from an out-of-date list, re-read so the rules judge what it is now."""
        try:
            current = self.inventory.current(server)
        except errors.ServerNotFound:
            return Denial("failed", "no such server (it is gone from the cloud since it was listed)")
        except errors.CloudError as exc:
            raise errors.ServerUnconfirmed(
                f"The broker could not confirm the current details of server {server.name} with cloud "
                f"{server.cloud}, so it did not open its console. Try again in a moment.",
                retry_after=5.0,
            ) from exc
        if not access.allows(current):
            return Denial("refused", "no access rule grants this server as it is now", current)
        return current

    def _look_up(
        self, user: User, access: Access, server_id: str, cloud: str | None, seen: list[Sighting]
    ) -> ServerInfo | Denial:
        """An ID this user cannot open from the cache: asked of the clouds, within the user's lookup budget.

        Unknown and forbidden IDs take this same path (a GET on every cloud the user may use,
        at once), so neither the answer nor its time tells them apart. Clouds the user has no
        rule on are neither asked nor waited for: nothing there could be granted to them.

        A denial needs every one of those clouds to have said so. One that failed or is still
        answering leaves the ID undecided, which is cloud trouble (503/504, ``undecided``), and
        is not remembered: the next request asks again. Since a cloud's trouble does not depend
        on the ID, that answer tells nothing an unknown ID would not.

        The budget is what keeps a prober from making the broker hammer the clouds: every GET
        by ID a request causes is started only after that user's budget granted one lookup
        (once for all the clouds it asks), so the GETs a user causes are at most their budget.
        A request that finds the answer remembered (for the cache lifetime) or joins the GET of
        that ID already in flight (``Inventory.look_up``, one per cloud and ID) causes no call
        and spends nothing: fifty people opening one server on a slow cloud cost one GET.

        A worker with no list of a cloud yet (cold) sends IDs the user may open here too. That
        GET costs one lookup like any other, taken before the call whatever it finds: the
        budget bounds calls made before their answer is known, so it cannot wait to see whether
        the server is granted. With the budget spent, the clouds' lists judge the ID instead
        (a cold one waited for at most ``cold_wait``, one walk shared by everyone); a cloud with
        no list to tell is trouble, as above.
        """
        if not seen and not UUID.match(server_id):
            return Denial("failed", "no such server")
        usable = [name for name in self.inventory.names(cloud) if access.may_use_cloud(name)]
        lookup = self.inventory.look_up(server_id, usable, lambda: self.lookup_budget(user.username))
        trouble, listed = dict(lookup.trouble), []
        if lookup.budget_spent:
            listed, unlisted = self.inventory.listed_as(server_id, list(lookup.unasked))
            trouble.update(unlisted)
            granted = self._granted(access, listed)
            if granted is not None:
                return granted
        allowed = [server for server in lookup.servers if access.allows(server)]
        if allowed:
            return allowed[0]
        if trouble:
            raise undecided(trouble)
        return self._denial(lookup, [*listed, *seen])

    def _denial(self, lookup: Lookup, seen: list[Sighting]) -> Denial:
        """Why every cloud asked (or its list) said no, for the audit."""
        spent = " (the user's server lookups are spent for now)" if lookup.budget_spent else ""
        if lookup.servers:
            return Denial("refused", f"no access rule grants this server{spent}", lookup.servers[0])
        if seen:
            return Denial("refused", f"no access rule grants this server as last listed{spent}", seen[0].server)
        return Denial("failed", f"no such server{spent}")

    def _record(self, denial: Denial, note: dict, action: str = "console") -> None:
        """Audit a denial with its true reason (and the server, when there is one)."""
        fields = dict(note, reason=denial.reason)
        if denial.server:
            fields.update(cloud=denial.server.cloud, server_name=denial.server.name)
        audit.stage(action, denial.outcome, **fields)

    def check_url(self, url: str, kind: str = "novnc") -> str:
        """http(s) (ws(s) for a serial console) only, and only allowed hosts when an allow-list is configured."""
        check_console_url(url, kind)
        host = (urlsplit(url).hostname or "").lower()
        if self.console_hosts and host not in self.console_hosts:
            raise errors.CloudBadResponse(
                f"The cloud returned a console on host {host}, which is not in BROKER_CONSOLE_HOSTS; it was refused."
            )
        return url

    def mint(
        self,
        user: User,
        server_id: str,
        cloud: str | None = None,
        detail: str = "load",
        quiet: bool = False,
        kind: str = "novnc",
    ) -> Minted:
        """A fresh console URL of ``kind`` for one server, with an audit record whatever happens.

        ``quiet``: the relay's mints, whose console keeps one record of its own (opened, or why
        not, with every mint counted): only a refusal is recorded here. A serial console is only
        ever minted for the relay.
        """
        detail = detail if detail in (*MINT_DETAILS, RELAY) else "load"
        note = {"username": user.username, "cloud": cloud or "", "server_id": server_id[:64], "detail": detail}
        found = self._permitted(user, server_id, cloud, note)
        note.update(cloud=found.cloud, server_name=found.name)
        if detail != RELAY and self.mode(found) == "relay":
            audit.stage("console", "refused", reason="this cloud's consoles open only through the relay", **note)
            raise ViewerOnly(
                f"Consoles of cloud {found.cloud} open only in the broker's own viewer, on the console page."
            )
        if kind != "novnc" and detail != RELAY:
            raise ViewerOnly("Serial consoles open only in the broker's own terminal, on the serial console page.")
        try:
            self.check_offered(found, kind)
            minted = self._mint(found, kind)
        except errors.CloudError as exc:
            if not quiet:
                audit.stage("console", "failed", reason=exc.message, **note)
            raise
        if not quiet:
            audit.stage("console", "ok", **note)
        return minted

    def mint_confirmed(self, server: ServerInfo, kind: str = "novnc") -> Minted:
        """A console URL for a relay console already open, on the rights last confirmed for ``server``.

        Only for when the database (rules, audit) cannot be reached: the console's own record,
        written when it can be, counts this mint.
        """
        self.check_offered(server, kind)
        return self._mint(server, kind)

    def offers(self, server: ServerInfo, kind: str) -> bool:
        """True when ``server``'s cloud offers consoles of ``kind`` (its console_types)."""
        return kind in self.inventory.cloud(server.cloud).console_types

    def check_offered(self, server: ServerInfo, kind: str) -> None:
        """ConsoleUnavailable when ``server``'s cloud does not offer consoles of ``kind``: nothing is asked of it."""
        if not self.offers(server, kind):
            raise errors.ConsoleUnavailable(f"Cloud {server.cloud} offers no {kind} consoles.")

    def permitted(
        self,
        user: User,
        server_id: str,
        cloud: str | None = None,
        detail: str = RELAY,
        action: str = "console",
        console_id: int | None = None,
    ) -> ServerInfo:
        """The server ``user`` may open by this ID (nothing minted); NoSuchServer, audited as ``action`` (linked to
        the live console ``console_id`` when it is about one), otherwise."""
        note = {"username": user.username, "cloud": cloud or "", "server_id": server_id[:64], "detail": detail}
        if console_id is not None:
            note["console_id"] = console_id
        return self._permitted(user, server_id, cloud, note, action)

    def refreshed(self, user: User, server: ServerInfo) -> ServerInfo:
        """``server`` re-read from its cloud (a page following it back to ACTIVE), if ``user`` may still open it."""
        current = self.inventory.current(server)
        if not self._access(user).allows(current):
            raise NoSuchServer(NOT_FOUND)
        return current

    def mode(self, server: ServerInfo) -> str:
        """How consoles of ``server``'s cloud are shown: iframe or relay."""
        return self.inventory.cloud(server.cloud).console_mode

    def _permitted(
        self, user: User, server_id: str, cloud: str | None, note: dict, action: str = "console"
    ) -> ServerInfo:
        access = self._access(user)
        try:
            found = self._find(user, access, server_id, cloud)
        except errors.CloudError as exc:
            audit.stage(action, "failed", reason=audit_reason(exc), **note)
            raise
        if isinstance(found, Denial):
            self._record(found, note, action)
            raise NoSuchServer(NOT_FOUND)
        return found

    def _find(self, user: User, access: Access, server_id: str, cloud: str | None) -> ServerInfo | Denial:
        """The server a mint names, or why there is none for this user."""
        if not looks_like_id(server_id):
            return Denial("failed", "not a server ID")
        return self._by_id(user, access, server_id, cloud, self._sightings(server_id, cloud))

    def _mint(self, server: ServerInfo, kind: str = "novnc") -> Minted:
        cloud = self.inventory.cloud(server.cloud)
        try:
            console = cloud.client.create_console(server.id, kind)
        except errors.ServerNotReady:
            raise self._not_running(server) from None
        self.check_url(console.url, kind)
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=cloud.console_ttl)
        return Minted(console, server, cloud.console_ttl, expires_at, cloud.console_swap)

    def _not_running(self, server: ServerInfo) -> errors.ServerNotReady:
        """A 409 says little; name the server's current status (the inventory keeps it, the rest of its list stays)."""
        status = server.status
        with contextlib.suppress(errors.CloudError):
            status = self.inventory.current(server).status
        error = errors.ServerNotReady(f"The server {server.name} is not running ({status}).")
        error.server_status = status
        return error
