"""Console Broker: hands helpdesk staff noVNC consoles of cloud servers, safely."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import click
from flask import Flask
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.middleware.proxy_fix import ProxyFix

from broker import demo
from broker import schema
from broker import state
from broker.cli import register_commands
from broker.cloud.registry import CloudConfigError
from broker.cloud.registry import learned_hosts
from broker.cloud.registry import load_clouds
from broker.cloud.types import Timeouts
from broker.config import ConfigError
from broker.config import Settings
from broker.config import StartupStopped
from broker.config import load_settings
from broker.config import stop
from broker.extensions import csrf
from broker.extensions import db
from broker.extensions import limiter
from broker.extensions import login_manager
from broker.extensions import migrate
from broker.logs import configure_logging
from broker.services import audit
from broker.services import instances
from broker.services import policy
from broker.services import users
from broker.services.consoles import ConsoleService
from broker.services.inventory import Inventory
from broker.services.power import PowerService
from broker.shared import SharedRedis
from broker.throttle import Throttle
from broker.throttle import parse_limit
from broker.web import admin
from broker.web import api
from broker.web import auth
from broker.web import header
from broker.web import oidc
from broker.web import sessions
from broker.web import views
from broker.web.assets import register_assets
from broker.web.assets import static_version
from broker.web.errors import register_errorhandlers
from broker.web.errors import unauthorized
from broker.web.observability import register_observability
from broker.web.security import register_security_headers
from broker.web.sessions import register_session_limits

log = logging.getLogger(__name__)

# Upstream lookups of server IDs missing from the cache, per user: enough for a person
# following new links, far too few to probe IDs.
LOOKUP_LIMIT = "30 per 10 minutes"
# Set by check_configuration in gunicorn's master; the workers it forks inherit it and leave
# to the master what is done once (the schema, announcing the demo sign-in).
checked_by_master = False
# Alembic's scripts, found wherever the server or a command is started from.
MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")


def create_app(test_config: Mapping | None = None) -> Flask:
    """Build the broker. ``test_config`` may hold ``ENV`` (variables) and ``CLOUDS`` (ready clouds)."""
    test_config = dict(test_config or {})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    version = static_version(os.path.join(root, "static"))
    app = Flask(__name__, root_path=root, instance_relative_config=True, static_url_path=f"/static/{version}")
    if "INSTANCE_PATH" in test_config:
        app.instance_path = test_config.pop("INSTANCE_PATH")
    os.makedirs(app.instance_path, exist_ok=True)
    env = test_config.pop("ENV", os.environ)
    try:
        settings = load_settings(env, app.instance_path)
    except ConfigError as exc:
        stop(str(exc))
    # A command's output is its stdout (users list | cut -f1); its log lines go to stderr.
    configure_logging(sys.stderr if in_command() else sys.stdout, settings.log_format)
    configure_flask(app, settings, test_config)
    register_proxies(app, settings.trusted_proxies)
    register_extensions(app)
    register_assets(app)
    register_session_limits(app, settings.session_lifetime, settings.session_idle)
    register_blueprints(app, settings)
    register_errorhandlers(app)
    register_commands(app)
    service = register_services(app, settings, test_config.get("CLOUDS"))
    register_security_headers(
        app, service.console_hosts, settings.demo, form_origins(settings), relay_url=settings.relay_url
    )
    init_database(app, settings)
    if not in_command():
        record_instance(app, settings)
    return app


def form_origins(settings: Settings) -> tuple[str, ...]:
    """Where forms may lead besides this site: the OpenID provider (sign-out ends there)."""
    if settings.oidc is None:
        return ()
    parts = urlsplit(settings.oidc.issuer)
    return (f"{parts.scheme}://{parts.netloc}",)


def in_command() -> bool:
    """True when a ``flask --app app ...`` command (not a server) is building the app."""
    return click.get_current_context(silent=True) is not None


def register_proxies(app: Flask, count: int) -> None:
    """Honour X-Forwarded-For/-Proto/-Host only from the configured number of proxies."""
    if count:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count, x_host=count)


def configure_flask(app: Flask, settings: Settings, overrides: Mapping) -> None:
    app.config.update(
        SECRET_KEY=settings.secret_key,
        # Old keys still accepted while the instances move to a new one: sessions (Flask) and CSRF tokens
        # (Flask-WTF takes a list of keys, the last one signing, as Flask does).
        SECRET_KEY_FALLBACKS=list(settings.secret_key_fallbacks),
        WTF_CSRF_SECRET_KEY=[*settings.secret_key_fallbacks, settings.secret_key],
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(settings.database_url),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        REMEMBER_COOKIE_DURATION=timedelta(seconds=0),
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.session_lifetime),
        WTF_CSRF_TIME_LIMIT=None,
        # Flask-WTF's HTTPS Referer check cannot pass: every page says
        # Referrer-Policy: no-referrer. The token and SameSite=Lax cookies remain.
        WTF_CSRF_SSL_STRICT=False,
        MAX_CONTENT_LENGTH=64 * 1024,
        RATELIMIT_STORAGE_URI=settings.ratelimit_storage,
        # Redis down: the flood limit counts per process meanwhile instead of failing every request.
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        RATELIMIT_STORAGE_OPTIONS=limiter_storage_options(settings.ratelimit_storage),
        # Our own responses say Retry-After where it helps; Flask-Limiter's headers would overwrite them.
        RATELIMIT_HEADERS_ENABLED=False,
    )
    app.config.update({k: v for k, v in overrides.items() if k != "CLOUDS"})
    shared = SharedRedis(settings.redis_url) if settings.redis_url else None
    throttle = Throttle(settings.ratelimit_storage, shared=shared)
    state.attach(app, state.BrokerState(settings, throttle, parse_limit(settings.login_limit), redis=shared))


def limiter_storage_options(url: str) -> dict:
    """A Redis that does not answer within half a second counts as down."""
    return {"socket_timeout": 0.5, "socket_connect_timeout": 0.5} if url.startswith("redis") else {}


def engine_options(url: str) -> dict:
    """PostgreSQL: stored times are UTC whatever the server's zone, a restarted server is survived (each
    pooled connection is tried before use), and a host that drops packets costs seconds, not minutes."""
    if not url.startswith("postgresql"):
        return {}
    return {
        "pool_pre_ping": True,
        "connect_args": {"options": "-c timezone=UTC", "connect_timeout": schema.CONNECT_TIMEOUT},
    }


def register_extensions(app: Flask) -> None:
    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS)
    csrf.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Sign in to continue."
    login_manager.user_loader(sessions.load_user)
    login_manager.unauthorized_handler(unauthorized)


def register_blueprints(app: Flask, settings: Settings) -> None:
    app.register_blueprint(auth.bp)
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    if "oidc" in settings.auth_methods:
        oidc.register(app, settings.oidc)
        # The provider posts logout tokens from its own servers, with no CSRF token to give.
        csrf.exempt(oidc.backchannel_logout)
    if settings.demo:
        app.register_blueprint(demo.bp)
    register_observability(app)
    if "header" in settings.auth_methods:
        header.register_header_sign_in(app, settings.header)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.context_processor
    def inject_demo():
        return {"demo_mode": settings.demo}


def register_services(app: Flask, settings: Settings, clouds: list | None) -> ConsoleService:
    timeouts = Timeouts(settings.connect_timeout, settings.read_timeout)
    if clouds is None and settings.demo:
        cloud, fake = demo.build_demo_cloud(
            settings.secret_key,
            servers=settings.demo_servers,
            console_ttl=settings.console_ttl,
            timeouts=timeouts,
            console_mode=settings.console_mode,
            # Every worker and the relay run their own demo cloud: a server started in one is started in all.
            state_file=Path(app.instance_path) / "demo-servers.json",
        )
        state.of(app).demo_cloud = fake
        clouds = [cloud]
    elif clouds is None:
        clouds = configured_clouds(settings)
    # With Redis, one walk per cloud and cache lifetime serves every worker and instance.
    inventory = Inventory(clouds, settings.server_cache_ttl, shared=state.of(app).redis)
    hosts = settings.console_hosts
    if not hosts and not settings.demo:
        hosts = learned_hosts(clouds)
        log.info("console hosts allowed (set BROKER_CONSOLE_HOSTS to change): %s", ", ".join(hosts) or "any")
    throttle = state.of(app).throttle
    lookups = parse_limit(LOOKUP_LIMIT)
    service = ConsoleService(
        inventory, hosts, lookup_budget=lambda username: throttle.take(lookups, f"lookup:{username}").granted
    )
    state.of(app).consoles = service
    state.of(app).power = PowerService(service)
    return service


def configured_clouds(settings: Settings) -> list:
    """The clouds of clouds.yaml or ``OS_*`` (no network yet), or stop with what is wrong."""
    try:
        return load_clouds(
            settings.clouds,
            timeouts=Timeouts(settings.connect_timeout, settings.read_timeout),
            default_ttl=settings.console_ttl,
            default_swap=settings.console_swap,
            default_mode=settings.console_mode,
        )
    except CloudConfigError as exc:
        stop(str(exc))


def check_configuration(env: Mapping[str, str] = os.environ) -> Settings:
    """Settings and clouds as the app will read them, checked once in gunicorn's master before it forks.

    A configuration error then stops the server with one message, instead of every worker
    failing in turn.
    """
    instance = os.path.join(os.path.dirname(os.path.dirname(__file__)), "instance")
    try:
        settings = load_settings(env, instance)
    except ConfigError as exc:
        stop(str(exc))
    if not settings.demo:
        configured_clouds(settings)
    prepare_schema(settings, instance)
    global checked_by_master
    checked_by_master = True
    return settings


def prepare_schema(settings: Settings, instance: str) -> None:
    """Make an empty database's schema (or stop on an old one) once, before workers race to;
    in demo mode asked for by name, also the demo account, announced once."""
    app = Flask(__name__, instance_path=instance)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(settings.database_url),
    )
    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS)
    with app.app_context(), database_errors(settings):
        try:
            if problem := schema.prepare(auto_upgrade=owns_schema(settings)).problem():
                stop(problem)
            # Before any worker: one message, and a running instance never loses a worker to it later.
            if conflict := instances.key_conflict(instances.profile(settings, ()), instances.running()):
                stop(conflict)
            if settings.demo_explicit:
                ensure_demo_user(app, settings, announce=True)
        finally:
            db.engine.dispose()


class DatabaseNotReady(StartupStopped):
    """Start-up stopped by a database that may become usable by itself (down, starting, its schema not made
    yet): exit 75 (EX_TEMPFAIL), which systemd restarts on, where exit 3 means "fix the settings first"."""

    def __init__(self, message: str):
        super().__init__(message)
        self.code = os.EX_TEMPFAIL


def not_ready(message: str) -> NoReturn:
    """Print why the database cannot be used yet and stop with exit 75 (try again later)."""
    text = f"console-broker: database unavailable: {message} (exit {os.EX_TEMPFAIL}, so that systemd tries again)"
    print(text, file=sys.stderr, flush=True)
    raise DatabaseNotReady(text)


@contextmanager
def database_errors(settings: Settings) -> Iterator[None]:
    """A database that cannot be used stops start-up with its address (never its password) and what is
    wrong: no such host, database or role, a refused password, nothing listening, no answer."""
    try:
        yield
    except SQLAlchemyError as exc:
        url = make_url(settings.database_url)
        found = schema.unreachable(exc, url)
        message = f"cannot use the database {url.render_as_string(hide_password=True)}: {found.cause}"
        if found.lasting:
            stop(message)
        not_ready(message)


# How long a process that does not own the schema (the relay) waits for the web process to make it,
# saying so at once and then this often.
SCHEMA_WAIT = 60
SCHEMA_NOTICE_EVERY = 10


def init_database(app: Flask, settings: Settings) -> None:
    """Bring an empty database's schema up; stop on an old one; in demo mode asked for by name, the demo account."""
    if not app.config.get("SCHEMA_OWNER", True):
        wait_for_schema(app, settings)
        return
    with app.app_context(), database_errors(settings):
        if in_command():
            # Commands never change the schema as a side effect ('db upgrade --sql' only prints SQL);
            # users/groups/rules prepare it themselves.
            if not schema.inspect_state().up_to_date:
                db.engine.dispose()
                return
        elif problem := schema.prepare(auto_upgrade=owns_schema(settings)).problem():
            stop(problem)
        if settings.demo_explicit:
            ensure_demo_user(app, settings, announce=not checked_by_master)
        elif settings.demo:
            print(
                "console-broker: no cloud is configured, so this runs on the demo cloud. It creates no account: "
                "start it with BROKER_DEMO=1 (./dev demo does) for a demo admin, or configure a cloud.",
                file=sys.stderr,
            )
        if not settings.demo_explicit and not in_command() and not users.any_users():
            log.warning(
                "no users yet, so nobody can sign in: create the first admin with "
                "'flask --app app users add NAME --admin' (in this server's environment)"
            )
        warn_about_orphan_rules(state.of(app).consoles.inventory.names())
        db.engine.dispose()


