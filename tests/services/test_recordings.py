"""Recordings for admins (broker.services.recordings): listing with filters, reading for playback, pruning
(audited, also through ``flask recordings prune``), and ids that are not ids."""

from __future__ import annotations

import json
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest

from broker import recordfile
from broker import state
from broker.extensions import db
from broker.services import audit
from broker.services import recordings
from tests.recordings import SERVER_ID
from tests.recordings import make_recording
from tests.relay import raw_update

NOW = datetime(2026, 12, 5, 17, 30, tzinfo=UTC)


@pytest.fixture
def directory(tmp_path):
    return tmp_path / "recordings"


def names(found: list[recordings.Recording]) -> list[str]:
    return [recording.id for recording in found]


def test_the_list_says_who_which_server_when_how_long_and_how_big_newest_first(directory):
    older = make_recording(directory, [(0, raw_update(64, 48, 1)), (90.5, raw_update(8, 8, 2))], started=NOW)
    newer = make_recording(directory, started=NOW + timedelta(minutes=5), username="lee", server_name="db-01")
    (directory / "lost+found").mkdir()  # other names in a shared directory are not recordings
    found = recordings.listing(directory)
    assert names(found) == [newer, older]
    first = found[1]
    assert (first.username, first.server_name, first.server_id, first.cloud) == ("agent", "web-01", SERVER_ID, "lab")
    assert first.started_at == NOW and first.duration == 90.5 and first.complete
    assert first.size == sum(path.stat().st_size for path in (directory / older).iterdir())


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (recordings.Filter(user="lee"), ["lee-db"]),
        (recordings.Filter(server="WEB"), ["agent-web", "agent-web-other-cloud"]),
        (recordings.Filter(server=SERVER_ID[:8]), ["agent-web", "lee-db", "agent-web-other-cloud"]),
        (recordings.Filter(cloud="east"), ["agent-web-other-cloud"]),
        (recordings.Filter(since=NOW + timedelta(hours=1)), ["lee-db", "agent-web-other-cloud"]),
        (recordings.Filter(until=NOW + timedelta(hours=1)), ["agent-web"]),
        (recordings.Filter(since=NOW + timedelta(hours=1), until=NOW + timedelta(hours=2)), ["lee-db"]),
        (recordings.Filter(user="nobody"), []),
    ],
)
def test_filters_narrow_the_list(directory, where, expected):
    made = {
        "agent-web": make_recording(directory, started=NOW),
        "lee-db": make_recording(directory, started=NOW + timedelta(hours=1), username="lee", server_name="db-01"),
        "agent-web-other-cloud": make_recording(directory, started=NOW + timedelta(hours=2), cloud="east"),
    }
    by_id = {recording_id: name for name, recording_id in made.items()}
    assert sorted(by_id[r.id] for r in recordings.listing(directory, where)) == sorted(expected)


def test_a_recording_still_being_written_is_listed_with_its_length_so_far(directory):
    recording_id = make_recording(directory, started=NOW)
    meta_path = directory / recording_id / recordfile.META
    meta = json.loads(meta_path.read_text())
    for key in ("complete", "duration", "ended_at", "reason"):
        meta.pop(key)
    meta_path.write_text(json.dumps(meta))  # as at the start, before the close rewrites it
    [found] = recordings.listing(directory)
    assert not found.complete and found.duration > 0


def test_playback_gives_the_screen_seek_points_and_index(app, directory):
    recording_id = make_recording(
        directory,
        [(0, raw_update(64, 48, 1)), (40, raw_update(64, 48, 2)), (41, raw_update(64, 48, 3))],
        keyframes=(40,),
        events=((10, "typing", ""), (20, "hand-over", "lee")),
        end=200,
    )
    recording = recordings.find(directory, recording_id)
    with app.app_context():
        audit.stage("power", "ok", username="agent", server_id=SERVER_ID, detail="reboot")
        db.session.commit()
        played = recordings.playback(recording)
    assert [(s["n"], s["t"]) for s in played["segments"]] == [(0, 0), (1, 40_000)]
    assert played["duration_ms"] == 200_000
    kinds = [(event["kind"], event["t"]) for event in played["events"]]
    assert kinds[0] == ("connect", 0) and ("typing", 10_000) in kinds and ("hand-over", 20_000) in kinds
    assert ("idle", 41_000) in kinds and kinds[-1] == ("end", 200_000)
    assert [e["detail"] for e in played["events"] if e["kind"] == "power"] == ["reboot by agent (ok)"]
    second = list(recordfile.records(recordings.segment(recording, 1)))
    assert second == [(40_000, raw_update(64, 48, 2)), (41_000, raw_update(64, 48, 3))]
    with pytest.raises(recordings.NoSuchRecording):
        recordings.segment(recording, 2)


@pytest.mark.parametrize(
    "bad",
    ["..", "../..", "../etc/passwd", "%2e%2e", "20261205T173000-0123456789ab/../..", "20261205T173000-0123456789ab\x00",
     "/etc", "20261205T173000-0123456789AB", " 20261205T173000-0123456789ab", ""],
)  # fmt: skip
def test_anything_but_an_id_is_refused_before_a_path_is_made(directory, bad):
    with pytest.raises(recordings.NoSuchRecording):
        recordings.find(directory, bad)


def test_an_id_with_no_recording_is_not_found(directory):
    with pytest.raises(recordings.NoSuchRecording):
        recordings.find(directory, "20261205T173000-0123456789ab")


def test_pruning_deletes_what_is_older_than_the_retention_each_audited(app, directory):
    old = make_recording(directory, started=NOW - timedelta(days=91))
    kept = make_recording(directory, started=NOW - timedelta(days=89))
    torn = make_recording(directory, started=NOW - timedelta(days=200))
    (directory / torn / recordfile.META).unlink()  # a relay that died before writing it: still pruned by age
    with app.app_context():
        deleted = recordings.prune(directory, 90, "cli:ops", now=NOW)
        db.session.commit()
        records = audit.search(audit.Filter(action="admin"))[0]
    assert sorted(names(deleted)) == sorted([old, torn])
    assert names(recordings.listing(directory)) == [kept]
    assert sorted(r.reason.split()[2] for r in records) == sorted([old, torn])
    assert all(r.detail == "recording-delete" and r.username == "cli:ops" for r in records)


def test_the_prune_command_deletes_and_says_what_it_did(app, runner, directory, monkeypatch):
    with app.app_context():
        directory = state.settings().recording_dir
    old = make_recording(directory, started=datetime.now(UTC) - timedelta(days=95), server_name="db-01")
    kept = make_recording(directory)
    result = runner.invoke(args=["recordings", "prune"])
    assert result.exit_code == 0, result.output
    assert f"deleted {old}\tagent\tdb-01\tlab" in result.output
    assert "1 recording older than 90 days deleted" in result.output
    assert names(recordings.listing(directory)) == [kept]
    with app.app_context():
        [record] = audit.search(audit.Filter(action="admin"))[0]
        assert record.server_name == "db-01" and record.username.startswith("cli:")
