"""The RFB (VNC) protocol as far as the relay needs it: framing, handshake messages, resynchronisation.

Pure functions and small state machines, no I/O (RFC 6143). The relay must know where each
message ends in both directions so that it can swap the cloud's console proxy under a live
viewer: the browser's messages are cut into whole messages (small, so they are buffered);
the server's are only followed byte by byte as they stream through (a raw update can be
megabytes), and a message the server left unfinished is finished with harmless filler.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass

VERSION_3_8 = b"RFB 003.008\n"
SECURITY_NONE = 1
SECURITY_VNC_AUTH = 2
# SecurityResult "OK" (a u32 zero).
SECURITY_OK = b"\x00\x00\x00\x00"

# Client-to-server message types.
SET_PIXEL_FORMAT = 0
SET_ENCODINGS = 2
FRAMEBUFFER_UPDATE_REQUEST = 3
KEY_EVENT = 4
POINTER_EVENT = 5
CLIENT_CUT_TEXT = 6
SET_DESKTOP_SIZE = 251
QEMU_CLIENT = 255
QEMU_EXTENDED_KEY_EVENT = 0

# Server-to-client message types.
FRAMEBUFFER_UPDATE = 0
SET_COLOUR_MAP_ENTRIES = 1
BELL = 2
SERVER_CUT_TEXT = 3

# Encodings and pseudo-encodings whose rectangles the relay can frame.
RAW = 0
COPY_RECT = 1
RRE = 2
HEXTILE = 5
DESKTOP_SIZE = -223
LAST_RECT = -224
CURSOR = -239
QEMU_EXTENDED_KEY = -258
EXTENDED_DESKTOP_SIZE = -308
# JPEG quality and zlib compression levels: settings for the server, never sent back as rectangles.
QUALITY_LEVELS = frozenset(range(-32, -22))
COMPRESSION_LEVELS = frozenset(range(-256, -246))
# What a viewer may ask for through the relay: encodings that carry no state from one message
# to the next. Tight, ZRLE and zlib keep a zlib stream across messages, which a new upstream
# would not continue, so they are dropped and the server falls back to one of these.
ALLOWED_ENCODINGS = (
    frozenset({RAW, COPY_RECT, RRE, HEXTILE, DESKTOP_SIZE, LAST_RECT, CURSOR, QEMU_EXTENDED_KEY, EXTENDED_DESKTOP_SIZE})
    | QUALITY_LEVELS
    | COMPRESSION_LEVELS
)
# The filler's choices for a rectangle whose encoding was cut, cheapest first: LastRect ends the
# update, RRE with no subrectangles and Raw paint black; the rest only when the bytes sent say so.
FILLER_ENCODINGS = (LAST_RECT, RRE, RAW, QEMU_EXTENDED_KEY, CURSOR, DESKTOP_SIZE, EXTENDED_DESKTOP_SIZE)

# Hextile subencoding flags.
HEXTILE_RAW = 1
HEXTILE_BACKGROUND = 2
HEXTILE_FOREGROUND = 4
HEXTILE_ANY_SUBRECTS = 8
HEXTILE_SUBRECTS_COLOURED = 16

# A clipboard this big from a browser is not a paste but an attack on the relay's memory.
MAX_CUT_TEXT = 1 << 20
# A desktop name longer than this in a ServerInit is not a name.
MAX_NAME = 1 << 16
SERVER_INIT_HEADER = 24


class RfbError(Exception):
    """The peer sent something that is not RFB as the relay can frame it."""


# -- handshake ----------------------------------------------------------------------------------


def parse_version(data: bytes) -> tuple[int, int]:
    """(major, minor) of a ProtocolVersion message such as ``RFB 003.008\\n``."""
    if len(data) != 12 or data[:4] != b"RFB " or data[7:8] != b"." or data[11:] != b"\n":
        raise RfbError("not an RFB protocol version")
    try:
        return int(data[4:7]), int(data[8:11])
    except ValueError:
        raise RfbError("not an RFB protocol version") from None


def version(major: int, minor: int) -> bytes:
    """The ProtocolVersion message for ``major.minor``."""
    return b"RFB %03d.%03d\n" % (major, minor)


def security_types(*types: int) -> bytes:
    """The server's list of security types (RFB 3.7 and later)."""
    return bytes([len(types), *types])


