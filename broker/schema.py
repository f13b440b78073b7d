"""The database at start-up: why it cannot be reached, whether its schema's version is the one this
code needs, and bringing an empty one up to it.

Alembic's scripts in ``migrations/`` define the schema. A broker starting on an empty
database creates it by running them; one whose database is older (or was made before
migrations existed) stops and names the command, because upgrading stored data is the
operator's call, made after a backup.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app
from flask_migrate import upgrade as alembic_upgrade
from sqlalchemy import inspect
from sqlalchemy.engine import URL
from sqlalchemy.exc import InterfaceError
from sqlalchemy.exc import OperationalError

from broker.extensions import db

log = logging.getLogger(__name__)

UPGRADE_COMMAND = "flask --app app db upgrade"
# Seconds a connection attempt may take (libpq's connect_timeout): a host that drops packets
# would otherwise hold start-up, or a request, for the kernel's two minutes.
CONNECT_TIMEOUT = 10


@dataclass(frozen=True)
class Unreachable:
    """Why the database cannot be used, for a person; ``lasting`` when a setting or the server must change
    (waiting will not help), else it may come back by itself (a server that is down or starting)."""

    cause: str
    lasting: bool


# What the driver's message says (libpq's and psycopg's words, SQLite's), and what to tell the operator.
# {host}, {port} and {database} come from the URL, {timeout} is CONNECT_TIMEOUT, {name} is from the message.
CAUSES: tuple[tuple[str, str, bool], ...] = (
    (
        r'password authentication failed for user "(?P<name>[^"]*)"',
        'the server refused the password of role "{name}": fix the password in BROKER_DATABASE_URL',
        True,
    ),
    (
        r'role "(?P<name>[^"]*)" does not exist',
        'the server has no role "{name}": create it (createuser {name}) or fix the user in BROKER_DATABASE_URL',
        True,
    ),
    (
        r'database "(?P<name>[^"]*)" does not exist',
        'the server has no database "{name}": create it (createdb --owner ROLE {name}) '
        "or fix the database name in BROKER_DATABASE_URL",
        True,
    ),
    (
        r"could not translate host name|failed to resolve host|Name or service not known",
        "the host name {host} does not resolve: fix the host in BROKER_DATABASE_URL",
        True,
    ),
    (
        r"no pg_hba\.conf entry",
        "the server's pg_hba.conf admits no connection from this host for this role and database: add a line there",
        True,
    ),
    (
        r"unable to open database file",
        "cannot open the SQLite file {database}: does its folder exist, writable by this user?",
        True,
    ),
    (
        r"Connection refused",
        "nothing accepts connections at {host}:{port} (connection refused): is PostgreSQL running there, "
        "and are the host and port in BROKER_DATABASE_URL right?",
        False,
    ),
    (
        r"timeout expired",
        "no answer from {host}:{port} within {timeout} s: is the host in BROKER_DATABASE_URL right, and does a "
        "firewall let this host through?",
        False,
    ),
    (
        r"the database system is (?P<name>starting up|shutting down|in recovery mode)",
        "the database server at {host}:{port} is {name}",
        False,
    ),
    (
        r"too many clients|remaining connection slots",
        "the database server has no connection left (max_connections)",
        False,
    ),
    (
        r"server closed the connection|connection is lost|terminating connection|connection is closed",
        "the database server at {host}:{port} closed the connection",
        False,
    ),
)


def is_unreachable(exc: BaseException) -> bool:
    """True for an error that says the database cannot be reached (not one that says a query is wrong)."""
    return isinstance(exc, OperationalError | InterfaceError) or bool(getattr(exc, "connection_invalidated", False))


def unreachable(exc: BaseException, url: URL) -> Unreachable:
    """What an error connecting to (or using) the database at ``url`` says is wrong, in the operator's terms.

    Read from the driver's message, never SQLAlchemy's (which quotes the statement and its
    parameters); the message names hosts and roles but never a password.
    """
    driver = getattr(exc, "orig", None) or exc
    message = str(driver)
    for pattern, cause, lasting in CAUSES:
        if found := re.search(pattern, message, re.IGNORECASE):
            names = {
                "host": url.host or "the local socket",
                "port": url.port or 5432,
                "database": url.database,
                "timeout": CONNECT_TIMEOUT,
            }
            return Unreachable(cause.format(**names, **found.groupdict()), lasting)
    first = message.strip().splitlines()[0][:200] if message.strip() else ""
    return Unreachable(f"{type(driver).__name__}: {first}" if first else type(driver).__name__, True)


@dataclass(frozen=True)
class SchemaState:
    """What the database holds (``current`` revision, whether it has any table) and what the code needs."""

    current: str | None
    head: str
    known: frozenset[str]
    has_tables: bool

    @property
    def empty(self) -> bool:
        return not self.has_tables

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    def problem(self) -> str | None:
        """Why a server must not start on this database, naming the fix; None when it may."""
        if self.up_to_date or self.empty:
            return None
        if self.current is None:
            return (
                "the database was made by a broker older than its migrations (it has tables but no "
                f"version); back it up and run '{UPGRADE_COMMAND}' with the server's environment"
            )
        if self.current not in self.known:
            return (
                f"the database is at schema revision {self.current}, which this broker does not know "
                "(it was upgraded by a newer broker); run that version, or restore the backup taken before"
            )
        return (
            f"the database schema is behind this broker (at {self.current}, needs {self.head}); back it up "
            f"and run '{UPGRADE_COMMAND}' with the server's environment"
        )


def scripts() -> ScriptDirectory:
    return ScriptDirectory(current_app.extensions["migrate"].directory)


def inspect_state() -> SchemaState:
    """The database's revision and tables, read without changing anything."""
    directory = scripts()
    with db.engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
    known = frozenset(script.revision for script in directory.walk_revisions())
    return SchemaState(current, directory.get_current_head(), known, bool(tables))


def upgrade() -> None:
    """Apply every migration the database lacks (one process at a time on PostgreSQL)."""
    alembic_upgrade(directory=current_app.extensions["migrate"].directory)


def prepare(auto_upgrade: bool) -> SchemaState:
    """Create an empty database's schema; with ``auto_upgrade`` (the demo's own file) upgrade any.

    Returns the state found before; the caller stops start-up when ``problem()`` is not None.
    """
    found = inspect_state()
    if found.up_to_date:
        return found
    if found.empty or auto_upgrade:
        log.info("database schema: applying migrations up to %s", found.head)
        upgrade()
        return inspect_state()
    return found
