"""The cloud's side of a relayed console: the proxy's websocket, opened from a console URL, past the RFB handshake.

A console URL is a bearer credential: its query (the token) never reaches a log line or an
error message; errors name the proxy by its origin only.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import parse_qs
from urllib.parse import quote
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed
from websockets.exceptions import InvalidStatus
from websockets.exceptions import WebSocketException
from websockets.protocol import State
from websockets.typing import Origin
from websockets.typing import Subprotocol

from broker.relay import rfb
from broker.relay.rfb import RfbError
from broker.relay.rfb import ServerInit

# websockify forwards whatever one read of the VNC socket gave; a full-screen raw update
# fits many times over.
MAX_MESSAGE = 16 << 20
# A proxy that does not answer a close within this is dropped: the relay has a viewer waiting.
CLOSE_TIMEOUT = 2.0
USER_AGENT = "console-broker relay"


class UpstreamError(Exception):
    """The console proxy could not be reached or spoke no RFB the relay can use; the message is safe to log."""


class SecurityRefused(UpstreamError):
    """The VNC server wants a security type the relay does not speak (a password): trying again cannot help."""


@dataclass(frozen=True)
class Target:
    """Where a console URL's websocket is, and the Origin a browser on that page would send."""

    url: str = field(repr=False)
    origin: str


