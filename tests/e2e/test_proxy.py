"""The lab's proxy enforces what nova-novncproxy does: token expiry and the websocket Origin."""

from __future__ import annotations

import socket
import time
from base64 import b64encode
from pathlib import Path
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page

from lab import Lab
from lab.browser import CONNECTED
from lab.browser import REFUSED
from lab.browser import wait_status
from lab.proxy import TokenStore
from lab.proxy import origin_allowed


def token_of(url: str) -> str:
    path = parse_qs(urlsplit(url).query)["path"][0]
    return parse_qs(urlsplit(path).query)["token"][0]


def upgrade_status(lab: Lab, token: str, origin: str | None) -> str:
    """The status line websockify answers to a websocket upgrade."""
    lines = [
        f"GET /?token={token} HTTP/1.1",
        f"Host: 127.0.0.1:{lab.proxy_port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: " + b64encode(b"sixteen byte key").decode(),
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: binary",
    ]
    if origin:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", lab.proxy_port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return sock.recv(4096).decode(errors="replace").split("\r\n")[0]


def test_old_url_loaded_after_its_ttl_is_refused(anonymous: Page, lab: Lab) -> None:
    url = lab.console_url("web-01")
    minted = time.monotonic()
    anonymous.goto(url)
    wait_status(anonymous, CONNECTED)
    anonymous.goto("about:blank")
    time.sleep(max(0.0, minted + lab.console_ttl + 1 - time.monotonic()))
    anonymous.goto(url)
    assert wait_status(anonymous, REFUSED) == REFUSED


def test_websocket_from_a_foreign_origin_is_refused(lab: Lab) -> None:
    token = token_of(lab.console_url("web-01"))
    assert upgrade_status(lab, token, "http://evil.example").split()[1] == "403"
    assert upgrade_status(lab, token, "null").split()[1] == "403"
    assert upgrade_status(lab, token, lab.proxy_url).split()[1] == "101"
    assert upgrade_status(lab, token, None).split()[1] == "101"


def test_websocket_with_an_unknown_token_is_refused(lab: Lab) -> None:
    # websockify closes the connection without an answer (Nova answers 101, then closes the websocket).
    assert upgrade_status(lab, "not-a-token", lab.proxy_url) == ""


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        ("http://127.0.0.1:6080", "127.0.0.1:6080", set(), True),
        ("https://console.example:443", "console.example", set(), True),
        ("http://broker.example", "127.0.0.1:6080", {"broker.example"}, True),
        ("http://evil.example", "127.0.0.1:6080", {"broker.example"}, False),
        ("null", "127.0.0.1:6080", set(), False),
        (None, "127.0.0.1:6080", set(), True),
    ],
)
def test_origin_rule(origin: str | None, host: str, allowed: set[str], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok


def test_token_store_forgets_expired_and_unknown_tokens(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    store.register("fresh", "127.0.0.1", 5901, ttl=60)
    store.register("stale", "127.0.0.1", 5902, ttl=0.05)
    time.sleep(0.1)
    assert store.lookup("fresh") == ("127.0.0.1", 5901)
    assert store.lookup("stale") is None
    assert store.lookup("never-issued") is None
