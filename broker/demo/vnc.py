"""A small RFB 3.8 server (RFC 6143) showing a pretend text console, for the demo cloud.

It speaks over any pair of byte streams (``readexactly`` on one side, ``write`` and ``drain``
on the other), so the console proxy runs it behind a websocket with no TCP socket in between.
The screen is a grid of characters, one per session; only the cells that changed since the last
update are drawn and sent, in whatever true-colour pixel format the client asked for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import struct
import time
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import astuple
from dataclasses import dataclass
from typing import Protocol

from broker.aio import first_to_finish
from broker.demo import font

log = logging.getLogger(__name__)

COLS = 80
ROWS = 25
# The 5x8 font drawn at twice its size, with a blank unit column and row around each letter.
SCALE = 2
CELL_W = (font.WIDTH + 1) * SCALE
CELL_H = (font.HEIGHT + 1) * SCALE
WIDTH = COLS * CELL_W
HEIGHT = ROWS * CELL_H
BLINK = 0.5  # seconds between cursor blinks, like a PC text console

# Colour pairs (foreground, background) a cell can be drawn in.
TEXT, PROMPT, HEADER, NOTE = range(4)
PAIRS = (
    ((0xC0, 0xC0, 0xC0), (0x00, 0x00, 0x00)),
    ((0x55, 0xFF, 0x55), (0x00, 0x00, 0x00)),
    ((0xFF, 0xFF, 0xFF), (0x00, 0x00, 0xAA)),
    ((0x55, 0xFF, 0xFF), (0x00, 0x00, 0x00)),
)

RAW = 0
COPYRECT = 1
MAX_INPUT = 200  # characters on one command line
MAX_CUT_TEXT = 1 << 18  # a larger clipboard is refused rather than buffered
MAX_PASTE = 1000  # characters of a clipboard typed into the console

# Keysyms (X11 keysymdef.h) the shell acts on.
BACKSPACE = 0xFF08
RETURN = 0xFF0D
KP_ENTER = 0xFF8D
CONTROL = (0xFFE3, 0xFFE4)
KEYPAD = {0xFFAA + i: char for i, char in enumerate("*+,-./")} | {0xFFB0 + i: str(i) for i in range(10)}

BLANK = b" " * COLS
# Each byte's cell: a blank unit row on top, then its glyph (or the font's "?").
_CELL_ROWS = [(0, *font.glyph(chr(code))) for code in range(256)]

_VERSION = re.compile(rb"RFB (\d{3})\.(\d{3})\n")
_PIXEL_FORMAT = struct.Struct(">BB??HHHBBB3x")


class ProtocolError(Exception):
    """The client broke RFB or asked for something this server does not do."""


class Reader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


@dataclass(frozen=True)
class PixelFormat:
    """An RFB pixel format (ServerInit, SetPixelFormat)."""

    bits_per_pixel: int
    depth: int
    big_endian: bool
    true_colour: bool
    red_max: int
    green_max: int
    blue_max: int
    red_shift: int
    green_shift: int
    blue_shift: int

    @classmethod
    def unpack(cls, data: bytes) -> PixelFormat:
        return cls(*_PIXEL_FORMAT.unpack(data))

    def pack(self) -> bytes:
        return _PIXEL_FORMAT.pack(*astuple(self))

    def check(self) -> None:
        """Refuse what this server cannot draw: colour maps and odd pixel sizes."""
        if not self.true_colour:
            raise ProtocolError("colour-map pixel formats are not supported")
        if self.bits_per_pixel not in (8, 16, 32):
            raise ProtocolError(f"{self.bits_per_pixel} bits per pixel is not valid RFB")
        channels = (
            (self.red_max, self.red_shift),
            (self.green_max, self.green_shift),
            (self.blue_max, self.blue_shift),
        )
        if any(not top or (top << shift) >> self.bits_per_pixel for top, shift in channels):
            raise ProtocolError("colour channels that do not fit the pixel")

    def encode(self, rgb: tuple[int, int, int]) -> bytes:
        """One pixel of colour ``rgb`` (8 bits a channel) in this format."""
        red, green, blue = rgb
        value = (
            (red * self.red_max // 255) << self.red_shift
            | (green * self.green_max // 255) << self.green_shift
            | (blue * self.blue_max // 255) << self.blue_shift
        )
        return value.to_bytes(self.bits_per_pixel // 8, "big" if self.big_endian else "little")


# What QEMU and most servers start with: 32-bit little-endian xRGB.
DEFAULT_FORMAT = PixelFormat(32, 24, False, True, 255, 255, 255, 16, 8, 0)


class Screen:
    """A grid of characters with a cursor, remembering which cells changed since the last update."""

    TOP = 1  # row 0 is the header bar; the rows below it scroll

    def __init__(self) -> None:
        self.chars = [bytearray(BLANK) for _ in range(ROWS)]  # ASCII codes: a byte a cell
        self.colours = [bytearray(COLS) for _ in range(ROWS)]
        self.row, self.col = self.TOP, 0
        self.cursor_on = True
        # Lines scrolled since the last update: sent as one CopyRect when the client takes it.
        self.scrolled = 0
        # Dirty columns lo..hi-1 of each row (lo >= hi when clean); everything starts dirty.
        self.lo = [0] * ROWS
        self.hi = [COLS] * ROWS

    def mark(self, row: int, lo: int = 0, hi: int = COLS) -> None:
        self.lo[row] = min(self.lo[row], lo)
        self.hi[row] = max(self.hi[row], hi)

    def mark_area(self, rows: range, lo: int, hi: int) -> None:
        for row in rows:
            self.mark(row, lo, hi)

    def dirty(self) -> bool:
        return self.scrolled > 0 or any(lo < hi for lo, hi in zip(self.lo, self.hi, strict=True))

    def take_spans(self) -> list[tuple[int, int, int]]:
        """The dirty (row, lo, hi) spans, top to bottom, leaving every row clean."""
        spans = [(row, lo, hi) for row, (lo, hi) in enumerate(zip(self.lo, self.hi, strict=True)) if lo < hi]
        self.lo = [COLS] * ROWS
        self.hi = [0] * ROWS
        return spans

    def cell_rows(self, row: int, col: int) -> tuple[int, ...]:
        """The lit columns of each unit row of one cell: a blank row on top, then the glyph."""
        rows = _CELL_ROWS[self.chars[row][col]]
        if self.cursor_on and (row, col) == (self.row, self.col):
            # An underline cursor in the descender row, as on a PC text console.
            rows = (*rows[:-1], rows[-1] | (1 << font.WIDTH) - 1)
        return rows

    def put(self, char: str, colour: int) -> None:
        """Draw one character at the cursor and move right, wrapping to the next line."""
        self.chars[self.row][self.col] = ord(char) if " " <= char <= "~" else ord("?")
        self.colours[self.row][self.col] = colour
        self.mark(self.row, self.col, self.col + 1)
        if self.col + 1 < COLS:
            self.move(self.row, self.col + 1)
        else:
            self.newline()

    def write(self, text: str, colour: int = TEXT) -> None:
        for char in text:
            self.put(char, colour)

    def newline(self) -> None:
        if self.row + 1 == ROWS:
            self.scroll()
            self.move(self.row, 0)
        else:
            self.move(self.row + 1, 0)

    def move(self, row: int, col: int) -> None:
        """Put the cursor at (row, col), redrawing the cells it leaves and enters."""
        self.mark(self.row, self.col, self.col + 1)
        self.row, self.col = row, col
        self.cursor_on = True
        self.mark(row, col, col + 1)

    def back(self) -> None:
        """Move the cursor one cell left, to the end of the line above at the left edge, and blank it."""
        if self.col > 0:
            self.move(self.row, self.col - 1)
        elif self.row > self.TOP:
            self.move(self.row - 1, COLS - 1)
        self.chars[self.row][self.col] = BLANK[0]

    def scroll(self) -> None:
        """Move the scrolling rows up one line; their dirty marks move with them."""
        # The client's copy of the cursor moves up too, so its cell must be redrawn there.
        self.mark(self.row, self.col, self.col + 1)
        for rows in (self.chars, self.colours, self.lo, self.hi):
            rows[self.TOP : ROWS - 1] = rows[self.TOP + 1 :]
        self.chars[-1] = bytearray(BLANK)
        self.colours[-1] = bytearray(COLS)
        self.lo[-1], self.hi[-1] = 0, COLS
        self.scrolled += 1

    def clear(self) -> None:
        """Blank the scrolling rows and home the cursor."""
        for row in range(self.TOP, ROWS):
            self.chars[row] = bytearray(BLANK)
            self.colours[row] = bytearray(COLS)
            self.mark(row)
        self.move(self.TOP, 0)

    def header(self, left: str, right: str) -> None:
        """Fill the header bar: ``left`` at the start, ``right`` at the end."""
        text = left[: COLS - len(right)].ljust(COLS - len(right)) + right
        self.chars[0] = bytearray(text[:COLS].encode("ascii", "replace"))
        self.colours[0] = bytearray([HEADER] * COLS)
        self.mark(0)

    def toggle_cursor(self) -> None:
        self.cursor_on = not self.cursor_on
        self.mark(self.row, self.col, self.col + 1)

    def text(self, row: int) -> str:
        return self.chars[row].decode().rstrip()


class Shell:
    """The pretend machine behind the screen: a prompt that echoes typing and answers each line."""

    def __init__(self, screen: Screen, name: str) -> None:
        self.screen = screen
        self.name = name
        self.host = name[:24] or "demo"
        self.line = ""
        self.control = False

    def start(self) -> None:
        self.screen.header(f" demo console of {self.name}", "type 'help' ")
        self.screen.write("Console Broker demo cloud: a pretend server console. Nothing you type runs.", NOTE)
        self.screen.newline()
        self.screen.newline()
        self.prompt()

    def prompt(self) -> None:
        self.screen.write(f"demo@{self.host}:~$ ", PROMPT)

    def key(self, keysym: int, down: bool) -> bool:
        """Act on one key event; True when the key could not be taken (ring the bell)."""
        if keysym in CONTROL:
            self.control = down
            return False
        if not down:
            return False
        if self.control:
            return self.control_key(keysym)
        if keysym in (RETURN, KP_ENTER):
            self.enter()
            return False
        if keysym == BACKSPACE:
            return not self.erase()
        char = KEYPAD.get(keysym) or (chr(keysym) if 0x20 <= keysym < 0x7F else "")
        return bool(char) and not self.type(char)

    def type(self, char: str) -> bool:
        if len(self.line) >= MAX_INPUT:
            return False
        self.line += char
        self.screen.put(char, TEXT)
        return True

    def erase(self) -> bool:
        if not self.line:
            return False
        self.line = self.line[:-1]
        self.screen.back()
        return True

    def enter(self) -> None:
        line, self.line = self.line, ""
        self.screen.newline()
        for reply in self.answer(line.split()):
            self.screen.write(reply)
            self.screen.newline()
        self.prompt()

    def answer(self, words: list[str]) -> list[str]:
        """The canned reply to a command line (``clear`` clears instead)."""
        if not words:
            return []
        command = words[0]
        if command == "clear":
            self.screen.clear()
            return []
        replies = {
            "help": ["A demo console: what you type is echoed and answered, but nothing runs.", _COMMANDS],
            "echo": [" ".join(words[1:])],
            "hostname": [self.name],
            "whoami": ["demo"],
            "date": [time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())],
        }
        return replies.get(command, [f"demo: {command}: command not found"])

    def control_key(self, keysym: int) -> bool:
        """Ctrl+C abandons the line, Ctrl+L clears the screen, Ctrl+U erases the line."""
        letter = chr(keysym).lower() if keysym < 0x80 else ""
        if letter == "c":
            self.screen.write("^C")
            self.line = ""
            self.enter()
        elif letter == "l":
            self.screen.clear()
            self.prompt()
            self.screen.write(self.line)
        elif letter == "u":
            while self.erase():
                pass
        else:
            return True
        return False

    def paste(self, text: str) -> None:
        """Type a clipboard in, a newline pressing Return."""
        for char in text[:MAX_PASTE]:
            if char == "\n":
                self.enter()
            elif " " <= char <= "~":
                self.type(char)


_COMMANDS = "Try: help, echo, hostname, whoami, date, clear; Ctrl+C, Ctrl+L, Ctrl+U."


class Painter:
    """The pixels of text cells in one pixel format, built from pieces computed once per format."""

    def __init__(self, pixel_format: PixelFormat) -> None:
        pixel_format.check()
        self.format = pixel_format
        colours = [(pixel_format.encode(fg), pixel_format.encode(bg)) for fg, bg in PAIRS]
        # One scanline piece per (lit columns, colour pair): drawing a cell row is a lookup, not a loop.
        self.pieces = {
            (bits, pair): _piece(bits, fg, bg)
            for bits in range(1 << font.WIDTH)
            for pair, (fg, bg) in enumerate(colours)
        }

    def cells(self, screen: Screen, row: int, lo: int, hi: int) -> bytes:
        """The pixels of cells lo..hi-1 of one text row, scanline by scanline."""
        cells = [(screen.cell_rows(row, col), screen.colours[row][col]) for col in range(lo, hi)]
        lines = []
        for unit in range(font.HEIGHT + 1):
            lines.append(b"".join([self.pieces[rows[unit], pair] for rows, pair in cells]) * SCALE)
        return b"".join(lines)


@functools.lru_cache(maxsize=16)
def painter(pixel_format: PixelFormat) -> Painter:
    """The painter for a pixel format, shared by every session that uses the format."""
    return Painter(pixel_format)


def _piece(bits: int, fg: bytes, bg: bytes) -> bytes:
    """One unit row of one cell: a margin, the glyph's columns at SCALE pixels each, a margin."""
    left = SCALE // 2
    columns = [fg if bits >> (font.WIDTH - 1 - i) & 1 else bg for i in range(font.WIDTH)]
    return bg * left + b"".join(c * SCALE for c in columns) + bg * (SCALE - left)