def websocket_target(console_url: str) -> Target:
    """The websocket behind a noVNC page URL: same host and port; the path noVNC itself would open."""
    parts = urlsplit(console_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
    host = parts.netloc.rpartition("@")[2]
    if scheme is None or not host:
        raise UpstreamError("the console URL is not an http(s) URL")
    query = parse_qs(parts.query)
    if query.get("path"):
        # Nova's pages carry the websocket's path and query in ``path`` (``?token=...``).
        path = "/" + query["path"][0].lstrip("/")
    elif query.get("token"):
        path = "/?token=" + quote(query["token"][0], safe="")
    else:
        raise UpstreamError("the console URL carries no token")
    return Target(f"{scheme}://{host}{path}", f"{parts.scheme}://{host}")


class ByteReader:
    """Exact byte counts out of a websocket's binary messages, whose edges RFB does not respect."""

    def __init__(self, websocket: Connection) -> None:
        self._websocket = websocket
        self._buffer = bytearray()

    async def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes, waiting for as many messages as that takes."""
        while len(self._buffer) < size:
            message = await self._websocket.recv()
            if isinstance(message, str):
                raise RfbError("a text message where RFB was expected")
            self._buffer += message
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def rest(self) -> bytes:
        """What was received beyond the bytes read (the start of the next messages)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


def serial_target(console_url: str) -> Target:
    """The websocket of a serial console URL (nova-serialproxy's ``ws(s)://host:port/?token=...``), as it is."""
    parts = urlsplit(console_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
    host = parts.netloc.rpartition("@")[2]
    if scheme is None or not host:
        raise UpstreamError("the serial console URL is not a ws(s) URL")
    if not parse_qs(parts.query).get("token"):
        raise UpstreamError("the serial console URL carries no token")
    return Target(f"{parts.scheme}://{host}{parts.path or '/'}?{parts.query}", f"{scheme}://{host}")


class Upstream:
    """A console proxy's websocket past the RFB handshake: the server's ServerInit, then its messages.

    A serial console's has no handshake and no ServerInit (``init`` is None): raw bytes each way.
    """

    def __init__(self, websocket: ClientConnection, init: ServerInit | None, rest: bytes, origin: str) -> None:
        self.init = init
        self.origin = origin
        self._websocket = websocket
        self._rest = rest

    async def recv(self) -> bytes:
        """The next bytes from the server; ConnectionClosed when the proxy has closed."""
        if self._rest:
            rest, self._rest = self._rest, b""
            return rest
        message = await self._websocket.recv()
        if isinstance(message, str):
            raise UpstreamError("the console proxy sent text, not binary")
        return message

    async def send(self, data: bytes) -> bool:
        """Send ``data`` unless the proxy is closing; False means nothing was sent, so it may be sent elsewhere."""
        if self._websocket.state is not State.OPEN:
            return False
        # A close noticed after the data was handed to the socket: perhaps delivered, so never sent again.
        with contextlib.suppress(ConnectionClosed):
            await self._websocket.send(data)
        return True

    async def close(self) -> None:
        """Close the websocket with a close handshake (at most CLOSE_TIMEOUT)."""
        await self._websocket.close()

    def abort(self) -> None:
        """Drop the connection at once (a cancelled attempt cannot wait for a close handshake)."""
        self._websocket.transport.abort()


async def open_console(console_url: str, *, open_timeout: float = 10.0, handshake_timeout: float = 10.0) -> Upstream:
    """Open the websocket behind ``console_url`` and handshake as an RFB client (3.8, 3.7 or 3.3; security None)."""
    target = websocket_target(console_url)
    websocket = await _connect(target, open_timeout)
    try:
        reader = ByteReader(websocket)
        async with asyncio.timeout(handshake_timeout):
            init = await handshake(reader, websocket)
    except BaseException as exc:
        websocket.transport.abort()
        if isinstance(exc, (RfbError, TimeoutError, ConnectionClosed)):
            raise UpstreamError(f"the console proxy at {target.origin} {failure(exc)}") from None
        raise
    return Upstream(websocket, init, reader.rest(), target.origin)


async def open_serial(console_url: str, *, open_timeout: float = 10.0) -> Upstream:
    """Open the websocket of a serial console URL: nothing to handshake, the server's bytes follow as they come.

    nova-serialproxy lets one client at a time reach a serial port: a second one is let in and
    then waits, silent, until the first leaves (QEMU accepts it only then).
    """
    target = serial_target(console_url)
    return Upstream(await _connect(target, open_timeout), None, b"", target.origin)


async def _connect(target: Target, open_timeout: float) -> ClientConnection:
    try:
        return await connect(
            target.url,
            origin=Origin(target.origin),
            subprotocols=[Subprotocol("binary")],
            compression=None,
            open_timeout=open_timeout,
            close_timeout=CLOSE_TIMEOUT,
            max_size=MAX_MESSAGE,
            user_agent_header=USER_AGENT,
        )
    except (OSError, TimeoutError, WebSocketException) as exc:
        # "from None": a chained exception's text could hold the URL, and with it the token.
        raise UpstreamError(f"cannot open the console proxy's websocket at {target.origin}: {failure(exc)}") from None


def failure(exc: BaseException) -> str:
    """What went wrong, in words that never hold the URL."""
    if isinstance(exc, InvalidStatus):
        return f"it answered HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionClosed):
        return "closed the connection during the RFB handshake"
    if isinstance(exc, RfbError):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


async def handshake(reader: ByteReader, websocket: ClientConnection) -> ServerInit:
    """RFB's client side up to ServerInit: version, security None, ClientInit (shared)."""
    minor = agreed_minor(rfb.parse_version(await reader.read(12)))
    await websocket.send(rfb.version(3, minor))
    if minor == 3:
        await _security_3_3(reader)
    else:
        await _choose_none(reader, websocket)
    if minor == 8:
        await _security_result(reader)
    await websocket.send(b"\x01")  # ClientInit: shared, so other viewers of the server stay connected
    header = await reader.read(rfb.SERVER_INIT_HEADER)
    return ServerInit.parse(header + await reader.read(rfb.name_length(header)))


def agreed_minor(server: tuple[int, int]) -> int:
    """The RFB 3.x minor version to speak with a server offering ``server``."""
    major, minor = server
    if major != 3 or minor < 3:
        raise RfbError(f"RFB {major}.{minor} is not supported")
    return 8 if minor >= 8 else 7 if minor == 7 else 3


async def _security_3_3(reader: ByteReader) -> None:
    """RFB 3.3: the server chooses the security type itself."""
    (chosen,) = struct.unpack(">I", await reader.read(4))
    if chosen == 0:
        raise RfbError(f"refused the connection: {await _reason(reader)}")
    if chosen != rfb.SECURITY_NONE:
        raise security_refused([chosen])


async def _choose_none(reader: ByteReader, websocket: ClientConnection) -> None:
    count = (await reader.read(1))[0]
    if count == 0:
        raise RfbError(f"refused the connection: {await _reason(reader)}")
    offered = list(await reader.read(count))
    if rfb.SECURITY_NONE not in offered:
        raise security_refused(offered)
    await websocket.send(bytes([rfb.SECURITY_NONE]))


def security_refused(offered: list[int]) -> SecurityRefused:
    """The error for a server offering ``offered`` security types and not None."""
    if rfb.SECURITY_VNC_AUTH in offered:
        return SecurityRefused("the console's VNC server asks for a password; the relay speaks only security type None")
    return SecurityRefused(f"the console's VNC server offers security types {offered}; the relay speaks only None (1)")


async def _security_result(reader: ByteReader) -> None:
    (result,) = struct.unpack(">I", await reader.read(4))
    if result != 0:
        raise RfbError(f"refused the connection: {await _reason(reader)}")


async def _reason(reader: ByteReader) -> str:
    """A failure reason string (length, then text), cut short: it is the server's text."""
    (length,) = struct.unpack(">I", await reader.read(4))
    if length > 4096:
        raise RfbError("a failure reason too long to be one")
    return (await reader.read(length)).decode("utf-8", "replace")[:200]
