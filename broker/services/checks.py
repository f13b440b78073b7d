"""``flask --app app check``: what an operator runs before and after deploying; it mints nothing."""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import asdict
from dataclasses import dataclass
from http.client import HTTPConnection
from http.client import HTTPException
from http.client import HTTPSConnection
from urllib.parse import urlsplit

from sqlalchemy.exc import SQLAlchemyError

from broker import config
from broker import schema
from broker.cloud import registry
from broker.cloud.health import Finding
from broker.config import Settings
from broker.services import instances
from broker.services import policy
from broker.services import users
from broker.services.consoles import ConsoleService
from broker.shared import SharedRedis

# The relay's answer to a plain GET (no Upgrade) on its path. The same text as PROBE_ANSWER in
# broker/relay/server.py, which the services may not import (the layers put the relay above them);
# tests/services/test_checks.py keeps the two equal.
RELAY_PROBE_ANSWER = "console-broker relay\n"
RELAY_PROBE_TIMEOUT = 2.0
# How long /readyz reuses a probe's answer: polled every second or two, it would otherwise open a
# connection each time, and wait up to the timeout each time when the relay's host does not answer.
RELAY_PROBE_TTL = 5.0


def check_database() -> list[Finding]:
    """The database answers and its schema is the one this code needs."""
    try:
        found = schema.inspect_state()
    except SQLAlchemyError as exc:
        return [Finding("fail", f"database unreachable ({type(exc.orig or exc).__name__}): check BROKER_DATABASE_URL")]
    if problem := found.problem():
        return [Finding("fail", problem)]
    if found.empty:
        return [Finding("fail", f"the database is empty: create its tables with '{schema.UPGRADE_COMMAND}'")]
    return [Finding("ok", f"database schema is current (revision {found.head})")]


def check_redis(shared: SharedRedis | None) -> list[Finding]:
    """Redis, when configured: shared sign-in limits and server lists need it."""
    if shared is None:
        return [Finding("note", "no BROKER_REDIS_URL: sign-in limits and server lists are per process")]
    up, reason = shared.status()
    if up:
        return [Finding("ok", reason)]
    return [Finding("fail", f"{reason}: the broker runs on per-process state until it answers; check BROKER_REDIS_URL")]


def check_clouds(service: ConsoleService) -> list[Finding]:
    """Each cloud: sign in, compute endpoint and versions, one server listed."""
    findings: list[Finding] = []
    for cloud in service.inventory.clouds.values():
        findings.extend(cloud.client.probe())
    return findings


def check_clouds_files(settings: Settings) -> list[Finding]:
    """clouds.yaml (and secure.yaml) hold the service credentials: only their owner may read them."""
    if not settings.clouds:  # the demo, or one cloud from the OS_* variables: no file holds them
        return []
    findings = []
    for path in registry.credentials_files():
        problem = registry.exposure(path)
        findings.append(Finding("fail", problem) if problem else Finding("ok", f"{path} is readable by its owner only"))
    return findings


def check_access(clouds: list[str]) -> list[Finding]:
    """Users and rules: someone can sign in, and every rule can grant something."""
    findings: list[Finding] = []
    if not users.any_users():
        findings.append(
            Finding("fail", "no users: create the first admin with 'flask --app app users add NAME --admin'")
        )
    for rule in policy.rules_on_unknown_clouds(clouds):
        findings.append(
            Finding(
                "fail",
                f"rule {rule.id} ({rule.describe()}) names a cloud that is not configured (configured: "
                f"{', '.join(clouds) or 'none'}); it grants nothing: remove it with 'rules remove {rule.id}' "
                "or fix BROKER_CLOUDS",
            )
        )
    for user in policy.users_without_rules():
        findings.append(
            Finding(
                "note",
                f"user {user.username} has no rule (nor a group with one), so they can open no console: "
                f"'rules add --user {user.username} --cloud NAME' or 'groups add-member GROUP {user.username}'",
            )
        )
    return findings


def check_instances(settings: Settings, service: ConsoleService) -> list[Finding]:
    """The web and relay processes running on this database agree (secret key, clouds, console mode), and
    this environment agrees with them."""
    me = instances.profile(settings, service.inventory.clouds.values())
    return instances.findings(instances.running(), me)


def check_console_hosts(service: ConsoleService, configured: bool) -> list[Finding]:
    """Which hosts console URLs may point at (the CSP's frame-src says the same)."""
    if not service.console_hosts:
        return [
            Finding(
                "note",
                "console URLs are accepted from any http(s) host: set BROKER_CONSOLE_HOSTS to the noVNC proxy hosts",
            )
        ]
    source = "BROKER_CONSOLE_HOSTS" if configured else "the clouds' API hosts (set BROKER_CONSOLE_HOSTS to change)"
    return [Finding("ok", f"console URLs are accepted from {', '.join(service.console_hosts)} ({source})")]


# -- the relay (relay mode only) -----------------------------------------------------------


class RelaySettingError(ValueError):
    """RELAY_BIND or RELAY_PORT cannot be read (the relay itself would refuse to start)."""


