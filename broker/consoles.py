"""The console service: find the server, mint its console URL, check the URL, audit it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from urllib.parse import urlsplit

from broker import audit
from broker.cloud import errors
from broker.cloud.client import Console
from broker.cloud.client import ServerInfo
from broker.cloud.client import check_console_url
from broker.extensions import db
from broker.inventory import Inventory
from broker.inventory import Overview
from broker.policy import access_for
from broker.users import User

# Nova and Huawei ECS server IDs are UUIDs; nothing else may reach an upstream URL path.
SERVER_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{0,63}$")
MINT_DETAILS = ("load", "refresh", "reconnect", "popout", "resume")
# "view" marks a console page (not a mint) that was refused.


class NoSuchServer(errors.ServerNotFound):
    """The reference matches no server the user can see."""


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

    def overview(self, user: User, query: str = "", cloud: str | None = None) -> Overview:
        """The servers ``user`` may open, matching ``query``, and trouble only of clouds they may use."""
        access = access_for(user)
        db.session.close()  # no pooled DB connection held while the clouds answer
        # Clouds the user has no rule on are neither waited for nor reported: their trouble
        # (and its text) is none of this user's business.
        usable = [name for name in self.inventory.names(cloud) if access.may_use_cloud(name)]
        overview = self.inventory.overview(query, cloud, within=usable)
        overview.servers = access.filter(overview.servers)
        return overview

    def resolve(self, user: User, ref: str, cloud: str | None = None) -> list[ServerInfo]:
        """Servers ``ref`` names that ``user`` may open: an ID, else every server with exactly that name."""
        candidates = []
        if looks_like_id(ref):
            server = self.inventory.by_id(ref, cloud)
            candidates = [server] if server else []
        candidates = candidates or self.inventory.by_name(ref, cloud)
        allowed = access_for(user).filter(candidates)
        if candidates and not allowed:
            audit.record(
                "console",
                "refused",
                username=user.username,
                server_id=candidates[0].id,
                server_name=candidates[0].name,
                cloud=candidates[0].cloud,
                detail="view",
                reason="no access rule grants this server",
            )
        return allowed

    def check_url(self, url: str) -> str:
        """http(s) only, and only allowed hosts when an allow-list is configured."""
        check_console_url(url)
        host = (urlsplit(url).hostname or "").lower()
        if self.console_hosts and host not in self.console_hosts:
            raise errors.CloudBadResponse(
                f"The cloud returned a console on host {host}, which is not in BROKER_CONSOLE_HOSTS; it was refused."
            )
        return url

    def mint(self, user: User, server_id: str, cloud: str | None = None, detail: str = "load") -> Minted:
        """A fresh console URL for one server, with an audit record whatever happens."""
        detail = detail if detail in MINT_DETAILS else "load"
        note = {"username": user.username, "cloud": cloud or "", "server_id": server_id[:64], "detail": detail}
        try:
            server = self.inventory.by_id(server_id, cloud) if looks_like_id(server_id) else None
        except errors.CloudError as exc:
            audit.record("console", "failed", reason=exc.message, **note)
            raise
        if server is None:
            audit.record("console", "failed", reason="no such server", **note)
            raise NoSuchServer("No such server.")
        note.update(cloud=server.cloud, server_name=server.name)
        if not access_for(user).allows(server):
            # Answer exactly as for an unknown ID, so IDs cannot be probed for existence.
            audit.record("console", "refused", reason="no access rule grants this server", **note)
            raise NoSuchServer("No such server.")
        db.session.close()  # no pooled DB connection held while the cloud answers
        try:
            minted = self._mint(server)
        except errors.CloudError as exc:
            audit.record("console", "failed", reason=exc.message, **note)
            raise
        audit.record("console", "ok", **note)
        return minted

    def _mint(self, server: ServerInfo) -> Minted:
        cloud = self.inventory.cloud(server.cloud)
        try:
            console = cloud.client.create_console(server.id)
        except errors.ServerNotReady:
            raise self._not_running(server) from None
        self.check_url(console.url)
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=cloud.console_ttl)
        return Minted(console, server, cloud.console_ttl, expires_at, cloud.console_swap)

    def _not_running(self, server: ServerInfo) -> errors.ServerNotReady:
        """A 409 says little; name the server's current status."""
        status = server.status
        with contextlib.suppress(errors.CloudError):
            status = self.inventory.cloud(server.cloud).client.get_server(server.id).status
        self.inventory.forget(server.cloud)
        error = errors.ServerNotReady(f"The server {server.name} is not running ({status}).")
        error.server_status = status
        return error
