"""Recording relay consoles: the server's screen stream and its timing, written as it happens (BROKER_RECORDING).

A graphical console's recorder gets the RFB stream after ServerInit, with keyframes; a serial console's
(broker.relay.serial, one per shared console) gets what the server printed, and no keyframes.
The console calls a ``Recorder`` from the event loop, so every call only appends to a queue; one
writer thread per process compresses and writes each recording about once a second (no fsync:
the page cache survives a killed process, and a flush a second is what a crash may lose). Typed
text never reaches a recorder: the console names only kinds of events ("typing", "ctrl-alt-del",
"type-text" with a length). A write error (disk full) ends that one recording, logged once and
counted; the console goes on. The format is ``broker.recordfile``'s.
"""

from __future__ import annotations

import atexit
import base64
import collections
import contextlib
import json
import logging
import os
import re
import secrets
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from pathlib import Path
from typing import IO
from typing import Any

from broker import recordfile
from broker.config import Settings

log = logging.getLogger(__name__)

# How often the writer thread writes what the consoles queued: what a crash may lose.
FLUSH_INTERVAL = 1.0
# zlib's fastest level: a busy console's stream is compressed at hundreds of MB/s, and an RFB screen
# (hextile of a text console) still shrinks tenfold or more.
LEVEL = 1
# A keyframe (a full screen the relay asks for, where playback can start) once this many seconds
# and bytes have passed, or after KEYFRAME_AT_MOST whatever passed: seeking then replays at most
# about this much, and an idle console's hour holds a dozen screens, not a hundred.
KEYFRAME_EVERY = 30.0
KEYFRAME_BYTES = 1 << 20
KEYFRAME_AT_MOST = 300.0
# Typing this close together is one burst in the index.
BURST_GAP = 2.0
# No typing, event or sizeable screen change for this long is an idle gap in the index.
IDLE_GAP = 60.0
# A chunk from the server smaller than this (a blinking cursor, a clock) is not activity.
ACTIVE_BYTES = 1024
# Queued since the writer was last woken past this, it is woken at once (a busy console: 100 MB/s of raw
# updates would otherwise pile up for a second).
WAKE_BYTES = 4 << 20
# Queued and not yet written past this, the disk is not keeping up: the recording stops rather
# than the relay's memory growing without bound.
MAX_QUEUED = 64 << 20
EVENT_KINDS = frozenset(
    {"typing", "ctrl-alt-del", "type-text", "hand-over", "join", "leave", "observe", "resume", "resize"}
)
SIZE = re.compile(r"\A([0-9]{1,5})x([0-9]{1,5})\Z")


@dataclass(frozen=True)
class Start:
    """What a recording is of: the console's live row, who, which server, and the screen the browser was given
    (none for a serial console: ``init`` and ``pixel_format`` empty, ``kind`` "serial")."""

    row_id: int
    username: str
    server_id: str
    server_name: str
    cloud: str
    kind: str
    instance: str
    client: str
    # Graphical: the ServerInit bytes the browser got; the stream that follows is Recorder.server's.
    init: bytes
    # The 16-byte pixel format the viewer asked for (the server's bytes are in it).
    pixel_format: bytes


def new_id(now: datetime | None = None) -> str:
    """A recording id: UTC start second, then 48 random bits (several relays share one directory)."""
    return f"{(now or datetime.now(UTC)):%Y%m%dT%H%M%S}-{secrets.token_hex(6)}"


def recorders(settings: Settings) -> Callable[[Start], Recorder] | None:
    """What makes a console's recorder, or None when recording is off."""
    if settings.recording == "off":
        return None
    directory = settings.recording_dir
    return lambda start: Recorder(start, directory)


