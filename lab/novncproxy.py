"""``python -m lab.novncproxy``: the lab's console proxy, websockify with the lab's token and Origin plugins.

The lab runs it twice: as nova-novncproxy (``--web`` serves noVNC's pages next to the websockets,
tokens lead to QEMU's VNC servers) and as nova-serialproxy (no pages, tokens lead to QEMU's serial
ports). With ``--enforce-session-timeout`` it behaves like nova-novncproxy under ``[consoleauth]
enforce_session_timeout = True``: a websocket that connected with a token is closed when that token
expires. Without it, as by default in Nova, a token is checked only when a websocket connects.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs
from urllib.parse import urlsplit

from websockify.websocketproxy import ProxyRequestHandler
from websockify.websocketproxy import WebSocketProxy

from lab.proxy import OriginCheck
from lab.proxy import TokenDir

EXPIRED = "Console session expired"
# websockify logs each request line, and with it the token in the query: a console credential.
TOKEN_IN_TEXT = re.compile(r"(token(?:=|%3[dD]))[^&\s\"']+")


class RedactTokens(logging.Filter):
    """Every log line with its console tokens blanked out, whichever part of websockify wrote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = TOKEN_IN_TEXT.sub(r"\1<redacted>", record.getMessage())
        record.args = ()
        return True


class ExpiringProxyHandler(ProxyRequestHandler):
    """One websocket connection (in its own process); stops proxying at its token's expiry when asked."""

    expires_at: float | None = None

    def get_target(self, target_plugin: TokenDir) -> tuple[str, int]:
        target = super().get_target(target_plugin)  # refuses an unknown or expired token
        if self.server.enforce_session_timeout:
            token = parse_qs(urlsplit(self.path).query)["token"][0].rstrip("\n")
            # Known at connect time: the lookup above just found the token alive.
            self.expires_at = target_plugin.store.expires_at(token) or time.time()
        return target

    def do_proxy(self, target: socket.socket) -> None:
        if self.expires_at is None:
            super().do_proxy(target)
            return
        expired = threading.Event()
        timer = threading.Timer(max(0.0, self.expires_at - time.time()), _end_session, (target, expired))
        timer.daemon = True
        timer.start()
        try:
            super().do_proxy(target)
        except self.CClose:
            if expired.is_set():
                self.log_message("token expired: closing the websocket")
                raise self.CClose(1000, EXPIRED) from None
            raise
        finally:
            timer.cancel()


def _end_session(target: socket.socket, expired: threading.Event) -> None:
    """Make websockify's proxy loop see the target close, so it flushes and closes the websocket cleanly.

    Nova's proxy ends a session the same way, by shutting the target socket from a timer. Only the
    read side is shut here, so websockify's own clean-up (a full shutdown) still finds it connected.
    """
    expired.set()
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_RD)


class LabProxy(WebSocketProxy):
    """websockify's proxy server with the expiring handler; ``enforce_session_timeout`` switches it on."""

    def __init__(self, *, enforce_session_timeout: bool = False, **kwargs) -> None:
        self.enforce_session_timeout = enforce_session_timeout
        super().__init__(ExpiringProxyHandler, **kwargs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.novncproxy", description=__doc__)
    parser.add_argument("listen", help="host:port to listen on")
    parser.add_argument("--web", default="", help="noVNC's directory, served as files (none: websockets only)")
    parser.add_argument("--tokens", required=True, help="the lab's TokenStore directory")
    parser.add_argument("--allowed-origins", default="", help="extra allowed Origin hosts, comma-separated")
    parser.add_argument("--enforce-session-timeout", action="store_true", help="close websockets at token expiry")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    # websockify logs through the root logger; its own command line sends that to stderr the same way.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactTokens())
    server = LabProxy(
        enforce_session_timeout=args.enforce_session_timeout,
        listen_host=host,
        listen_port=int(port),
        # No web root: websockify answers a plain GET with 405, as nova-serialproxy serves no pages.
        web=str(Path(args.web).resolve()) if args.web else "",
        file_only=True,
        # websockify's own default: no such file, so no TLS, as the lab's proxy is plain ws:// on loopback.
        cert="self.pem",
        token_plugin=TokenDir(str(Path(args.tokens).resolve())),
        auth_plugin=OriginCheck(args.allowed_origins),
    )
    server.start_server()


if __name__ == "__main__":
    main()
