"""The lab's console proxy with and without Nova's ``enforce_session_timeout``, over a real websocket."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect

from lab import Lab
from lab import LabServer
from lab.lab import missing_tools
from lab.novncproxy import EXPIRED
from lab.novncproxy import RedactTokens
from tests.support import needs

# Short enough to keep the tests quick, long enough for a loaded machine to connect well before expiry.
TTL = 3


@contextlib.contextmanager
def proxy_lab(workdir: Path, enforce: bool) -> Iterator[Lab]:
    """One BIOS guest behind the proxy, tokens living TTL seconds; no broker."""
    missing = missing_tools()
    if missing:
        needs("the lab's proxy tests need " + ", ".join(missing))
    servers = [LabServer("web-01")]
    with Lab(
        with_broker=False, workdir=workdir, console_ttl=TTL, servers=servers, enforce_session_timeout=enforce
    ) as lab:
        yield lab


@contextlib.contextmanager
def console(lab: Lab, url: str) -> Iterator[ClientConnection]:
    """The proxy's websocket for a console URL (noVNC opens ``path`` on the page's host), past QEMU's greeting."""
    path = parse_qs(urlsplit(url).query)["path"][0]
    with connect(f"ws://127.0.0.1:{lab.proxy_port}/{path.lstrip('/')}", subprotocols=["binary"]) as websocket:
        assert websocket.recv(timeout=5) == b"RFB 003.008\n"
        yield websocket


def test_enforced_timeout_closes_the_websocket_when_its_token_expires(tmp_path: Path) -> None:
    with proxy_lab(tmp_path, enforce=True) as lab:
        url = lab.console_url("web-01")
        minted = time.monotonic()
        with console(lab, url) as websocket, pytest.raises(ConnectionClosedOK) as closed:
            websocket.recv(timeout=TTL + 5)
        lasted = time.monotonic() - minted
    assert TTL - 0.5 <= lasted <= TTL + 2, f"closed {lasted:.1f} s after the mint; the token lived {TTL} s"
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, EXPIRED)


def test_enforced_timeout_counts_from_the_mint_not_the_connection(tmp_path: Path) -> None:
    with proxy_lab(tmp_path, enforce=True) as lab:
        url = lab.console_url("web-01")
        minted = time.monotonic()
        time.sleep(TTL - 1.5)
        with console(lab, url) as websocket, pytest.raises(ConnectionClosedOK):
            websocket.recv(timeout=TTL + 5)
        lasted = time.monotonic() - minted
    assert lasted <= TTL + 1, f"the session lasted {lasted:.1f} s after the mint; the token lived {TTL} s"


def test_without_enforcement_the_websocket_outlives_its_token(tmp_path: Path) -> None:
    with proxy_lab(tmp_path, enforce=False) as lab:
        url = lab.console_url("web-01")
        minted = time.monotonic()
        with console(lab, url) as websocket:
            time.sleep(max(0.0, minted + TTL + 1.5 - time.monotonic()))
            # The RFB handshake goes on after expiry: QEMU answers with its security types (one: None).
            websocket.send(b"RFB 003.008\n")
            assert websocket.recv(timeout=5) == b"\x01\x01"


@pytest.mark.parametrize(
    "line",
    [
        '127.0.0.1 - - [5/Dec/2026 15:00:00] "GET /?token=abc.DEF-123_x HTTP/1.1" 101 -',
        '127.0.0.1 - - [5/Dec/2026 15:00:00] "GET /vnc_lite.html?path=%3Ftoken%3Dabc.DEF-123_x HTTP/1.1" 200 -',
    ],
    ids=["websocket", "page"],
)
def test_the_proxies_logs_hold_no_console_token(line):
    record = logging.LogRecord("websockify", logging.INFO, __file__, 1, "%s", (line,), None)
    RedactTokens().filter(record)
    assert "abc.DEF-123_x" not in record.getMessage() and "<redacted>" in record.getMessage()
