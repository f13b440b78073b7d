"""RFB framing byte by byte: whole messages however the stream is cut, and filler that keeps a viewer in step."""

from __future__ import annotations

import struct

import pytest

from broker.relay import rfb
from broker.relay.rfb import ClientFramer
from broker.relay.rfb import PixelFormat
from broker.relay.rfb import RfbError
from broker.relay.rfb import ServerFramer
from broker.relay.rfb import ServerInit

# 32 bits per pixel, depth 24, little-endian true colour (what noVNC asks for).
FORMAT_32 = PixelFormat(bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]))
FORMAT_8 = PixelFormat(bytes([8, 8, 0, 1, 0, 7, 0, 7, 0, 3, 0, 3, 6, 0, 0, 0]))
INIT = ServerInit(640, 480, FORMAT_32, b"guest")
# What noVNC 1.7 sends at full depth (without H.264).
NOVNC_ENCODINGS = [1, 7, -260, 16, 21, 5, 2, 6, 0, -26, -254, -223, -224, -258, -261, -308, -309, -312, -313]
NOVNC_ENCODINGS += [-307, -1063131698, -316, 0x574D5664, -239]


def key(down: bool, keysym: int) -> bytes:
    return struct.pack(">BBxxI", rfb.KEY_EVENT, down, keysym)


def pointer(buttons: int, x: int, y: int) -> bytes:
    return struct.pack(">BBHH", rfb.POINTER_EVENT, buttons, x, y)


def cut_text(text: bytes) -> bytes:
    return struct.pack(">BxxxI", rfb.CLIENT_CUT_TEXT, len(text)) + text


def qemu_key(down: bool, keysym: int, keycode: int) -> bytes:
    return struct.pack(">BBHII", rfb.QEMU_CLIENT, rfb.QEMU_EXTENDED_KEY_EVENT, down, keysym, keycode)


def set_desktop_size(width: int, height: int) -> bytes:
    screen = struct.pack(">IHHHHI", 1, 0, 0, width, height, 0)
    return struct.pack(">BxHHBx", rfb.SET_DESKTOP_SIZE, width, height, 1) + screen


CLIENT_MESSAGES = [
    rfb.set_pixel_format(FORMAT_32),
    rfb.set_encodings([5, 0, -223]),
    rfb.framebuffer_update_request(True, 0, 0, 640, 480),
    key(True, 0x61),
    pointer(1, 10, 20),
    cut_text(b"hello"),
    qemu_key(True, 0x61, 0x1E),
    set_desktop_size(800, 600),
    key(False, 0x61),
]


# -- handshake pieces -----------------------------------------------------------------------------


def test_versions_are_parsed_and_written():
    assert rfb.parse_version(b"RFB 003.008\n") == (3, 8)
    assert rfb.parse_version(b"RFB 003.889\n") == (3, 889)
    assert rfb.version(3, 8) == rfb.VERSION_3_8


@pytest.mark.parametrize("data", [b"RFB 003.008", b"HTTP/1.1 200", b"RFB 00x.008\n", b"RFB 003-008\n"])
def test_what_is_not_a_version_is_refused(data):
    with pytest.raises(RfbError):
        rfb.parse_version(data)


def test_security_none_offer():
    assert rfb.security_types(rfb.SECURITY_NONE) == b"\x01\x01"


def test_server_init_round_trip():
    data = INIT.to_bytes()
    assert data[:4] == b"\x02\x80\x01\xe0"
    assert data[20:24] == b"\x00\x00\x00\x05"
    assert rfb.name_length(data[:24]) == 5
    assert ServerInit.parse(data) == INIT


def test_server_init_with_a_huge_name_is_refused():
    with pytest.raises(RfbError, match="name is too long"):
        rfb.name_length(INIT.to_bytes()[:20] + struct.pack(">I", 1 << 20))


@pytest.mark.parametrize("bits", [0, 24, 64])
def test_pixel_formats_other_than_8_16_32_bits_are_refused(bits):
    with pytest.raises(RfbError):
        PixelFormat(bytes([bits]) + FORMAT_32.raw[1:])


def test_desktop_size_update_bytes():
    assert rfb.desktop_size(800, 600) == bytes.fromhex("00 00 0001  0000 0000 0320 0258 ffffff21")


