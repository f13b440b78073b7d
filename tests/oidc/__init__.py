"""A real OpenID Provider for the tests: npm's oidc-provider on this machine's Node.js, configured by provider.mjs.

The tests give it its signing key, so they can also sign logout and ID tokens with the
provider's own key (wrong audience, a nonce, expired) and see the broker refuse them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.support import npm_ci

HERE = Path(__file__).resolve().parent
CLIENT_ID = "console-broker"
CLIENT_SECRET = "test-client-secret-not-real"
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# Accounts of the provider: name -> password and groups.
ACCOUNTS = {
    "alice": {"password": "alice-password-1", "groups": ["helpdesk"]},
    "bob": {"password": "bob-password-1", "groups": ["helpdesk", "console-admins"]},
    # Holds the name of the broker's local agent: must be refused, never merged.
    "agent": {"password": "agent-password-1", "groups": ["helpdesk"]},
}


@dataclass
class RunningProvider:
    issuer: str
    key: RSAKey
    process: subprocess.Popen
    log: Path

    def sign(self, claims: dict, header: dict | None = None) -> str:
        """A JWT signed with the provider's own key."""
        return jwt.encode({"alg": "RS256", "kid": self.key.kid, **(header or {})}, claims, self.key)

    def logout_token(self, **claims) -> str:
        now = int(time.time())
        base = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 120,
            "jti": f"jti-{time.monotonic_ns()}",
            "events": {BACKCHANNEL_EVENT: {}},
        }
        base.update(claims)
        return self.sign({k: v for k, v in base.items() if v is not None})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def install() -> None:
    """oidc-provider from the lock file (npm ci), unless it is there and current."""
    npm_ci(HERE, "the OpenID Connect tests (npm's oidc-provider)")


@contextmanager
def provider(workdir: Path, broker_url: str) -> Iterator[RunningProvider]:
    """oidc-provider on a free port, its one client pointing at ``broker_url``; stopped afterwards."""
    install()
    port = free_port()
    key = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig", "alg": "RS256"})
    accounts = workdir / "accounts.json"
    accounts.write_text(json.dumps(ACCOUNTS))
    jwks = workdir / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    log = workdir / "provider.log"
    env = {
        "PATH": __import__("os").environ["PATH"],
        "OIDC_PORT": str(port),
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_REDIRECT_URIS": f"{broker_url}/auth/oidc/callback",
        "OIDC_POST_LOGOUT_REDIRECT_URIS": f"{broker_url}/login",
        "OIDC_BACKCHANNEL_LOGOUT_URI": f"{broker_url}/auth/oidc/backchannel-logout",
        "OIDC_ACCOUNTS": str(accounts),
        "OIDC_JWKS": str(jwks),
    }
    with log.open("w") as out:
        process = subprocess.Popen(
            ["node", str(HERE / "provider.mjs")], env=env, stdout=subprocess.PIPE, stderr=out, text=True
        )
    running = RunningProvider(f"http://127.0.0.1:{port}", key, process, log)
    try:
        wait_ready(process, log)
        yield running
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_ready(process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """Block until the provider prints "ready"; keep draining its stdout afterwards."""
    ready = threading.Event()

    def drain() -> None:
        for line in process.stdout:
            if line.strip() == "ready":
                ready.set()
            with log.open("a") as out:
                out.write(line)

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(timeout):
        process.terminate()
        raise RuntimeError(f"oidc-provider did not start: {log.read_text()[-2000:]}")
