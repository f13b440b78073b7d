"""The demo VNC server, driven by a scripted viewer over an in-memory stream and read back off its pixels."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest

from broker.demo import font
from broker.demo import vnc
from tests.demo import Pipe
from tests.demo import Viewer
from tests.demo import synchronous
from tests.demo import until

PROMPT = "demo@web-01:~$ "
FIRST_PROMPT_ROW = 3
FORMATS = {
    "32-bit little-endian xRGB": vnc.DEFAULT_FORMAT,
    "32-bit big-endian xBGR": vnc.PixelFormat(32, 24, True, True, 255, 255, 255, 0, 8, 16),
    "16-bit little-endian RGB565": vnc.PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0),
    "16-bit big-endian RGB565": vnc.PixelFormat(16, 16, True, True, 31, 63, 31, 11, 5, 0),
    "8-bit BGR233": vnc.PixelFormat(8, 8, False, True, 7, 7, 3, 0, 3, 6),
}
CTRL = vnc.CONTROL[0]


@contextlib.asynccontextmanager
async def connected(name: str = "web-01", blink: float | None = None):
    """A viewer past the handshake with a fresh server session; the session must end when the viewer leaves."""
    to_server, to_viewer = Pipe(), Pipe()
    session = asyncio.create_task(vnc.serve(to_server.reader, to_viewer, name=name, blink=blink))
    viewer = Viewer(to_viewer.reader, to_server)
    await viewer.handshake()
    try:
        yield viewer
    finally:
        to_server.close()
        await asyncio.wait_for(session, 5)


async def full_screen(viewer: Viewer) -> list:
    viewer.request(incremental=False)
    return await viewer.update()


def expected_pixels(viewer: Viewer, char: str, pair: int) -> list[int]:
    """A cell's pixels as the font says they must be: each font unit a SCALE x SCALE block, margins dark."""
    fg, bg = (viewer.value(rgb) for rgb in vnc.PAIRS[pair])
    rows = (0, *font.glyph(char))
    pixels = []
    for y in range(vnc.CELL_H):
        bits = rows[y // vnc.SCALE]
        for x in range(vnc.CELL_W):
            column = (x - vnc.SCALE // 2) // vnc.SCALE
            lit = 0 <= column < font.WIDTH and bits >> (font.WIDTH - 1 - column) & 1
            pixels.append(fg if lit else bg)
    return pixels


def cell_pixels(viewer: Viewer, row: int, col: int) -> list[int]:
    x0, y0 = col * vnc.CELL_W, row * vnc.CELL_H
    return [viewer.pixel(x0 + x, y0 + y) for y in range(vnc.CELL_H) for x in range(vnc.CELL_W)]


def test_font_draws_every_printable_ascii_character_distinctly():
    assert set(font.GLYPHS) == {chr(c) for c in range(0x20, 0x7F)}
    assert all(len(rows) == font.HEIGHT and max(rows) < 1 << font.WIDTH for rows in font.GLYPHS.values())
    shapes = list(font.GLYPHS.values())
    assert len(set(shapes)) == len(shapes)


@synchronous
async def test_handshake_offers_security_none_and_describes_the_screen():
    async with connected() as viewer:
        assert (viewer.width, viewer.height) == (vnc.WIDTH, vnc.HEIGHT) == (960, 450)
        assert viewer.format == vnc.DEFAULT_FORMAT
        assert (viewer.format.bits_per_pixel, viewer.format.true_colour) == (32, True)
        assert viewer.name == "web-01"


@synchronous
async def test_a_name_the_font_cannot_draw_is_named_in_full_and_drawn_with_question_marks():
    async with connected(name="wéb-01") as viewer:
        assert viewer.name == "wéb-01"
        await full_screen(viewer)
        assert viewer.text(0).startswith(" demo console of w?b-01 ")
        assert viewer.text(FIRST_PROMPT_ROW) == "demo@w?b-01:~$ _"


@synchronous
async def test_first_update_draws_the_whole_screen_in_one_rectangle():
    async with connected() as viewer:
        [rect] = await full_screen(viewer)
        assert (rect.x, rect.y, rect.width, rect.height, rect.encoding) == (0, 0, vnc.WIDTH, vnc.HEIGHT, vnc.RAW)
        screen = viewer.screen()
        assert screen[0].startswith(" demo console of web-01 ") and screen[0].endswith("type 'help'")
        assert screen[1].startswith("Console Broker demo cloud")
        assert screen[FIRST_PROMPT_ROW] == PROMPT + "_"
        assert viewer.pixel(0, 0) == viewer.value(vnc.PAIRS[vnc.HEADER][1])


@pytest.mark.parametrize("pixel_format", FORMATS.values(), ids=FORMATS.keys())
@synchronous
async def test_typing_is_echoed_and_answered_in_the_requested_pixel_format(pixel_format):
    async with connected() as viewer:
        viewer.set_pixel_format(pixel_format)
        await full_screen(viewer)
        viewer.type("hello\n")
        await until(viewer, lambda: viewer.text(FIRST_PROMPT_ROW + 2) == PROMPT + "_")
        assert viewer.screen()[FIRST_PROMPT_ROW : FIRST_PROMPT_ROW + 3] == [
            PROMPT + "hello",
            "demo: hello: command not found",
            PROMPT + "_",
        ]
        for offset, char in enumerate("hello"):
            drawn = cell_pixels(viewer, FIRST_PROMPT_ROW, len(PROMPT) + offset)
            assert drawn == expected_pixels(viewer, char, vnc.TEXT), char
        assert cell_pixels(viewer, FIRST_PROMPT_ROW, 0) == expected_pixels(viewer, "d", vnc.PROMPT)


@synchronous
async def test_an_incremental_update_sends_only_the_changed_cells():
    async with connected() as viewer:
        await full_screen(viewer)
        viewer.type("x")
        rects = await until(viewer, lambda: viewer.text(FIRST_PROMPT_ROW) == PROMPT + "x_")
        # The typed letter and the cursor's new cell: two cells of one row, in a single rectangle.
        assert [(r.x, r.y, r.width, r.height) for r in rects] == [
            (len(PROMPT) * vnc.CELL_W, FIRST_PROMPT_ROW * vnc.CELL_H, 2 * vnc.CELL_W, vnc.CELL_H)
        ]


@pytest.mark.parametrize("copyrect", [True, False], ids=["CopyRect", "raw only"])
@synchronous
async def test_scrolling_updates_add_up_to_what_a_full_redraw_shows(copyrect):
    async with connected() as viewer:
        if copyrect:
            viewer.set_encodings([vnc.COPYRECT, vnc.RAW])
        await full_screen(viewer)
        last = vnc.ROWS - 1
        rects = []
        for n in range(20):
            # The viewer sees each line with its cursor before Return scrolls it up.
            viewer.type(f"echo {n}")
            row = min(FIRST_PROMPT_ROW + 2 * n, last)
            rects += await until(viewer, lambda n=n, row=row: viewer.text(row) == PROMPT + f"echo {n}_")
            viewer.type("\n")
        rects += await until(viewer, lambda: viewer.text(last) == PROMPT + "_")
        assert any(r.encoding == vnc.COPYRECT for r in rects) == copyrect
        seen = viewer.fb[:]
        await full_screen(viewer)
        assert viewer.fb == seen
        assert "demo console of web-01" in viewer.text(0)
        assert viewer.screen()[last - 2 :] == [PROMPT + "echo 19", "19", PROMPT + "_"]
        if copyrect:
            # A scroll costs a CopyRect and the new lines, not a redraw of the scrolling rows.
            assert sum(r.size for r in rects) < 20 * 3 * vnc.WIDTH * vnc.CELL_H * 4


@synchronous
async def test_backspace_erases_and_an_empty_line_rings_the_bell():
    async with connected() as viewer:
        await full_screen(viewer)
        viewer.type("help")
        viewer.press(vnc.BACKSPACE)
        viewer.type("lo")
        await until(viewer, lambda: viewer.text(FIRST_PROMPT_ROW) == PROMPT + "hello_")
        for _ in range(6):
            viewer.press(vnc.BACKSPACE)
        await until(viewer, lambda: viewer.text(FIRST_PROMPT_ROW) == PROMPT + "_" and viewer.bells == 1)


@synchronous
async def test_a_long_line_wraps_and_backspace_follows_it_back():
    async with connected() as viewer:
        await full_screen(viewer)
        viewer.type("x" * 70)
        await until(viewer, lambda: viewer.text(FIRST_PROMPT_ROW + 1) == "x" * 5 + "_")
        for _ in range(6):
            viewer.press(vnc.BACKSPACE)
        await until(viewer, lambda: viewer.text(FIRST_PROMPT_ROW) == PROMPT + "x" * 64 + "_")
        assert viewer.text(FIRST_PROMPT_ROW + 1) == ""


@synchronous
async def test_control_keys_interrupt_clear_and_erase():
    async with connected() as viewer:
        await full_screen(viewer)
        viewer.type("sleep")
        viewer.key(CTRL)
        viewer.press(ord("c"))
        viewer.key(CTRL, down=False)
        await until(viewer, lambda: viewer.text(FIRST_PROMPT_ROW + 1) == PROMPT + "_")
        assert viewer.text(FIRST_PROMPT_ROW) == PROMPT + "sleep^C"
        viewer.type("top")
        viewer.key(CTRL)
        viewer.press(ord("l"))
        await until(viewer, lambda: viewer.text(1) == PROMPT + "top_")
        viewer.press(ord("u"))
        await until(viewer, lambda: viewer.text(1) == PROMPT + "_")
        assert viewer.text(2) == ""


@synchronous
async def test_pointer_events_unknown_encodings_and_the_clipboard():
    async with connected() as viewer:
        # Tight, ZRLE, Cursor, ExtendedDesktopSize and a vendor's pseudo-encoding: none used, none refused.
        viewer.set_encodings([7, 16, -239, -308, 0x574D5669, vnc.RAW])
        viewer.pointer(1, 10, 10)
        viewer.pointer(0, 10, 10)
        await full_screen(viewer)
        viewer.cut_text("whoami\nhost")
        await until(viewer, lambda: viewer.text(FIRST_PROMPT_ROW + 2) == PROMPT + "host_")
        assert viewer.text(FIRST_PROMPT_ROW + 1) == "demo"


@synchronous
async def test_a_non_incremental_request_for_part_of_the_screen_redraws_the_cells_under_it():
    async with connected() as viewer:
        await full_screen(viewer)
        viewer.request(incremental=False, area=(13, 20, 5, 5))
        rects = await viewer.update()
        assert [(r.x, r.y, r.width, r.height) for r in rects] == [(vnc.CELL_W, vnc.CELL_H, vnc.CELL_W, vnc.CELL_H)]


@synchronous
async def test_the_cursor_blinks_without_any_input():
    async with connected(blink=0.05) as viewer:
        await full_screen(viewer)
        cursor = (len(PROMPT) * vnc.CELL_W, FIRST_PROMPT_ROW * vnc.CELL_H, vnc.CELL_W, vnc.CELL_H)
        for shown in ("", "_", ""):
            viewer.request()
            rects = await viewer.update()
            assert [(r.x, r.y, r.width, r.height) for r in rects] == [cursor]
            assert viewer.text(FIRST_PROMPT_ROW) == (PROMPT + shown).rstrip()


async def ended(session: asyncio.Task) -> bool:
    await asyncio.wait_for(session, 5)
    return session.done()


@pytest.mark.parametrize(
    "message",
    [
        struct.pack(">B", 99),  # no such client message
        b"\x00\x00\x00\x00" + vnc.PixelFormat(8, 8, False, False, 0, 0, 0, 0, 0, 0).pack(),  # a colour map
        b"\x00\x00\x00\x00" + vnc.PixelFormat(16, 24, False, True, 255, 255, 255, 16, 8, 0).pack(),  # 24 bits in 16
        struct.pack(">B3xI", 6, vnc.MAX_CUT_TEXT + 1),  # a clipboard too large to take
    ],
    ids=["unknown message", "colour map", "channels overflow the pixel", "huge clipboard"],
)
@synchronous
async def test_a_message_the_server_cannot_take_ends_the_session(message):
    to_server, to_viewer = Pipe(), Pipe()
    session = asyncio.create_task(vnc.serve(to_server.reader, to_viewer, name="web-01", blink=None))
    await Viewer(to_viewer.reader, to_server).handshake()
    to_server.write(message)
    assert await ended(session)


@pytest.mark.parametrize(
    ("version", "choice", "answer"),
    [
        (b"RFB 003.003\n", None, b"\x00" + struct.pack(">I", 31) + b"this server speaks RFB 3.8 only"),
        (b"RFB 003.008\n", b"\x02", struct.pack(">II", 1, 34) + b"only security type None is offered"),
    ],
    ids=["RFB 3.3", "VNC authentication"],
)
@synchronous
async def test_handshake_refusals_say_why(version, choice, answer):
    to_server, to_viewer = Pipe(), Pipe()
    session = asyncio.create_task(vnc.serve(to_server.reader, to_viewer, name="web-01", blink=None))
    assert await to_viewer.reader.readexactly(12) == b"RFB 003.008\n"
    to_server.write(version)
    if choice:
        assert await to_viewer.reader.readexactly(2) == b"\x01\x01"
        to_server.write(choice)
    assert await to_viewer.reader.readexactly(len(answer)) == answer
    assert await ended(session)
