"""A stand-in OpenStack cloud: Keystone v3 tokens and the Nova API the broker uses.

It serves the demo mode, the tests' fake cloud and the console lab, so it speaks
real HTTP shapes (token bodies with a catalog, Nova's version document, paged
``servers/detail``, ``remote-consoles`` behind microversion 2.6, Nova's error
bodies) and can be told to misbehave at run time through :class:`Faults`.
It depends on Flask only as a WSGI toolkit and imports nothing of the broker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from flask import Flask
from flask import Response
from flask import has_request_context
from flask import jsonify
from flask import request

MIN_VERSION = "2.1"
KINDS = ("token", "versions", "list", "show", "console", "action")
# Counted besides "list" (never instead): lists of one server.
ONE_SERVER_LIST = "list_one"
# Nova's power_state numbers (nova/compute/power_state.py) for the states a stand-in server is in.
POWER_STATES = {"ACTIVE": 1, "SHUTOFF": 4, "PAUSED": 3, "SUSPENDED": 7, "ERROR": 0, "BUILD": 0}
# What each action needs and gives: allowed statuses, the status (and task state) while it runs.
ACTIONS = {
    "os-start": (("SHUTOFF",), "ACTIVE", "powering-on"),
    "os-stop": (("ACTIVE", "ERROR"), "SHUTOFF", "powering-off"),
    "reboot-SOFT": (("ACTIVE",), "REBOOT", "reboot_started"),
    "reboot-HARD": (("ACTIVE", "SHUTOFF", "ERROR"), "HARD_REBOOT", "reboot_started_hard"),
}
CREATED = "2026-01-05T09:30:00Z"
# A project the broker's account is not scoped to, and one server in it that an
# admin-scoped account could still GET by ID (Nova shows admins every project).
OTHER_PROJECT_ID = "fedcba9876543210fedcba9876543210"
OTHER_PROJECT_SERVER_ID = "0f0f0f0f-0000-4000-8000-00000000beef"


@dataclass
class Server:
    """One fake server, shaped like Nova's server resource."""

    id: str
    name: str
    status: str = "ACTIVE"
    addresses: dict = field(default_factory=dict)
    az: str = "nova"
    metadata: dict = field(default_factory=dict)
    project_id: str = ""  # empty: the cloud's own project
    flavor: str = "m1.small"
    image: str = "b1f2c3d4-0000-4000-8000-0000000000aa"
    task_state: str | None = None
    fault: dict | None = None  # Nova's {code, message, created} for an ERROR server
    updated: str = CREATED

    def to_nova(self, default_project: str) -> dict:
        body = {
            "id": self.id,
            "name": self.name,
            "tenant_id": self.project_id or default_project,
            "status": self.status,
            "addresses": self.addresses,
            "metadata": self.metadata,
            "OS-EXT-AZ:availability_zone": self.az,
            "OS-EXT-STS:task_state": self.task_state,
            "OS-EXT-STS:vm_state": {"ACTIVE": "active", "SHUTOFF": "stopped"}.get(self.status, self.status.lower()),
            "OS-EXT-STS:power_state": POWER_STATES.get(self.status, 0),
            # Below microversion 2.47 Nova names the flavor by ID and links only.
            "flavor": {"id": self.flavor, "links": []},
            "image": {"id": self.image, "links": []} if self.image else "",
            "created": CREATED,
            "updated": self.updated,
            "links": [],
        }
        if self.status == "ERROR" and self.fault:
            body["fault"] = self.fault
        return body


@dataclass
class Faults:
    """Misbehaviour to inject; every field may be changed while the cloud runs."""

    latency: float = 0.0
    keystone_latency: float = 0.0
    keystone_down: bool = False
    max_version: str = "2.96"
    console_scheme: str = ""
    error_message: str = ""
    retry_after: str = "1"
    malformed: set[str] = field(default_factory=set)
    # List every project's servers, as a misconfigured policy might for an admin account.
    list_every_project: bool = False
    hang: dict[str, float] = field(default_factory=dict)
    fail_next: dict[str, list[int]] = field(default_factory=dict)
    # Console types this Nova has switched off (its [vnc] or [serial_console] enabled = False): a mint answers 400.
    unavailable_consoles: list[str] = field(default_factory=list)

    def take_failure(self, kind: str) -> int | None:
        queue = self.fail_next.get(kind)
        return queue.pop(0) if queue else None


