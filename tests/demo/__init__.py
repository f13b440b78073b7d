"""What the demo console tests share: an in-memory stream and a scripted RFB viewer that reads the screen back."""

from __future__ import annotations

import asyncio
import functools
import struct
import sys
from array import array
from dataclasses import dataclass

from broker.demo import font
from broker.demo import vnc

TYPECODES = {8: "B", 16: "H", 32: "I"}


class Pipe:
    """One direction of an in-memory byte stream: written at one end, read at the other."""

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()

    def write(self, data: bytes) -> None:
        self.reader.feed_data(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def close(self) -> None:
        self.reader.feed_eof()


@dataclass
class Rect:
    x: int
    y: int
    width: int
    height: int
    encoding: int
    size: int  # bytes of payload


class Viewer:
    """A scripted RFB 3.8 client keeping a framebuffer, like noVNC would, over any reader and writer."""

    def __init__(self, reader, writer) -> None:
        self.reader = reader
        self.writer = writer
        self.format = vnc.DEFAULT_FORMAT
        self.width = self.height = 0
        self.name = ""
        self.fb = array("I")
        self.bells = 0

    async def handshake(self) -> None:
        assert await self.reader.readexactly(12) == b"RFB 003.008\n"
        await self.send(b"RFB 003.008\n")
        count = (await self.reader.readexactly(1))[0]
        assert list(await self.reader.readexactly(count)) == [1]
        await self.send(b"\x01")
        assert await self.reader.readexactly(4) == b"\x00\x00\x00\x00"
        await self.send(b"\x01")
        self.width, self.height = struct.unpack(">HH", await self.reader.readexactly(4))
        self.format = vnc.PixelFormat.unpack(await self.reader.readexactly(16))
        (length,) = struct.unpack(">I", await self.reader.readexactly(4))
        self.name = (await self.reader.readexactly(length)).decode()
        self.fb = array(TYPECODES[self.format.bits_per_pixel], [0]) * (self.width * self.height)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def set_pixel_format(self, pixel_format: vnc.PixelFormat) -> None:
        self.writer.write(b"\x00\x00\x00\x00" + pixel_format.pack())
        self.format = pixel_format
        self.fb = array(TYPECODES[pixel_format.bits_per_pixel], [0]) * (self.width * self.height)

    def set_encodings(self, encodings: list[int]) -> None:
        self.writer.write(struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings))

    def request(self, incremental: bool = True, area: tuple[int, int, int, int] | None = None) -> None:
        x, y, width, height = area or (0, 0, self.width, self.height)
        self.writer.write(struct.pack(">B?HHHH", 3, incremental, x, y, width, height))

    def key(self, keysym: int, down: bool = True) -> None:
        self.writer.write(struct.pack(">B?2xI", 4, down, keysym))

    def press(self, keysym: int) -> None:
        self.key(keysym, True)
        self.key(keysym, False)

    def type(self, text: str) -> None:
        for char in text:
            self.press(vnc.RETURN if char == "\n" else ord(char))

    def pointer(self, buttons: int, x: int, y: int) -> None:
        self.writer.write(struct.pack(">BBHH", 5, buttons, x, y))

    def cut_text(self, text: str) -> None:
        data = text.encode("latin-1")
        self.writer.write(struct.pack(">B3xI", 6, len(data)) + data)

    async def update(self) -> list[Rect]:
        """Read server messages up to the next FramebufferUpdate, apply it, and describe its rectangles."""
        await self.writer.drain()
        while True:
            kind = (await self.reader.readexactly(1))[0]
            if kind == 0:
                return await self.read_update()
            assert kind == 2, f"unexpected server message {kind}"
            self.bells += 1

    async def read_update(self) -> list[Rect]:
        (count,) = struct.unpack(">xH", await self.reader.readexactly(3))
        rects = []
        for _ in range(count):
            x, y, width, height, encoding = struct.unpack(">HHHHi", await self.reader.readexactly(12))
            if encoding == vnc.RAW:
                size = width * height * self.format.bits_per_pixel // 8
                self.paint(x, y, width, height, await self.reader.readexactly(size))
            else:
                assert encoding == vnc.COPYRECT
                size = 4
                sx, sy = struct.unpack(">HH", await self.reader.readexactly(4))
                self.copy(sx, sy, x, y, width, height)
            rects.append(Rect(x, y, width, height, encoding, size))
        return rects

    def paint(self, x: int, y: int, width: int, height: int, data: bytes) -> None:
        pixels = array(self.fb.typecode)
        pixels.frombytes(data)
        if self.format.big_endian != (sys.byteorder == "big") and pixels.itemsize > 1:
            pixels.byteswap()
        for row in range(height):
            start = (y + row) * self.width + x
            self.fb[start : start + width] = pixels[row * width : (row + 1) * width]

    def copy(self, sx: int, sy: int, x: int, y: int, width: int, height: int) -> None:
        rows = [self.fb[(sy + r) * self.width + sx : (sy + r) * self.width + sx + width] for r in range(height)]
        for r, pixels in enumerate(rows):
            start = (y + r) * self.width + x
            self.fb[start : start + width] = pixels

    def pixel(self, x: int, y: int) -> int:
        return self.fb[y * self.width + x]

    def value(self, rgb: tuple[int, int, int]) -> int:
        """The pixel value colour ``rgb`` has in this viewer's pixel format."""
        return int.from_bytes(self.format.encode(rgb), "big" if self.format.big_endian else "little")

    def cell(self, row: int, col: int) -> tuple[int, ...]:
        """The lit columns of one cell's glyph rows, read from the framebuffer by sampling each font unit."""
        x0, y0 = col * vnc.CELL_W, row * vnc.CELL_H
        background = self.pixel(x0, y0)
        left = vnc.SCALE // 2
        rows = []
        for unit in range(1, font.HEIGHT + 1):
            lit = [self.pixel(x0 + left + i * vnc.SCALE, y0 + unit * vnc.SCALE) != background for i in range(5)]
            rows.append(int("".join("1" if bit else "0" for bit in lit), 2))
        return tuple(rows)

    def text(self, row: int) -> str:
        """One text row as read off the screen: the cursor reads as ``_``, an unknown shape as U+FFFD."""
        shapes = {rows: char for char, rows in font.GLYPHS.items()}
        return "".join(shapes.get(self.cell(row, col), "\ufffd") for col in range(self.width // vnc.CELL_W)).rstrip()

    def screen(self) -> list[str]:
        return [self.text(row) for row in range(self.height // vnc.CELL_H)]


def synchronous(test):
    """Run an async test on its own event loop, failing rather than hanging after 20 s."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 20))

    return run


async def until(viewer: Viewer, check, tries: int = 50) -> list[Rect]:
    """Ask for updates until ``check()`` holds; the rectangles received on the way."""
    rects: list[Rect] = []
    for _ in range(tries):
        if check():
            return rects
        viewer.request()
        try:
            rects += await asyncio.wait_for(viewer.update(), 5)
        except TimeoutError:
            break
    raise AssertionError("the screen never showed what was expected:\n" + "\n".join(viewer.screen()))