def _rect(x: int, y: int, width: int, height: int, encoding: int) -> bytes:
    return struct.pack(">HHHHi", x, y, width, height, encoding)


def merge(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Join dirty spans of consecutive rows covering the same columns: (first, end, lo, hi)."""
    blocks: list[tuple[int, int, int, int]] = []
    for row, lo, hi in spans:
        if blocks and blocks[-1][1] == row and blocks[-1][2:] == (lo, hi):
            blocks[-1] = (blocks[-1][0], row + 1, lo, hi)
        else:
            blocks.append((row, row + 1, lo, hi))
    return blocks


class Session:
    """One client's RFB session: the handshake, then client messages in and screen updates out."""

    def __init__(self, reader: Reader, writer: Writer, name: str, blink: float | None) -> None:
        self.reader = reader
        self.writer = writer
        self.name = name
        self.blink = blink
        self.screen = Screen()
        self.shell = Shell(self.screen, name)
        self.painter = painter(DEFAULT_FORMAT)
        self.copyrect = False
        self.wanted = False  # an update request is waiting for an answer
        self.forced = False  # ...and it was non-incremental, so it is answered even with nothing new
        self.bell = False
        self.wake = asyncio.Event()
        self.handlers: dict[int, Callable[[], Awaitable[None]]] = {
            0: self.set_pixel_format,
            2: self.set_encodings,
            3: self.update_request,
            4: self.key_event,
            5: self.pointer_event,
            6: self.cut_text,
        }

    async def run(self) -> None:
        """Handshake, then serve until the client leaves or breaks the protocol."""
        await self.handshake()
        self.shell.start()
        loops = [self.read_loop(), self.write_loop()]
        if self.blink:
            loops.append(self.blink_loop())
        await first_to_finish(*loops)  # raises the reason the session ended, if it was an error

    async def handshake(self) -> None:
        """ProtocolVersion, security type None, SecurityResult, ClientInit, ServerInit."""
        await self.send(b"RFB 003.008\n")
        version = _VERSION.fullmatch(await self.reader.readexactly(12))
        if not version or (int(version[1]), int(version[2])) < (3, 8):
            await self.send(b"\x00" + _string("this server speaks RFB 3.8 only"))
            raise ProtocolError("client asked for an RFB version below 3.8")
        await self.send(b"\x01\x01")  # one security type: None
        if await self.reader.readexactly(1) != b"\x01":
            await self.send(struct.pack(">I", 1) + _string("only security type None is offered"))
            raise ProtocolError("client chose a security type that was not offered")
        await self.send(struct.pack(">I", 0))
        await self.reader.readexactly(1)  # ClientInit's shared flag: every session has its own screen
        await self.send(struct.pack(">HH", WIDTH, HEIGHT) + DEFAULT_FORMAT.pack() + _string(self.name))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_loop(self) -> None:
        while True:
            kind = (await self.reader.readexactly(1))[0]
            handler = self.handlers.get(kind)
            if handler is None:
                raise ProtocolError(f"unknown client message type {kind}")
            await handler()
            self.wake.set()

    async def write_loop(self) -> None:
        """The only writer after the handshake, so messages never interleave."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            out = b""
            if self.bell:
                self.bell = False
                out += b"\x02"
            if self.wanted and (self.forced or self.screen.dirty()):
                self.wanted = self.forced = False
                out += self.update()
            if out:
                await self.send(out)

    async def blink_loop(self) -> None:
        while True:
            await asyncio.sleep(self.blink)
            self.screen.toggle_cursor()
            self.wake.set()

    def update(self) -> bytes:
        """A FramebufferUpdate: the scroll as a CopyRect when possible, then the dirty cells raw."""
        rects = self.scroll_rects()
        for first, end, lo, hi in merge(self.screen.take_spans()):
            header = _rect(lo * CELL_W, first * CELL_H, (hi - lo) * CELL_W, (end - first) * CELL_H, RAW)
            rects.append(header + b"".join(self.painter.cells(self.screen, row, lo, hi) for row in range(first, end)))
        return struct.pack(">BxH", 0, len(rects)) + b"".join(rects)

    def scroll_rects(self) -> list[bytes]:
        """Move what the client shows up by the lines scrolled, or redraw the scrolling rows."""
        lines, self.screen.scrolled = self.screen.scrolled, 0
        height = ROWS - Screen.TOP - lines
        if not lines:
            return []
        if not self.copyrect or height <= 0:
            self.screen.mark_area(range(Screen.TOP, ROWS), 0, COLS)
            return []
        top = Screen.TOP * CELL_H
        return [_rect(0, top, WIDTH, height * CELL_H, COPYRECT) + struct.pack(">HH", 0, top + lines * CELL_H)]

    async def set_pixel_format(self) -> None:
        pixel_format = PixelFormat.unpack((await self.reader.readexactly(19))[3:])
        self.painter = painter(pixel_format)

    async def set_encodings(self) -> None:
        (count,) = struct.unpack(">xH", await self.reader.readexactly(3))
        encodings = struct.unpack(f">{count}i", await self.reader.readexactly(4 * count))
        # Raw is always understood; anything else the client lists is simply not used.
        self.copyrect = COPYRECT in encodings

    async def update_request(self) -> None:
        incremental, x, y, width, height = struct.unpack(">?HHHH", await self.reader.readexactly(9))
        self.wanted = True
        if not incremental:
            self.forced = True
            rows = range(y // CELL_H, min(ROWS, -(-(y + height) // CELL_H)))
            self.screen.mark_area(rows, x // CELL_W, min(COLS, -(-(x + width) // CELL_W)))

    async def key_event(self) -> None:
        down, keysym = struct.unpack(">?2xI", await self.reader.readexactly(7))
        if self.shell.key(keysym, down):
            self.bell = True

    async def pointer_event(self) -> None:
        await self.reader.readexactly(5)  # a text console has no use for the mouse

    async def cut_text(self) -> None:
        (length,) = struct.unpack(">3xi", await self.reader.readexactly(7))
        # A negative length is the Extended Clipboard format, which this server never offers.
        if abs(length) > MAX_CUT_TEXT:
            raise ProtocolError("clipboard too large")
        text = await self.reader.readexactly(abs(length))
        if length >= 0:
            self.shell.paste(text.decode("latin-1"))


def _string(text: str) -> bytes:
    """An RFB string: a 32-bit length, then the bytes."""
    data = text.encode()
    return struct.pack(">I", len(data)) + data


async def serve(reader: Reader, writer: Writer, *, name: str, blink: float | None = BLINK) -> None:
    """Run one console session for server ``name`` until the client goes away."""
    try:
        await Session(reader, writer, name, blink).run()
    except (asyncio.IncompleteReadError, ConnectionError):
        log.debug("demo console of %s: client left", name)
    except ProtocolError as exc:
        log.info("demo console of %s: closed: %s", name, exc)