def make_servers(count: int, project: str = "demo") -> list[Server]:
    """A believable fleet: mostly running, a few stopped or building, one odd name."""
    roles = ["web", "db", "cache", "worker", "batch", "edge"]
    servers = []
    for n in range(count):
        role = roles[n % len(roles)]
        status = "ACTIVE"
        if n % 11 == 5:
            status = "SHUTOFF"
        elif n % 17 == 9:
            status = "BUILD"
        ip = f"10.{n // 250}.{n % 250}.{10 + n % 200}"
        servers.append(
            Server(
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{project}/{n}")),
                name=f"{role}-{n // len(roles) + 1:02d}",
                status=status,
                addresses={"private": [{"addr": ip, "version": 4}]},
                az=f"az-{n % 3 + 1}",
                metadata={"team": "ops" if n % 2 else "web"},
            )
        )
    return servers


def break_server(server: Server) -> Server:
    """Put ``server`` in ERROR with the fault Nova records when scheduling fails."""
    server.status = "ERROR"
    server.fault = {
        "code": 500,
        "message": "No valid host was found. There are not enough hosts available.",
        "created": CREATED,
    }
    return server


def other_project_servers() -> list[Server]:
    """A server of another project whose name an agent's ``web-*`` rule would match."""
    return [Server(id=OTHER_PROJECT_SERVER_ID, name="web-elsewhere", project_id=OTHER_PROJECT_ID)]


def nova_error(status: int, message: str, retry_after: str = "1") -> Response:
    """Nova's error body: ``{fault_name: {code, message}}``."""
    names = {
        400: "badRequest",
        403: "forbidden",
        404: "itemNotFound",
        406: "notAcceptable",
        409: "conflictingRequest",
        413: "overLimit",
        429: "overLimit",
        500: "computeFault",
        501: "notImplemented",
        503: "serviceUnavailable",
    }
    if status == 401:
        body = {"error": {"code": 401, "title": "Unauthorized", "message": message}}
    else:
        body = {names.get(status, "computeFault"): {"code": status, "message": message}}
        if status in (413, 429):
            body[names[status]]["retryAfter"] = retry_after
    response = jsonify(body)
    response.status_code = status
    if status in (413, 429):
        response.headers["Retry-After"] = retry_after
    return response


def parse_microversion() -> str:
    header = request.headers.get("OpenStack-API-Version", "")
    parts = header.split()
    if len(parts) == 2 and parts[0] == "compute":
        return parts[1]
    return request.headers.get("X-OpenStack-Nova-API-Version", MIN_VERSION)


def version_tuple(value: str) -> tuple[int, int]:
    major, _, minor = value.partition(".")
    return int(major), int(minor or 0)


def action_name(body: dict) -> str | None:
    """``os-start``, ``os-stop``, ``reboot-SOFT`` or ``reboot-HARD`` from an action body; None for anything else."""
    if len(body) != 1:
        return None
    if "os-start" in body or "os-stop" in body:
        return next(iter(body))
    kind = body.get("reboot", {}).get("type") if isinstance(body.get("reboot"), dict) else None
    return f"reboot-{kind}" if kind in ("SOFT", "HARD") else None


