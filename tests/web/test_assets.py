"""Static files: versioned URLs cached for a year, CSS and scripts compressed, pages never."""

from __future__ import annotations

import gzip
import re

from broker.web.assets import static_version

ASSET = re.compile(r'(?:href|src)="(/static/[0-9a-f]{12}/[^"]+)"')


def test_pages_name_static_files_under_the_folders_digest(client):
    urls = ASSET.findall(client.get("/login").get_data(as_text=True))
    assert urls and all(url.startswith(f"/static/{static_version('static')}/") for url in urls)
    response = client.get(urls[0])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert client.get(urls[0].replace(f"/{static_version('static')}", "")).status_code == 404


def test_css_and_scripts_are_compressed_and_pages_are_not(client):
    css = ASSET.findall(client.get("/login").get_data(as_text=True))[0]
    response = client.get(css, headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip" and b"{" in gzip.decompress(response.data)
    assert "Accept-Encoding" in response.headers["Vary"]
    # A page holds a CSRF token beside text a visitor chose: compressing it would allow BREACH.
    assert "Content-Encoding" not in client.get("/login", headers={"Accept-Encoding": "gzip, br"}).headers


def test_the_version_follows_the_content(tmp_path):
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "a.js").write_text("one")
    first = static_version(tmp_path)
    assert static_version(tmp_path) == first
    (tmp_path / "js" / "a.js").write_text("two")
    assert static_version(tmp_path) != first
