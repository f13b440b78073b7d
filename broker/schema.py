"""The database schema's version: is it the one this code needs, and bringing an empty one up to it.

Alembic's scripts in ``migrations/`` define the schema. A broker starting on an empty
database creates it by running them; one whose database is older (or was made before
migrations existed) stops and names the command, because upgrading stored data is the
operator's call, made after a backup.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app
from flask_migrate import upgrade as alembic_upgrade
from sqlalchemy import inspect

from broker.extensions import db

log = logging.getLogger(__name__)

UPGRADE_COMMAND = "flask --app app db upgrade"


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