def test_extended_desktop_size_update_bytes():
    expected = "00 00 0001  0000 0000 0320 0258 fffffecc  01 000000  00000000 0000 0000 0320 0258 00000000"
    assert rfb.extended_desktop_size(800, 600) == bytes.fromhex(expected)


# -- browser to cloud -------------------------------------------------------------------------------


def test_client_messages_come_out_whole():
    framer = ClientFramer()
    assert framer.feed(b"".join(CLIENT_MESSAGES)) == CLIENT_MESSAGES


def test_client_stream_split_at_every_offset_gives_the_same_messages():
    stream = b"".join(CLIENT_MESSAGES)
    for cut in range(len(stream) + 1):
        framer = ClientFramer()
        assert framer.feed(stream[:cut]) + framer.feed(stream[cut:]) == CLIENT_MESSAGES, cut


def test_client_stream_fed_a_byte_at_a_time():
    framer = ClientFramer()
    stream = b"".join(CLIENT_MESSAGES)
    assert [m for i in range(len(stream)) for m in framer.feed(stream[i : i + 1])] == CLIENT_MESSAGES


def test_set_encodings_keeps_only_what_the_relay_can_resume_in_order():
    framer = ClientFramer()
    [message] = framer.feed(rfb.set_encodings(NOVNC_ENCODINGS))
    kept = [1, 5, 2, 0, -26, -254, -223, -224, -258, -308, -239]
    assert message == bytes.fromhex("02 00 000b") + struct.pack(">11i", *kept)
    assert framer.encodings == kept


def test_the_last_format_and_encodings_are_remembered():
    framer = ClientFramer()
    assert framer.pixel_format is None and framer.encodings is None
    framer.feed(rfb.set_pixel_format(FORMAT_8) + rfb.set_encodings([7, 0]) + rfb.set_pixel_format(FORMAT_32))
    framer.feed(rfb.set_encodings([16, 5]) + key(True, 1))
    assert framer.pixel_format == FORMAT_32
    assert framer.encodings == [5]


def test_replay_sets_format_and_encodings_then_asks_for_the_whole_screen():
    framer = ClientFramer()
    framer.feed(rfb.set_pixel_format(FORMAT_8) + rfb.set_encodings([16, 5, -223]))
    replay = framer.replay(FORMAT_32, 1024, 768)
    assert replay == (
        bytes.fromhex("00 000000")
        + FORMAT_8.raw
        + bytes.fromhex("02 00 0002 00000005 ffffff21")
        # Non-incremental, x 0, y 0, 1024 x 768.
        + bytes.fromhex("03 00 0000 0000 0400 0300")
    )


def test_replay_before_the_viewer_chose_a_format_uses_the_one_it_was_given():
    assert ClientFramer().replay(FORMAT_32, 640, 480) == (
        rfb.set_pixel_format(FORMAT_32) + rfb.framebuffer_update_request(False, 0, 0, 640, 480)
    )


def test_extended_clipboard_length_is_its_absolute_value():
    message = struct.pack(">Bxxxi", rfb.CLIENT_CUT_TEXT, -4) + b"\x00\x00\x00\x01"
    assert ClientFramer().feed(message + key(True, 1)) == [message, key(True, 1)]


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x07", "type 7"),
        (b"\xfa\x00", "type 250"),
        (b"\xff\x01\x00\x00", "QEMU client message 1"),
        (struct.pack(">BxxxI", rfb.CLIENT_CUT_TEXT, rfb.MAX_CUT_TEXT + 1), "too long"),
    ],
)
def test_client_messages_the_relay_cannot_frame_are_refused(data, match):
    with pytest.raises(RfbError, match=match):
        ClientFramer().feed(key(True, 1) + data)


def test_a_pointer_move_supersedes_a_move_with_the_same_buttons_only():
    assert rfb.supersedes(pointer(0, 5, 5), pointer(0, 1, 1))
    assert not rfb.supersedes(pointer(1, 5, 5), pointer(0, 1, 1))
    assert not rfb.supersedes(pointer(0, 5, 5), key(True, 1))
    assert not rfb.supersedes(key(True, 1), key(True, 1))


def test_client_messages_are_taken_a_slice_at_a_time_and_the_rest_waits():
    framer = ClientFramer()
    stream = b"".join(CLIENT_MESSAGES)
    framer.push(stream + stream[:3])  # and the start of one more
    slices = [framer.take(2) for _ in range(0, len(CLIENT_MESSAGES), 2)]
    assert slices == [CLIENT_MESSAGES[n : n + 2] for n in range(0, len(CLIENT_MESSAGES), 2)]
    assert framer.take(2) == []
    assert framer.feed(stream[3:]) == CLIENT_MESSAGES


