"""Recordings for the tests of the pages, the service, the CLI and the player: written by the relay's own
``Recorder`` (so they are what a relay writes), on a clock the test chooses, and aged when asked."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from broker import recordfile
from broker.relay import rfb
from broker.relay.recording import Recorder
from broker.relay.recording import Start
from broker.relay.recording import Writer
from broker.relay.recording import new_id
from tests.relay import FORMAT_32
from tests.relay import raw_update

SERVER_ID = "8d1c7f0e-5b7a-4f7e-9d0e-3c2b1a000001"


def start(
    username: str = "agent",
    server_name: str = "web-01",
    cloud: str = "lab",
    width: int = 64,
    height: int = 48,
    kind: str = "novnc",
):
    """What the console tells its recorder at the start: a graphical console of ``width`` x ``height``, or with
    ``kind="serial"`` a serial one (no screen to begin with: its frames are the text the server printed)."""
    if kind == "serial":
        return Start(41, username, SERVER_ID, server_name, cloud, kind, "relay-1:4242", "192.0.2.7", b"", b"")
    init = rfb.ServerInit(width, height, FORMAT_32, server_name.encode()).to_bytes()
    return Start(41, username, SERVER_ID, server_name, cloud, kind, "relay-1:4242", "192.0.2.7", init, FORMAT_32.raw)


def solid(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A raw FramebufferUpdate painting the whole screen one colour (noVNC's 32-bit format: R, G, B, pad)."""
    pixels = bytes([*rgb, 0]) * (width * height)
    return rfb.framebuffer_update(rfb.rectangle(0, 0, width, height, rfb.RAW) + pixels)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_recording(
    directory: Path,
    frames: list[tuple[float, bytes]] | None = None,
    *,
    keyframes: tuple[float, ...] = (),
    events: tuple[tuple[float, str, str], ...] = (),
    end: float | None = None,
    started: datetime | None = None,
    **who: object,
) -> str:
    """A closed recording of ``frames`` ((seconds, server bytes)), keyframes and events at those seconds; its id.

    ``started``: the recording is aged to have begun then (its id and metadata say so, as the relay's would).
    """
    frames = frames if frames is not None else [(0.0, raw_update(64, 48, 1))]
    clock = Clock()
    writer = Writer(interval=3600)
    recorder = Recorder(start(**who), directory, writer, clock=clock)
    marks = sorted(
        # A keyframe before the screen it asks for, when both fall at one time.
        [(at, 1, data) for at, data in frames]
        + [(at, 0, None) for at in keyframes]
        + [(at, 2, (kind, detail)) for at, kind, detail in events]
    )
    for at, what, payload in marks:
        clock.now = at
        if what == 1:
            recorder.server(payload)
        elif what == 0:
            recorder.keyframe()
        else:
            recorder.event(*payload)
    clock.now = end if end is not None else (marks[-1][0] if marks else 0.0)
    recorder.close("the browser closed the connection (1000)")
    assert recorder.wait(10), "the recording was not finished"
    writer.stop()
    return age(recorder.path, started) if started else recorder.id


def age(path: Path, started: datetime) -> str:
    """Make the recording at ``path`` one that began at ``started``: a new id of that second, and its metadata."""
    recording_id = new_id(started)
    meta = json.loads((path / recordfile.META).read_text())
    meta.update(id=recording_id, started_at=started.isoformat(timespec="seconds"))
    (path / recordfile.META).write_text(json.dumps(meta))
    path.rename(path.parent / recording_id)
    return recording_id
