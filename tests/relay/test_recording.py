"""Recording relay consoles (broker.relay.recording): what is written, what survives a crash, what is never stored.

Each test drives a ``Recorder`` as the console does (from one thread, in order) and a ``Writer``
whose own thread waits an hour between passes: the test asks for each pass, so nothing depends
on timing. Files are read back with ``broker.recordfile``, as the web app reads them.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import recordfile
from broker.config import load_settings
from broker.relay import recording
from broker.relay import rfb
from broker.relay.recording import Recorder
from broker.relay.recording import Start
from broker.relay.recording import Writer
from broker.relay.recording import recorders
from tests.relay import FORMAT_32
from tests.relay import raw_update

INIT = rfb.ServerInit(640, 480, FORMAT_32, b"web-01").to_bytes()
START = Start(
    row_id=41,
    username="agent",
    server_id="8d1c7f0e-5b7a-4f7e-9d0e-3c2b1a000001",
    server_name="web-01",
    cloud="lab",
    kind="novnc",
    instance="relay-1:4242",
    client="192.0.2.7",
    init=INIT,
    pixel_format=FORMAT_32.raw,
)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def writer() -> Iterator[Writer]:
    running = Writer(interval=3600)
    yield running
    running.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def recorder(tmp_path: Path, writer: Writer, clock: Clock | None = None) -> Recorder:
    return Recorder(START, tmp_path, writer, clock=clock or Clock())


def played(path: Path) -> list[tuple[int, bytes]]:
    """Every (ms, bytes) record of a recording, segment after segment."""
    segments = sorted(path.glob("seg-*.gz"))
    return [record for segment in segments for record in recordfile.records(recordfile.read_segment(segment))]


def index(path: Path) -> list[dict]:
    return recordfile.read_index(path / recordfile.INDEX)


def meta(path: Path) -> dict:
    return json.loads((path / recordfile.META).read_text())


def test_recording_is_off_unless_asked_for(tmp_path):
    off = load_settings({"BROKER_SECRET_KEY": "k" * 32}, str(tmp_path))
    on = load_settings({"BROKER_SECRET_KEY": "k" * 32, "BROKER_RECORDING": "all"}, str(tmp_path))
    assert recorders(off) is None
    assert on.recording_dir == tmp_path / "recordings"
    assert callable(recorders(on))


def test_a_recording_reads_back_as_the_browser_got_it_with_its_timing_and_seek_points(tmp_path, writer, clock):
    rec = recorder(tmp_path, writer, clock)
    first, second, third = raw_update(640, 480, 1), raw_update(16, 16, 2, x=8), raw_update(640, 480, 3)
    rec.server(first)
    clock.now += 0.25
    rec.server(second)
    writer.write_all()
    clock.now += 1.0
    rec.event("hand-over", "to specialist")
    rec.keyframe(800, 600)
    clock.now += 0.5
    rec.server(third)
    rec.close("the browser closed the connection (1000)")
    assert rec.wait(10)

    assert recordfile.is_id(rec.id) and rec.path.parent == tmp_path
    assert played(rec.path) == [(0, first), (250, second), (1750, third)]
    # The second segment starts at the keyframe, with the size the screen had there.
    segments = [entry for entry in index(rec.path) if entry["kind"] == "segment"]
    assert segments == [
        {"t": 0, "kind": "segment", "n": 0, "width": 640, "height": 480},
        {"t": 1250, "kind": "segment", "n": 1, "width": 800, "height": 600},
    ]
    assert recordfile.records(recordfile.read_segment(rec.path / "seg-000001.gz")).__next__() == (1750, third)
    kinds = [(entry["kind"], entry.get("detail")) for entry in index(rec.path)]
    assert ("hand-over", "to specialist") in kinds and kinds[-1] == ("end", "the browser closed the connection (1000)")
    about = meta(rec.path)
    assert about["complete"] is True and about["duration"] == 1.75 and about["segments"] == 2
    assert about["bytes"] == len(first + second + third)
    assert (about["username"], about["server_name"], about["cloud"], about["row_id"]) == ("agent", "web-01", "lab", 41)


def test_segment_files_are_plain_gzip(tmp_path, writer):
    """An operator can read one with gunzip (the records are the relay's bytes with a small header)."""
    rec = recorder(tmp_path, writer)
    rec.server(b"\x02")  # a Bell
    rec.close("done")
    assert rec.wait(10)
    done = subprocess.run(["gunzip", "-c", str(rec.path / "seg-000000.gz")], capture_output=True, check=True)
    assert done.stdout == recordfile.RECORD.pack(0, 1) + b"\x02"


CRASHING_RELAY = """
import sys, time
from pathlib import Path
from broker.relay.recording import Recorder, Writer
from tests.relay import raw_update
from tests.relay.test_recording import START
writer = Writer(interval=3600)
rec = Recorder(START, Path(sys.argv[1]), writer)
rec.server(raw_update(64, 64, 1))
rec.event("typing")
writer.write_all()
rec.server(raw_update(64, 64, 2))  # queued, never written: the crash comes before the next flush
print(rec.id, flush=True)
time.sleep(600)
"""


def test_a_relay_killed_mid_recording_leaves_what_it_had_flushed_playable(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RELAY, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        recording_id = child.stdout.readline().strip()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    path = tmp_path / recording_id
    assert [data for _, data in played(path)] == [raw_update(64, 64, 1)]
    about = meta(path)
    assert about["server_id"] == START.server_id and "complete" not in about
    assert [entry["kind"] for entry in index(path)] == ["segment"]


def test_a_segment_torn_mid_write_reads_up_to_its_last_flush(tmp_path, writer):
    rec = recorder(tmp_path, writer)
    rec.server(raw_update(32, 32, 1))
    writer.write_all()
    rec.server(raw_update(32, 32, 2))
    writer.write_all()
    segment = rec.path / "seg-000000.gz"
    whole = segment.read_bytes()
    segment.write_bytes(whole[:-7])  # the second flush cut short, as a crash in the middle of a write
    assert [data for _, data in played(rec.path)] == [raw_update(32, 32, 1)]


def test_what_was_typed_is_never_stored_only_that_someone_typed(tmp_path, writer, clock):
    rec = recorder(tmp_path, writer, clock)
    for _ in range(5):
        rec.event("typing", "hunter2")  # the console sends kinds only; a detail given anyway is dropped
        clock.now += 0.2
    clock.now += 3
    rec.event("type-text", "14")
    rec.close("done")
    assert rec.wait(10)
    stored = b"".join(path.read_bytes() for path in rec.path.iterdir())
    stored += b"".join(recordfile.read_segment(path) for path in rec.path.glob("seg-*.gz"))
    assert b"hunter2" not in stored
    typing = [entry for entry in index(rec.path) if entry["kind"] == "typing"]
    assert typing == [{"t": 0, "kind": "typing", "end": 800}]
    assert {"t": 4000, "kind": "type-text", "detail": "14"} in index(rec.path)
    with pytest.raises(ValueError):
        rec.event("keys", "root")


def test_long_quiet_stretches_are_marked_as_idle(tmp_path, writer, clock):
    rec = recorder(tmp_path, writer, clock)
    rec.server(raw_update(64, 64, 1))
    clock.now += 90
    rec.server(b"\x02")  # a bell: too small to count as someone at work
    clock.now += 30
    rec.event("ctrl-alt-del")
    rec.close("done")
    assert rec.wait(10)
    assert {"t": 0, "kind": "idle", "end": 120_000} in index(rec.path)


def test_keyframes_are_due_after_busy_half_minutes_or_quiet_five_minutes(tmp_path, writer, clock):
    rec = recorder(tmp_path, writer, clock)
    assert not rec.keyframe_due()
    clock.now += recording.KEYFRAME_EVERY
    assert not rec.keyframe_due()  # nothing much happened: the last seek point is still cheap to replay
    rec.server(bytes(recording.KEYFRAME_BYTES))
    assert rec.keyframe_due()
    rec.keyframe()
    assert not rec.keyframe_due()
    clock.now += recording.KEYFRAME_AT_MOST
    assert rec.keyframe_due()
    rec.close("done")
    assert not rec.keyframe_due()


def test_a_recording_that_cannot_be_written_stops_alone_logged_once(tmp_path, writer, caplog):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    broken = Recorder(START, blocked, writer)
    working = recorder(tmp_path, writer)
    failures = recording.WRITE_FAILURES.value
    with caplog.at_level(logging.ERROR, logger="broker.relay.recording"):
        for marker in range(3):
            broken.server(raw_update(8, 8, marker))
            working.server(raw_update(8, 8, marker))
            writer.write_all()
    working.close("done")
    assert working.wait(10) and broken.wait(0)
    assert broken.failed and recording.WRITE_FAILURES.value == failures + 1
    assert [record.getMessage() for record in caplog.records if broken.id in record.getMessage()] == [
        f"recording {broken.id} stopped: [Errno 20] Not a directory: '{blocked / broken.id}' "
        "(the console goes on unrecorded)"
    ]
    assert [data for _, data in played(working.path)] == [raw_update(8, 8, n) for n in range(3)]
    broken.server(b"\x02")  # the console goes on calling; nothing queues up
    assert not broken.queue


def test_a_full_disk_mid_recording_stops_that_recording(tmp_path, writer, monkeypatch):
    rec = recorder(tmp_path, writer)
    rec.server(raw_update(8, 8, 1))
    writer.write_all()

    def full(data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rec.file.segment, "write", full)
    rec.server(raw_update(8, 8, 2))
    writer.write_all()
    assert rec.failed and rec.wait(0)
    rec.server(raw_update(8, 8, 3))
    rec.close("done")
    assert not rec.queue
    assert [data for _, data in played(rec.path)] == [raw_update(8, 8, 1)]


def test_a_disk_that_does_not_keep_up_stops_the_recording_not_the_relay(tmp_path, writer, monkeypatch):
    monkeypatch.setattr(recording, "MAX_QUEUED", 1000)
    rec = recorder(tmp_path, writer)
    rec.server(bytes(600))
    rec.server(bytes(600))
    assert rec.failed and len(rec.queue) == 1
    writer.write_all()
    assert rec.wait(0)


def test_ids_are_safe_in_paths_and_urls_and_do_not_collide():
    ids = {recording.new_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(recordfile.is_id(i) for i in ids)
    for bad in ("..", "../etc", "20261205T173000-0123456789ab/..", "20261205T173000-0123456789AB", "%2e%2e", ""):
        assert not recordfile.is_id(bad)