class FakeCloud:
    """State and HTTP API of one stand-in cloud (Keystone and Nova together)."""

    def __init__(
        self,
        *,
        secret: str,
        servers: list[Server],
        username: str = "broker",
        password: str = "broker-password",  # noqa: S107 - a stand-in cloud's own account
        project_id: str = "0123456789abcdef0123456789abcdef",
        region: str = "RegionOne",
        console_ttl: int = 600,
        token_ttl: int = 3600,
        console_base: str = "http://127.0.0.1:6080",
        console_page: str = "vnc_auto.html",
        serial_base: str = "ws://127.0.0.1:6083",
        on_console: Callable[[str, Server, int], None] | None = None,
        others: list[Server] | None = None,
        on_action: Callable[[Server, str], None] | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.secret = secret.encode()
        others = other_project_servers() if others is None else others
        # Every server answers GET by ID (as for an admin account); only the project's own are listed.
        self.servers = {s.id: s for s in [*servers, *others]}
        self.order = [s.id for s in servers if s.project_id in ("", project_id)]
        self.username = username
        self.password = password
        self.project_id = project_id
        self.region = region
        self.console_ttl = console_ttl
        self.token_ttl = token_ttl
        self.console_base = console_base.rstrip("/")
        self.console_page = console_page
        # nova-serialproxy's base URL ([serial_console] base_url): a serial console is a websocket there.
        self.serial_base = serial_base.rstrip("/")
        self.on_console = on_console
        # Registers a serial console's token where it differs from a VNC one's (the lab's serial proxy
        # reaches a guest's serial port, not its VNC server); unset, on_console registers both kinds.
        self.on_serial_console: Callable[[str, Server, int], None] | None = None
        # Called with the server and the action ("os-start", "reboot-HARD", ...) before the action
        # ends: the lab starts or resets a guest here; the server is in its final state when it returns.
        self.on_action = on_action
        # Seconds an action keeps its transitional status (REBOOT, task "powering-on") before it ends.
        self.action_seconds = 0.0
        # (server ID, action) in the order they were asked for, for tests.
        self.actions: list[tuple[str, str]] = []
        # Where the servers' power states are kept when several processes each run this cloud (the
        # demo's workers and its relay): a server one started is running for all of them.
        self.state_file = state_file
        self._state_seen = -1
        self.faults = Faults()
        self._unhang = threading.Event()
        self.token_generation = 0
        self.counts: dict[str, int] = {kind: 0 for kind in (*KINDS, ONE_SERVER_LIST)}
        # The kinds of the latest calls in the order they arrived (tests check what came first).
        self.calls: deque[str] = deque(maxlen=10_000)
        self._lock = threading.Lock()
        self.public_base = "http://cloud.invalid"
        # Where the console's websocket is on console_base's host (Nova's path= parameter), and
        # whether a request's X-Console-Base may move it.
        self.console_ws_path = ""
        self.fixed_console_base = False

    # -- tokens -----------------------------------------------------------------

    def _sign(self, payload: dict) -> str:
        raw = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
        sig = hmac.new(self.secret, raw, hashlib.sha256).hexdigest()[:32]
        return raw.decode().rstrip("=") + "." + sig

    def _unsign(self, token: str) -> dict | None:
        raw, _, sig = token.rpartition(".")
        good = hmac.new(self.secret, raw.encode() + b"=" * (-len(raw) % 4), hashlib.sha256)
        if not raw or not hmac.compare_digest(good.hexdigest()[:32], sig):
            return None
        try:
            return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        except ValueError:
            return None

    def issue_keystone_token(self) -> tuple[str, datetime]:
        expires = datetime.now(UTC) + timedelta(seconds=self.token_ttl)
        token = self._sign({"k": "auth", "g": self.token_generation, "exp": expires.timestamp()})
        return token, expires

    def keystone_token_valid(self, token: str) -> bool:
        data = self._unsign(token or "")
        return bool(
            data and data.get("k") == "auth" and data.get("g") == self.token_generation and data["exp"] > time.time()
        )

    def issue_console_token(self, server: Server, kind: str = "vnc") -> str:
        """A signed console token of ``kind`` ("vnc" or "serial"): as in Nova, each proxy takes only its own."""
        nonce = uuid.uuid4().hex[:12]
        return self._sign({"k": kind, "s": server.id, "exp": time.time() + self.console_ttl, "n": nonce})

    def check_console_token(self, token: str, kind: str = "vnc") -> Server | None:
        """The server a console token of ``kind`` opens, or None when unknown, of another kind or expired."""
        data = self._unsign(token or "")
        if not data or data.get("k") != kind or data["exp"] <= time.time():
            return None
        return self.servers.get(data["s"])

    def console_token_expiry(self, token: str) -> float | None:
        """When a console token this cloud signed expires (epoch seconds), for a proxy that enforces it."""
        data = self._unsign(token or "")
        return data["exp"] if data and data.get("k") in ("vnc", "serial") else None

    def serve_consoles_at(self, base: str, websocket_path: str) -> None:
        """Console URLs name this proxy (the demo relay's own) whatever request minted them."""
        self.console_base = base.rstrip("/")
        self.console_ws_path = websocket_path
        self.fixed_console_base = True

    def revoke_tokens(self) -> None:
        """Invalidate every Keystone token issued so far (a revoked token mid-flight)."""
        self.token_generation += 1

    def release_hangs(self) -> None:
        """End every injected hang now, so a test need not wait for one to run out."""
        self.faults.hang.clear()
        released, self._unhang = self._unhang, threading.Event()
        released.set()

    def count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1
            self.calls.append(kind)

    # -- HTTP -------------------------------------------------------------------

    def app(self, *, control: bool = False) -> Flask:
        """The WSGI app: ``/identity/v3`` and ``/compute/v2.1``; ``/_control`` if asked."""
        app = Flask(__name__)
        app.add_url_rule("/identity/v3", view_func=self._identity_version)
        app.add_url_rule("/identity/v3/", view_func=self._identity_version)
        app.add_url_rule("/identity/v3/auth/tokens", view_func=self._tokens, methods=["POST"])
        app.add_url_rule("/compute/v2.1", view_func=self._versions)
        app.add_url_rule("/compute/v2.1/", view_func=self._versions)
        app.add_url_rule("/compute/v2.1/<project>/servers/detail", view_func=self._list)
        app.add_url_rule("/compute/v2.1/<project>/servers/<server_id>", view_func=self._show)
        app.add_url_rule(
            "/compute/v2.1/<project>/servers/<server_id>/remote-consoles",
            view_func=self._remote_console,
            methods=["POST"],
        )
        app.add_url_rule(
            "/compute/v2.1/<project>/servers/<server_id>/action",
            view_func=self._action,
            methods=["POST"],
        )
        if control:
            app.add_url_rule("/_control", view_func=self._control, methods=["GET", "POST"])
        return app

    @property
    def auth_url(self) -> str:
        return f"{self.public_base}/identity/v3"

    @property
    def compute_url(self) -> str:
        return f"{self.public_base}/compute/v2.1/{self.project_id}"

    def _misbehave(self, kind: str) -> Response | None:
        """Apply the injected faults for this kind of call; a response ends the call."""
        self.count(kind)
        delay = self.faults.keystone_latency if kind == "token" else self.faults.latency
        if delay:
            time.sleep(delay)
        hang = self.faults.hang.get(kind, 0.0)
        if hang:
            self._unhang.wait(hang)
        status = self.faults.take_failure(kind)
        if status:
            message = self.faults.error_message or f"Injected failure {status} for {kind}."
            return nova_error(status, message, self.faults.retry_after)
        if kind in self.faults.malformed:
            return Response("<html>not json", status=200, content_type="application/json")
        return None

    def _authorized(self) -> Response | None:
        if not self.keystone_token_valid(request.headers.get("X-Auth-Token", "")):
            return nova_error(401, "The request you have made requires authentication.")
        if request.view_args.get("project") not in (None, self.project_id):
            return nova_error(404, "Project not found.")
        return None

    def _identity_version(self) -> Response:
        if self.faults.keystone_down:
            return nova_error(503, "Keystone is unavailable.")
        return jsonify(
            {
                "version": {
                    "id": "v3.14",
                    "status": "stable",
                    "updated": "2020-04-07T00:00:00Z",
                    "links": [{"rel": "self", "href": self.auth_url + "/"}],
                    "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
                }
            }
        )

    def _tokens(self) -> Response:
        if self.faults.keystone_down:
            self.count("token")
            return nova_error(503, "Keystone is unavailable.")
        failed = self._misbehave("token")
        if failed:
            return failed
        auth = (request.get_json(silent=True) or {}).get("auth", {})
        user = auth.get("identity", {}).get("password", {}).get("user", {})
        if user.get("name") != self.username or user.get("password") != self.password:
            return nova_error(401, "The request you have made requires authentication.")
        token, expires = self.issue_keystone_token()
        response = jsonify({"token": self._token_body(expires)})
        response.status_code = 201
        response.headers["X-Subject-Token"] = token
        return response

    def _token_body(self, expires: datetime) -> dict:
        now = datetime.now(UTC)
        endpoint = {"interface": "public", "region": self.region, "region_id": self.region}
        return {
            "methods": ["password"],
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            "user": {"id": "u-" + self.username, "name": self.username, "domain": {"id": "default", "name": "Default"}},
            "project": {"id": self.project_id, "name": "demo", "domain": {"id": "default", "name": "Default"}},
            "roles": [{"id": "r1", "name": "member"}],
            "catalog": [
                {
                    "type": "compute",
                    "name": "nova",
                    "id": "c1",
                    "endpoints": [dict(endpoint, id="e1", url=self.compute_url)],
                },
                {
                    "type": "identity",
                    "name": "keystone",
                    "id": "i1",
                    "endpoints": [dict(endpoint, id="e2", url=self.auth_url)],
                },
            ],
        }

    def _versions(self) -> Response:
        failed = self._misbehave("versions")
        if failed:
            return failed
        return jsonify(
            {
                "version": {
                    "id": "v2.1",
                    "status": "CURRENT",
                    "version": self.faults.max_version,
                    "min_version": MIN_VERSION,
                    "updated": "2013-07-23T11:33:21Z",
                    "links": [{"rel": "self", "href": f"{self.public_base}/compute/v2.1/"}],
                }
            }
        )

    def _list(self, project: str) -> Response:
        refused = self._authorized() or self._misbehave("list")
        if refused:
            return refused
        self.load_state()
        try:
            limit = min(int(request.args.get("limit", 1000)), 1000)
        except ValueError:
            return nova_error(400, "limit must be an integer")
        if limit == 1:
            # Also counted apart: a one-server list is a check that the cloud answers (the client's probe), not a page
            # of a walk.
            self.count(ONE_SERVER_LIST)
        order = list(self.servers) if self.faults.list_every_project else self.order
        start = 0
        marker = request.args.get("marker")
        if marker:
            if marker not in order:
                return nova_error(400, f"marker [{marker}] not found")
            start = order.index(marker) + 1
        page = [self.servers[i].to_nova(self.project_id) for i in order[start : start + limit]]
        body: dict = {"servers": page}
        if len(page) == limit and start + limit < len(order):
            href = f"{self.compute_url}/servers/detail?limit={limit}&marker={page[-1]['id']}"
            body["servers_links"] = [{"rel": "next", "href": href}]
        return jsonify(body)

    def _show(self, project: str, server_id: str) -> Response:
        refused = self._authorized() or self._misbehave("show")
        if refused:
            return refused
        self.load_state()
        server = self.servers.get(server_id)
        if server is None:
            return nova_error(404, f"Instance {server_id} could not be found.")
        return jsonify({"server": server.to_nova(self.project_id)})

    def _console_refusal(self, server_id: str) -> tuple[Server | None, Response | None]:
        refused = self._authorized() or self._misbehave("console")
        if refused:
            return None, refused
        self.load_state()
        server = self.servers.get(server_id)
        if server is None:
            return None, nova_error(404, f"Instance {server_id} could not be found.")
        if server.status != "ACTIVE":
            return None, nova_error(409, f"Instance {server_id} is not ready.")
        return server, None

    def _in_range(self, version: str) -> bool:
        try:
            wanted = version_tuple(version)
        except ValueError:
            return False
        return version_tuple(MIN_VERSION) <= wanted <= version_tuple(self.faults.max_version)

    def _remote_console(self, project: str, server_id: str) -> Response:
        version = parse_microversion()
        if not self._in_range(version):
            return nova_error(406, f"Version {version} is not supported by the API.")
        if version_tuple(version) < (2, 6):
            return nova_error(404, "The resource could not be found.")
        server, refused = self._console_refusal(server_id)
        if refused:
            return refused
        body = (request.get_json(silent=True) or {}).get("remote_console", {})
        kind = {("vnc", "novnc"): "novnc", ("serial", "serial"): "serial"}.get((body.get("protocol"), body.get("type")))
        if kind is None:
            return nova_error(400, "Unsupported remote console type.")
        if kind in self.faults.unavailable_consoles:
            return nova_error(400, f"Unavailable console type {kind}.")
        url = self.mint_url(server) if kind == "novnc" else self.mint_serial_url(server)
        return jsonify({"remote_console": {"protocol": body["protocol"], "type": kind, "url": url}})

    def _action(self, project: str, server_id: str) -> Response:
        version = parse_microversion()
        body = request.get_json(silent=True) or {}
        legacy = next((name for name in ("os-getVNCConsole", "os-getSerialConsole") if name in body), None)
        if legacy:
            if version_tuple(version) >= (2, 6):
                return nova_error(404, "The resource could not be found.")
            server, refused = self._console_refusal(server_id)
            if refused:
                return refused
            kind = "novnc" if legacy == "os-getVNCConsole" else "serial"
            if kind in self.faults.unavailable_consoles:
                return nova_error(400, f"Unavailable console type {kind}.")
            url = self.mint_url(server) if kind == "novnc" else self.mint_serial_url(server)
            return jsonify({"console": {"type": kind, "url": url}})
        return self._power(server_id, body)

    def _power(self, server_id: str, body: dict) -> Response:
        """os-start, os-stop and reboot, as Nova answers them: 202 and no body, or 409 in the wrong state."""
        refused = self._authorized() or self._misbehave("action")
        if refused:
            return refused
        self.load_state()
        name = action_name(body)
        if name is None:
            return nova_error(400, "Invalid input for the server action.")
        server = self.servers.get(server_id)
        if server is None:
            return nova_error(404, f"Instance {server_id} could not be found.")
        allowed, during, task = ACTIONS[name]
        if server.status not in allowed or server.task_state:
            verb = name.removeprefix("os-").partition("-")[0]
            state = server.task_state or server.status.lower()
            return nova_error(409, f"Cannot '{verb}' instance {server_id} while it is in vm_state {state}")
        self.actions.append((server_id, name))
        server.task_state = task
        if name.startswith("reboot"):
            server.status = during
        self.save_state()
        threading.Thread(target=self._finish, args=(server, name), daemon=True).start()
        return Response(status=202)

    def _finish(self, server: Server, name: str) -> None:
        """The action's end: the hook (a guest started or reset), then the server's new state."""
        time.sleep(self.action_seconds)
        try:
            if self.on_action:
                self.on_action(server, name)
            server.status = ACTIONS[name][1] if not name.startswith("reboot") else "ACTIVE"
        finally:
            server.task_state = None
            server.updated = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            self.save_state()

    def save_state(self) -> None:
        """Write every server's power state to ``state_file`` (atomically), if there is one."""
        if self.state_file is None:
            return
        states = {s.id: [s.status, s.task_state, s.updated] for s in self.servers.values()}
        scratch = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.{threading.get_ident()}")
        scratch.write_text(json.dumps(states))
        os.replace(scratch, self.state_file)

    def load_state(self) -> None:
        """Take the power states another process wrote, when ``state_file`` changed since the last look."""
        if self.state_file is None:
            return
        try:
            stamp = self.state_file.stat().st_mtime_ns
            if stamp == self._state_seen:
                return
            states = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        self._state_seen = stamp
        for server_id, (status, task_state, updated) in states.items():
            if server_id in self.servers:
                server = self.servers[server_id]
                server.status, server.task_state, server.updated = status, task_state, updated

    def mint_url(self, server: Server) -> str:
        """A console URL in Nova's shape, its token registered with the console backend."""
        token = self.issue_console_token(server)
        if self.on_console:
            self.on_console(token, server, self.console_ttl)
        base = self.console_base
        if has_request_context() and request.headers.get("X-Console-Base") and not self.fixed_console_base:
            base = request.headers["X-Console-Base"]
        if self.faults.console_scheme:
            base = self.faults.console_scheme + ":" + base.partition(":")[2]
        return f"{base}/{self.console_page}?path={quote(self.console_ws_path + '?token=' + token, safe='')}"

    def mint_serial_url(self, server: Server) -> str:
        """A serial console URL as nova-serialproxy's are: its websocket, the token in the query."""
        token = self.issue_console_token(server, "serial")
        register = self.on_serial_console or self.on_console
        if register:
            register(token, server, self.console_ttl)
        return f"{self.serial_base}/?token={token}"

    def _control(self) -> Response:
        """Read counters, or change faults from another process (tests, bench, lab)."""
        if request.method == "POST":
            change = request.get_json(force=True)
            if change.pop("revoke_tokens", False):
                self.revoke_tokens()
            for name, value in change.items():
                if name == "malformed":
                    value = set(value)
                if name == "statuses":
                    for server_id, status in value.items():
                        self.servers[server_id].status = status
                    continue
                if not hasattr(self.faults, name):
                    return nova_error(400, f"unknown fault {name}")
                setattr(self.faults, name, value)
        return jsonify({"counts": self.counts, "generation": self.token_generation})
