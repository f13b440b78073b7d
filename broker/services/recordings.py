"""Console recordings for admins: list and filter them, read one for playback, prune old ones (all audited).

The relay writes them (broker.relay.recording) into a directory every web and relay instance
shares; this module only reads and deletes. A name that is not a recording id is refused before
any path is built from it, so ``..``, slashes and their encodings never reach the file system.
"""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from broker import recordfile
from broker.extensions import db
from broker.models import AuditRecord
from broker.services import audit

# The list page shows at most this many (newest first); filters narrow it.
LIST_LIMIT = 500


class NoSuchRecording(Exception):
    """Not a recording id, or no recording by that id (the pages answer 404 for both)."""


@dataclass(frozen=True)
class Recording:
    """One recording as the list shows it."""

    id: str
    path: Path
    username: str
    server_id: str
    server_name: str
    cloud: str
    kind: str
    started_at: datetime
    # Seconds: to the close, or to the last write of one its relay never closed (a crash).
    duration: float
    size: int
    complete: bool
    row_id: int | None
    client: str

    @property
    def ended_at(self) -> datetime:
        return self.started_at + timedelta(seconds=self.duration)

    @property
    def serial(self) -> bool:
        """A serial console's recording: text the server printed (played in a terminal), not a screen."""
        return self.kind == "serial"

    @property
    def kind_label(self) -> str:
        """What the list calls its kind."""
        return "serial" if self.serial else "graphical"


@dataclass(frozen=True)
class Filter:
    """What the admin narrows the list to; empty fields match everything."""

    user: str = ""
    server: str = ""
    cloud: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, recording: Recording) -> bool:
        server = self.server.lower()
        return (
            (not self.user or recording.username == self.user)
            and (not server or server in recording.server_name.lower() or server in recording.server_id.lower())
            and (not self.cloud or recording.cloud == self.cloud)
            and (self.since is None or recording.started_at >= self.since)
            and (self.until is None or recording.started_at < self.until)
        )