@dataclass(frozen=True)
class PixelFormat:
    """The 16-byte PIXEL_FORMAT structure; the relay only needs bytes per pixel from it."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 16:
            raise RfbError("a pixel format is 16 bytes")
        if self.raw[0] not in (8, 16, 32):
            raise RfbError(f"{self.raw[0]} bits per pixel is not RFB")

    @property
    def bytes_per_pixel(self) -> int:
        """1, 2 or 4: what each pixel of a raw rectangle takes."""
        return self.raw[0] // 8


@dataclass(frozen=True)
class ServerInit:
    """The server's ServerInit: framebuffer size, pixel format and desktop name."""

    width: int
    height: int
    pixel_format: PixelFormat
    name: bytes

    @classmethod
    def parse(cls, data: bytes) -> ServerInit:
        """A whole ServerInit message."""
        if len(data) < SERVER_INIT_HEADER or len(data) != SERVER_INIT_HEADER + name_length(data):
            raise RfbError("a ServerInit's length does not match its name's")
        width, height = struct.unpack(">HH", data[:4])
        return cls(width, height, PixelFormat(bytes(data[4:20])), bytes(data[SERVER_INIT_HEADER:]))

    def to_bytes(self) -> bytes:
        """The message as the server sent it (the relay hands it on to the browser unchanged)."""
        size = struct.pack(">HH", self.width, self.height)
        return size + self.pixel_format.raw + struct.pack(">I", len(self.name)) + self.name


def name_length(header: bytes) -> int:
    """The desktop name's length, from a ServerInit's first 24 bytes."""
    (length,) = struct.unpack(">I", header[20:24])
    if length > MAX_NAME:
        raise RfbError("the desktop name is too long")
    return length


# -- messages the relay writes ---------------------------------------------------------------------


def set_pixel_format(pixel_format: PixelFormat) -> bytes:
    """SetPixelFormat (client to server)."""
    return bytes([SET_PIXEL_FORMAT, 0, 0, 0]) + pixel_format.raw


def set_encodings(encodings: Iterable[int]) -> bytes:
    """SetEncodings (client to server)."""
    encodings = list(encodings)
    return struct.pack(f">BxH{len(encodings)}i", SET_ENCODINGS, len(encodings), *encodings)


def framebuffer_update_request(incremental: bool, x: int, y: int, width: int, height: int) -> bytes:
    """FramebufferUpdateRequest (client to server)."""
    return struct.pack(">BBHHHH", FRAMEBUFFER_UPDATE_REQUEST, int(incremental), x, y, width, height)


def rectangle(x: int, y: int, width: int, height: int, encoding: int) -> bytes:
    """A rectangle header inside a FramebufferUpdate."""
    return struct.pack(">HHHHi", x, y, width, height, encoding)


def framebuffer_update(*rectangles: bytes) -> bytes:
    """A FramebufferUpdate of whole rectangles (headers and their data)."""
    return struct.pack(">BxH", FRAMEBUFFER_UPDATE, len(rectangles)) + b"".join(rectangles)


def desktop_size(width: int, height: int) -> bytes:
    """A FramebufferUpdate telling the viewer that the screen is now ``width`` x ``height``."""
    return framebuffer_update(rectangle(0, 0, width, height, DESKTOP_SIZE))


def extended_desktop_size(width: int, height: int) -> bytes:
    """The same news as ExtendedDesktopSize (reason: the server; one screen), for a viewer that asked only for that."""
    screen = struct.pack(">IHHHHI", 0, 0, 0, width, height, 0)
    return framebuffer_update(rectangle(0, 0, width, height, EXTENDED_DESKTOP_SIZE) + b"\x01\x00\x00\x00" + screen)


# -- browser to cloud ---------------------------------------------------------------------------

FIXED_CLIENT_LENGTHS = {SET_PIXEL_FORMAT: 20, FRAMEBUFFER_UPDATE_REQUEST: 10, KEY_EVENT: 8, POINTER_EVENT: 6}


def encodings_of(message: bytes) -> list[int]:
    """The encodings a whole SetEncodings message lists."""
    (count,) = struct.unpack(">H", message[2:4])
    return list(struct.unpack(f">{count}i", message[4 : 4 + 4 * count]))


def filter_encodings(message: bytes) -> bytes:
    """A SetEncodings message keeping only the encodings the relay can frame and resume (order kept)."""
    return set_encodings(e for e in encodings_of(message) if e in ALLOWED_ENCODINGS)


