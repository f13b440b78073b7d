"""The lab's serial consoles: minted by the cloud's Nova API, opened at the stand-in nova-serialproxy, typed at.

Each Linux guest's serial port is QEMU's one-client TCP server; what the relay must know about it
(a second websocket opens but waits until the first leaves) is measured here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.exceptions import InvalidMessage
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect

from broker.cloud.client import ComputeClient
from broker.cloud.client import Timeouts
from broker.config import load_settings
from broker.demo import keystone_session
from lab import Lab
from lab import LabServer
from lab.lab import missing_tools
from lab.novncproxy import EXPIRED
from tests.support import needs

SHELL = "shell-01"
# The proxy's own host: a page there (the broker's, in the lab) may open the websocket.
ORIGIN = "http://127.0.0.1"
# Long enough for every test here to finish on a loaded machine with the proxy enforcing expiry.
TTL = 60
# A token the expiry test mints: short, yet long enough for a loaded machine to connect and type first.
SHORT_TTL = 4
# How long the second websocket must stay silent while the first holds the port.
QUIET = 2.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One Linux guest at its shells' prompts, behind proxies that close websockets at token expiry; no broker."""
    missing = missing_tools(linux=True)
    if missing:
        needs("the lab's serial consoles need " + ", ".join(missing))
    workdir = tmp_path_factory.mktemp("serial-lab")
    servers = [LabServer(SHELL, guest="linux")]
    with Lab(
        with_broker=False,
        servers=servers,
        workdir=workdir,
        cache_dir=workdir / "cache",
        console_ttl=TTL,
        enforce_session_timeout=True,
    ) as running:
        running.wait_for_shell(SHELL, timeout=90)
        yield running


def mint(lab: Lab) -> str:
    """A serial console URL minted through the cloud's Nova API by the broker's own client."""
    session = keystone_session(lab.cloud, timeout=10)
    client = ComputeClient("lab", session, region_name=lab.cloud.region, timeouts=Timeouts(connect=5, read=10))
    console = client.create_console(lab.server(SHELL).id, kind="serial")
    assert console.type == "serial"
    return console.url


def serial(url: str, origin: str = ORIGIN) -> ClientConnection:
    """The proxy's websocket as a browser's serial console opens it: subprotocol binary, the page's Origin."""
    return connect(url, subprotocols=["binary"], origin=origin, open_timeout=10)


def read_until(websocket: ClientConnection, wanted: bytes, timeout: float = 10.0) -> bytes:
    """Bytes from the websocket until ``wanted`` shows among them; fail at the deadline with what came."""
    received = b""
    deadline = time.monotonic() + timeout
    while wanted not in received:
        left = deadline - time.monotonic()
        assert left > 0, f"{wanted!r} not received within {timeout:.0f} s; got {received!r}"
        with contextlib.suppress(TimeoutError):
            received += websocket.recv(timeout=left)
    return received


def run(websocket: ClientConnection, a: int, b: int, tag: str) -> None:
    """Type a command at the serial shell; only the shell's arithmetic, not the echo of the keys, shows the answer."""
    websocket.send(f"echo {tag}-$(({a}*{b}))\n".encode())
    read_until(websocket, f"{tag}-{a * b}".encode())


@contextlib.contextmanager
def short_tokens(lab: Lab, ttl: int) -> Iterator[None]:
    """Consoles minted inside live ``ttl`` seconds (Nova's [consoleauth] token_ttl, lowered for a while)."""
    kept = lab.cloud.console_ttl
    lab.cloud.console_ttl = ttl
    try:
        yield
    finally:
        lab.cloud.console_ttl = kept


def test_a_serial_console_minted_through_nova_reaches_the_guests_shell(lab: Lab) -> None:
    url = mint(lab)
    assert url.startswith(f"{lab.serial_proxy_url}/?token=")
    with serial(url) as websocket:
        assert websocket.subprotocol == "binary"
        run(websocket, 6, 7, "serial")


def test_the_labs_broker_is_offered_serial_consoles_as_well(lab: Lab, tmp_path: Path) -> None:
    settings = load_settings(lab.broker_env(), str(tmp_path))
    assert settings.console_types == ("novnc", "serial")


def test_an_unknown_token_or_a_vnc_consoles_token_opens_nothing(lab: Lab) -> None:
    vnc_token = lab.console_url(SHELL).rpartition("token%3D")[2]
    assert lab.tokens.lookup(vnc_token) == ("127.0.0.1", lab.server(SHELL).vnc_port), "not a live VNC token"
    for token in ("not-a-token", vnc_token):
        # websockify drops the connection without an HTTP answer, as nova-serialproxy does.
        with pytest.raises(InvalidMessage), serial(f"{lab.serial_proxy_url}/?token={token}"):
            pass


def test_a_foreign_origin_is_refused(lab: Lab) -> None:
    url = mint(lab)
    with pytest.raises(InvalidStatus) as refused, serial(url, origin="https://attacker.example"):
        pass
    assert refused.value.response.status_code == 403


def test_enforced_expiry_closes_the_serial_websocket_and_refuses_its_token_after(lab: Lab) -> None:
    with short_tokens(lab, SHORT_TTL):
        url = mint(lab)
    minted = time.monotonic()
    with serial(url) as websocket:
        run(websocket, 3, 5, "before-expiry")
        with pytest.raises(ConnectionClosedOK) as closed:
            while True:
                websocket.recv(timeout=SHORT_TTL + 5)
    lasted = time.monotonic() - minted
    assert SHORT_TTL - 0.5 <= lasted <= SHORT_TTL + 2, f"closed {lasted:.1f} s after the mint; it lived {SHORT_TTL} s"
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, EXPIRED)
    with pytest.raises(InvalidMessage), serial(url):
        pass


def test_a_second_websocket_opens_but_waits_until_the_first_leaves(lab: Lab) -> None:
    """QEMU serves one client: the second's TCP connection waits in its listen backlog, bytes and all."""
    with serial(mint(lab)) as first:
        run(first, 2, 21, "first")
        # The handshake succeeds: websockify upgrades before it connects to the port, and the kernel
        # completes that connection into QEMU's backlog although QEMU will not accept it yet.
        with serial(mint(lab)) as second:
            second.send(b"echo queued-$((4*8))\n")
            with pytest.raises(TimeoutError):
                second.recv(timeout=QUIET)
            # The first still owns the shell, and its output goes to it alone.
            run(first, 5, 9, "first-again")
            with pytest.raises(TimeoutError):
                second.recv(timeout=0.2)
            first.close()
            # QEMU accepts the waiting connection and reads what was sent on it while it waited.
            read_until(second, b"queued-32")
            run(second, 7, 8, "second")