def started(recording_id: str) -> datetime:
    """The start second an id names (UTC)."""
    return datetime.strptime(recording_id[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)


def ids(directory: Path) -> list[str]:
    """Every recording id in ``directory``, newest first (other names there are left alone)."""
    try:
        names = [entry.name for entry in directory.iterdir()]
    except FileNotFoundError:
        return []
    return sorted((name for name in names if recordfile.is_id(name)), reverse=True)


def listing(directory: Path, where: Filter = Filter(), limit: int = LIST_LIMIT) -> list[Recording]:
    """Recordings matching ``where``, newest first; the date range is applied to names before any is read."""
    found = []
    for recording_id in ids(directory):
        at = started(recording_id)
        if where.until is not None and at >= where.until + timedelta(seconds=1):
            continue
        if where.since is not None and at < where.since - timedelta(seconds=1):
            break  # names sort by start: every one after this is older
        recording = load(directory, recording_id)
        if recording is not None and where.matches(recording):
            found.append(recording)
            if len(found) == limit:
                break
    return found


def load(directory: Path, recording_id: str) -> Recording | None:
    """One recording by id, or None when its metadata is not there (yet) or is not readable."""
    path = directory / recording_id
    try:
        meta = json.loads((path / recordfile.META).read_text(encoding="utf-8"))
        files = [entry.stat() for entry in path.iterdir()]
    except (OSError, ValueError):
        return None
    at = datetime.fromisoformat(meta["started_at"])
    complete = bool(meta.get("complete"))
    last_write = max(stat.st_mtime for stat in files)
    return Recording(
        id=recording_id,
        path=path,
        username=meta.get("username", ""),
        server_id=meta.get("server_id", ""),
        server_name=meta.get("server_name", ""),
        cloud=meta.get("cloud", ""),
        kind=meta.get("kind", ""),
        started_at=at,
        duration=float(meta["duration"]) if complete else max(0.0, last_write - at.timestamp()),
        size=sum(stat.st_size for stat in files),
        complete=complete,
        row_id=meta.get("row_id"),
        client=meta.get("client", ""),
    )


def find(directory: Path, recording_id: str) -> Recording:
    """The recording ``recording_id`` names; NoSuchRecording for anything that is not an id or not there."""
    if not recordfile.is_id(recording_id):
        raise NoSuchRecording(recording_id)
    recording = load(directory, recording_id)
    if recording is None:
        raise NoSuchRecording(recording_id)
    return recording


def playback(recording: Recording) -> dict:
    """What the player needs before any segment: the screen's start (none for a serial console), the seek points
    (only its start for a serial console) and the index."""
    meta = json.loads((recording.path / recordfile.META).read_text(encoding="utf-8"))
    entries = recordfile.read_index(recording.path / recordfile.INDEX)
    segments = [
        {"n": e["n"], "t": e["t"], "width": e["width"], "height": e["height"]}
        for e in entries
        if e["kind"] == "segment" and (recording.path / recordfile.segment_name(e["n"])).is_file()
    ]
    return {
        "id": recording.id,
        "kind": recording.kind_label,
        "duration_ms": int(recording.duration * 1000),
        "init": meta["init"],
        "pixel_format": meta["pixel_format"],
        "segments": segments,
        "events": events(recording, entries),
    }


def events(recording: Recording, entries: list[dict]) -> list[dict]:
    """The index to jump to: the connect, what the console marked, power actions on the server, the end."""
    marks = [{"t": 0, "kind": "connect", "detail": f"{recording.username} from {recording.client}"}]
    marks += [
        {"t": e["t"], "kind": e["kind"], "detail": str(e.get("detail", "")), "end": e.get("end")}
        for e in entries
        if e["kind"] not in ("segment", "pixel-format")
    ]
    marks += power_actions(recording)
    return sorted(marks, key=lambda mark: mark["t"])


def power_actions(recording: Recording) -> list[dict]:
    """Power actions the audit holds for the recording's server while it was being recorded."""
    since = recording.started_at.replace(tzinfo=None)
    query = (
        select(AuditRecord)
        .where(AuditRecord.action == "power")
        .where(AuditRecord.server_id == recording.server_id)
        .where(AuditRecord.at >= since)
        .where(AuditRecord.at <= since + timedelta(seconds=recording.duration + 1))
        .order_by(AuditRecord.id)
    )
    return [
        {
            "t": max(0, int((row.at - since).total_seconds() * 1000)),
            "kind": "power",
            "detail": f"{row.detail} by {row.username} ({row.outcome})",
        }
        for row in db.session.scalars(query)
    ]


def segment(recording: Recording, number: int) -> bytes:
    """Segment ``number``'s records (``>II`` ms and length, then the bytes), up to its last flush."""
    path = recording.path / recordfile.segment_name(number)
    if number < 0 or not path.is_file():
        raise NoSuchRecording(f"{recording.id} segment {number}")
    return recordfile.read_segment(path)


def init_bytes(recording: Recording) -> bytes:
    """The ServerInit the browser was given."""
    meta = json.loads((recording.path / recordfile.META).read_text(encoding="utf-8"))
    return base64.b64decode(meta["init"])


def record_playback(actor: str, recording: Recording) -> None:
    """The audit record of one playback (staged: the request commits it)."""
    reason = (
        f"played recording {recording.id} of {recording.username}'s console "
        f"({recording.started_at:%Y-%m-%d %H:%M} UTC, {recording.duration:.0f} s)"
    )
    _audit(actor, recording, "recording-play", reason)


def _audit(actor: str, recording: Recording, detail: str, reason: str) -> None:
    """An admin's record of something done to ``recording`` (staged), naming its server."""
    fields = {"cloud": recording.cloud, "server_id": recording.server_id, "server_name": recording.server_name}
    audit.stage("admin", "ok", username=actor, detail=detail, reason=reason, **fields)


def prune(directory: Path, days: int, actor: str, now: datetime | None = None) -> list[Recording]:
    """Delete recordings started more than ``days`` ago, each with its audit record (staged; the caller
    commits); the ones deleted."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    deleted = []
    for recording_id in ids(directory):
        if started(recording_id) >= cutoff:
            continue
        recording = load(directory, recording_id) or unreadable(directory, recording_id)
        shutil.rmtree(recording.path)
        reason = (
            f"deleted recording {recording_id} of {recording.username or 'unknown'}'s console: "
            f"older than {days} days (BROKER_RECORDING_RETENTION_DAYS)"
        )
        _audit(actor, recording, "recording-delete", reason)
        deleted.append(recording)
    return deleted


def unreadable(directory: Path, recording_id: str) -> Recording:
    """A recording whose metadata is gone or torn, still pruned by the age its id gives."""
    path = directory / recording_id
    return Recording(recording_id, path, "", "", "", "", "", started(recording_id), 0.0, 0, False, None, "")