class Recorder:
    """One console's recording; every method is cheap enough for the event loop."""

    def __init__(
        self,
        start: Start,
        directory: Path,
        writer: Writer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Seconds, monotonic: a step of the wall clock changes no timing (tests give their own).
        self.clock = clock
        self.started_at = datetime.now(UTC)
        self.id = new_id(self.started_at)
        self.start = start
        self.path = directory / self.id
        self.began = self.clock()
        self.queue: collections.deque[tuple] = collections.deque()
        # Written by the event loop only: bytes queued, and where the last keyframe was.
        self.queued = 0
        self.keyframe_at = self.began
        self.keyframe_queued = 0
        self.woke_at = 0
        # Written by the writer thread only.
        self.written = 0
        self.failed = False
        self.closing = False
        self.done = threading.Event()
        self.file = RecordingFile(self)
        self.writer = writer or shared_writer()
        self.writer.add(self)

    def now(self) -> int:
        """Milliseconds since the recording began (monotonic: a clock step changes no timing)."""
        return int((self.clock() - self.began) * 1000)

    def server(self, data: bytes) -> None:
        """Server-to-browser bytes as delivered, in order, after ServerInit."""
        if self.failed or self.closing or not data:
            return
        self.queued += len(data)
        if self.queued - self.written > MAX_QUEUED:
            self.failed = True
            log.error("recording %s stopped: the disk does not keep up with the console", self.id)
            WRITE_FAILURES.add()
            return
        self.queue.append(("data", self.now(), data if isinstance(data, bytes) else bytes(data)))
        if self.queued - self.woke_at >= WAKE_BYTES:
            # A busy console: written now rather than at the next second, so a second never piles up.
            self.woke_at = self.queued
            self.writer.wake.set()

    def pixel_format(self, raw: bytes) -> None:
        """The viewer changed the pixel format of what follows."""
        self._put(("format", self.now(), bytes(raw)))

    def event(self, kind: str, detail: str = "") -> None:
        """Something to find in the index, by kind only (never what was typed); ``detail`` a length or size."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"not a recorded event: {kind!r}")
        self._put(("event", self.now(), kind, str(detail)[:64]))

    def keyframe_due(self) -> bool:
        """True when a new seek point is wanted: the console then asks the server for a full screen."""
        if self.failed or self.closing:
            return False
        since = self.clock() - self.keyframe_at
        busy = self.queued - self.keyframe_queued >= KEYFRAME_BYTES
        return since >= KEYFRAME_AT_MOST or (since >= KEYFRAME_EVERY and busy)

    def keyframe(self, width: int | None = None, height: int | None = None) -> None:
        """A seek point, at a server message boundary, just before the full-screen request (size if known)."""
        self.keyframe_at = self.clock()
        self.keyframe_queued = self.queued
        self._put(("keyframe", self.now(), width, height))

    def close(self, reason: str) -> None:
        """The console ended: the writer finishes the files (``wait`` for that, off the event loop)."""
        if self.closing or self.failed:
            self.closing = True
            return
        # Appended before ``closing`` is set, which stops every other call from queueing more.
        self.queue.append(("close", self.now(), reason[:200]))
        self.closing = True
        self.writer.wake.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the recording's files are finished (tests, shutdown); True when they are."""
        return self.done.wait(timeout)

    def _put(self, item: tuple) -> None:
        if not (self.failed or self.closing):
            self.queue.append(item)


class RecordingFile:
    """The writer thread's side of one recording: its open segment, index and what the index is waiting for."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.segment: IO[bytes] | None = None
        self.deflate: Any = None
        self.number = -1
        self.index: IO[str] | None = None
        self.width, self.height = screen_size(recorder.start.init)
        self.pixel_format = recorder.start.pixel_format
        self.raw_bytes = 0
        # The typing burst under way (start, last key) and the last activity, in ms.
        self.burst: tuple[int, int] | None = None
        self.active_at = 0
        self.finished = False

    def open(self) -> None:
        """The recording's directory, its metadata and first segment."""
        path = self.recorder.path
        path.mkdir(mode=0o750, parents=True)
        self.index = path.joinpath(recordfile.INDEX).open("a", encoding="utf-8")
        self.write_meta({})
        self.next_segment(0)

    def drain(self) -> None:
        """Write what the console queued since the last drain, then flush it to the files."""
        queue = self.recorder.queue
        while queue:
            item = queue.popleft()
            getattr(self, "on_" + item[0])(*item[1:])
            if self.finished:
                return
        self.end_quiet_burst(self.recorder.now())
        self.flush()

    def on_data(self, when: int, data: bytes) -> None:
        # Two calls, not one of the header joined to the data: a join copies megabytes of a busy screen.
        header = self.deflate.compress(recordfile.RECORD.pack(when, len(data)))
        self.segment.write(header + self.deflate.compress(data))
        self.raw_bytes += len(data)
        self.recorder.written += len(data)
        if len(data) >= ACTIVE_BYTES:
            self.activity(when)

    def on_format(self, when: int, raw: bytes) -> None:
        self.pixel_format = raw
        self.note(when, "pixel-format", detail=raw.hex())

    def on_event(self, when: int, kind: str, detail: str) -> None:
        if kind == "resize" and (size := SIZE.match(detail)):
            self.width, self.height = int(size[1]), int(size[2])
        if kind == "typing":
            self.typing(when)  # a burst: when it began and ended, nothing of what was typed
            return
        self.activity(when)
        self.note(when, kind, detail=detail)

    def on_keyframe(self, when: int, width: int | None, height: int | None) -> None:
        if width and height:
            self.width, self.height = width, height
        self.next_segment(when)

    def on_close(self, when: int, reason: str) -> None:
        self.end_burst()
        self.idle_until(when)
        self.note(when, "end", detail=reason)
        self.segment.write(self.deflate.flush(zlib.Z_FINISH))
        self.segment.close()
        self.index.close()
        self.finished = True
        self.write_meta({"ended_at": iso_now(), "duration": when / 1000, "reason": reason, "complete": True})

    def typing(self, when: int) -> None:
        if self.burst and when - self.burst[1] <= BURST_GAP * 1000:
            self.burst = (self.burst[0], when)
            return
        self.end_burst()
        self.activity(when)
        self.burst = (when, when)

    def end_quiet_burst(self, now: int) -> None:
        if self.burst and now - self.burst[1] > BURST_GAP * 1000:
            self.end_burst()

    def end_burst(self) -> None:
        if self.burst:
            start, end = self.burst
            self.burst = None
            self.note(start, "typing", end=end)
            self.active_at = max(self.active_at, end)

    def activity(self, when: int) -> None:
        self.idle_until(when)
        self.active_at = when

    def idle_until(self, when: int) -> None:
        if when - self.active_at >= IDLE_GAP * 1000:
            self.note(self.active_at, "idle", end=when)

    def next_segment(self, when: int) -> None:
        if self.segment is not None:
            self.segment.write(self.deflate.flush(zlib.Z_FINISH))
            self.segment.close()
        self.number += 1
        self.deflate = zlib.compressobj(LEVEL, zlib.DEFLATED, recordfile.GZIP_WBITS)
        self.segment = self.recorder.path.joinpath(recordfile.segment_name(self.number)).open("wb")
        self.note(when, "segment", n=self.number, width=self.width, height=self.height)

    def note(self, when: int, kind: str, **fields: object) -> None:
        self.index.write(json.dumps({"t": when, "kind": kind, **fields}, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self.segment.write(self.deflate.flush(zlib.Z_SYNC_FLUSH))
        self.segment.flush()
        self.index.flush()

    def write_meta(self, ending: dict) -> None:
        """meta.json, replaced whole (a reader never sees half of it)."""
        start = self.recorder.start
        meta = {
            "version": recordfile.VERSION,
            "id": self.recorder.id,
            "row_id": start.row_id,
            "username": start.username,
            "server_id": start.server_id,
            "server_name": start.server_name,
            "cloud": start.cloud,
            "kind": start.kind,
            "instance": start.instance,
            "client": start.client,
            "started_at": self.recorder.started_at.isoformat(timespec="seconds"),
            "width": self.width,
            "height": self.height,
            "init": base64.b64encode(start.init).decode(),
            "pixel_format": start.pixel_format.hex(),
            "bytes": self.raw_bytes,
            "segments": self.number + 1,
            **ending,
        }
        path = self.recorder.path / recordfile.META
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(temporary, path)

    def note_failure(self, error: str) -> None:
        """Say in meta.json why the recording stops short, if the disk still takes that much."""
        with contextlib.suppress(OSError):
            self.write_meta({"error": error[:200]})

    def abandon(self) -> None:
        """After a write error: close what is open, ignoring further errors (the disk may still be full)."""
        for handle in (self.segment, self.index):
            try:
                if handle is not None:
                    handle.close()
            except OSError:
                pass


def screen_size(init: bytes) -> tuple[int, int]:
    """Width and height from a ServerInit's first four bytes (0, 0 for a serial console's empty init)."""
    if len(init) < 4:
        return 0, 0
    return int.from_bytes(init[0:2], "big"), int.from_bytes(init[2:4], "big")


def iso_now() -> str:
    """Now, UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Counter:
    """A count shared by threads (recordings stopped by write errors)."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


WRITE_FAILURES = Counter()


class Writer:
    """The thread that writes every recording of this process, about once a second each."""

    def __init__(self, interval: float = FLUSH_INTERVAL) -> None:
        self.interval = interval
        self.recordings: dict[Recorder, bool] = {}
        self.lock = threading.Lock()
        # Held for a pass over the recordings: the thread's, or the last one at exit.
        self.writing = threading.Lock()
        self.wake = threading.Event()
        self.stopped = False
        self.thread = threading.Thread(target=self.run, name="recording-writer", daemon=True)
        self.thread.start()

    def add(self, recorder: Recorder) -> None:
        with self.lock:
            self.recordings[recorder] = False

    def run(self) -> None:
        while not self.stopped:
            self.wake.wait(self.interval)
            self.wake.clear()
            self.write_all()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self.stopped = True
        self.wake.set()
        self.thread.join()

    def write_all(self) -> None:
        """One pass over every recording: open the new, write the queued, finish the closed."""
        with self.writing:
            with self.lock:
                pending = list(self.recordings.items())
            for recorder, opened in pending:
                self.write(recorder, opened)

    def write(self, recorder: Recorder, opened: bool) -> None:
        try:
            if recorder.failed:
                raise StopRecording
            if not opened:
                recorder.file.open()
                with self.lock:
                    self.recordings[recorder] = True
            recorder.file.drain()
        except StopRecording:
            recorder.file.abandon()
            recorder.file.note_failure("the disk did not keep up with the console")
            self.forget(recorder)
        except (OSError, ValueError) as exc:
            self.fail(recorder, exc)
        else:
            if recorder.file.finished:
                self.forget(recorder)

    def fail(self, recorder: Recorder, exc: Exception) -> None:
        """Log once, stop this recording only, count it."""
        recorder.failed = True
        recorder.queue.clear()
        recorder.file.abandon()
        WRITE_FAILURES.add()
        log.error("recording %s stopped: %s (the console goes on unrecorded)", recorder.id, exc)
        recorder.file.note_failure(str(exc))
        self.forget(recorder)

    def forget(self, recorder: Recorder) -> None:
        with self.lock:
            self.recordings.pop(recorder, None)
        recorder.done.set()


class StopRecording(Exception):
    """A recording the event loop gave up (its queue grew past MAX_QUEUED)."""


_writer: Writer | None = None
_writer_lock = threading.Lock()


def shared_writer() -> Writer:
    """This process's writer thread, started at its first recording."""
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = Writer()
            # What the consoles closed at shutdown is written before the process goes.
            atexit.register(_writer.write_all)
        return _writer
