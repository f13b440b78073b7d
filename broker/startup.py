"""Start-up work, apart from the wiring: the schema, the demo account, checks, and this process's record.

``create_app`` wires the app and then calls ``prepare`` once; gunicorn's master calls
``check_configuration`` before it forks, so that what is done once is done there.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import contextmanager
from typing import NoReturn

import click
from flask import Flask
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import SQLAlchemyError

from broker import demo
from broker import heartbeat
from broker import schema
from broker import state
from broker.cloud.registry import CloudConfigError
from broker.cloud.registry import load_clouds
from broker.cloud.types import Timeouts
from broker.config import ConfigError
from broker.config import Settings
from broker.config import StartupStopped
from broker.config import load_settings
from broker.config import stop
from broker.extensions import db
from broker.extensions import migrate
from broker.services import audit
from broker.services import instances
from broker.services import policy
from broker.services import users

log = logging.getLogger(__name__)

# Set by check_configuration in gunicorn's master; the workers it forks inherit it and leave
# to the master what is done once (the schema, announcing the demo sign-in).
checked_by_master = False
# Alembic's scripts, found wherever the server or a command is started from.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIGRATIONS = os.path.join(ROOT, "migrations")


def prepare(app: Flask, settings: Settings) -> None:
    """The wired app's start-up: its schema and demo account, then (servers only) its instance record."""
    init_database(app, settings)
    if not in_command():
        record_instance(app, settings)


def in_command() -> bool:
    """True when a ``flask --app app ...`` command (not a server) is building the app."""
    return click.get_current_context(silent=True) is not None


def settle() -> None:
    """Keep what start-up built (the app, every module it imported) out of the cyclic GC's collections.

    Called by a web worker and the relay once they are ready to serve. Those objects live as long
    as the process, yet each full collection walked all of them while holding the GIL: with a
    10,000-server cloud listed, 66 to 98 ms during which every request of the worker stood still
    (the bench's storm); frozen, a full collection takes 6 to 12 ms. Start-up's own garbage is
    collected first, so nothing collectable is kept for good.
    """
    gc.collect()
    gc.freeze()


def engine_options(url: str) -> dict:
    """PostgreSQL: stored times are UTC whatever the server's zone, a restarted server is survived (each
    pooled connection is tried before use), and a host that drops packets costs seconds, not minutes."""
    if not url.startswith("postgresql"):
        return {}
    return {
        "pool_pre_ping": True,
        "connect_args": {"options": "-c timezone=UTC", "connect_timeout": schema.CONNECT_TIMEOUT},
    }


def configured_clouds(settings: Settings) -> list:
    """The clouds of clouds.yaml or ``OS_*`` (no network yet), or stop with what is wrong."""
    try:
        return load_clouds(
            settings.clouds,
            timeouts=Timeouts(settings.connect_timeout, settings.read_timeout),
            default_ttl=settings.console_ttl,
            default_swap=settings.console_swap,
            default_mode=settings.console_mode,
            default_types=settings.console_types,
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
        app.extensions[heartbeat.EXTENSION] = heartbeat.Registration(me, role, instances.register(me, role))
        db.session.commit()
        db.engine.dispose()
    # Tests build an app each and beat by hand.
    if not app.testing:
        heartbeat.keep(app)


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
        path.write_text(secrets.token_urlsafe(12))
        path.chmod(0o600)
    password = path.read_text().strip()
    if users.find("demo") is None:
        # The account and its record, one unit of work; another process that made it first wins.
        try:
            users.add("demo", password, "admin")
            audit.stage(
                "admin", "ok", username="demo-mode", detail="user_add", reason="added demo (admin) for demo mode"
            )
            db.session.commit()
        except (IntegrityError, users.UserError):
            db.session.rollback()
    if not announce:
        return
    print(
        "console-broker: DEMO MODE (no cloud configured). Sign in as 'demo' with password "
        f"'{password}' (kept in {path}).",
        file=sys.stderr,
    )
