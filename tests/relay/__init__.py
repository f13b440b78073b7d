"""What the relay tests share: a console proxy in this process (websockify's side and a tiny RFB server) and waiting."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from collections.abc import Coroutine
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request
from websockets.http11 import Response
from websockets.typing import Subprotocol

from broker.relay import rfb
from broker.relay.rfb import ClientFramer
from broker.relay.rfb import PixelFormat
from broker.relay.rfb import RfbError
from broker.relay.rfb import ServerFramer
from broker.relay.rfb import ServerInit
from broker.relay.upstream import ByteReader
from tests.support import wait_until_async

USER_AGENT = "Mozilla/5.0 (test viewer)"
# What noVNC asks for; the relay passes on only what it can resume.
NOVNC_ENCODINGS = [1, 7, -260, 16, 21, 5, 2, 6, 0, -26, -254, -223, -224, -258, -261, -308, -309, -312, -313, -239]
FILTERED = [1, 5, 2, 0, -26, -254, -223, -224, -258, -308, -239]
FORMAT_32 = PixelFormat(bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]))
TOKEN = "tok-3f9a"


def run(scenario: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
    """Run one test's scenario on a fresh event loop; a hung scenario fails instead of hanging the suite."""
    return asyncio.run(asyncio.wait_for(scenario, timeout))


async def eventually(predicate: Callable[[], Any], timeout: float = 3.0) -> Any:
    """Wait until ``predicate()`` is true (it may be made true by another thread) and return its value."""
    return await wait_until_async(predicate, timeout=timeout, interval=0.002)


def raw_update(width: int, height: int, marker: int, x: int = 0, y: int = 0) -> bytes:
    """A FramebufferUpdate of one raw rectangle whose pixels' bytes all hold ``marker`` (mod 256)."""
    pixels = bytes([marker & 0xFF]) * (width * height * 4)
    return rfb.framebuffer_update(rfb.rectangle(x, y, width, height, rfb.RAW) + pixels)


@dataclass
class Session:
    """One connection to the fake proxy: what its RFB client sent after the handshake."""

    number: int
    websocket: ServerConnection
    messages: list[bytes] = field(default_factory=list)
    received: int = 0

    def of_type(self, kind: int) -> list[bytes]:
        return [m for m in self.messages if m[0] == kind]

    async def send(self, data: bytes) -> None:
        await self.websocket.send(data)

    async def close(self, code: int = 1000) -> None:
        await self.websocket.close(code)


