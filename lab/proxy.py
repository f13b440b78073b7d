"""The console proxy's lab side: a token store on disk and websockify plugins that read it.

websockify forks a process per connection, so tokens live in files (one JSON file per
token, named by its hash) rather than in memory. Like nova-novncproxy, a token is
checked when a websocket connects, and a websocket from a foreign Origin is refused;
``lab.novncproxy`` can also end a connected websocket when its token expires.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from websockify.auth_plugins import AuthenticationError
from websockify.auth_plugins import BasePlugin as AuthPlugin
from websockify.token_plugins import BasePlugin as TokenPlugin


def _token_file(directory: Path, token: str) -> Path:
    # Hashing keeps file names short and safe whatever characters a token holds.
    return directory / (hashlib.sha256(token.encode()).hexdigest() + ".json")


class TokenStore:
    """Console tokens the cloud has issued, each with its target and lifetime."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def register(self, token: str, host: str, port: int, ttl: float) -> None:
        """Record that ``token`` opens ``host:port`` for ``ttl`` seconds from now."""
        record = {"host": host, "port": port, "created": time.time(), "ttl": ttl}
        final = _token_file(self.directory, token)
        partial = final.with_suffix(".tmp")
        partial.write_text(json.dumps(record))
        # A rename is atomic, so a connecting proxy never reads half a record.
        os.replace(partial, final)

    def lookup(self, token: str) -> tuple[str, int] | None:
        """The target of a token that is known and younger than its TTL, else None."""
        record = self._read(token)
        if record is None or time.time() >= record["created"] + record["ttl"]:
            return None
        return record["host"], int(record["port"])

    def expires_at(self, token: str) -> float | None:
        """When a known token expires (epoch seconds, maybe already past), else None."""
        record = self._read(token)
        return None if record is None else record["created"] + record["ttl"]

    def _read(self, token: str) -> dict | None:
        try:
            return json.loads(_token_file(self.directory, token).read_text())
        except (OSError, ValueError):
            return None


class TokenDir(TokenPlugin):
    """websockify token plugin: ``--token-source`` is the TokenStore's directory."""

    def __init__(self, src: str) -> None:
        super().__init__(src)
        self.store = TokenStore(Path(src))

    def lookup(self, token: str) -> tuple[str, int] | None:
        return self.store.lookup(token)


def origin_allowed(origin: str | None, host_header: str | None, allowed: set[str]) -> bool:
    """Nova's rule: the Origin's host is the proxy's own host or an allowed origin; none at all is fine."""
    if origin is None:
        # As in Nova: no Origin header means a non-browser client, which the token alone admits.
        return True
    origin_host = urlsplit(origin).hostname
    own_host = urlsplit("//" + (host_header or "")).hostname
    return origin_host is not None and (origin_host == own_host or origin_host in allowed)


class OriginCheck(AuthPlugin):
    """websockify auth plugin: ``--auth-source`` lists extra allowed origin hosts, comma-separated."""

    def __init__(self, src: str | None = None) -> None:
        super().__init__(src)
        self.allowed = {host.strip().lower() for host in (src or "").split(",") if host.strip()}

    def authenticate(self, headers, target_host, target_port) -> None:
        origin = headers.get("Origin")
        if not origin_allowed(origin, headers.get("Host"), self.allowed):
            raise AuthenticationError(log_msg=f"Origin {origin!r} is not allowed", response_msg="Forbidden")