def test_a_bad_message_is_refused_when_the_slice_reaches_it():
    framer = ClientFramer()
    framer.push(key(True, 1) + key(False, 1) + b"\x07")
    assert framer.take(2) == [key(True, 1), key(False, 1)]
    with pytest.raises(RfbError, match="type 7"):
        framer.take(2)


def test_pointer_moves_with_the_same_buttons_are_merged_into_the_last():
    moves = [pointer(0, x, 1) for x in range(100)]
    assert rfb.coalesce(moves) == [pointer(0, 99, 1)]
    assert rfb.coalesce([pointer(1, 1, 1), pointer(1, 2, 2)]) == [pointer(1, 2, 2)]  # a drag: where it went


def test_presses_and_releases_are_never_merged_away_nor_moved_across_keys():
    clicks = [pointer(n % 2, n, 1) for n in range(10)]
    assert rfb.coalesce(clicks) == clicks
    messages = [
        pointer(0, 1, 1),
        pointer(0, 2, 1),
        pointer(1, 3, 1),  # press
        pointer(1, 4, 1),
        key(True, 0x61),
        key(False, 0x61),
        pointer(1, 5, 1),  # not merged with the move before the keys
        pointer(0, 6, 1),  # release
        pointer(0, 7, 1),
        rfb.framebuffer_update_request(True, 0, 0, 8, 8),
        pointer(0, 8, 1),
    ]
    merged = rfb.coalesce(messages)
    assert merged == [
        pointer(0, 2, 1),
        pointer(1, 4, 1),
        key(True, 0x61),
        key(False, 0x61),
        pointer(1, 5, 1),
        pointer(0, 7, 1),
        rfb.framebuffer_update_request(True, 0, 0, 8, 8),
        pointer(0, 8, 1),
    ]
    # What the cloud sees of the buttons and keys is unchanged: up, down, the key, still down, up.
    changes = [m[1] if m[0] == rfb.POINTER_EVENT else m for m in messages]
    kept = [m[1] if m[0] == rfb.POINTER_EVENT else m for m in merged]
    assert [c for n, c in enumerate(changes) if n == 0 or c != changes[n - 1]] == [
        c for n, c in enumerate(kept) if n == 0 or c != kept[n - 1]
    ]


# -- cloud to browser: framing -------------------------------------------------------------------------


def rect(x, y, width, height, encoding, data=b""):
    return rfb.rectangle(x, y, width, height, encoding) + data


def update(*rects: bytes, count: int | None = None) -> bytes:
    return struct.pack(">BxH", rfb.FRAMEBUFFER_UPDATE, len(rects) if count is None else count) + b"".join(rects)


def hextile_rect(bpp: int) -> bytes:
    """A 20 x 18 hextile rectangle: tiles of 16x16, 4x16, 16x2 and 4x2 using every subencoding flag."""
    pixel = bytes(range(1, bpp + 1))
    raw_tile = bytes([rfb.HEXTILE_RAW]) + pixel * (16 * 16)
    # Background, foreground and two subrectangles in the foreground colour.
    plain = rfb.HEXTILE_BACKGROUND | rfb.HEXTILE_FOREGROUND | rfb.HEXTILE_ANY_SUBRECTS
    plain_tile = bytes([plain]) + pixel + pixel + b"\x02" + b"\x00\x11" + b"\x22\x00"
    # Background and three subrectangles, each with its own colour.
    coloured = rfb.HEXTILE_BACKGROUND | rfb.HEXTILE_ANY_SUBRECTS | rfb.HEXTILE_SUBRECTS_COLOURED
    coloured_tile = bytes([coloured]) + pixel + b"\x03" + (pixel + b"\x00\x00") * 3
    # No flags at all: the whole tile in the last background.
    return rect(0, 0, 20, 18, rfb.HEXTILE, raw_tile + plain_tile + coloured_tile + b"\x00")


