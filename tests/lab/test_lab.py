"""What the lab starts and hands the broker: console mode, the relay, power actions on guests, ``./dev lab``'s flags."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import parse_qs
from urllib.parse import urlparse

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from broker.demo import keystone_session
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


@pytest.mark.parametrize("mode", ["iframe", "relay"])
def test_broker_env_sets_the_console_mode_and_where_the_relay_is(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_lab_tools()
    # Left over in the caller's shell: the lab's own choice must win.
    monkeypatch.setenv("BROKER_CONSOLE_MODE", "relay" if mode == "iframe" else "iframe")
    monkeypatch.setenv("BROKER_RELAY_URL", "ws://elsewhere.example:1/relay")
    with Lab(servers=[], with_broker=False, console_mode=mode, relay_port=5999, workdir=tmp_path) as lab:
        env = lab.broker_env()
    assert env["BROKER_CONSOLE_MODE"] == mode
    # The relay in both modes: the lab's cloud offers serial consoles, which always go through it.
    assert env["BROKER_RELAY_URL"] == "ws://127.0.0.1:5999/relay"


def test_an_unknown_console_mode_or_guest_is_refused() -> None:
    with pytest.raises(ValueError, match="console_mode"):
        Lab(console_mode="direct")
    with pytest.raises(ValueError, match="guest"):
        LabServer("x", guest="windows")


def test_dev_lab_flags() -> None:
    plain = make_lab(parse_args([]))
    assert (plain.console_mode, plain.enforce_session_timeout, plain.relay_port) == ("iframe", False, 0)
    assert not plain.power
    assert [server.guest for server in plain.servers] == ["bios", "bios", "bios"]
    lab = make_lab(parse_args(["--relay", "--enforce", "--linux", "--power"]))
    assert (lab.console_mode, lab.enforce_session_timeout, lab.relay_port, lab.power) == ("relay", True, 5001, True)
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


def nova_action(lab: Lab, name: str, body: dict) -> int:
    """POST a server action to the lab's cloud as the broker would (a Keystone token, Nova's URL); the status."""
    session = keystone_session(lab.cloud, timeout=10)
    url = f"{lab.cloud.compute_url}/servers/{lab.server(name).id}/action"
    return session.post(url, json=body, raise_exc=False).status_code


def wait_status(lab: Lab, name: str, status: str, timeout: float = 20.0) -> None:
    """Wait until the cloud reports ``status`` for ``name`` with no task running."""
    server = lab.cloud.servers[lab.server(name).id]
    deadline = time.monotonic() + timeout
    while (server.status, server.task_state) != (status, None):
        assert time.monotonic() < deadline, f"{name} is {server.status} ({server.task_state}), not {status}"
        time.sleep(0.05)


def rfb_banner(port: int) -> bytes:
    """The first bytes a VNC server sends ("RFB 003.008\\n")."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return sock.recv(12)


def test_power_actions_start_reset_and_stop_the_guest(tmp_path: Path) -> None:
    require_lab_tools()
    servers = [LabServer("batch-01", status="SHUTOFF")]
    with Lab(servers=servers, with_broker=False, action_seconds=0.5, workdir=tmp_path) as lab:
        batch = lab.server("batch-01")
        assert batch.process is None
        assert nova_action(lab, "batch-01", {"reboot": {"type": "SOFT"}}) == 409

        assert nova_action(lab, "batch-01", {"os-start": None}) == 202
        assert lab.cloud.servers[batch.id].task_state == "powering-on"
        wait_status(lab, "batch-01", "ACTIVE")
        # ACTIVE only once the guest's VNC server answers, and a console minted now reaches it.
        assert batch.status == "ACTIVE" and batch.process.alive()
        assert rfb_banner(batch.vnc_port).startswith(b"RFB ")
        token = parse_qs(urlparse(lab.console_url("batch-01")).query)["path"][0].partition("token=")[2]
        assert lab.tokens.lookup(token) == ("127.0.0.1", batch.vnc_port)

        booted = batch.started_at
        pid = batch.process.pid
        assert nova_action(lab, "batch-01", {"reboot": {"type": "HARD"}}) == 202
        assert lab.cloud.servers[batch.id].status == "HARD_REBOOT"
        wait_status(lab, "batch-01", "ACTIVE")
        # Reset through the monitor: the same QEMU, so VNC clients stay connected, booting again.
        assert batch.started_at > booted and batch.process.pid == pid

        qemu = batch.process
        assert nova_action(lab, "batch-01", {"os-stop": None}) == 202
        wait_status(lab, "batch-01", "SHUTOFF")
        assert not qemu.alive() and batch.process is None and qemu not in lab.children
