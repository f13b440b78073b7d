"""Console Broker: hands helpdesk staff noVNC consoles of cloud servers, safely.

``create_app`` wires the app (settings, extensions, blueprints, services) and hands it to
``broker.startup`` for the work done at start-up (schema, demo account, instance record).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from broker import demo
from broker import startup
from broker import state
from broker.cli import register_commands
from broker.cloud.registry import learned_hosts
from broker.cloud.types import Timeouts
from broker.config import ConfigError
from broker.config import Settings
from broker.config import load_settings
from broker.config import stop
from broker.extensions import csrf
from broker.extensions import db
from broker.extensions import limiter
from broker.extensions import login_manager
from broker.extensions import migrate
from broker.logs import configure_logging
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
from broker.web.commits import register_commits
from broker.web.errors import register_errorhandlers
from broker.web.errors import unauthorized
from broker.web.observability import register_observability
from broker.web.security import register_security_headers
from broker.web.sessions import register_session_limits

log = logging.getLogger(__name__)

# Upstream lookups of server IDs missing from the cache, per user: enough for a person
# following new links, far too few to probe IDs.
LOOKUP_LIMIT = "30 per 10 minutes"


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
    configure_logging(sys.stderr if startup.in_command() else sys.stdout, settings.log_format)
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
    register_commits(app)
    startup.prepare(app, settings)
    return app


def form_origins(settings: Settings) -> tuple[str, ...]:
    """Where forms may lead besides this site: the OpenID provider (sign-out ends there)."""
    if settings.oidc is None:
        return ()
    parts = urlsplit(settings.oidc.issuer)
    return (f"{parts.scheme}://{parts.netloc}",)


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
        SQLALCHEMY_ENGINE_OPTIONS=startup.engine_options(settings.database_url),
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


def register_extensions(app: Flask) -> None:
    db.init_app(app)
    migrate.init_app(app, db, directory=startup.MIGRATIONS)
    csrf.init_app(app)
    limiter.init_app(app)
    # Every limit is a route's own decorator, which checks it when that route runs: Flask-Limiter's
    # check before every request (static files and probes included) would only look for limits that
    # do not exist. A limit for all routes (default_limits) would need this hook back.
    app.before_request_funcs[None].remove(limiter._check_request_limit)
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
            console_types=settings.console_types,
            # Every worker and the relay run their own demo cloud: a server started in one is started in all.
            state_file=Path(app.instance_path) / "demo-servers.json",
        )
        state.of(app).demo_cloud = fake
        clouds = [cloud]
    elif clouds is None:
        clouds = startup.configured_clouds(settings)
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