def server_messages(bpp: int = 4) -> list[bytes]:
    """One of every server message and rectangle the relay frames."""
    pixel = b"\x7f" * bpp
    screens = struct.pack(">IHHHHI", 0, 0, 0, 800, 600, 0)
    return [
        update(
            rect(0, 0, 3, 2, rfb.RAW, pixel * 6),
            rect(10, 10, 4, 4, rfb.COPY_RECT, b"\x00\x01\x00\x02"),
            rect(0, 0, 8, 8, rfb.RRE, b"\x00\x00\x00\x02" + pixel + (pixel + b"\x00\x01\x00\x01\x00\x02\x00\x02") * 2),
            hextile_rect(bpp),
            # A 3 x 2 cursor: pixels, then a mask of one byte per row.
            rect(1, 1, 3, 2, rfb.CURSOR, pixel * 6 + b"\xe0\xe0"),
            rect(0, 0, 0, 0, rfb.QEMU_EXTENDED_KEY),
        ),
        struct.pack(">BxHH", rfb.SET_COLOUR_MAP_ENTRIES, 0, 2) + b"\x00\x01" * 6,
        bytes([rfb.BELL]),
        struct.pack(">BxxxI", rfb.SERVER_CUT_TEXT, 3) + b"abc",
        update(rect(0, 0, 800, 600, rfb.DESKTOP_SIZE)),
        update(rect(0, 0, 800, 600, rfb.EXTENDED_DESKTOP_SIZE, b"\x01\x00\x00\x00" + screens)),
        # LastRect ends an update that announced more rectangles than it holds.
        update(rect(0, 0, 1, 1, rfb.RAW, pixel), rect(0, 0, 0, 0, rfb.LAST_RECT), count=0xFFFF),
        update(),
    ]


def boundaries(messages: list[bytes]) -> list[int]:
    ends, total = [], 0
    for message in messages:
        total += len(message)
        ends.append(total)
    return ends


def framer(bpp: int = 4, accepted: tuple[int, ...] = ()) -> ServerFramer:
    init = ServerInit(640, 480, FORMAT_32 if bpp == 4 else FORMAT_8, b"guest")
    result = ServerFramer(init)
    result.follow(rfb.set_encodings(accepted))
    return result


@pytest.mark.parametrize("bpp", [4, 1])
def test_server_messages_end_where_they_end(bpp):
    messages = server_messages(bpp)
    stream = b"".join(messages)
    following = framer(bpp)
    assert following.feed(stream) == boundaries(messages)
    assert following.at_boundary


def test_server_stream_split_at_every_offset_finds_the_same_ends():
    messages = server_messages()
    stream = b"".join(messages)
    for cut in range(len(stream) + 1):
        following = framer()
        ends = following.feed(stream[:cut]) + [cut + end for end in following.feed(stream[cut:])]
        assert ends == boundaries(messages), cut


def test_server_stream_fed_a_byte_at_a_time():
    messages = server_messages()
    stream = b"".join(messages)
    following = framer()
    ends = [i + 1 for i in range(len(stream)) if following.feed(stream[i : i + 1])]
    assert ends == boundaries(messages)


def test_the_framer_is_between_messages_only_at_their_ends():
    messages = server_messages()
    stream = b"".join(messages)
    ends = set(boundaries(messages)) | {0}
    following = framer()
    for i in range(len(stream)):
        assert following.at_boundary == (i in ends), i
        following.feed(stream[i : i + 1])


def test_bytes_per_pixel_follow_the_viewers_set_pixel_format():
    following = framer(4)
    following.follow(rfb.set_pixel_format(FORMAT_8))
    assert following.feed(update(rect(0, 0, 3, 2, rfb.RAW, b"\x01" * 6))) == [4 + 12 + 6]


def test_desktop_size_rectangles_change_the_size_the_framer_knows():
    following = framer()
    following.feed(update(rect(0, 0, 1024, 768, rfb.DESKTOP_SIZE)))
    assert (following.width, following.height) == (1024, 768)
    screens = b"\x01\x00\x00\x00" + struct.pack(">IHHHHI", 0, 0, 0, 800, 600, 0)
    following.feed(update(rect(0, 0, 800, 600, rfb.EXTENDED_DESKTOP_SIZE, screens)))
    assert (following.width, following.height) == (800, 600)
    # A refused request of this viewer (reason 1, status 3) changes nothing.
    following.feed(update(rect(1, 3, 1920, 1080, rfb.EXTENDED_DESKTOP_SIZE, screens)))
    assert (following.width, following.height) == (800, 600)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x04", "server message type 4"),
        (update(rect(0, 0, 1, 1, rfb.encodings_of(rfb.set_encodings([7]))[0])), "encoding 7"),
        (update(rect(0, 0, 16, 16, rfb.HEXTILE, b"\x20")), "hextile subencoding 32"),
    ],
)
def test_server_messages_the_relay_cannot_frame_are_refused(data, match):
    with pytest.raises(RfbError, match=match):
        framer().feed(data)


