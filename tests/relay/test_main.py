"""``python -m broker.relay`` (broker/relay/__main__.py): where it listens, how it stops, and what it says when
it cannot start, as an operator's service manager runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest

from broker import create_app
from broker import state
from broker.relay.__main__ import bind_address
from broker.relay.__main__ import serve
from broker.relay.server import Relay
from tests.relay import FakeProxy
from tests.relay import eventually
from tests.relay import run
from tests.relay.services import FakeServices
from tests.relay.services import connected
from tests.relay.services import relay_app
from tests.support import ROOT


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The broker app whose tickets the relay's Services redeem (mints and records are faked)."""
    return relay_app(tmp_path_factory)


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


@pytest.mark.parametrize(
    "env, bound",
    [
        ({}, ("127.0.0.1", 5001)),
        ({"RELAY_PORT": "6001"}, ("127.0.0.1", 6001)),
        ({"RELAY_BIND": "0.0.0.0:7001", "RELAY_PORT": "6001"}, ("0.0.0.0", 7001)),
        ({"RELAY_BIND": "[::1]:7001"}, ("::1", 7001)),
    ],
)
def test_the_relay_binds_where_the_environment_says(env, bound):
    assert bind_address(env) == bound


@pytest.mark.parametrize("env", [{"RELAY_BIND": "7001"}, {"RELAY_BIND": "host:port"}, {"RELAY_PORT": "70000"}])
def test_a_bad_bind_address_stops_start_up_naming_the_variable(env, capsys):
    with pytest.raises(SystemExit):
        bind_address(env)
    assert next(iter(env)) in capsys.readouterr().err


def test_sigterm_closes_every_browser_with_1001_and_stops(app):
    fakes = FakeServices(app)
    fakes.issue()

    async def scenario():
        async with FakeProxy() as proxy:
            fakes.console_url = proxy.console_url
            relay = Relay(state.of(app).settings, fakes.services())
            serving = asyncio.create_task(serve(relay, "127.0.0.1", 0))
            await eventually(lambda: relay.server is not None)
            browser = await connected(fakes, relay, proxy)
            os.kill(os.getpid(), signal.SIGTERM)
            await serving
            return await browser.closed()

    assert run(scenario()) == (1001, "The relay is restarting")
    assert fakes.closed[0]["reason"] == "the relay shut down; 1 console URL minted"
