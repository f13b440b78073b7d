"""Opening a console proxy's websocket from a console URL, and RFB's client handshake against a fake proxy."""

from __future__ import annotations

import socket

import pytest
from websockets.exceptions import ConnectionClosed

from broker.relay import rfb
from broker.relay.rfb import ServerInit
from broker.relay.upstream import SecurityRefused
from broker.relay.upstream import UpstreamError
from broker.relay.upstream import open_console
from broker.relay.upstream import websocket_target
from tests.relay import FORMAT_32
from tests.relay import TOKEN
from tests.relay import FakeProxy
from tests.relay import run
from tests.relay import security_failure

# -- where the websocket is ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "console_url, websocket_url, origin",
    [
        # Nova: the websocket's path and query inside ``path``.
        (
            "http://nova.example:6080/vnc_lite.html?path=%3Ftoken%3Dabc",
            "ws://nova.example:6080/?token=abc",
            "http://nova.example:6080",
        ),
        (
            "https://nova.example/vnc_auto.html?path=websockify%3Ftoken%3Dabc",
            "wss://nova.example/websockify?token=abc",
            "https://nova.example",
        ),
        # Huawei: the token as its own parameter.
        (
            "https://nova-novncproxy.az1.example:8002/vnc.auto.html?token=a%2Bb&lang=EN",
            "wss://nova-novncproxy.az1.example:8002/?token=a%2Bb",
            "https://nova-novncproxy.az1.example:8002",
        ),
        ("http://[::1]:6080/vnc_auto.html?path=%2F%3Ftoken%3Dx", "ws://[::1]:6080/?token=x", "http://[::1]:6080"),
    ],
)
def test_the_websocket_is_where_novnc_would_open_it(console_url, websocket_url, origin):
    target = websocket_target(console_url)
    assert (target.url, target.origin) == (websocket_url, origin)


def test_a_target_never_shows_its_token():
    target = websocket_target("http://nova.example:6080/vnc_lite.html?path=%3Ftoken%3Dsecret")
    assert "secret" not in repr(target)


@pytest.mark.parametrize(
    "console_url, match",
    [
        ("ftp://nova.example/vnc_auto.html?token=abc", "not an http"),
        ("http:///vnc_auto.html?token=abc", "not an http"),
        ("http://nova.example:6080/vnc_auto.html?lang=EN", "no token"),
    ],
)
def test_console_urls_without_a_websocket_are_refused(console_url, match):
    with pytest.raises(UpstreamError, match=match):
        websocket_target(console_url)


# -- the handshake ------------------------------------------------------------------------------------


def test_opens_with_the_token_origin_and_binary_subprotocol_then_handshakes_3_8():
    async def scenario():
        async with FakeProxy(size=(640, 480)) as proxy:
            upstream = await open_console(proxy.console_url)
            await upstream.close()
            return proxy, upstream

    proxy, upstream = run(scenario())
    assert proxy.paths == [f"/?token={TOKEN}"]
    assert proxy.requests[0]["Origin"] == f"http://127.0.0.1:{proxy.port}"
    assert proxy.requests[0]["Sec-WebSocket-Protocol"] == "binary"
    # Version 3.8, security None, ClientInit shared.
    assert proxy.handshake_bytes == [rfb.VERSION_3_8, b"\x01", b"\x01"]
    assert upstream.init == ServerInit(640, 480, FORMAT_32, b"guest")


@pytest.mark.parametrize(
    "version, security, replies",
    [
        (b"RFB 003.003\n", b"\x00\x00\x00\x01", [b"RFB 003.003\n", b"\x01"]),
        (b"RFB 003.007\n", b"\x01\x01", [b"RFB 003.007\n", b"\x01", b"\x01"]),
        (b"RFB 003.889\n", b"\x02\x02\x01", [rfb.VERSION_3_8, b"\x01", b"\x01"]),
    ],
)
def test_older_and_newer_servers_are_spoken_to_in_their_version(version, security, replies):
    async def scenario():
        async with FakeProxy(version=version, security=security) as proxy:
            upstream = await open_console(proxy.console_url)
            await upstream.close()
            return proxy

    assert run(scenario()).handshake_bytes == replies


