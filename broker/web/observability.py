"""What operators watch: ``/metrics`` (Prometheus), ``/readyz`` (load balancers) and a request ID on every request.

``/metrics`` is never public. It answers a ``Bearer`` token (``BROKER_METRICS_TOKEN``) or an
address in ``BROKER_METRICS_ALLOW``; everyone else gets the same 404 as any unknown path,
so the endpoint is not advertised, and with neither setting it is off. ``/readyz`` answers
anyone with its status alone, and the metrics token's holder with each check's details.
An X-Forwarded-For that ``BROKER_TRUSTED_PROXIES`` does not match is a warning in the log and
a failing check in ``/readyz`` and ``flask --app app check``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from functools import lru_cache

from flask import Blueprint
from flask import Flask
from flask import Response
from flask import abort
from flask import current_app
from flask import g
from flask import jsonify
from flask import request
from flask import request_started
from sqlalchemy import text
from werkzeug.http import parse_list_header

from broker import metrics
from broker import state
from broker.cloud.client import ComputeClient
from broker.cloud.resilience import CircuitBreaker
from broker.extensions import db
from broker.services import checks as service_checks
from broker.web.security import page_host

log = logging.getLogger(__name__)

bp = Blueprint("observability", __name__)

# What a proxy's X-Request-ID may look like to be kept: short, and nothing a log line could trip on.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# This app's relay probe (checks.RelayProbe), which keeps each answer a few seconds.
RELAY_PROBE = "broker.relay_probe"
# This app's ProxyWatch: what its requests showed of the proxy count.
PROXY_WATCH = "broker.proxy_watch"
# A wrong proxy count shows on every request: say so this often at most, per process.
PROXY_WARN_EVERY = 60.0
# Set in a gunicorn worker when its instance starts to stop (gunicorn.conf.py): /readyz answers 503 from then on.
STOPPING = threading.Event()


# -- request IDs -------------------------------------------------------------------


def incoming_request_id() -> str | None:
    """The X-Request-ID a trusted proxy sent, if it looks sane; a client's own is never believed."""
    if state.settings().trusted_proxies <= 0:
        return None
    value = request.headers.get("X-Request-ID", "")
    return value if SANE_REQUEST_ID.fullmatch(value) else None


def request_id() -> str:
    """This request's ID, chosen on first use (``g.request_id``)."""
    if "request_id" not in g:
        g.request_id = incoming_request_id() or uuid.uuid4().hex
    return g.request_id


def assign_request_id(sender: Flask, **extra) -> None:
    """Choose the ID before any other hook runs, so every log line of the request carries it."""
    request_id()


@bp.after_app_request
def send_request_id(response: Response) -> Response:
    response.headers["X-Request-ID"] = request_id()
    return response


# -- the proxy count ---------------------------------------------------------------


class ProxyWatch:
    """This process's latest sighting of an X-Forwarded-For that BROKER_TRUSTED_PROXIES does not match,
    and when it last said so."""

    def __init__(self, every: float = PROXY_WARN_EVERY, clock: Callable[[], float] = time.time) -> None:
        self.every = every
        self.clock = clock
        self.last: service_checks.ProxySighting | None = None
        self._said: float | None = None
        self._lock = threading.Lock()

    def saw(self, sighting: service_checks.ProxySighting) -> bool:
        """Keep ``sighting``; True when it is to be said (the first, then at most once per ``every`` seconds)."""
        with self._lock:
            self.last = sighting
            if self._said is not None and sighting.at - self._said < self.every:
                return False
            self._said = sighting.at
            return True

    def latest(self) -> service_checks.ProxySighting | None:
        """The last sighting, while it is recent enough to report (as long as check reports one)."""
        last = self.last
        return last if last is not None and self.clock() - last.at < service_checks.PROXY_SIGHTING_TTL else None


def forwarded_hops() -> int:
    """How many addresses this request's X-Forwarded-For lists (0 without one)."""
    return len([item for item in parse_list_header(request.headers.get("X-Forwarded-For", "")) if item])


