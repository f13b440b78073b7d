"""What the lab starts and hands the broker: console mode, the relay, and ``./dev lab``'s flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from lab import Lab
from lab import LabServer
from lab.__main__ import make_lab
from lab.__main__ import parse_args
from lab.lab import REPO
from lab.lab import missing_tools
from tests.support import needs


def require_lab_tools() -> None:
    missing = missing_tools()
    if missing:
        needs("the lab needs " + ", ".join(missing))


@pytest.mark.parametrize(
    ("mode", "relay_url"), [("iframe", None), ("relay", "ws://127.0.0.1:{port}/relay")], ids=["iframe", "relay"]
)
def test_broker_env_sets_the_console_mode_and_where_the_relay_is(
    mode: str, relay_url: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_lab_tools()
    # Left over in the caller's shell: the lab's own choice must win.
    monkeypatch.setenv("BROKER_CONSOLE_MODE", "relay" if mode == "iframe" else "iframe")
    monkeypatch.setenv("BROKER_RELAY_URL", "ws://elsewhere.example:1/relay")
    with Lab(servers=[], with_broker=False, console_mode=mode, relay_port=5999, workdir=tmp_path) as lab:
        env = lab.broker_env()
    assert env["BROKER_CONSOLE_MODE"] == mode
    assert env.get("BROKER_RELAY_URL") == (relay_url and relay_url.format(port=5999))


def test_an_unknown_console_mode_or_guest_is_refused() -> None:
    with pytest.raises(ValueError, match="console_mode"):
        Lab(console_mode="direct")
    with pytest.raises(ValueError, match="guest"):
        LabServer("x", guest="windows")


def test_dev_lab_flags() -> None:
    plain = make_lab(parse_args([]))
    assert (plain.console_mode, plain.enforce_session_timeout, plain.relay_port) == ("iframe", False, 0)
    assert [server.guest for server in plain.servers] == ["bios", "bios", "bios"]
    lab = make_lab(parse_args(["--relay", "--enforce", "--linux"]))
    assert (lab.console_mode, lab.enforce_session_timeout, lab.relay_port) == ("relay", True, 5001)
    assert [(server.name, server.guest) for server in lab.servers][-1] == ("shell-01", "linux")


def test_relay_mode_starts_the_relay_next_to_the_broker(tmp_path: Path) -> None:
    if not (REPO / "broker" / "relay" / "__main__.py").is_file():
        pytest.skip("broker/relay/__main__.py is not written yet")
    require_lab_tools()
    with Lab(servers=[LabServer("web-01")], console_mode="relay", workdir=tmp_path) as lab:
        relay = next(child for child in lab.children if child.name == "relay")
        assert relay.alive()
        # No session cookie and no ticket: refused in the HTTP handshake, nothing upgrades.
        with pytest.raises(InvalidStatus) as refused, connect(lab.relay_url, open_timeout=5):
            pass
        assert refused.value.response.status_code in (401, 403)