def client_message_length(buffer: bytes | bytearray | memoryview) -> int | None:
    """Length of the client message at the start of ``buffer``, or None until enough of it is there to tell."""
    kind = buffer[0]
    if kind in FIXED_CLIENT_LENGTHS:
        return FIXED_CLIENT_LENGTHS[kind]
    if kind == SET_ENCODINGS:
        return 4 + 4 * struct.unpack(">H", buffer[2:4])[0] if len(buffer) >= 4 else None
    if kind == CLIENT_CUT_TEXT:
        return cut_text_length(buffer) if len(buffer) >= 8 else None
    if kind == SET_DESKTOP_SIZE:
        return 8 + 16 * buffer[6] if len(buffer) >= 7 else None
    if kind == QEMU_CLIENT:
        if len(buffer) < 2:
            return None
        if buffer[1] == QEMU_EXTENDED_KEY_EVENT:
            return 12
        raise RfbError(f"QEMU client message {buffer[1]} is not supported")
    raise RfbError(f"client message type {kind} is not supported")


def cut_text_length(buffer: bytes | bytearray | memoryview) -> int:
    """Length of a ClientCutText message; a negative length is the extended clipboard's, of that many bytes."""
    (length,) = struct.unpack(">i", buffer[4:8])
    if abs(length) > MAX_CUT_TEXT:
        raise RfbError("clipboard text too long")
    return 8 + abs(length)


def supersedes(new: bytes, old: bytes) -> bool:
    """True when ``new`` makes ``old`` pointless while both wait: a pointer move after a move with the same buttons."""
    return new[0] == old[0] == POINTER_EVENT and new[1] == old[1]


def coalesce(messages: list[bytes]) -> list[bytes]:
    """``messages`` with each run of pointer events holding the same buttons merged into its last one.

    A press or a release changes the buttons, so it always starts a run of its own: no button
    change is lost, and nothing moves across a key or any other message.
    """
    merged: list[bytes] = []
    for message in messages:
        if merged and supersedes(message, merged[-1]):
            merged[-1] = message
        else:
            merged.append(message)
    return merged