def connection_peer() -> str:
    """The connection's own peer, before ProxyFix replaced REMOTE_ADDR (as header.peer_address reads it)."""
    original = request.environ.get("werkzeug.proxy_fix.orig") or {}
    return original.get("REMOTE_ADDR") or request.environ.get("REMOTE_ADDR") or ""


@bp.before_app_request
def watch_proxy_count() -> None:
    """Behind a proxy that the count does not match, every person has the proxy's address: one sign-in
    limit and one audit address for all. Warn (at most once a minute) and note it for check and /readyz."""
    if "X-Forwarded-For" not in request.headers:
        return  # no forwarded address: nothing to sight (the common case, checked first on every request)
    watch: ProxyWatch = current_app.extensions[PROXY_WATCH]
    count = state.settings().trusted_proxies
    sighting = service_checks.proxy_sighting(count, forwarded_hops(), connection_peer(), watch.clock())
    if sighting is None or not watch.saw(sighting):
        return
    log.warning("%s (said at most once a minute)", sighting.describe())
    shared = state.redis()
    if shared is not None:
        service_checks.note_proxy_sighting(shared, sighting)


def proxies_check() -> dict:
    """This worker's own sighting, else one any web process noted in Redis; one under this count is not ok."""
    watch: ProxyWatch = current_app.extensions[PROXY_WATCH]
    sighting = watch.latest()
    shared = state.redis()
    if sighting is None and shared is not None:
        sighting = service_checks.last_proxy_sighting(shared)
    finding = service_checks.proxy_finding(state.settings().trusted_proxies, sighting, watch.clock())
    return {"ok": finding.level != "fail", "reason": finding.text}


# -- mint latency ------------------------------------------------------------------


@bp.before_app_request
def start_mint_clock() -> None:
    if request.endpoint == "api.mint":
        g.mint_started = time.perf_counter()


@bp.after_app_request
def stop_mint_clock(response: Response) -> Response:
    started = g.pop("mint_started", None)
    if started is not None:
        metrics.mint_time(time.perf_counter() - started, response.status_code)
    return response


# -- /metrics ----------------------------------------------------------------------


