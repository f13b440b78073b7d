"""A scripted RFB viewer for the relay bench: noVNC's side of the protocol over one websocket, timed.

It speaks as noVNC does after ServerInit (32-bit true colour, its encodings, update requests)
but asks only for what the demo VNC server sends (Raw, CopyRect, DesktopSize), and it reads
whole server messages so a timing ends when the viewer could draw what it received.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect

RFB_3_8 = b"RFB 003.008\n"
SECURITY_NONE = 1
# noVNC's own format: 32 bits a pixel, depth 24, little-endian, true colour, xRGB.
PIXEL_FORMAT = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
RAW = 0
COPY_RECT = 1
DESKTOP_SIZE = -223
ENCODINGS = (COPY_RECT, RAW, DESKTOP_SIZE)
FRAMEBUFFER_UPDATE = 0
BELL = 2
SERVER_CUT_TEXT = 3
BACKSPACE = 0xFF08
POINTER_EVENT = 5
# A whole screen of raw pixels is 1.7 MB; the relay passes on what the proxy sent, in 64 KB messages.
MAX_MESSAGE = 16 << 20


def pointer_events(count: int, *, clicks: bool = False) -> bytes:
    """``count`` PointerEvents in one message: the pointer moving across the screen, the left button
    up throughout, or (``clicks``) pressed and released in turn, so that no two events may be merged."""
    return b"".join(struct.pack(">BBHH", POINTER_EVENT, clicks and n % 2, n % 960, n % 450) for n in range(count))


class ViewerError(RuntimeError):
    """The server said something this viewer does not expect."""


@dataclass
class Update:
    """One FramebufferUpdate: its rectangles (x, y, width, height, encoding, data), size, and when it was whole."""

    rects: list[tuple[int, int, int, int, int, bytes]]
    size: int
    arrived: float  # time.monotonic(), when its last byte was read

    def lit(self) -> bool:
        """A raw rectangle holds a pixel other than black (the echoed glyph is drawn on black)."""
        return any(enc == RAW and data.strip(b"\0") for *_, enc, data in self.rects)


class Viewer:
    """One viewer connection: open, handshake, then requests and keys out, whole messages in."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.buffer = bytearray()
        self.width = 0
        self.height = 0
        self.received = 0
        # The relay's text messages so far (who is on the console, away/back), as JSON objects.
        self.said: list[dict] = []

    @classmethod
    async def open(cls, url: str, *, origin: str, cookie: str = "", ticket: str = "") -> Viewer:
        """Open ``url`` as a page of ``origin`` would (subprotocol binary, the relay's ticket offered as
        ``ticket.<token>``, no compression), past the handshake."""
        websocket = await connect(
            url,
            origin=origin,
            additional_headers=[("Cookie", cookie)] if cookie else [],
            subprotocols=["binary"] + ([f"ticket.{ticket}"] if ticket else []),
            compression=None,
            max_size=MAX_MESSAGE,
            user_agent_header="console-broker bench viewer",
        )
        viewer = cls(websocket)
        try:
            await viewer.handshake()
        except BaseException:
            await websocket.close()
            raise
        return viewer

    async def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes of the stream, whatever the websocket messages' edges."""
        while len(self.buffer) < size:
            message = await self.websocket.recv()
            if isinstance(message, str):
                # The relay's news for the person (a JSON text frame), which noVNC's RFB ignores too.
                self.said.append(json_object(message))
                continue
            self.buffer += message
            self.received += len(message)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def handshake(self) -> None:
        """RFB 3.8, security None, shared; then noVNC's SetPixelFormat and SetEncodings."""
        if await self.read(12) != RFB_3_8:
            raise ViewerError("not an RFB 3.8 server")
        await self.websocket.send(RFB_3_8)
        count = (await self.read(1))[0]
        if SECURITY_NONE not in await self.read(count):
            raise ViewerError("security type None not offered")
        await self.websocket.send(bytes([SECURITY_NONE]))
        if await self.read(4) != b"\0\0\0\0":
            raise ViewerError("security refused")
        await self.websocket.send(b"\x01")
        header = await self.read(24)
        self.width, self.height = struct.unpack(">HH", header[:4])
        await self.read(struct.unpack(">I", header[20:24])[0])
        encodings = struct.pack(f">BxH{len(ENCODINGS)}i", 2, len(ENCODINGS), *ENCODINGS)
        await self.websocket.send(b"\0\0\0\0" + PIXEL_FORMAT + encodings)

    async def request(self, incremental: bool) -> None:
        """A FramebufferUpdateRequest for the whole screen."""
        await self.websocket.send(struct.pack(">BBHHHH", 3, incremental, 0, 0, self.width, self.height))

    async def key(self, keysym: int) -> None:
        """A key pressed and released, in one message as a quick typist's two events arrive."""
        await self.websocket.send(struct.pack(">BBxxIBBxxI", 4, 1, keysym, 4, 0, keysym))

    async def abandon(self) -> None:
        """Drop the connection without a close handshake (a flooded relay would read the close too late)."""
        self.websocket.transport.abort()
        await self.websocket.wait_closed()

    async def update(self) -> Update:
        """The next FramebufferUpdate (a Bell or cut text before it is read and dropped)."""
        while True:
            kind = (await self.read(1))[0]
            if kind == FRAMEBUFFER_UPDATE:
                return await self._update()
            if kind == SERVER_CUT_TEXT:
                await self.read(struct.unpack(">3xI", await self.read(7))[0])
            elif kind != BELL:
                raise ViewerError(f"server message type {kind}")

    async def _update(self) -> Update:
        (count,) = struct.unpack(">xH", await self.read(3))
        rects, size = [], 4
        for _ in range(count):
            x, y, width, height, encoding = struct.unpack(">HHHHi", await self.read(12))
            if encoding == RAW:
                data = await self.read(width * height * 4)
            elif encoding == COPY_RECT:
                data = await self.read(4)
            elif encoding == DESKTOP_SIZE:
                self.width, self.height, data = width, height, b""
            else:
                raise ViewerError(f"encoding {encoding} was not asked for")
            rects.append((x, y, width, height, encoding, data))
            size += 12 + len(data)
        return Update(rects, size, time.monotonic())

    async def close(self) -> None:
        await self.websocket.close()


def json_object(text: str) -> dict:
    """A relay text message as JSON (an empty object for anything else)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