# -- cloud to browser: finishing a cut message -------------------------------------------------------


def test_nothing_to_finish_between_messages():
    following = framer()
    following.feed(bytes([rfb.BELL]))
    assert following.complete() == b""


def test_a_cut_raw_rectangle_is_finished_with_zeros_and_the_update_ends():
    following = framer(accepted=(rfb.LAST_RECT,))
    # Two rectangles announced; the first, 2 x 2 raw at 4 bytes a pixel, cut after 5 of its 16 bytes.
    sent = update(rect(0, 0, 2, 2, rfb.RAW, b"\x09" * 16), rect(0, 0, 1, 1, rfb.RAW, b"\x09" * 4))[: 4 + 12 + 5]
    following.feed(sent)
    filler = following.complete()
    assert filler == bytes(11) + rfb.rectangle(0, 0, 0, 0, rfb.LAST_RECT)
    assert following.at_boundary


def test_without_last_rect_the_remaining_rectangles_are_empty_raw_ones():
    following = framer()
    sent = update(rect(0, 0, 2, 2, rfb.RAW, b"\x09" * 16), count=3)[: 4 + 12 + 5]
    following.feed(sent)
    assert following.complete() == bytes(11) + rfb.rectangle(0, 0, 0, 0, rfb.RAW) * 2


def test_a_cut_rectangle_count_counts_no_more_than_the_server_meant():
    # 0x0102 rectangles announced, cut after the count's first byte: the filler's zero makes it 0x0100.
    following = framer()
    following.feed(b"\x00\x00\x01")
    filler = following.complete()
    assert filler == b"\x00" + rfb.rectangle(0, 0, 0, 0, rfb.RAW) * 0x100
    with_last_rect = framer(accepted=(rfb.LAST_RECT,))
    with_last_rect.feed(b"\x00\x00\x01")
    assert with_last_rect.complete() == b"\x00" + rfb.rectangle(0, 0, 0, 0, rfb.LAST_RECT)


def test_a_cut_update_header_with_no_count_yet_is_an_empty_update():
    following = framer()
    following.feed(b"\x00")
    assert following.complete() == b"\x00\x00\x00"


@pytest.mark.parametrize(
    "sent, accepted, encoding",
    [
        # Nothing of the encoding yet: LastRect when the viewer knows it, else RRE (black, 8 bytes), else Raw.
        (b"", (rfb.LAST_RECT, rfb.RRE), rfb.LAST_RECT),
        (b"", (rfb.RRE,), rfb.RRE),
        (b"", (), rfb.RAW),
        (b"\x00\x00\x00", (rfb.LAST_RECT, rfb.RRE, rfb.HEXTILE), rfb.RRE),
        (b"\xff\xff", (rfb.LAST_RECT, rfb.CURSOR), rfb.LAST_RECT),
        (b"\xff\xff\xff", (rfb.CURSOR, rfb.DESKTOP_SIZE), rfb.CURSOR),
        (b"\xff\xff\xfe", (rfb.LAST_RECT, rfb.QEMU_EXTENDED_KEY, rfb.EXTENDED_DESKTOP_SIZE), rfb.QEMU_EXTENDED_KEY),
        (b"\xff\xff\xfe", (rfb.EXTENDED_DESKTOP_SIZE,), rfb.EXTENDED_DESKTOP_SIZE),
    ],
)
def test_a_cut_encoding_is_finished_as_one_the_viewer_accepts(sent, accepted, encoding):
    following = framer(accepted=accepted)
    following.feed(update(count=1) + rfb.rectangle(0, 0, 2, 2, 0)[:8] + sent)
    filler = following.complete()
    assert struct.unpack(">i", sent + filler[: 4 - len(sent)])[0] == encoding
    assert following.at_boundary


def test_a_cut_encoding_nothing_accepted_can_finish_is_an_error():
    following = framer(accepted=())
    following.feed(update(count=1) + rfb.rectangle(0, 0, 2, 2, 0)[:8] + b"\xff")
    with pytest.raises(RfbError, match="cannot be finished"):
        following.complete()