@lru_cache(maxsize=8)
def networks(allowed: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``BROKER_METRICS_ALLOW`` parsed once (the settings checked the syntax at start-up)."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in allowed)


def address_allowed(address: str | None, allowed: tuple[str, ...]) -> bool:
    """True when ``address`` (the client, ProxyFix-corrected) is in one of the ``allowed`` networks."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return any(ip in network for network in networks(allowed))


def token_presented(token: str) -> bool:
    """True when the request carries ``Authorization: Bearer <token>`` (compared in constant time)."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def may_read_metrics() -> bool:
    """The token or an allowed address; with neither configured, nobody."""
    settings = state.settings()
    if settings.metrics_token and token_presented(settings.metrics_token):
        return True
    if settings.metrics_allow and address_allowed(request.remote_addr, settings.metrics_allow):
        return True
    if request.headers.get("Authorization") and (settings.metrics_token or settings.metrics_allow):
        # Strangers get a plain 404; an operator with a wrong token finds out why here.
        log.warning("refused /metrics to %s: wrong token", request.remote_addr)
    return False


@bp.get("/metrics")
def prometheus_metrics():
    if not may_read_metrics():
        abort(404)
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


# -- /readyz -----------------------------------------------------------------------


def database_check() -> dict:
    """``SELECT 1`` on a pooled connection."""
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        # The type only: a driver's message can name hosts, users or the URL.
        return {"ok": False, "reason": f"the database did not answer SELECT 1 ({type(exc).__name__})"}
    return {"ok": True, "reason": "answers SELECT 1"}


def redis_check() -> dict | None:
    """A PING of the shared Redis (0.5 s at most), or None when none is configured."""
    shared = state.redis()
    if shared is None:
        return None
    up, reason = shared.status()
    return {"ok": up, "reason": reason}


def clouds_check() -> dict:
    """Each cloud's circuits (lists, consoles) as this worker's breakers hold them; never makes the broker unready.

    An instance taken out of the load balancer gets no requests, so its open circuit would
    never see the probe that closes it; and a broker that is up tells people which cloud is
    failing, which a proxy's error page does not.
    """
    inventory = state.consoles().inventory
    circuits = {name: breaker_states(inventory.clouds[name].client) for name in inventory.names()}
    failing = [
        f"{name} {circuit}" for name, states in circuits.items() for circuit, now in states.items() if now != "closed"
    ]
    reason = (
        f"circuit open for {', '.join(failing)} (this worker); still ready: out of the load balancer, "
        "an instance would never get the call that probes a circuit closed"
        if failing
        else "all circuits closed"
    )
    return {"ok": True, "reason": reason, "circuits": circuits}


def breaker_states(client: ComputeClient) -> dict[str, str]:
    """The state of each of a cloud client's breakers, by circuit."""
    return {circuit: circuit_state(breaker) for circuit, breaker in client.breakers.items()}


def circuit_state(breaker: CircuitBreaker) -> str:
    """``closed``; ``open`` while the breaker fails calls fast; ``half-open`` when the next call probes."""
    if breaker.opened_at is None:
        return "closed"
    return "open" if breaker.clock() - breaker.opened_at < breaker.cooldown else "half-open"


def relay_check() -> dict | None:
    """In relay mode, whether the relay answers where browsers are sent ({host}: this request's host).

    Reported ("degraded") but never 503: all instances share the relay, so a load balancer would
    take every one of them out at once, and iframe clouds and the server list still work.
    """
    settings = state.settings()
    if not service_checks.relay_mode(settings, state.consoles()):
        return None
    try:
        target = service_checks.relay_target(settings, page_host())
    except service_checks.RelaySettingError as exc:
        return {"ok": False, "reason": str(exc)}
    answer = current_app.extensions[RELAY_PROBE](target)
    return {"ok": answer.ok, "reason": answer.reason}


def may_read_readiness() -> bool:
    """The metrics token, presented as /metrics takes it. Not the address allow-list: nginx passes
    /readyz to everyone, and details name hosts, ports and clouds."""
    token = state.settings().metrics_token
    return bool(token) and token_presented(token)


@bp.get("/readyz")
def readyz():
    """200 when this instance can serve, else 503: only the database decides, and a stop under way.

    A Redis that is down is reported ("degraded") but keeps the instance in the pool: every
    instance shares it, so 503 would take them all out at once, while each can go on with
    per-process state. Open circuits, the relay and a wrong proxy count are reported likewise (see
    clouds_check, relay_check, proxies_check). Only the token's holder reads the checks; the relay is
    probed only for them.
    """
    details = may_read_readiness()
    checks = {"database": database_check()}
    shared = redis_check()
    if shared is not None:
        checks["redis"] = shared
    checks["clouds"] = clouds_check()
    checks["proxies"] = proxies_check()
    relay = relay_check() if details else None
    if relay is not None:
        checks["relay"] = relay
    stopping = STOPPING.is_set()
    ready = checks["database"]["ok"] and not stopping
    degraded = not all(check["ok"] for check in checks.values())
    status = "stopping" if stopping else "not ready" if not ready else "degraded" if degraded else "ready"
    response = jsonify({"status": status, "checks": checks} if details else {"status": status})
    response.status_code = 200 if ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response


def register_observability(app: Flask) -> None:
    """The blueprint, the request ID chosen before any other hook of a request, the relay probe's memory
    and the proxy count's watch."""
    app.register_blueprint(bp)
    request_started.connect(assign_request_id, app)
    app.extensions[RELAY_PROBE] = service_checks.RelayProbe()
    app.extensions[PROXY_WATCH] = ProxyWatch()
