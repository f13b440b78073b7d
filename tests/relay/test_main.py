"""``python -m broker.relay`` as an operator's service manager runs it: what it says when it cannot start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from broker import create_app
from tests.support import ROOT


def relay_env(tmp_path, **extra: str) -> dict:
    """A deployment's environment (no BROKER_* or OS_* but these) on a SQLite database that has its schema."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OS_", "RELAY_"))}
    env.update(
        BROKER_SECRET_KEY="k" * 32,
        BROKER_DATABASE_URL=f"sqlite:///{tmp_path}/broker.sqlite3",
        OS_AUTH_URL="http://127.0.0.1:9/identity/v3",
        OS_USERNAME="svc",
        OS_PASSWORD="svc-password",
        OS_PROJECT_ID="p",
        OS_USER_DOMAIN_ID="default",
        **extra,
    )
    create_app({"ENV": env, "CLOUDS": [], "INSTANCE_PATH": str(tmp_path / "instance")})  # the web process's schema
    return env


@pytest.fixture
def taken_port():
    """A port something else already listens on."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        yield holder.getsockname()[1]


@pytest.mark.parametrize("setting", ["RELAY_PORT", "RELAY_BIND"])
def test_a_port_in_use_stops_the_relay_with_one_line_naming_the_setting_and_exit_3(tmp_path, taken_port, setting):
    value = str(taken_port) if setting == "RELAY_PORT" else f"127.0.0.1:{taken_port}"
    env = relay_env(tmp_path, **{setting: value})
    done = subprocess.run(
        [sys.executable, "-m", "broker.relay"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    what = "port" if setting == "RELAY_PORT" else "host:port"
    assert done.stderr.splitlines() == [
        f"console-broker: configuration error: the relay cannot listen on 127.0.0.1:{taken_port}: the address is "
        f"already in use (by another relay or program: ss -ltnp 'sport = :{taken_port}'); stop that one or set "
        f"{setting} to a free {what}"
    ]
    # Exit 3: the unit's RestartPreventExitStatus=3 keeps systemd from starting it again and again.
    assert done.returncode == 3


def test_the_relay_unit_does_not_restart_on_exit_3():
    unit = (ROOT / "deploy" / "console-broker-relay.service").read_text()
    assert "\nRestartPreventExitStatus=3\n" in unit