def test_a_cut_cursor_is_finished_transparent():
    following = framer(accepted=(rfb.CURSOR,))
    following.feed(update(rect(1, 1, 3, 2, rfb.CURSOR, b"\x01" * 10)))
    assert following.complete() == bytes(24 + 2 - 10)


def test_cut_hextile_tiles_are_finished_black():
    following = framer(accepted=(rfb.HEXTILE,))
    # A 20 x 18 rectangle (four tiles) cut inside the second tile's background colour.
    tile = bytes([rfb.HEXTILE_BACKGROUND]) + b"\x01\x02\x03\x04"
    following.feed(update(rect(0, 0, 20, 18, rfb.HEXTILE, tile + tile[:3])))
    black = bytes([rfb.HEXTILE_BACKGROUND]) + bytes(4)
    assert following.complete() == b"\x00\x00" + black + black


def test_a_cut_hextile_subrectangle_count_is_honoured():
    following = framer()
    flags = rfb.HEXTILE_ANY_SUBRECTS | rfb.HEXTILE_SUBRECTS_COLOURED
    following.feed(update(rect(0, 0, 16, 16, rfb.HEXTILE, bytes([flags, 2]) + b"\x01\x02")))
    # Two subrectangles of 4 + 2 bytes were announced; 2 bytes of the first were sent.
    assert following.complete() == bytes(10)


def test_cut_text_and_colour_maps_are_finished_with_zeros():
    following = framer()
    following.feed(struct.pack(">BxxxI", rfb.SERVER_CUT_TEXT, 5) + b"ab")
    assert following.complete() == b"\x00\x00\x00"
    following.feed(struct.pack(">BxHH", rfb.SET_COLOUR_MAP_ENTRIES, 0, 1) + b"\x00")
    assert following.complete() == bytes(5)


@pytest.mark.parametrize("accepted", [(), (rfb.LAST_RECT, rfb.RRE, rfb.CURSOR, rfb.QEMU_EXTENDED_KEY)])
def test_a_stream_cut_anywhere_and_finished_is_whole_messages(accepted):
    # What the viewer receives: the stream up to the cut, then the filler; a fresh framer (the
    # viewer's view) must find it ends exactly at a message boundary, and the next message frames.
    messages = server_messages()
    if rfb.LAST_RECT not in accepted:
        # A server sends LastRect (and its count of 0xFFFF) only to a viewer that asked for it.
        messages = [m for m in messages if m[2:4] != b"\xff\xff"]
    stream = b"".join(messages)
    accepted = (*accepted, rfb.DESKTOP_SIZE, rfb.EXTENDED_DESKTOP_SIZE, rfb.HEXTILE, rfb.COPY_RECT)
    for cut in range(len(stream) + 1):
        relay, viewer = framer(accepted=accepted), framer(accepted=accepted)
        relay.feed(stream[:cut])
        filler = relay.complete()
        assert relay.at_boundary
        viewer.feed(stream[:cut] + filler)
        assert viewer.at_boundary, cut
        assert viewer.feed(bytes([rfb.BELL])) == [1]


def test_a_finished_stream_goes_on_framing():
    following = framer(accepted=(rfb.LAST_RECT,))
    following.feed(update(rect(0, 0, 2, 2, rfb.RAW, b"\x01" * 7), count=2))
    following.complete()
    messages = server_messages()
    assert following.feed(b"".join(messages)) == boundaries(messages)


# -- a new screen size after a resume ---------------------------------------------------------------


def test_resize_tells_a_viewer_that_asked_for_desktop_size():
    following = framer(accepted=(rfb.DESKTOP_SIZE, rfb.EXTENDED_DESKTOP_SIZE))
    assert following.resize(640, 480) == b""
    assert following.resize(800, 600) == rfb.desktop_size(800, 600)
    assert (following.width, following.height) == (800, 600)


def test_resize_uses_extended_desktop_size_when_that_is_all_the_viewer_knows():
    following = framer(accepted=(rfb.EXTENDED_DESKTOP_SIZE,))
    assert following.resize(800, 600) == rfb.extended_desktop_size(800, 600)


def test_resize_cannot_tell_a_viewer_that_asked_for_neither():
    assert framer().resize(800, 600) == b""
