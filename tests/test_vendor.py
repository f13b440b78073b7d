"""The browser code under static/vendor is exactly what vendor/package-lock.json pins, and is served as ES modules."""

from __future__ import annotations

import json

from flask import url_for

from tests.support import ROOT

VENDOR = ROOT / "static" / "vendor"


def pinned() -> dict[str, str]:
    """Each package vendor/package.json names, at its exact version, checked against the lock file."""
    wanted = json.loads((ROOT / "vendor" / "package.json").read_text())["dependencies"]
    locked = json.loads((ROOT / "vendor" / "package-lock.json").read_text())["packages"]
    for name, version in wanted.items():
        assert version[0].isdigit(), f"{name} is pinned by a range ({version}), not an exact version"
        assert locked[f"node_modules/{name}"]["version"] == version
        assert locked[f"node_modules/{name}"]["integrity"].startswith("sha512-")
    return wanted


def test_the_vendored_copies_are_the_pinned_versions():
    versions = pinned()
    assert (VENDOR / "novnc" / "VERSION").read_text().strip() == versions["@novnc/novnc"]
    assert (VENDOR / "xterm" / "VERSION").read_text().splitlines() == [
        f"@xterm/xterm {versions['@xterm/xterm']}",
        f"@xterm/addon-fit {versions['@xterm/addon-fit']}",
    ]
    for licence in ("LICENSE", "LICENSE.addon-fit"):  # both MIT, whose text must travel with the code
        assert "Permission is hereby granted" in (VENDOR / "xterm" / licence).read_text()


def test_xterm_is_served_as_es_modules_the_serial_page_can_import(app, client):
    with app.test_request_context():
        paths = {name: url_for("static", filename=f"vendor/xterm/{name}") for name in ("xterm.mjs", "addon-fit.mjs")}
        style = url_for("static", filename="vendor/xterm/xterm.css")
    exports = {"xterm.mjs": "as Terminal}", "addon-fit.mjs": "as FitAddon}"}
    for name, path in paths.items():
        answer = client.get(path)
        assert answer.status_code == 200
        assert answer.mimetype in ("text/javascript", "application/javascript")
        assert exports[name] in answer.get_data(as_text=True)
    assert client.get(style).mimetype == "text/css"
