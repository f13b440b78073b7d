"""The demo cloud's console proxy: nova-novncproxy's checks in front of the demo VNC server.

The relay process mounts :func:`handle` on its own websocket server at :data:`PATH`, so a relay
minting a demo console URL opens this websocket exactly as it would open Nova's: the token comes
from the query (``?token=``) or a ``token`` cookie, an ``Origin`` header is optional but must name
this host when present, and the RFB stream then runs in binary messages. As with websockify, the
websocket is accepted first and a refused client is closed straight after, before any RFB byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from http.cookies import CookieError
from http.cookies import SimpleCookie
from urllib.parse import parse_qs
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.typing import Subprotocol

from broker.demo import vnc

log = logging.getLogger(__name__)

PATH = "/demo-console/websockify"
# websockify forwards what one read of the VNC socket returns, at most this much per message; a
# relay therefore sees RFB messages split across websocket messages, as it would in front of Nova.
CHUNK = 65536


@dataclass(frozen=True)
class Grant:
    """What a valid console token opens: the server's name, and when the token expires."""

    server: str
    expires_at: float | None = None  # time.time() seconds; None: never enforced


Lookup = Callable[[str], Grant | None]


class WebsocketStream:
    """RFB bytes over a websocket: binary messages in; out in chunks of at most CHUNK bytes."""

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        self.incoming = bytearray()
        self.outgoing: list[bytes] = []

    async def readexactly(self, n: int) -> bytes:
        while len(self.incoming) < n:
            try:
                message = await self.connection.recv()
            except ConnectionClosed:
                raise asyncio.IncompleteReadError(bytes(self.incoming), n) from None
            if isinstance(message, str):
                raise vnc.ProtocolError("text message on a binary console websocket")
            self.incoming += message
        data = bytes(self.incoming[:n])
        del self.incoming[:n]
        return data

    def write(self, data: bytes) -> None:
        self.outgoing.append(data)

    async def drain(self) -> None:
        data = b"".join(self.outgoing)
        self.outgoing.clear()
        try:
            for start in range(0, len(data), CHUNK):
                await self.connection.send(data[start : start + CHUNK])
        except ConnectionClosed as exc:
            raise ConnectionResetError("console websocket closed") from exc


def select_subprotocol(connection: ServerConnection, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
    """Answer ``binary`` when offered and admit clients offering none, as websockify does."""
    return Subprotocol("binary") if "binary" in subprotocols else None


def token_of(path: str, headers: Headers) -> str:
    """The console token: ``?token=`` in the request path, else a ``token`` cookie (noVNC's habit)."""
    token = parse_qs(urlsplit(path).query).get("token", [""])[-1]
    return token or _cookie_token(headers.get_all("Cookie"))


def _cookie_token(headers: list[str]) -> str:
    cookie: SimpleCookie = SimpleCookie()
    for part in "; ".join(headers).split(";"):
        # One malformed cookie from another application on the same host must not hide the token.
        with contextlib.suppress(CookieError):
            cookie.load(part.strip())
    morsel = cookie.get("token")
    return morsel.value if morsel else ""


def origin_allowed(headers: Headers, secure: bool) -> bool:
    """No Origin (a non-browser client) passes; otherwise it must name this host and scheme, as Nova checks."""
    origin = headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    host = urlsplit("//" + headers.get("Host", "")).hostname
    # Behind a TLS-terminating proxy the scheme the browser used is the forwarded one.
    scheme = headers.get("X-Forwarded-Proto") or ("https" if secure else "http")
    return bool(parts.hostname) and parts.hostname == host and parts.scheme == scheme


def refusal(connection: ServerConnection, grant: Grant | None) -> str | None:
    """Why Nova would refuse this client, or None; the token comes first, as in Nova."""
    if grant is None:
        return "The token is invalid or has expired"
    secure = connection.transport.get_extra_info("ssl_object") is not None
    if not origin_allowed(connection.request.headers, secure):
        return "Origin header does not match this host"
    return None


async def handle(
    connection: ServerConnection,
    *,
    lookup: Lookup,
    enforce_session_timeout: bool = False,
    blink: float | None = vnc.BLINK,
) -> None:
    """Serve one console websocket: check it as Nova would, then run a VNC session until either side ends."""
    request = connection.request
    token = token_of(request.path, request.headers)
    grant = lookup(token) if token else None
    refused = refusal(connection, grant)
    if grant is None or refused:
        # The reason names no token: tokens are credentials and stay out of logs.
        log.info("demo console refused for %s: %s", connection.remote_address, refused)
        await connection.close(CloseCode.POLICY_VIOLATION, refused or "")
        return
    stream = WebsocketStream(connection)
    log.info("demo console of %s opened for %s", grant.server, connection.remote_address)
    try:
        await asyncio.wait_for(
            vnc.serve(stream, stream, name=grant.server, blink=blink), _lifetime(grant, enforce_session_timeout)
        )
    except TimeoutError:
        # Nova's enforce_session_timeout closes the VNC side; websockify then ends the websocket so.
        log.info("demo console of %s: token expired, closing", grant.server)
        await connection.close(CloseCode.NORMAL_CLOSURE, "Target closed")


def _lifetime(grant: Grant, enforce: bool) -> float | None:
    """Seconds the session may last: until the token expires when enforced, else unbounded."""
    if not enforce or grant.expires_at is None:
        return None
    return max(0.0, grant.expires_at - time.time())
