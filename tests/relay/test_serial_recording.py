"""Recording serial consoles through the relay (BROKER_RECORDING=all): one recording per shared console, however
many browsers are on it, holding what the server printed and only the kinds of what the browsers did.

The relay and the demo serial proxy are test_serial's; the relay's recorders write into the test's own
directory through a writer of the test's, and the files are read back as the web app reads them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import recordfile
from broker.cloud import errors
from broker.relay.recording import Recorder
from broker.relay.recording import Start
from broker.relay.recording import Writer
from broker.relay.server import Relay
from tests.relay import eventually
from tests.relay import run
from tests.relay.services import SERVER
from tests.relay.services import FakeServices
from tests.relay.services import relay_app
from tests.relay.test_serial import Terminal
from tests.relay.test_serial import serial_relay

# Typed past the demo shell's line buffer (4096 bytes), so the server never prints it: it must be nowhere.
UNPRINTED = b"not-printed-by-the-server"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return relay_app(tmp_path_factory)


@pytest.fixture
def writer() -> Iterator[Writer]:
    running = Writer(interval=0.05)
    yield running
    running.stop()


class Recorders:
    """The relay's recorder factory, keeping every recorder it made."""

    def __init__(self, directory: Path, writer: Writer) -> None:
        self.directory = directory
        self.writer = writer
        self.made: list[Recorder] = []

    def __call__(self, start: Start) -> Recorder:
        recorder = Recorder(start, self.directory, self.writer)
        self.made.append(recorder)
        return recorder

    def on(self, relay: Relay) -> None:
        relay.recorders = self


def stream(path: Path) -> bytes:
    """Every byte a recording holds from the server, segment after segment."""
    segments = sorted(path.glob("seg-*.gz"))
    return b"".join(data for segment in segments for _, data in recordfile.records(recordfile.read_segment(segment)))


def test_two_browsers_make_one_recording_of_what_was_printed_and_never_of_what_was_typed(app, tmp_path, writer):
    fakes = FakeServices(app)
    recorders = Recorders(tmp_path, writer)

    async def scenario():
        async with serial_relay(fakes) as (relay, _port):
            recorders.on(relay)
            first = await Terminal.open(fakes, relay)
            await eventually(lambda: first.people() == ["agent"])
            await first.type("echo before-the-second\r")
            await eventually(lambda: "before-the-second\r\n" in first.text)
            second = await Terminal.open(fakes, relay)
            await eventually(lambda: second.people() == ["agent", "agent"] and "before-the-second\r\n" in second.text)
            await second.type("echo from-the-second\r")
            await second.type("x" * 4096 + UNPRINTED.decode() + "\x03")
            await eventually(lambda: first.text.endswith("^C\r\nroot@web-01:~# "))
            await second.close()
            await eventually(lambda: first.people() == ["agent"])
            still_open = not recorders.made[0].closing
            await first.close()
            return first, still_open

    first, still_open = run(scenario())
    assert len(recorders.made) == 1  # one console, one recording, for both browsers
    [recorder] = recorders.made
    assert still_open, "a browser leaving while another stays closes nothing"
    assert recorder.wait(10), "the last browser's leaving closes the recording"
    meta = json.loads((recorder.path / recordfile.META).read_text())
    assert (meta["kind"], meta["row_id"], meta["server_name"], meta["complete"]) == ("serial", 41, SERVER.name, True)
    assert (meta["init"], meta["pixel_format"], meta["width"], meta["height"]) == ("", "", 0, 0)
    # Exactly what the first browser was shown (its history included), nothing more and nothing less.
    assert stream(recorder.path) == bytes(first.output)
    assert b"before-the-second" in first.output and b"from-the-second" in first.output
    index = recordfile.read_index(recorder.path / recordfile.INDEX)
    assert [e["kind"] for e in index if e["kind"] in ("join", "leave", "end")] == ["join", "leave", "leave", "end"]
    assert [e["detail"] for e in index if e["kind"] in ("join", "leave")] == ["agent"] * 3
    assert any(e["kind"] == "typing" for e in index)
    assert all(set(e) <= {"t", "kind", "end"} for e in index if e["kind"] == "typing")
    for path in recorder.path.iterdir():
        raw = path.read_bytes()
        assert UNPRINTED not in raw and b"xxxxxxxx" not in raw, path.name
        if path.suffix == ".gz":
            assert UNPRINTED not in recordfile.read_segment(path)


def test_recording_off_records_nothing(app, tmp_path):
    fakes = FakeServices(app)

    async def scenario():
        async with serial_relay(fakes) as (relay, _port):
            assert relay.recorders is None  # the tests' settings: BROKER_RECORDING unset
            terminal = await Terminal.open(fakes, relay)
            await eventually(lambda: terminal.people() == ["agent"])
            await terminal.type("echo hello\r")
            await eventually(lambda: "hello\r\n" in terminal.text)
            serial = next(iter(relay.serials.values()))
            await terminal.close()
            return serial

    assert run(scenario()).recorder is None


def test_a_recorder_that_cannot_start_leaves_the_console_unrecorded_not_ended(app, caplog):
    fakes = FakeServices(app)

    def broken(start: Start) -> Recorder:
        raise OSError(28, "No space left on device")

    async def scenario():
        async with serial_relay(fakes) as (relay, _port):
            relay.recorders = broken
            terminal = await Terminal.open(fakes, relay)
            await eventually(lambda: terminal.people() == ["agent"])
            await terminal.type("echo still-here\r")
            await eventually(lambda: "still-here\r\n" in terminal.text)
            await terminal.close()

    run(scenario())
    assert "its recording could not start: [Errno 28] No space left on device" in caplog.text


def test_a_resumed_side_is_marked_and_a_console_ended_for_everyone_closes_its_recording(app, tmp_path, writer):
    fakes = FakeServices(app)
    recorders = Recorders(tmp_path, writer)

    async def scenario():
        async with serial_relay(fakes) as (relay, port):
            recorders.on(relay)
            first = await Terminal.open(fakes, relay)
            second = await Terminal.open(fakes, relay)
            await eventually(lambda: first.people() == ["agent", "agent"])
            await port.connections[0].close()
            await eventually(lambda: {"relay": "back"} in first.statuses)
            # The next cut cannot be resumed: the cloud no longer gives the server a serial console.
            fakes.mint_errors.append(errors.ConsoleUnavailable("Unavailable console type serial."))
            await port.connections[1].close()
            await first.reader
            await second.reader
            return first, second

    first, second = run(scenario())
    assert first.websocket.close_code == second.websocket.close_code == 4501
    [recorder] = recorders.made
    assert recorder.wait(10)
    index = recordfile.read_index(recorder.path / recordfile.INDEX)
    kinds = [e["kind"] for e in index]
    assert kinds.count("resume") == 2 and kinds[-1] == "end"
    assert index[-1]["detail"] == "Unavailable console type serial."