@pytest.mark.parametrize(
    "version, security, error, match",
    [
        (rfb.VERSION_3_8, b"\x01\x02", SecurityRefused, "asks for a password"),
        (b"RFB 003.003\n", b"\x00\x00\x00\x02", SecurityRefused, "asks for a password"),
        (rfb.VERSION_3_8, b"\x01\x10", SecurityRefused, r"offers security types \[16\]"),
        (rfb.VERSION_3_8, security_failure(b"too many connections"), UpstreamError, "too many connections"),
        (b"RFB 004.001\n", b"", UpstreamError, "RFB 4.1 is not supported"),
    ],
)
def test_servers_the_relay_cannot_use_are_refused_clearly(version, security, error, match):
    async def scenario():
        async with FakeProxy(version=version, security=security) as proxy:
            await open_console(proxy.console_url)

    with pytest.raises(error, match=match):
        run(scenario())


def test_a_refused_security_result_says_why():
    class Failing(FakeProxy):
        async def _handshake(self, reader, websocket):
            await websocket.send(rfb.VERSION_3_8)
            await reader.read(12)
            await websocket.send(b"\x01\x01")
            await reader.read(1)
            await websocket.send(b"\x00\x00\x00\x01" + security_failure(b"go away")[1:])
            await websocket.wait_closed()

    async def scenario():
        async with Failing() as proxy:
            await open_console(proxy.console_url)

    with pytest.raises(UpstreamError, match="refused the connection: go away"):
        run(scenario())


def test_a_handshake_in_one_byte_messages_and_data_after_server_init():
    class Trickling(FakeProxy):
        async def _handshake(self, reader, websocket):
            for byte in rfb.VERSION_3_8 + b"\x01\x01":
                await websocket.send(bytes([byte]))
            await reader.read(13)
            init = ServerInit(8, 8, FORMAT_32, b"trickle")
            # The result, ServerInit and a Bell, all in one message.
            await websocket.send(rfb.SECURITY_OK + init.to_bytes() + bytes([rfb.BELL]))
            await reader.read(1)
            await websocket.wait_closed()

    async def scenario():
        async with Trickling() as proxy:
            upstream = await open_console(proxy.console_url)
            first = await upstream.recv()
            await upstream.close()
            return upstream.init, first

    init, first = run(scenario())
    assert init.name == b"trickle"
    assert first == bytes([rfb.BELL])


def test_an_http_refusal_is_an_upstream_error_without_the_token():
    async def scenario():
        async with FakeProxy() as proxy:
            proxy.refuse_status = 403
            await open_console(proxy.console_url)

    with pytest.raises(UpstreamError, match="answered HTTP 403") as caught:
        run(scenario())
    assert TOKEN not in str(caught.value)
    # Nothing chained that a traceback would print (websockets' exceptions may show the URL).
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_nothing_listening_is_an_upstream_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamError, match="cannot open"):
        run(open_console(f"http://127.0.0.1:{port}/vnc_lite.html?path=%3Ftoken%3D{TOKEN}", open_timeout=2))


def test_a_server_that_never_finishes_the_handshake_times_out():
    class Silent(FakeProxy):
        async def _handshake(self, reader, websocket):
            await websocket.wait_closed()

    async def scenario():
        async with Silent() as proxy:
            await open_console(proxy.console_url, handshake_timeout=0.1)

    with pytest.raises(UpstreamError, match="timed out"):
        run(scenario())


def test_send_says_whether_the_proxy_could_still_take_data():
    async def scenario():
        async with FakeProxy() as proxy:
            upstream = await open_console(proxy.console_url)
            sent = await upstream.send(rfb.framebuffer_update_request(True, 0, 0, 1, 1))
            session = proxy.sessions[0]
            await session.close()
            with pytest.raises(ConnectionClosed):
                while True:
                    await upstream.recv()
            return sent, await upstream.send(b"\x04\x01\x00\x00\x00\x00\x00\x61")

    assert run(scenario()) == (True, False)
