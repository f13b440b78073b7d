"""The demo console proxy on a real websockets server: Nova's token and Origin checks, then the VNC session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from urllib.parse import parse_qs
from urllib.parse import quote
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from broker.demo import consoleproxy
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import make_servers
from broker.demo.consoleproxy import Grant
from tests.demo import Viewer
from tests.demo import synchronous
from tests.demo import until
from tests.support import wait_until_async


@dataclass
class Proxy:
    url: str
    origin: str
    ended: list  # connections whose handler has returned


@contextlib.asynccontextmanager
async def running(lookup, **options):
    """The console proxy mounted at its path on a websockets server listening on a free loopback port."""
    ended: list = []

    async def handler(connection):
        await consoleproxy.handle(connection, lookup=lookup, blink=None, **options)
        ended.append(connection)

    async with serve(handler, "127.0.0.1", 0, select_subprotocol=consoleproxy.select_subprotocol) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield Proxy(f"ws://127.0.0.1:{port}{consoleproxy.PATH}", f"http://127.0.0.1:{port}", ended)


def fake_cloud(console_ttl: int = 600) -> FakeCloud:
    return FakeCloud(secret="s", servers=make_servers(1), console_ttl=console_ttl)


def cloud_lookup(cloud: FakeCloud):
    """The adapter the relay's wiring needs: a FakeCloud token check giving a Grant."""

    def lookup(token: str) -> Grant | None:
        server = cloud.check_console_token(token)
        return Grant(server.name) if server else None

    return lookup


async def viewer_on(websocket) -> Viewer:
    stream = consoleproxy.WebsocketStream(websocket)
    viewer = Viewer(stream, stream)
    await viewer.handshake()
    return viewer


async def refusal(url: str, **options) -> tuple[int, str]:
    """Open a websocket that the proxy must close before any RFB byte: the close code and reason."""
    async with connect(url, subprotocols=["binary"], **options) as websocket:
        with pytest.raises(ConnectionClosed) as closed:
            await websocket.recv()
    return closed.value.rcvd.code, closed.value.rcvd.reason


@synchronous
async def test_a_good_token_opens_the_named_servers_console_and_typing_is_answered(caplog):
    caplog.set_level(logging.DEBUG, logger="broker.demo")
    cloud = fake_cloud()
    token = cloud.issue_console_token(cloud.servers[cloud.order[0]])
    async with running(cloud_lookup(cloud)) as proxy:
        async with connect(f"{proxy.url}?token={token}", subprotocols=["binary"]) as websocket:
            assert websocket.subprotocol == "binary"
            viewer = await viewer_on(websocket)
            assert viewer.name == "web-01"
            viewer.request(incremental=False)
            await viewer.update()
            assert "demo console of web-01" in viewer.text(0)
            viewer.type("hello\n")
            await until(viewer, lambda: viewer.text(4) == "demo: hello: command not found")
        await wait_until_async(lambda: len(proxy.ended) == 1, message="the proxy ended the session")
    assert "demo console of web-01 opened" in caplog.text
    assert token not in caplog.text


@synchronous
async def test_a_console_url_in_nova_shape_leads_here_as_the_relay_derives_it():
    """The wiring the demo needs: a noVNC page URL whose ``path`` names this proxy's path and the token."""
    cloud = fake_cloud()
    token = cloud.issue_console_token(cloud.servers[cloud.order[0]])
    async with running(cloud_lookup(cloud)) as proxy:
        ws_path = consoleproxy.PATH.lstrip("/") + "?token=" + token
        page = f"{proxy.origin}/demo-console/vnc_auto.html?path={quote(ws_path, safe='')}"
        # The design's rule: same host and port, ws for http, path "/" + the unquoted ``path`` parameter.
        parts = urlsplit(page)
        url = f"ws://{parts.netloc}/" + parse_qs(parts.query)["path"][0]
        origin = f"{parts.scheme}://{parts.netloc}"
        async with connect(url, origin=origin, subprotocols=["binary"]) as websocket:
            assert (await viewer_on(websocket)).name == "web-01"