def record_instance(app: Flask, settings: Settings) -> None:
    """This process in the instances table, kept fresh until it exits; stop beside running instances whose
    secret key and this one's refuse each other (gunicorn's master checked before forking its workers)."""
    role = "web" if app.config.get("SCHEMA_OWNER", True) else "relay"
    me = instances.profile(settings, state.of(app).consoles.inventory.clouds.values())
    with app.app_context(), database_errors(settings):
        if not checked_by_master and (conflict := instances.key_conflict(me, instances.running())):
            stop(conflict)
        app.extensions[instances.EXTENSION] = instances.Registration(me, role, instances.register(me, role))
        db.session.commit()
        db.engine.dispose()
    # Tests build an app each and beat by hand.
    if not app.testing:
        instances.heartbeat.add(app)


def wait_for_schema(app: Flask, settings: Settings) -> None:
    """The relay: the web process makes the schema (and the demo account); wait for it, change nothing."""
    started = time.monotonic()
    noticed: float | None = None
    with app.app_context(), database_errors(settings):
        found = schema.inspect_state()
        # Empty: the web process is making it. The demo's own database: it is upgrading it.
        while not found.up_to_date and (found.empty or owns_schema(settings)):
            waited = time.monotonic() - started
            if waited >= SCHEMA_WAIT:
                break
            if noticed is None or waited - noticed >= SCHEMA_NOTICE_EVERY:
                noticed = waited
                log.warning(
                    "waiting for the database schema (%d s of %d): run '%s' with this environment, "
                    "or start the web process, which makes it in an empty database",
                    waited,
                    SCHEMA_WAIT,
                    schema.UPGRADE_COMMAND,
                )
            time.sleep(0.5)
            found = schema.inspect_state()
        db.engine.dispose()
    if found.up_to_date:
        return
    if problem := found.problem():
        stop(problem)
    # The web process or the operator may still make it: exit 75, which systemd restarts on.
    not_ready(f"the database has no schema yet: start the web process (it makes it) or run '{schema.UPGRADE_COMMAND}'")


