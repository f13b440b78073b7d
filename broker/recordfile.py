"""A console recording on disk, as the relay writes it and the web app reads it: names, ids, framing.

Shared by ``broker.relay.recording`` (the writer, which must not know Flask) and
``broker.services.recordings`` (the reader, which may not import the relay). One recording is a
directory named by its id, holding:

- ``meta.json``: who, which server, when; written at the start and rewritten at the close.
- ``seg-000000.gz``...: the server's bytes after ServerInit, as ``>II`` (milliseconds since the start,
  length) records in a gzip stream flushed (``Z_SYNC_FLUSH``) about once a second, so a file cut by
  a crash still reads up to its last flush. Each segment after the first starts at a keyframe: the
  relay asked the server for a full screen there, so playback can start at any segment. A serial
  console's recording (``kind`` "serial" in its metadata, no ServerInit) holds the text the server
  printed, the history the first browser was shown first, in one segment: playback replays it from the
  start, which text makes cheap.
- ``index.jsonl``: one JSON object a line, ``{"t": ms, "kind": ...}``: segments (with the screen size
  at their start), events (typing bursts, hand-overs, Ctrl-Alt-Del...), idle gaps, the end.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

VERSION = 1
META = "meta.json"
INDEX = "index.jsonl"
# 20261205T173000-0123456789ab: UTC start second (so names sort by time), then 48 random bits, so that
# relays on several hosts never pick the same name in one shared directory.
ID = re.compile(r"\A[0-9]{8}T[0-9]{6}-[0-9a-f]{12}\Z")
RECORD = struct.Struct(">II")
# gzip framing for zlib (a header and trailer that gunzip reads too).
GZIP_WBITS = 16 + zlib.MAX_WBITS


def is_id(text: str) -> bool:
    """True for a recording id and nothing else (no dots, slashes or encodings: safe in paths and URLs)."""
    return bool(ID.match(text))


def segment_name(number: int) -> str:
    """The file name of segment ``number``."""
    return f"seg-{number:06d}.gz"


def read_segment(path: Path) -> bytes:
    """The bytes of a segment file, up to its last flush when a crash cut it (no trailer, or a torn block)."""
    inflater = zlib.decompressobj(GZIP_WBITS)
    out = bytearray()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 16):
            try:
                out += inflater.decompress(chunk)
            except zlib.error:
                break  # a block torn by the crash: what came before it stands
    return whole_records(bytes(out))


def whole_records(data: bytes) -> bytes:
    """``data`` without a last record that a crash left short."""
    at = 0
    while at + RECORD.size <= len(data):
        _, length = RECORD.unpack_from(data, at)
        if at + RECORD.size + length > len(data):
            break
        at += RECORD.size + length
    return data[:at]


def records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(milliseconds, bytes) of each record of a segment's bytes."""
    at = 0
    while at + RECORD.size <= len(data):
        when, length = RECORD.unpack_from(data, at)
        yield when, data[at + RECORD.size : at + RECORD.size + length]
        at += RECORD.size + length


def read_index(path: Path) -> list[dict]:
    """The index lines of a recording; a last line a crash cut short is left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return [entry for entry in entries if isinstance(entry, dict) and isinstance(entry.get("t"), int)]