class ClientFramer:
    """Cuts the browser's byte stream into whole client messages; remembers the last format and encodings.

    SetEncodings comes out already filtered to ``ALLOWED_ENCODINGS``.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        # The last SetPixelFormat and (filtered) SetEncodings, replayed to a new upstream.
        self.pixel_format: PixelFormat | None = None
        self.encodings: list[int] | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """The whole messages ``data`` completes, in order."""
        self.push(data)
        return self.take()

    def push(self, data: bytes) -> None:
        """Add ``data`` to what is waiting to be cut (``take`` cuts it)."""
        self._buffer += data

    def take(self, limit: int | None = None) -> list[bytes]:
        """The whole messages waiting, in order: at most ``limit`` of them, the rest kept for the next call.

        A websocket message may hold a hundred thousand events: taken a slice at a time, they
        never hold the loop for long.
        """
        messages = []
        at = 0
        with memoryview(self._buffer) as view:
            while at < len(view) and len(messages) != limit:
                length = client_message_length(view[at:])
                if length is None or len(view) - at < length:
                    break
                messages.append(self._note(bytes(view[at : at + length])))
                at += length
        del self._buffer[:at]
        return messages

    def _note(self, message: bytes) -> bytes:
        if message[0] == SET_PIXEL_FORMAT:
            self.pixel_format = PixelFormat(message[4:20])
        elif message[0] == SET_ENCODINGS:
            message = filter_encodings(message)
            self.encodings = encodings_of(message)
        return message

    def replay(self, default_format: PixelFormat, width: int, height: int) -> bytes:
        """What a fresh upstream needs to talk as the old one did, then a full update of the screen."""
        parts = [set_pixel_format(self.pixel_format or default_format)]
        if self.encodings is not None:
            parts.append(set_encodings(self.encodings))
        parts.append(framebuffer_update_request(False, 0, 0, width, height))
        return b"".join(parts)


# -- cloud to browser ---------------------------------------------------------------------------

Step = Callable[[bytes], None]
# Filler for the rest of a field: given the bytes of it already sent and its size.
Fill = Callable[[bytes, int], bytes]


def zeros(received: bytes, size: int) -> bytes:
    """The rest of a ``size``-byte field as zeros: counts read from it then never exceed what was coming."""
    return bytes(size - len(received))


class ServerFramer:
    """Follows the server's byte stream message by message without keeping it; can finish a cut message.

    Only the field being read is buffered (at most a 12-byte header); payloads are counted.
    """

    def __init__(self, init: ServerInit) -> None:
        self.bytes_per_pixel = init.pixel_format.bytes_per_pixel
        self.width = init.width
        self.height = init.height
        # What the viewer asked for: filler may only use encodings it understands (Raw always).
        self.accepted: frozenset[int] = frozenset()
        self._field = bytearray()
        self._need = 0
        self._step: Step = self._on_type
        self._fill: Fill = zeros
        self._skip = 0
        self._after_skip: Callable[[], None] = self._end_message
        self._ended = False
        self._rects = 0
        self._rect = (0, 0, 0, 0)
        self._tile = 0
        self._expect_type()

    @property
    def at_boundary(self) -> bool:
        """True between messages."""
        return self._step == self._on_type and not self._field and not self._skip

    def follow(self, message: bytes) -> None:
        """Take note of a client message that changes what the server sends (pixel format, encodings)."""
        if message[0] == SET_PIXEL_FORMAT:
            self.bytes_per_pixel = PixelFormat(message[4:20]).bytes_per_pixel
        elif message[0] == SET_ENCODINGS:
            self.accepted = frozenset(encodings_of(message))

    def feed(self, data: bytes) -> list[int]:
        """Advance over ``data``; the offsets in it just after each message that ends there."""
        ends = []
        view = memoryview(data)
        at = 0
        while at < len(view):
            if self._skip:
                taken = min(self._skip, len(view) - at)
                self._skip -= taken
                if not self._skip:
                    self._after_skip()
            else:
                taken = min(self._need - len(self._field), len(view) - at)
                self._field += view[at : at + taken]
                if len(self._field) == self._need:
                    field = bytes(self._field)
                    self._field.clear()
                    self._step(field)
            at += taken
            if self._ended:
                ends.append(at)
                self._ended = False
        return ends

    def complete(self) -> bytes:
        """Filler that finishes the message under way (empty between messages), as if the server had sent it."""
        filler = bytearray()
        while not self.at_boundary:
            part = bytes(self._skip) if self._skip else self._fill(bytes(self._field), self._need)
            self.feed(part)
            filler += part
        return bytes(filler)

    def resize(self, width: int, height: int) -> bytes:
        """The update that tells the viewer of a new screen size (empty if unchanged or it cannot be told)."""
        if (width, height) == (self.width, self.height):
            return b""
        self.width, self.height = width, height
        if DESKTOP_SIZE in self.accepted:
            return desktop_size(width, height)
        if EXTENDED_DESKTOP_SIZE in self.accepted:
            return extended_desktop_size(width, height)
        return b""

    # -- the state machine: each state reads one field, or skips a payload --------------------

    def _expect(self, size: int, step: Step, fill: Fill = zeros) -> None:
        self._need, self._step, self._fill = size, step, fill

    def _skip_then(self, size: int, after: Callable[[], None]) -> None:
        if size:
            self._skip, self._after_skip = size, after
        else:
            after()

    def _expect_type(self) -> None:
        self._expect(1, self._on_type)

    def _end_message(self) -> None:
        self._ended = True
        self._expect_type()

    def _on_type(self, field: bytes) -> None:
        kind = field[0]
        if kind == FRAMEBUFFER_UPDATE:
            self._expect(3, self._on_update)
        elif kind == SET_COLOUR_MAP_ENTRIES:
            self._expect(5, lambda f: self._skip_then(6 * struct.unpack(">H", f[3:5])[0], self._end_message))
        elif kind == BELL:
            self._end_message()
        elif kind == SERVER_CUT_TEXT:
            self._expect(7, lambda f: self._skip_then(abs(struct.unpack(">i", f[3:7])[0]), self._end_message))
        else:
            raise RfbError(f"server message type {kind} cannot be framed")

    def _on_update(self, field: bytes) -> None:
        (self._rects,) = struct.unpack(">H", field[1:3])
        self._next_rect()

    def _next_rect(self) -> None:
        if self._rects:
            self._expect(12, self._on_rect, self._fill_rect)
        else:
            self._end_message()

    def _on_rect(self, field: bytes) -> None:
        x, y, width, height, encoding = struct.unpack(">HHHHi", field)
        self._rects -= 1
        self._rect = (x, y, width, height)
        bpp = self.bytes_per_pixel
        if encoding == RAW:
            self._skip_then(width * height * bpp, self._next_rect)
        elif encoding == COPY_RECT:
            self._skip_then(4, self._next_rect)
        elif encoding == RRE:
            self._expect(4 + bpp, lambda f: self._skip_then(struct.unpack(">I", f[:4])[0] * (bpp + 8), self._next_rect))
        elif encoding == HEXTILE:
            self._tile = 0
            self._next_tile()
        elif encoding == CURSOR:
            self._skip_then(width * height * bpp + (width + 7) // 8 * height, self._next_rect)
        elif encoding == EXTENDED_DESKTOP_SIZE:
            self._on_extended_desktop_size(x, y, width, height)
        elif encoding in (DESKTOP_SIZE, LAST_RECT, QEMU_EXTENDED_KEY):
            self._on_pseudo_rect(encoding, width, height)
        else:
            raise RfbError(f"encoding {encoding} cannot be framed")

    def _on_pseudo_rect(self, encoding: int, width: int, height: int) -> None:
        if encoding == DESKTOP_SIZE:
            self.width, self.height = width, height
        elif encoding == LAST_RECT:
            self._rects = 0
        self._next_rect()

    def _on_extended_desktop_size(self, reason: int, status: int, width: int, height: int) -> None:
        # As noVNC reads it: only a refused request from this client (reason 1, status set) keeps the size.
        if not (reason == 1 and status):
            self.width, self.height = width, height
        self._expect(4, lambda f: self._skip_then(16 * f[0], self._next_rect))

    def _fill_rect(self, received: bytes, size: int) -> bytes:
        """The rest of a rectangle header: one that ends the update at once when the header is not begun."""
        if not received:
            # One LastRect ends the update; without it, every rectangle still due, empty (no data).
            if LAST_RECT in self.accepted:
                return rectangle(0, 0, 0, 0, LAST_RECT)
            return rectangle(0, 0, 0, 0, RAW) * self._rects
        position = zeros(received[:8], 8)
        sent = received[8:]
        return position + struct.pack(">i", self._filler_encoding(sent))[len(sent) :]

    def _filler_encoding(self, sent: bytes) -> int:
        """An encoding the viewer accepts that starts with the bytes sent, costing as little filler as can be."""
        for encoding in FILLER_ENCODINGS:
            understood = encoding == RAW or encoding in self.accepted
            if understood and struct.pack(">i", encoding).startswith(sent):
                return encoding
        raise RfbError("a cut rectangle header cannot be finished with an encoding the viewer accepts")

    # -- hextile: 16x16 tiles, left to right, top to bottom -----------------------------------------

    def _next_tile(self) -> None:
        _, _, width, height = self._rect
        columns, rows = -(-width // 16), -(-height // 16)
        if self._tile == columns * rows:
            self._next_rect()
            return
        self._expect(1, self._on_tile, self._fill_tile)

    def _tile_size(self) -> tuple[int, int]:
        _, _, width, height = self._rect
        columns = -(-width // 16)
        column, row = self._tile % columns, self._tile // columns
        return min(16, width - 16 * column), min(16, height - 16 * row)

    def _on_tile(self, field: bytes) -> None:
        flags = field[0]
        if flags >= 32:
            raise RfbError(f"hextile subencoding {flags} is not RFB")
        bpp = self.bytes_per_pixel
        tile_width, tile_height = self._tile_size()
        self._tile += 1
        if flags & HEXTILE_RAW:
            self._skip_then(tile_width * tile_height * bpp, self._next_tile)
            return
        colours = bpp * (bool(flags & HEXTILE_BACKGROUND) + bool(flags & HEXTILE_FOREGROUND))
        if not flags & HEXTILE_ANY_SUBRECTS:
            self._skip_then(colours, self._next_tile)
            return
        subrect = 2 + (bpp if flags & HEXTILE_SUBRECTS_COLOURED else 0)
        self._expect(colours + 1, lambda f: self._skip_then(f[-1] * subrect, self._next_tile))

    def _fill_tile(self, received: bytes, size: int) -> bytes:
        # A black tile. Not a bare 0 ("same background as before"): noVNC has no background before
        # the first tile that names one.
        return bytes([HEXTILE_BACKGROUND]) + bytes(self.bytes_per_pixel)


def is_input(message: bytes) -> bool:
    """True for what a person does in a console (keys, pointer, paste), not what the viewer asks on its own."""
    kind = message[0]
    return kind in (KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT) or (
        kind == QEMU_CLIENT and message[1] == QEMU_EXTENDED_KEY_EVENT
    )


def is_key_press(message: bytes) -> bool:
    """True for a key going down, as a KeyEvent or QEMU's extended key event."""
    if message[0] == KEY_EVENT:
        return bool(message[1])
    return message[0] == QEMU_CLIENT and message[1] == QEMU_EXTENDED_KEY_EVENT and any(message[2:4])


def key_of(message: bytes) -> tuple[int, bool] | None:
    """(keysym, down) of a KeyEvent or QEMU's extended key event; None for any other message."""
    if message[0] == KEY_EVENT:
        return struct.unpack(">I", message[4:8])[0], bool(message[1])
    if message[0] == QEMU_CLIENT and message[1] == QEMU_EXTENDED_KEY_EVENT:
        return struct.unpack(">I", message[4:8])[0], any(message[2:4])
    return None