@dataclass(frozen=True)
class RelayTarget:
    """Where the relay is probed, and the setting to fix when that address does not lead to it."""

    url: str
    setting: str


@dataclass(frozen=True)
class RelayAnswer:
    ok: bool
    reason: str


def relay_mode(settings: Settings, service: ConsoleService) -> bool:
    """True when any console opens through the relay: BROKER_CONSOLE_MODE=relay, a cloud's console_mode, or a
    cloud offering serial consoles (they always run through the relay)."""
    clouds = service.inventory.clouds.values()
    return settings.console_mode == "relay" or any(
        cloud.console_mode == "relay" or "serial" in cloud.console_types for cloud in clouds
    )


def relay_bind(env: Mapping[str, str]) -> tuple[str, int]:
    """(host, port) the relay listens on, read as the relay reads it."""
    try:
        return config.relay_bind(env)
    except config.ConfigError as exc:
        raise RelaySettingError(f"relay: {exc}") from None


def reachable_host(host: str) -> str:
    """A bind host as a URL's host: a wildcard is reached on loopback, IPv6 goes in brackets."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def relay_target(settings: Settings, host: str | None = None, env: Mapping[str, str] = os.environ) -> RelayTarget:
    """BROKER_RELAY_URL as http(s) when set ({host}: ``host``, else the relay's own bind host);
    else the relay's bind address on BROKER_RELAY_PATH."""
    if settings.relay_url:
        url = settings.relay_url
        if "{host}" in url:
            url = url.replace("{host}", host or reachable_host(relay_bind(env)[0]))
        scheme, _, rest = url.partition("://")
        return RelayTarget(f"{'https' if scheme == 'wss' else 'http'}://{rest}", "BROKER_RELAY_URL")
    bind_host, port = relay_bind(env)
    setting = "RELAY_PORT" if env.get("RELAY_PORT") and not env.get("RELAY_BIND") else "RELAY_BIND"
    return RelayTarget(f"http://{reachable_host(bind_host)}:{port}{settings.relay_path}", setting)


def plain_get(url: str, timeout: float) -> tuple[int, bytes]:
    """One GET without Upgrade, never following a redirect: the status and the body's first bytes."""
    parts = urlsplit(url)
    kind = HTTPSConnection if parts.scheme == "https" else HTTPConnection
    connection = kind(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path or "/", headers={"User-Agent": "console-broker check"})
        response = connection.getresponse()
        return response.status, response.read(len(RELAY_PROBE_ANSWER) + 1)
    finally:
        connection.close()


def probe_relay(target: RelayTarget, timeout: float = RELAY_PROBE_TIMEOUT) -> RelayAnswer:
    """Does the relay answer at ``target``? Its plain GET answers 200 with RELAY_PROBE_ANSWER; nothing else does."""
    try:
        status, body = plain_get(target.url, timeout)
    except HTTPException as exc:
        return RelayAnswer(False, not_the_relay(target, f"something that is not HTTP ({type(exc).__name__})"))
    except ssl.SSLError as exc:
        why = getattr(exc, "verify_message", None) or exc.reason
        return RelayAnswer(
            False, f"relay: TLS with {target.url} failed ({type(exc).__name__}: {why}): fix {target.setting}"
        )
    except (OSError, ValueError) as exc:
        return RelayAnswer(
            False,
            f"relay unreachable at {target.url} ({type(exc).__name__}): start it (the Procfile's relay: line) "
            f"or fix {target.setting}",
        )
    if status == 200 and body == RELAY_PROBE_ANSWER.encode():
        return RelayAnswer(True, f"relay answers at {target.url}")
    return RelayAnswer(False, not_the_relay(target, f"HTTP {status}"))


def not_the_relay(target: RelayTarget, what: str) -> str:
    """Something answers at the relay's address, but not the relay: a wrong setting or proxy route."""
    where = (
        f"fix {target.setting} or the proxy's route for {urlsplit(target.url).path or '/'}"
        if target.setting == "BROKER_RELAY_URL"
        else f"another program listens there: fix {target.setting} to where the relay listens"
    )
    return f"relay: {target.url} answers {what} but it is not the relay: {where}"


class RelayProbe:
    """probe_relay with each address's answer kept ``ttl`` seconds, for /readyz (see RELAY_PROBE_TTL)."""

    def __init__(
        self,
        ttl: float = RELAY_PROBE_TTL,
        probe: Callable[[RelayTarget], RelayAnswer] = probe_relay,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.probe = probe
        self.clock = clock
        self._answers: dict[RelayTarget, tuple[float, RelayAnswer]] = {}

    def __call__(self, target: RelayTarget) -> RelayAnswer:
        kept = self._answers.get(target)
        if kept is not None and self.clock() - kept[0] < self.ttl:
            return kept[1]
        answer = self.probe(target)
        if len(self._answers) >= 16:  # a few addresses at most ({host}: the names the broker is reached by)
            self._answers.clear()
        self._answers[target] = (self.clock(), answer)
        return answer


def check_relay(settings: Settings, service: ConsoleService, env: Mapping[str, str] = os.environ) -> list[Finding]:
    """In relay mode, the relay answers where browsers are sent ({host}: the relay's own bind host)."""
    if not relay_mode(settings, service):
        return []
    try:
        target = relay_target(settings, env=env)
    except RelaySettingError as exc:
        return [Finding("fail", str(exc))]
    answer = probe_relay(target)
    return [Finding("ok" if answer.ok else "fail", answer.reason)]


# -- the proxy count (seen by the web processes, read here) ---------------------------------


# check runs in its own process and sees no request: each web process notes here, at most once a
# minute, a request whose X-Forwarded-For BROKER_TRUSTED_PROXIES does not match. Redis, because every
# instance and check share it and it needs no table; the note lapses an hour after the last one.
PROXY_SIGHTING_KEY = "broker:proxy-mismatch"
PROXY_SIGHTING_TTL = 3600


@dataclass(frozen=True)
class ProxySighting:
    """A request with X-Forwarded-For that the proxy count did not match: its peer, how many addresses
    the header listed, the count it met and when (epoch seconds)."""

    peer: str
    hops: int
    count: int
    at: float

    def describe(self) -> str:
        """What is wrong and what to set, naming the setting."""
        peer = self.peer or "the proxy"
        if self.count == 0:
            wrong = f"X-Forwarded-For came from {peer} but BROKER_TRUSTED_PROXIES=0 believes no proxy"
        else:
            listed = f"{self.hops} address{'es' if self.hops > 1 else ''}"
            wrong = (
                f"X-Forwarded-For came from {peer} with {listed} but BROKER_TRUSTED_PROXIES={self.count} "
                f"expects {self.count}, so it is ignored"
            )
        fix = "Set BROKER_TRUSTED_PROXIES to the number of proxies in front (1 for the shipped nginx)"
        unproxied = "; with none in front, a client sent the header itself" if self.count == 0 else ""
        return f"{wrong}: every client has {peer}'s address (sign-in limits, audit). {fix}{unproxied}"


def proxy_sighting(count: int, hops: int, peer: str, at: float) -> ProxySighting | None:
    """A sighting when ``hops`` forwarded addresses came in while BROKER_TRUSTED_PROXIES is ``count``
    and ProxyFix believes none of them (no proxy trusted, or fewer addresses than proxies), else None."""
    if hops == 0 or hops >= count > 0:
        return None
    return ProxySighting(peer, hops, count, at)


def note_proxy_sighting(shared: SharedRedis, sighting: ProxySighting) -> None:
    """Keep ``sighting`` where check and every instance's /readyz read it (nothing while Redis is down)."""
    value = json.dumps(asdict(sighting))
    shared.run(lambda client: client.set(PROXY_SIGHTING_KEY, value, ex=PROXY_SIGHTING_TTL), lambda: None)


def last_proxy_sighting(shared: SharedRedis) -> ProxySighting | None:
    """The latest sighting any web process noted within the hour, or None (also when Redis is down)."""
    raw = shared.run(lambda client: client.get(PROXY_SIGHTING_KEY), lambda: None)
    try:
        return ProxySighting(**json.loads(raw)) if raw else None
    except (TypeError, ValueError):  # not a note this code wrote
        return None


def proxy_finding(count: int, sighting: ProxySighting | None, now: float) -> Finding:
    """A sighting under this count fails; one under an older count (an instance not restarted yet) is a note."""
    if sighting is None:
        return Finding(
            "ok",
            f"BROKER_TRUSTED_PROXIES={count}: no request in the last hour had an X-Forwarded-For it does not match",
        )
    minutes = int(max(0.0, now - sighting.at) // 60)
    ago = f"{minutes} min ago" if minutes else "less than a minute ago"
    if sighting.count == count:
        return Finding("fail", f"{sighting.describe()}; seen {ago}")
    return Finding(
        "note",
        f"{sighting.describe()}; seen {ago} under BROKER_TRUSTED_PROXIES={sighting.count}, which is {count} now: "
        "this lapses an hour after an instance with the old value last saw such a request",
    )


def check_proxies(settings: Settings, shared: SharedRedis | None, now: float | None = None) -> list[Finding]:
    """Whether the web processes saw X-Forwarded-For that BROKER_TRUSTED_PROXIES does not match (through Redis)."""
    count = settings.trusted_proxies
    if shared is None:
        return [
            Finding(
                "note",
                f"BROKER_TRUSTED_PROXIES={count}: without BROKER_REDIS_URL check cannot see whether requests match it; "
                "the web log warns 'X-Forwarded-For came from' when they do not",
            )
        ]
    sighting = last_proxy_sighting(shared)
    if sighting is None and not shared.usable():
        return [
            Finding(
                "note",
                f"BROKER_TRUSTED_PROXIES={count}: not known whether requests match it ({shared.where} unreachable)",
            )
        ]
    return [proxy_finding(count, sighting, time.time() if now is None else now)]