@synchronous
async def test_the_token_may_come_in_a_cookie_and_a_matching_origin_is_admitted():
    # No subprotocol offered either: websockify admits such clients, and so does this proxy.
    cloud = fake_cloud()
    token = cloud.issue_console_token(cloud.servers[cloud.order[0]])
    async with running(cloud_lookup(cloud)) as proxy:
        headers = {"Cookie": f"theme=dark; token={token}"}
        async with connect(proxy.url, origin=proxy.origin, additional_headers=headers) as websocket:
            assert (await viewer_on(websocket)).name == "web-01"


@pytest.mark.parametrize("token", ["", "forged.abc", "expired"])
@synchronous
async def test_an_unknown_missing_or_expired_token_is_closed_before_any_rfb(token, caplog):
    cloud = fake_cloud()
    if token == "expired":
        cloud.console_ttl = -1
        token = cloud.issue_console_token(cloud.servers[cloud.order[0]])
    caplog.set_level(logging.INFO, logger="broker.demo")
    async with running(cloud_lookup(cloud)) as proxy:
        assert await refusal(f"{proxy.url}?token={token}") == (1008, "The token is invalid or has expired")
    assert "demo console refused" in caplog.text
    assert not token or token not in caplog.text


@pytest.mark.parametrize(
    ("origin", "forwarded"),
    [("http://evil.example", None), ("https://127.0.0.1", None), ("http://127.0.0.1", "https"), ("null", None)],
    ids=["foreign host", "other scheme", "forwarded scheme differs", "opaque origin"],
)
@synchronous
async def test_an_origin_other_than_this_host_is_refused(origin, forwarded):
    async with running(lambda token: Grant("web-01")) as proxy:
        headers = {"X-Forwarded-Proto": forwarded} if forwarded else {}
        code, reason = await refusal(f"{proxy.url}?token=t", origin=origin, additional_headers=headers)
        assert (code, reason) == (1008, "Origin header does not match this host")


@synchronous
async def test_a_forwarded_https_origin_is_admitted_behind_a_tls_proxy():
    async with running(lambda token: Grant("web-01")) as proxy:
        origin = proxy.origin.replace("http:", "https:")
        headers = {"X-Forwarded-Proto": "https"}
        async with connect(f"{proxy.url}?token=t", origin=origin, additional_headers=headers) as websocket:
            assert (await viewer_on(websocket)).name == "web-01"


@synchronous
async def test_enforce_session_timeout_closes_at_expiry_as_websockify_does():
    expires_at = time.time() + 0.4
    async with running(lambda token: Grant("web-01", expires_at), enforce_session_timeout=True) as proxy:
        async with connect(f"{proxy.url}?token=t") as websocket:
            viewer = await viewer_on(websocket)
            viewer.request(incremental=False)
            await viewer.update()
            with pytest.raises(asyncio.IncompleteReadError):
                await viewer.update()
        assert (websocket.close_code, websocket.close_reason) == (1000, "Target closed")
        assert time.time() >= expires_at
        await wait_until_async(lambda: len(proxy.ended) == 1, message="the proxy ended the session")


@synchronous
async def test_without_enforcement_a_session_outlives_its_token():
    grant = Grant("web-01", time.time() + 0.1)
    async with running(lambda token: grant) as proxy, connect(f"{proxy.url}?token=t") as websocket:
        viewer = await viewer_on(websocket)
        await asyncio.sleep(0.3)
        viewer.request(incremental=False)
        await viewer.update()
        assert "demo console of web-01" in viewer.text(0)


@synchronous
async def test_a_full_screen_arrives_in_websockify_sized_messages():
    async with (
        running(lambda token: Grant("web-01")) as proxy,
        connect(f"{proxy.url}?token=t", max_size=consoleproxy.CHUNK) as websocket,
    ):
        await viewer_on(websocket)
        await websocket.send(bytes([3, 0, 0, 0, 0, 0, 0x03, 0xC0, 0x01, 0xC2]))  # all of 960x450
        expected = 4 + 12 + 960 * 450 * 4
        sizes = []
        while sum(sizes) < expected:
            sizes.append(len(await websocket.recv()))
        assert sum(sizes) == expected and len(sizes) > 1


@synchronous
async def test_a_text_message_ends_the_session():
    async with running(lambda token: Grant("web-01")) as proxy, connect(f"{proxy.url}?token=t") as websocket:
        await viewer_on(websocket)
        await websocket.send("RFB in base64, as websockify's long-gone text mode did")
        await wait_until_async(lambda: len(proxy.ended) == 1, message="the proxy ended the session")
