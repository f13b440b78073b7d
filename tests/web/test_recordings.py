"""Recording pages (/admin/recordings): admins only, 404 for anything that is not a recording, every playback
audited, and the player's data (playback.json, segments) as the service reads it."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from bs4 import BeautifulSoup

from broker import recordfile
from broker import state
from broker.services import audit
from tests.recordings import make_recording
from tests.relay import raw_update
from tests.support import ADMIN

NOW = datetime(2026, 12, 5, 17, 30, tzinfo=UTC)


@pytest.fixture
def directory(app):
    with app.app_context():
        return state.settings().recording_dir


@pytest.fixture
def recording_id(directory) -> str:
    frames = [(0, raw_update(64, 48, 1)), (35, raw_update(64, 48, 2))]
    return make_recording(directory, frames, keyframes=(35,), events=((5, "ctrl-alt-del", ""),), started=NOW)


@pytest.fixture
def admin(client, auth):
    auth.login(*ADMIN)
    return client


def paths(recording_id: str) -> list[str]:
    base = f"/admin/recordings/{recording_id}"
    return ["/admin/recordings", base, f"{base}/playback.json", f"{base}/segments/0"]


def test_agents_get_403_and_a_record_and_no_playback_record(client, auth, app, recording_id):
    auth.login()
    for path in paths(recording_id):
        assert client.get(path).status_code == 403, path
    with app.app_context():
        refused = audit.search(audit.Filter(action="admin", outcome="refused"))[0]
        assert len(refused) == 4 and {r.username for r in refused} == {"agent"}
        assert audit.search(audit.Filter(action="admin", outcome="ok"))[0] == []


def test_signed_out_visitors_are_sent_to_sign_in(client, recording_id):
    for path in paths(recording_id):
        assert client.get(path).status_code in (302, 401), path


def test_the_list_links_each_recording_and_filters(admin, directory, recording_id):
    make_recording(directory, started=NOW + timedelta(hours=1), username="lee", server_name="db-01")
    page = BeautifulSoup(admin.get("/admin/recordings").get_data(as_text=True), "html.parser")
    rows = page.select("#recordings tbody tr")
    assert [row["data-id"] for row in rows][1] == recording_id
    cells = [cell.get_text(" ", strip=True) for cell in rows[1].find_all("td")]
    assert cells[:6] == ["2026-12-05 17:30:00", "agent", "web-01", "graphical", "lab", "0:35"]
    assert rows[1].select_one("a.play-recording")["href"] == f"/admin/recordings/{recording_id}"
    narrowed = BeautifulSoup(admin.get("/admin/recordings?user=lee").get_data(as_text=True), "html.parser")
    assert [row.find_all("td")[1].get_text() for row in narrowed.select("#recordings tbody tr")] == ["lee"]
    assert admin.get("/admin/recordings?since=not-a-date").status_code == 400
    assert 'href="/admin/recordings"' in admin.get("/admin/").get_data(as_text=True)


def test_opening_a_recording_is_an_audited_playback(admin, app, recording_id):
    response = admin.get(f"/admin/recordings/{recording_id}")
    assert response.status_code == 200
    page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    player = page.select_one("#player")
    assert player["data-playback"] == f"/admin/recordings/{recording_id}/playback.json"
    assert player["data-segments"] == f"/admin/recordings/{recording_id}/segments/"
    assert not [s for s in page.find_all("script") if not s.get("src")], "no inline script (CSP script-src 'self')"
    assert page.select_one("label[for=seek]") and page.select_one("label[for=speed]")
    with app.app_context():
        [record] = audit.search(audit.Filter(action="admin", outcome="ok"))[0]
    assert (record.username, record.detail, record.server_name) == ("admin", "recording-play", "web-01")
    assert recording_id in record.reason


def test_a_graphical_recording_plays_in_novnc_under_the_strict_policy(admin, recording_id):
    response = admin.get(f"/admin/recordings/{recording_id}")
    page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    assert page.select_one("#player")["data-kind"] == "graphical"
    assert [s["src"].rsplit("/", 1)[1] for s in page.find_all("script", src=True) if "player" in s["src"]] == [
        "player.js"
    ]
    assert not [link for link in page.find_all("link") if "xterm" in link["href"]]
    policy = response.headers["Content-Security-Policy"]
    assert "style-src 'self';" in policy and "unsafe-inline" not in policy


def test_a_serial_recording_plays_in_xterm_and_only_its_page_allows_inline_styles(admin, app, directory):
    text = [(0.0, b"login: "), (3.0, b"root\r\n# ")]
    recording_id = make_recording(directory, text, events=((2.0, "typing", ""),), kind="serial", started=NOW)
    response = admin.get(f"/admin/recordings/{recording_id}")
    assert response.status_code == 200
    page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    player = page.select_one("#player")
    assert player["data-kind"] == "serial"
    assert player["data-segments"] == f"/admin/recordings/{recording_id}/segments/"
    scripts = [s["src"].rsplit("/", 1)[1] for s in page.find_all("script", src=True)]
    assert "serial-player.js" in scripts and "player.js" not in scripts
    assert [link for link in page.find_all("link") if link["href"].endswith("vendor/xterm/xterm.css")]
    assert not [s for s in page.find_all("script") if not s.get("src")], "no inline script (CSP script-src 'self')"
    policy = response.headers["Content-Security-Policy"]
    # xterm.js writes <style> and style attributes it measures: as on the serial console page, and only there.
    assert "style-src 'self' 'unsafe-inline'" in policy and "script-src 'self';" in policy
    for path in ("/admin/recordings", f"/admin/recordings/{recording_id}/playback.json"):
        assert "unsafe-inline" not in admin.get(path).headers["Content-Security-Policy"], path
    played = admin.get(f"/admin/recordings/{recording_id}/playback.json").get_json()
    assert (played["kind"], played["init"], played["pixel_format"]) == ("serial", "", "")
    assert [(s["n"], s["t"]) for s in played["segments"]] == [(0, 0)]
    assert ("typing", 2000) in [(e["kind"], e["t"]) for e in played["events"]]
    segment = admin.get(f"/admin/recordings/{recording_id}/segments/0")
    assert list(recordfile.records(segment.data)) == [(0, b"login: "), (3000, b"root\r\n# ")]
    listed = BeautifulSoup(admin.get("/admin/recordings").get_data(as_text=True), "html.parser")
    row = listed.select_one(f'#recordings tr[data-id="{recording_id}"]')
    assert row.find_all("td")[3].get_text(strip=True) == "serial"
    with app.app_context():
        [record] = audit.search(audit.Filter(action="admin", outcome="ok"))[0]
    assert (record.detail, record.server_name) == ("recording-play", "web-01")


def test_the_players_data_is_the_recording(admin, recording_id):
    played = admin.get(f"/admin/recordings/{recording_id}/playback.json").get_json()
    assert [s["t"] for s in played["segments"]] == [0, 35_000]
    assert ("ctrl-alt-del", 5000) in [(e["kind"], e["t"]) for e in played["events"]]
    second = admin.get(f"/admin/recordings/{recording_id}/segments/1")
    assert second.mimetype == "application/octet-stream"
    assert list(recordfile.records(second.data)) == [(35_000, raw_update(64, 48, 2))]
    assert admin.get(f"/admin/recordings/{recording_id}/segments/7").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/admin/recordings/..",
        "/admin/recordings/%2e%2e",
        "/admin/recordings/..%2f..%2fetc",
        "/admin/recordings/%2e%2e%2f%2e%2e/playback.json",
        "/admin/recordings/..%252f..%252fsecret",
        "/admin/recordings/20261205T173000-0123456789ab",
        "/admin/recordings/20261205T173000-0123456789ab/playback.json",
        "/admin/recordings/20261205T173000-0123456789AB",
        "/admin/recordings/20261205T173000-0123456789ab%00/segments/0",
        "/admin/recordings/meta.json",
    ],
)
def test_anything_but_a_recording_is_404_and_never_audited_as_a_playback(admin, app, directory, recording_id, path):
    # A file beside the recordings that a traversal would be after.
    (directory.parent / "secret").write_text("not for the browser")
    response = admin.get(path)
    assert response.status_code == 404
    assert b"not for the browser" not in response.data
    with app.app_context():
        assert audit.search(audit.Filter(action="admin", outcome="ok"))[0] == []
