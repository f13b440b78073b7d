"""Broker settings: parsed once from ``BROKER_*`` variables into a frozen object."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import secrets
import sys
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.exc import NoSuchModuleError

from broker.throttle import Throttle
from broker.throttle import ThrottleConfigError
from broker.throttle import parse_limit


class ConfigError(Exception):
    """Configuration that cannot work; the message names the variable."""


# gunicorn's "worker failed to boot": its master stops instead of restarting the worker forever.
BOOT_ERROR = 3


class StartupStopped(SystemExit):
    """Start-up refused: the message was printed, and the process exits with BOOT_ERROR."""

    def __init__(self, message: str):
        super().__init__(BOOT_ERROR)
        self.message = message

    def __str__(self) -> str:
        return self.message


# Where the Procfile's relay: process listens without RELAY_BIND or RELAY_PORT.
DEFAULT_RELAY_PORT = 5001


def relay_bind_setting(env: Mapping[str, str]) -> str:
    """The variable that says where the relay listens: ``RELAY_BIND`` when set, else ``RELAY_PORT``."""
    return "RELAY_BIND" if env.get("RELAY_BIND") else "RELAY_PORT"


def relay_bind(env: Mapping[str, str]) -> tuple[str, int]:
    """(host, port) from ``RELAY_BIND`` (``host:port``, ``[::1]:port``) or ``RELAY_PORT``; ConfigError naming it."""
    bind = env.get("RELAY_BIND") or f"127.0.0.1:{env.get('RELAY_PORT') or DEFAULT_RELAY_PORT}"
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{relay_bind_setting(env)} must give a host and a port such as 127.0.0.1:{DEFAULT_RELAY_PORT}, "
            f"got {bind!r}"
        )
    return host.strip("[]"), int(port)


def stop(message: str) -> NoReturn:
    """Print what is wrong (and what to change) and stop: under gunicorn, the whole server stops."""
    text = f"console-broker: configuration error: {message}"
    print(text, file=sys.stderr, flush=True)
    raise StartupStopped(text)


# -- every variable the broker reads: the one list ------------------------------------------------
# load_settings reads BROKER_* names only through Environment, which refuses any name missing here;
# start-up refuses a BROKER_* variable missing here, naming the closest one; and the tests check that
# no code reads a variable missing here and that deploy/broker.env.example shows every one.
SETTINGS = frozenset(
    {
        "BROKER_SECRET_KEY",
        "BROKER_SECRET_KEY_FALLBACKS",
        "BROKER_DATABASE_URL",
        "BROKER_REDIS_URL",
        "BROKER_RATELIMIT_STORAGE_URL",
        "BROKER_LOGIN_LIMIT",
        "BROKER_METRICS_TOKEN",
        "BROKER_METRICS_ALLOW",
        "BROKER_LOG_FORMAT",
        "BROKER_TRUSTED_PROXIES",
        "BROKER_SECURE_COOKIES",
        "BROKER_SESSION_LIFETIME",
        "BROKER_SESSION_IDLE",
        "BROKER_CLOUDS",
        "BROKER_CONSOLE_HOSTS",
        "BROKER_CONSOLE_TTL",
        "BROKER_REFRESH_MARGIN",
        "BROKER_CONSOLE_SWAP",
        "BROKER_IDLE_SWAP_AFTER",
        "BROKER_PAUSE_AFTER",
        "BROKER_SERVER_CACHE_TTL",
        "BROKER_CONNECT_TIMEOUT",
        "BROKER_READ_TIMEOUT",
        "BROKER_PANEL_METADATA",
        "BROKER_CONSOLE_MODE",
        "BROKER_CONSOLE_TYPES",
        "BROKER_RELAY_PATH",
        "BROKER_RELAY_URL",
        "BROKER_MAX_CONSOLES_PER_USER",
        "BROKER_RECORDING",
        "BROKER_RECORDING_DIR",
        "BROKER_RECORDING_RETENTION_DAYS",
        "BROKER_DEMO",
        "BROKER_DEMO_SERVERS",
        "BROKER_AUTH",
        "BROKER_ADMIN_GROUPS",
        "BROKER_OIDC_ISSUER",
        "BROKER_OIDC_CLIENT_ID",
        "BROKER_OIDC_CLIENT_SECRET",
        "BROKER_OIDC_NAME",
        "BROKER_OIDC_SCOPES",
        "BROKER_OIDC_USERNAME_CLAIM",
        "BROKER_OIDC_GROUPS_CLAIM",
        "BROKER_LDAP_URL",
        "BROKER_LDAP_START_TLS",
        "BROKER_LDAP_CA_FILE",
        "BROKER_LDAP_VERIFY",
        "BROKER_LDAP_BIND_DN",
        "BROKER_LDAP_BIND_PASSWORD",
        "BROKER_LDAP_USER_BASE",
        "BROKER_LDAP_USER_FILTER",
        "BROKER_LDAP_GROUP_BASE",
        "BROKER_LDAP_GROUP_FILTER",
        "BROKER_AUTH_HEADER",
        "BROKER_AUTH_HEADER_FROM",
        "BROKER_AUTH_GROUPS_HEADER",
    }
)
# Read by the Procfile's lines (gunicorn, the relay) and gunicorn.conf.py, not by load_settings.
PROCESS_VARIABLES = frozenset(
    {"BIND", "PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS", "RELAY_BIND", "RELAY_PORT", "PROMETHEUS_MULTIPROC_DIR"}
)
# The OS_* variables the broker reads itself; openstack.config reads the others (OS_USERNAME...) on its own.
CLOUD_VARIABLES = frozenset({"OS_CLOUD", "OS_AUTH_URL", "OS_AUTH_TYPE", "OS_CLIENT_CONFIG_FILE"})
# What requests (the HTTP library of cloud calls) reads from the environment besides any *_proxy: the
# cloud's session only checks whether they are set (broker.cloud.registry.settings_for_requests).
REQUESTS_VARIABLES = frozenset({"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC"})
PREFIX = "BROKER_"
# The test suite's own variables (tests/support.py: BROKER_TEST_DB...): the broker never reads them,
# and a run's servers inherit them, so they are neither settings nor typos.
TEST_PREFIX = "BROKER_TEST_"


class UndeclaredSetting(Exception):
    """The parser read a ``BROKER_*`` name that SETTINGS lacks: a bug, so that the list cannot drift."""


class Environment(Mapping[str, str]):
    """The environment as load_settings sees it: reading a ``BROKER_*`` name missing from SETTINGS raises."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def __getitem__(self, name: str) -> str:
        if name.startswith(PREFIX) and name not in SETTINGS:
            # Not a KeyError, which Mapping.get would turn into the default.
            raise UndeclaredSetting(f"{name} is read but missing from broker.config.SETTINGS")
        return self._env[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


def unknown_settings(env: Mapping[str, str]) -> list[str]:
    """``BROKER_*`` variables set but read by nothing: a misspelt name silently leaves the default in force."""
    return sorted(n for n in env if n.startswith(PREFIX) and not n.startswith(TEST_PREFIX) and n not in SETTINGS)


def refuse_unknown_settings(env: Mapping[str, str]) -> None:
    """Stop on any unknown ``BROKER_*`` variable, naming for each the known setting closest to it."""
    unknown = unknown_settings(env)
    if unknown:
        named = "; ".join(
            f"{name} is not a broker setting: did you mean {difflib.get_close_matches(name, SETTINGS, 1, 0)[0]}?"
            for name in unknown
        )
        raise ConfigError(
            f"{named} (a misspelt setting would leave its default in force; deploy/broker.env.example lists them all)"
        )


# Shorter is refused: a placeholder such as "changeme" rather than a key. The documented command makes 64.
SECRET_KEY_MIN_LENGTH = 16

AUTH_METHODS = ("local", "oidc", "ldap", "header")
CONSOLE_MODES = ("iframe", "relay")
# The console types a cloud may offer (Nova's remote-consoles types the broker mints).
CONSOLE_TYPES = ("novnc", "serial")
# BROKER_RECORDING: off, or all (every relay console is recorded).
RECORDING_MODES = ("off", "all")


@dataclass(frozen=True)
class OidcSettings:
    """OpenID Connect (authorization code flow with PKCE) against ``issuer``'s discovery document."""

    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    name: str = "single sign-on"
    scopes: str = "openid profile email"
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"


@dataclass(frozen=True)
class LdapSettings:
    """Search-then-bind with a service account; TLS (ldaps:// or StartTLS) unless explicitly disabled."""

    url: str
    bind_dn: str
    bind_password: str = field(repr=False)
    user_base: str = ""
    user_filter: str = "(uid={username})"
    group_base: str = ""
    group_filter: str = "(member={dn})"
    start_tls: bool = False
    ca_file: str | None = None
    # False only by BROKER_LDAP_VERIFY=false: the certificate is then not checked (logged at start).
    verify: bool = True


@dataclass(frozen=True)
class HeaderSettings:
    """A user name (and groups) set by an authenticating proxy, believed only from ``trusted`` addresses."""

    header: str
    trusted: tuple[str, ...]
    groups_header: str | None = None


@dataclass(frozen=True)
class Settings:
    """Everything the broker reads from its environment, validated."""

    secret_key: str
    database_url: str
    demo: bool
    # Old keys still accepted (never used to sign), while the instances move to a new one.
    secret_key_fallbacks: tuple[str, ...] = field(default=(), repr=False)
    # Demo mode asked for by name (BROKER_DEMO=1, as ./dev demo does): only then does
    # the broker create the demo account.
    demo_explicit: bool = False
    database_url_set: bool = False
    console_ttl: int = 600
    refresh_margin: int = 60
    console_hosts: tuple[str, ...] = ()
    server_cache_ttl: int = 30
    idle_swap_after: int = 20
    pause_after: int = 8 * 3600
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    console_swap: str = "idle"
    # iframe: the page shows the cloud's noVNC URL; relay: the broker's viewer through its relay.
    console_mode: str = "iframe"
    console_types: tuple[str, ...] = ("novnc",)
    relay_path: str = "/relay"
    # The relay's websocket URL when it is not on the pages' own origin (another port: demo, lab);
    # {host} in it stands for the host name the page was opened with.
    relay_url: str | None = None
    # Relay consoles one person may have open at once (tabs left open, a script gone wrong).
    max_consoles_per_user: int = 10
    # Relay consoles recorded (screen and timing, never typed text): "off" or "all"; where, and for how long.
    recording: str = "off"
    recording_dir: Path = Path("instance/recordings")
    recording_retention_days: int = 90
    clouds: tuple[str, ...] = ()
    # Server metadata keys the server panel shows (owner, ticket queue...): an admin's choice.
    panel_metadata: tuple[str, ...] = ()
    demo_servers: int = 24
    session_lifetime: int = 12 * 3600
    session_idle: int = 3600
    secure_cookies: bool = False
    trusted_proxies: int = 0
    ratelimit_storage: str = "memory://"
    login_limit: str = "5 per 5 minutes"
    # Shared throttling and server-list cache across workers and instances; None keeps them per process.
    redis_url: str | None = None
    metrics_token: str | None = None
    # Addresses or networks (CIDR) that may read /metrics without the token.
    metrics_allow: tuple[str, ...] = ()
    log_format: str = "text"
    # Identity: sign-in methods in the order the login page offers them, and each one's settings.
    auth_methods: tuple[str, ...] = ("local",)
    admin_groups: tuple[str, ...] = ()
    oidc: OidcSettings | None = None
    ldap: LdapSettings | None = None
    header: HeaderSettings | None = None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be more than 0, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _metadata_keys(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Nova metadata keys are 1-255 characters; more than 20 is not a panel any more."""
    keys = _list(env, name)
    if len(keys) > 20 or any(len(key) > 255 for key in keys):
        raise ConfigError(f"{name} must be at most 20 comma-separated metadata keys of 1-255 characters")
    return keys


def has_cloud_config(env: Mapping[str, str]) -> bool:
    """True when the environment names a real cloud (clouds.yaml or ``OS_*``)."""
    return bool(env.get("OS_CLOUD") or env.get("BROKER_CLOUDS") or env.get("OS_AUTH_URL"))


def demo_secret_key(instance_path: str) -> str:
    """A key kept in the instance folder, so every worker and restart agree."""
    path = Path(instance_path) / "demo-secret-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def load_settings(env: Mapping[str, str], instance_path: str) -> Settings:
    """Read and check every ``BROKER_*`` variable; raise ConfigError naming a bad or unknown one."""
    refuse_unknown_settings(env)
    env = Environment(env)
    demo_explicit = _bool(env, "BROKER_DEMO", False)
    demo = _bool(env, "BROKER_DEMO", not has_cloud_config(env))
    secret_key = env.get("BROKER_SECRET_KEY", "")
    if not secret_key:
        if not demo:
            raise ConfigError(
                "BROKER_SECRET_KEY is not set; it is required outside demo mode "
                "(generate one with: python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        secret_key = demo_secret_key(instance_path)
    elif len(secret_key) < SECRET_KEY_MIN_LENGTH:
        raise ConfigError(f"BROKER_SECRET_KEY is too short; use at least {SECRET_KEY_MIN_LENGTH} random characters")
    # The demo keeps its own database, so it never shares one with real users by default.
    default_db = "sqlite:///" + str(Path(instance_path) / ("demo.sqlite3" if demo else "broker.sqlite3"))
    ttl = _int(env, "BROKER_CONSOLE_TTL", 600, minimum=10)
    swap = env.get("BROKER_CONSOLE_SWAP", "idle").strip().lower() or "idle"
    if swap not in ("idle", "always"):
        raise ConfigError(f"BROKER_CONSOLE_SWAP must be 'idle' or 'always', got {swap!r}")
    # Before the throttle's storage, which is this URL unless BROKER_RATELIMIT_STORAGE_URL is set.
    redis_url = _redis_url(env, "BROKER_REDIS_URL")
    return Settings(
        secret_key=secret_key,
        secret_key_fallbacks=_fallback_keys(env, "BROKER_SECRET_KEY_FALLBACKS"),
        database_url=_database_url(env, "BROKER_DATABASE_URL", default_db),
        database_url_set=bool(env.get("BROKER_DATABASE_URL")),
        demo=demo,
        demo_explicit=demo_explicit,
        console_ttl=ttl,
        refresh_margin=_int(env, "BROKER_REFRESH_MARGIN", 60, minimum=1),
        console_hosts=_hosts(env, "BROKER_CONSOLE_HOSTS"),
        server_cache_ttl=_int(env, "BROKER_SERVER_CACHE_TTL", 30),
        idle_swap_after=_int(env, "BROKER_IDLE_SWAP_AFTER", 20),
        pause_after=_int(env, "BROKER_PAUSE_AFTER", 8 * 3600, minimum=60),
        connect_timeout=_float(env, "BROKER_CONNECT_TIMEOUT", 5.0),
        read_timeout=_float(env, "BROKER_READ_TIMEOUT", 30.0),
        console_swap=swap,
        **relay_settings(env, demo),
        **recording_settings(env, instance_path),
        clouds=_list(env, "BROKER_CLOUDS") or _list(env, "OS_CLOUD"),
        panel_metadata=_metadata_keys(env, "BROKER_PANEL_METADATA"),
        demo_servers=_int(env, "BROKER_DEMO_SERVERS", 24, minimum=1),
        session_lifetime=_int(env, "BROKER_SESSION_LIFETIME", 12 * 3600, minimum=60),
        session_idle=_int(env, "BROKER_SESSION_IDLE", 3600, minimum=60),
        secure_cookies=_bool(env, "BROKER_SECURE_COOKIES", False),
        trusted_proxies=_int(env, "BROKER_TRUSTED_PROXIES", 0),
        ratelimit_storage=_storage_url(env, "BROKER_RATELIMIT_STORAGE_URL", redis_url),
        login_limit=_limit(env, "BROKER_LOGIN_LIMIT", "5 per 5 minutes"),
        redis_url=redis_url,
        metrics_token=_metrics_token(env, "BROKER_METRICS_TOKEN"),
        metrics_allow=_networks(env, "BROKER_METRICS_ALLOW"),
        log_format=_choice(env, "BROKER_LOG_FORMAT", ("text", "json")),
        **identity_settings(env),
    )


def relay_settings(env: Mapping[str, str], demo: bool = False) -> dict:
    """``BROKER_CONSOLE_MODE``, the console types, and where the browser finds the relay."""
    default_types = CONSOLE_TYPES if demo else ("novnc",)
    path = env.get("BROKER_RELAY_PATH", "").strip() or "/relay"
    if not path.startswith("/") or any(c in path for c in "?#\\ "):
        raise ConfigError(f"BROKER_RELAY_PATH must be a path such as /relay, got {path!r}")
    url = env.get("BROKER_RELAY_URL", "").strip() or None
    # {host} stands for the host name the page was opened with (the demo's and lab's relay on its own port).
    parts = urlsplit((url or "").replace("{host}", "relay.example"))
    if url and (parts.scheme not in ("ws", "wss") or not parts.hostname or parts.query or "{" in parts.path):
        raise ConfigError(f"BROKER_RELAY_URL must be ws(s)://host:port/path with no query, got {url!r}")
    return {
        "console_mode": _choice(env, "BROKER_CONSOLE_MODE", CONSOLE_MODES),
        # The demo cloud has serial consoles too (its relay plays nova-serialproxy).
        "console_types": console_types(_list(env, "BROKER_CONSOLE_TYPES") or default_types, "BROKER_CONSOLE_TYPES"),
        "relay_path": path,
        "relay_url": url,
        "max_consoles_per_user": _int(env, "BROKER_MAX_CONSOLES_PER_USER", 10, minimum=1),
    }


def recording_settings(env: Mapping[str, str], instance_path: str) -> dict:
    """``BROKER_RECORDING``, its directory (default ``<instance>/recordings``) and its retention in days."""
    raw_dir = env.get("BROKER_RECORDING_DIR", "").strip()
    directory = Path(raw_dir) if raw_dir else Path(instance_path) / "recordings"
    # Relative to whichever directory a process starts in, web and relay would write to different places.
    if not directory.is_absolute():
        raise ConfigError(f"BROKER_RECORDING_DIR must be an absolute path, got {raw_dir!r}")
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"BROKER_RECORDING_DIR is not a directory: {raw_dir!r}")
    return {
        "recording": _choice(env, "BROKER_RECORDING", RECORDING_MODES),
        "recording_dir": directory,
        "recording_retention_days": _int(env, "BROKER_RECORDING_RETENTION_DAYS", 90, minimum=1),
    }


def console_types(types: object, where: str) -> tuple[str, ...]:
    """The console types a cloud offers: some of CONSOLE_TYPES, each once; ``where`` names the setting in errors."""
    if isinstance(types, str) or not isinstance(types, (list, tuple)) or not types:
        raise ConfigError(f"{where} must list console types, some of {', '.join(CONSOLE_TYPES)}, got {types!r}")
    chosen = tuple(str(kind).strip().lower() for kind in types)
    unknown = [kind for kind in chosen if kind not in CONSOLE_TYPES]
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]!r} is not a console type; use some of {', '.join(CONSOLE_TYPES)}")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"{where} names a console type twice: {', '.join(chosen)}")
    return chosen


def identity_settings(env: Mapping[str, str]) -> dict:
    """``BROKER_AUTH`` and the settings of each method it names; a named method missing one stops start-up."""
    methods = _list(env, "BROKER_AUTH") or ("local",)
    for method in methods:
        if method not in AUTH_METHODS:
            raise ConfigError(f"BROKER_AUTH: {method!r} is not a sign-in method; use some of {', '.join(AUTH_METHODS)}")
    if len(set(methods)) != len(methods):
        raise ConfigError("BROKER_AUTH names a method twice")
    return {
        "auth_methods": methods,
        "admin_groups": _list(env, "BROKER_ADMIN_GROUPS"),
        "oidc": _oidc(env) if "oidc" in methods else None,
        "ldap": _ldap(env) if "ldap" in methods else None,
        "header": _header(env) if "header" in methods else None,
    }


def _required(env: Mapping[str, str], name: str, method: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set; BROKER_AUTH includes {method}, which needs it")
    return value


def _oidc(env: Mapping[str, str]) -> OidcSettings:
    issuer = _required(env, "BROKER_OIDC_ISSUER", "oidc").rstrip("/")
    if urlsplit(issuer).scheme not in ("https", "http") or not urlsplit(issuer).hostname:
        raise ConfigError(f"BROKER_OIDC_ISSUER must be the provider's https:// issuer URL, got {issuer!r}")
    return OidcSettings(
        issuer=issuer,
        client_id=_required(env, "BROKER_OIDC_CLIENT_ID", "oidc"),
        client_secret=_required(env, "BROKER_OIDC_CLIENT_SECRET", "oidc"),
        name=env.get("BROKER_OIDC_NAME", "").strip() or "single sign-on",
        scopes=env.get("BROKER_OIDC_SCOPES", "").strip() or "openid profile email",
        username_claim=env.get("BROKER_OIDC_USERNAME_CLAIM", "").strip() or "preferred_username",
        groups_claim=env.get("BROKER_OIDC_GROUPS_CLAIM", "").strip() or "groups",
    )


def _ldap(env: Mapping[str, str]) -> LdapSettings:
    url = _required(env, "BROKER_LDAP_URL", "ldap")
    if urlsplit(url).scheme not in ("ldap", "ldaps"):
        raise ConfigError(
            f"BROKER_LDAP_URL must be ldaps://host or ldap://host (with BROKER_LDAP_START_TLS), got {url!r}"
        )
    start_tls = _bool(env, "BROKER_LDAP_START_TLS", False)
    if urlsplit(url).scheme == "ldap" and not start_tls:
        # Passwords would cross the network in the clear.
        raise ConfigError("BROKER_LDAP_URL is ldap:// without TLS: use ldaps:// or set BROKER_LDAP_START_TLS=true")
    ca_file = env.get("BROKER_LDAP_CA_FILE", "").strip() or None
    if ca_file and not Path(ca_file).is_file():
        raise ConfigError(f"BROKER_LDAP_CA_FILE: no such file {ca_file!r}")
    user_filter = env.get("BROKER_LDAP_USER_FILTER", "").strip() or "(uid={username})"
    if "{username}" not in user_filter:
        raise ConfigError("BROKER_LDAP_USER_FILTER must contain {username}, e.g. (uid={username})")
    return LdapSettings(
        url=url,
        bind_dn=env.get("BROKER_LDAP_BIND_DN", "").strip(),
        bind_password=env.get("BROKER_LDAP_BIND_PASSWORD", ""),
        user_base=_required(env, "BROKER_LDAP_USER_BASE", "ldap"),
        user_filter=user_filter,
        group_base=env.get("BROKER_LDAP_GROUP_BASE", "").strip(),
        group_filter=env.get("BROKER_LDAP_GROUP_FILTER", "").strip() or "(member={dn})",
        start_tls=start_tls,
        ca_file=ca_file,
        verify=_bool(env, "BROKER_LDAP_VERIFY", True),
    )


def _header(env: Mapping[str, str]) -> HeaderSettings:
    header = _required(env, "BROKER_AUTH_HEADER", "header")
    trusted = _networks(env, "BROKER_AUTH_HEADER_FROM")
    if not trusted:
        raise ConfigError(
            "BROKER_AUTH_HEADER_FROM is not set; BROKER_AUTH includes header, which is believed only from "
            "the authenticating proxy's addresses (e.g. 127.0.0.1 or 10.0.0.0/24)"
        )
    return HeaderSettings(
        header=header, trusted=trusted, groups_header=env.get("BROKER_AUTH_GROUPS_HEADER", "").strip() or None
    )


def _fallback_keys(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Old secret keys, comma-separated, each as long as a key must be; never echoed, being secrets."""
    keys = _list(env, name)
    for number, key in enumerate(keys, start=1):
        if len(key) < SECRET_KEY_MIN_LENGTH:
            raise ConfigError(
                f"{name}: key {number} of {len(keys)} is too short; each must have at least "
                f"{SECRET_KEY_MIN_LENGTH} characters, like BROKER_SECRET_KEY"
            )
    return keys


def _limit(env: Mapping[str, str], name: str, default: str) -> str:
    """A limit such as ``5 per 5 minutes``: a typo must not switch brute-force protection off."""
    raw = env.get(name) or default
    try:
        parse_limit(raw)
    except ThrottleConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return raw


def _storage_url(env: Mapping[str, str], name: str, redis_url: str | None) -> str:
    """``memory://`` or a storage URL of the ``limits`` library, such as ``redis://host:6379``; unset:
    ``redis_url`` (BROKER_REDIS_URL), and a problem with that one names the variable the operator set."""
    raw = env.get(name) or redis_url or "memory://"
    try:
        Throttle(raw)
    except ThrottleConfigError as exc:
        raise ConfigError(f"{name if env.get(name) else 'BROKER_REDIS_URL'}: {exc}") from None
    return raw


def _database_url(env: Mapping[str, str], name: str, default: str) -> str:
    """A SQLAlchemy URL whose dialect and driver are installed."""
    raw = env.get(name) or default
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(f"{name} is not a database URL, e.g. sqlite:///path or postgresql+psycopg://...") from None
    if url.drivername in ("postgres", "postgresql"):
        raise ConfigError(f"{name}: write postgresql+psycopg://... (not {url.drivername}://...)")
    try:
        url.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise ConfigError(
            f"{name}: no database dialect called {url.drivername!r}; use sqlite:/// or postgresql+psycopg://"
        ) from None
    except ImportError as exc:
        raise ConfigError(f"{name}: the driver for {url.drivername} is not installed ({exc.name or exc})") from None
    return raw


def _redis_url(env: Mapping[str, str], name: str) -> str | None:
    """``redis://[:password@]host[:port][/db]``, ``rediss://`` (TLS) or ``unix://``; unset: per-process state."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if "://" in raw and parts.scheme in ("redis", "rediss", "unix") and (parts.hostname or parts.path):
        return raw
    # Never the value itself: it may hold the password. "host:6379" parses as scheme "host".
    got = f"{parts.scheme}://" if "://" in raw else "no scheme"
    raise ConfigError(f"{name} must look like redis://host:6379/0 (or rediss:// for TLS, unix:///path), got {got}")


def _metrics_token(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if raw and len(raw) < 16:
        raise ConfigError(f"{name} is too short; use at least 16 random characters")
    return raw or None


def _networks(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Addresses or CIDR networks, e.g. ``127.0.0.1,10.0.0.0/8``."""
    networks = _list(env, name)
    for item in networks:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not an address or network (e.g. 10.0.0.0/8)") from None
    return networks


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOST = re.compile(rf"^(?:{LABEL}\.)*{LABEL}$|^\[[0-9a-f:.]+\]$")


def _hosts(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Host names only (the CSP's frame-src adds schemes and ports): ``novnc.example.com,10.0.0.5``."""
    hosts = tuple(host.lower() for host in _list(env, name))
    for host in hosts:
        if not HOST.match(host):
            raise ConfigError(
                f"{name}: {host!r} is not a host name; give host names only, comma-separated, "
                "without scheme, port or path (e.g. novnc.example.com)"
            )
    return hosts