class FakeProxy:
    """websockify as Nova runs it (token in the query, Origin checked) with a tiny RFB server behind it.

    The server answers a non-incremental FramebufferUpdateRequest with the whole screen, each
    pixel holding the connection's number (1, 2, ...), so a viewer can tell whose screen it got.
    """

    def __init__(self, *, version: bytes = rfb.VERSION_3_8, security: bytes = b"\x01\x01", size=(32, 24)) -> None:
        self.version = version
        self.security = security
        self.width, self.height = size
        self.refuse_status: int | None = None
        self.requests: list[Headers] = []
        self.paths: list[str] = []
        self.sessions: list[Session] = []
        self.handshake_bytes: list[bytes] = []
        self.server = None
        self.port = 0

    @property
    def console_url(self) -> str:
        """A Nova-style console URL for this proxy (the token inside ``path``)."""
        return f"http://127.0.0.1:{self.port}/vnc_lite.html?path=%3Ftoken%3D{TOKEN}"

    async def __aenter__(self) -> FakeProxy:
        self.server = await serve(
            self._serve, "127.0.0.1", 0, subprotocols=["binary"], compression=None, process_request=self._check
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        self.requests.append(request.headers)
        self.paths.append(request.path)
        if self.refuse_status:
            return connection.respond(self.refuse_status, "no\n")
        return None

    async def _serve(self, websocket: ServerConnection) -> None:
        reader = ByteReader(websocket)
        try:
            init = await self._handshake(reader, websocket)
        except ConnectionClosed:
            return  # the client gave up on this server's security: as it should
        session = Session(len(self.sessions) + 1, websocket)
        self.sessions.append(session)
        framer = ClientFramer()
        data = reader.rest()
        while True:
            session.received += len(data)
            for message in framer.feed(data):
                session.messages.append(message)
                if message[0] == rfb.FRAMEBUFFER_UPDATE_REQUEST and not message[1]:
                    await websocket.send(raw_update(init.width, init.height, session.number))
            try:
                data = await websocket.recv()
            except ConnectionClosed:
                return

    async def _handshake(self, reader: ByteReader, websocket: ServerConnection) -> ServerInit:
        await websocket.send(self.version)
        self.handshake_bytes.append(await reader.read(12))
        minor = rfb.parse_version(self.version)[1]
        await websocket.send(self.security)
        if minor >= 7 and self.security[0]:
            self.handshake_bytes.append(await reader.read(1))
        if minor >= 8:
            await websocket.send(rfb.SECURITY_OK)
        self.handshake_bytes.append(await reader.read(1))
        init = ServerInit(self.width, self.height, FORMAT_32, b"guest")
        await websocket.send(init.to_bytes())
        return init


def security_failure(reason: bytes) -> bytes:
    """No security types, and why (RFB 3.7 and later)."""
    return b"\x00" + struct.pack(">I", len(reason)) + reason


def key(down: bool, keysym: int) -> bytes:
    """A KeyEvent."""
    return struct.pack(">BBxxI", rfb.KEY_EVENT, down, keysym)


def typed(text: str) -> list[bytes]:
    """The KeyEvents of typing ``text`` (each key down, then up)."""
    return [key(down, ord(c)) for c in text for down in (True, False)]


def ticket_offer(ticket: str | None) -> list[Subprotocol]:
    """The subprotocols a viewer offers: ``binary`` for RFB, and its ticket as ``ticket.<token>``."""
    return [Subprotocol("binary")] + ([Subprotocol(f"ticket.{ticket}")] if ticket is not None else [])


class Browser:
    """A viewer as noVNC is one: the websocket with the session cookie, RFB's client side, the messages it got."""

    @classmethod
    async def connect(
        cls, url: str, *, ticket: str | None, cookie: str, origin: str, user_agent: str = USER_AGENT
    ) -> Browser:
        """Open the relay's websocket as a page would: the ticket offered as a subprotocol (None: no ticket), an empty
        cookie or origin left out."""
        websocket = await connect(
            url,
            origin=origin or None,
            user_agent_header=user_agent,
            additional_headers=[("Cookie", cookie)] if cookie else [],
            subprotocols=ticket_offer(ticket),
            compression=None,
        )
        return cls(websocket)

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.init: ServerInit | None = None
        self.framer: ServerFramer | None = None
        self.messages: list[bytes] = []
        # What the relay said of the cloud's side, in its text messages ("away", "back").
        self.statuses: list[str] = []
        # The relay's other text messages: who is on the console and who drives, asks for control.
        self.told: list[dict] = []
        self.received = 0
        self._partial = bytearray()
        self._reader: asyncio.Task | None = None
        # A stream the viewer could not frame: raised by screens() and closed(), so the test says so.
        self.error: RfbError | None = None

    async def greet(self) -> ByteReader:
        """The browser's side of the RFB handshake, up to its ClientInit (the relay then opens the cloud's side)."""
        reader = ByteReader(self.websocket)
        assert await reader.read(12) == rfb.VERSION_3_8
        await self.websocket.send(rfb.VERSION_3_8)
        assert await reader.read(2) == b"\x01\x01"
        await self.websocket.send(b"\x01")
        assert await reader.read(4) == rfb.SECURITY_OK
        await self.websocket.send(b"\x01")
        return reader

    async def handshake(self) -> ServerInit:
        reader = await self.greet()
        header = await reader.read(rfb.SERVER_INIT_HEADER)
        self.init = ServerInit.parse(header + await reader.read(rfb.name_length(header)))
        self.framer = ServerFramer(self.init)
        self._take(reader.rest())
        self._reader = asyncio.create_task(self._read())
        return self.init

    async def start(self) -> None:
        """What noVNC sends after ServerInit: its format, its encodings, a request for the whole screen."""
        encodings = rfb.set_encodings(NOVNC_ENCODINGS)
        self.framer.follow(rfb.filter_encodings(encodings))
        full = rfb.framebuffer_update_request(False, 0, 0, self.init.width, self.init.height)
        await self.websocket.send(rfb.set_pixel_format(FORMAT_32) + encodings + full)

    async def _read(self) -> None:
        try:
            async for data in self.websocket:
                if isinstance(data, str):
                    said = json.loads(data)
                    if "relay" in said:
                        self.statuses.append(said["relay"])
                    else:
                        self.told.append(said)  # who is on the console, who asks for control
                else:
                    self._take(data)
        except ConnectionClosed:
            pass
        except RfbError as exc:
            self.error = exc

    def _take(self, data: bytes) -> None:
        """Cut the stream into whole messages as a viewer would (a framing error fails the test)."""
        self.received += len(data)
        start = 0
        for end in self.framer.feed(data):
            self.messages.append(bytes(self._partial) + data[start:end])
            self._partial.clear()
            start = end
        self._partial += data[start:]

    def screens(self) -> list[int]:
        """The marker of each whole-screen update received, in order (the fake proxy's connection number)."""
        if self.error:
            raise self.error
        size = struct.pack(">HHHH", 0, 0, self.init.width, self.init.height)
        return [m[16] for m in self.messages if m[0] == rfb.FRAMEBUFFER_UPDATE and m[4:12] == size and len(m) > 16]

    async def closed(self) -> tuple[int, str]:
        """The close code and reason the relay closed the websocket with."""
        await self.websocket.wait_closed()
        if self.error:
            raise self.error
        return self.websocket.close_code, self.websocket.close_reason
