"""What the relay tests share: a console proxy in this process (websockify's side and a tiny RFB server) and waiting."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from collections.abc import Coroutine
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request
from websockets.http11 import Response

from broker.relay import rfb
from broker.relay.rfb import ClientFramer
from broker.relay.rfb import PixelFormat
from broker.relay.rfb import ServerInit
from broker.relay.upstream import ByteReader

FORMAT_32 = PixelFormat(bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]))
TOKEN = "tok-3f9a"


def run(scenario: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
    """Run one test's scenario on a fresh event loop; a hung scenario fails instead of hanging the suite."""
    return asyncio.run(asyncio.wait_for(scenario, timeout))


async def eventually(predicate: Callable[[], Any], timeout: float = 3.0) -> Any:
    """Wait until ``predicate()`` is true (it may be made true by another thread) and return its value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)
    return value


def raw_update(width: int, height: int, marker: int, x: int = 0, y: int = 0) -> bytes:
    """A FramebufferUpdate of one raw rectangle whose pixels all hold ``marker``."""
    return rfb.framebuffer_update(rfb.rectangle(x, y, width, height, rfb.RAW) + bytes([marker]) * (width * height * 4))


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