def owns_schema(settings: Settings) -> bool:
    """The demo's own database is the demo's to upgrade; an operator's waits for the operator."""
    return settings.demo and not settings.database_url_set


def warn_about_orphan_rules(clouds: list[str]) -> None:
    """Rules naming a cloud that is not configured grant nothing: say so at every start."""
    for rule in policy.rules_on_unknown_clouds(clouds):
        log.warning(
            "rule %s (%s) names a cloud that is not configured (configured: %s): it grants nothing; "
            "remove it ('flask --app app rules remove %s') or fix BROKER_CLOUDS",
            rule.id,
            rule.describe(),
            ", ".join(clouds) or "none",
            rule.id,
        )


def ensure_demo_user(app: Flask, settings: Settings, announce: bool) -> None:
    """The demo admin, created only in a database that holds no one else (never a real one)."""
    others = [user.username for user in users.all_users() if user.username != "demo"]
    if others and settings.database_url_set:
        stop(
            "BROKER_DEMO is on but BROKER_DATABASE_URL names a database with "
            f"real users ({len(others)}); demo mode never adds its account there. Unset BROKER_DEMO, or unset "
            "BROKER_DATABASE_URL to use the demo's own database."
        )
    path = demo.demo_password_file(app.instance_path)
    if not path.exists():
        import secrets

        path.write_text(secrets.token_urlsafe(12))
        path.chmod(0o600)
    password = path.read_text().strip()
    if users.find("demo") is None:
        try:
            users.add("demo", password, "admin")
            audit.record(
                "admin", "ok", username="demo-mode", detail="user_add", reason="added demo (admin) for demo mode"
            )
        except (IntegrityError, users.UserError):
            db.session.rollback()
    if not announce:
        return
    print(
        "console-broker: DEMO MODE (no cloud configured). Sign in as 'demo' with password "
        f"'{password}' (kept in {path}).",
        file=sys.stderr,
    )
