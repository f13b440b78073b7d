"""Alembic's environment for the broker: the app's engine and tables, one upgrade at a time."""

import logging

from alembic import context
from flask import current_app
from sqlalchemy import text

from broker.startup import in_command

# A fixed key for PostgreSQL's advisory lock: instances starting together upgrade in turn.
UPGRADE_LOCK = 0x62726F6B  # "brok"

log = logging.getLogger("alembic")
if in_command() and all(isinstance(handler, logging.NullHandler) for handler in log.handlers):
    # 'flask db ...' prints each step it applies; inside a server the broker's own logging decides.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def run_offline() -> None:
    """``flask db upgrade --sql``: print the SQL for a DBA instead of running it."""
    engine = current_app.extensions["migrate"].db.engine
    context.configure(url=engine.url, target_metadata=metadata(), literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = current_app.extensions["migrate"].db.engine
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        # SQLite alters a table by copying it (batch mode); PostgreSQL alters in place.
        context.configure(
            connection=connection,
            target_metadata=metadata(),
            render_as_batch=sqlite,
            transactional_ddl=True,
            compare_type=True,
            process_revision_directives=skip_empty,
        )
        with context.begin_transaction():
            if sqlite:
                # The driver opens a transaction only before a row changes, so each CREATE or ALTER would
                # commit as it ran: open it now, so that an upgrade that stops (a refusal, an error) leaves
                # the file as it was, as on PostgreSQL. IMMEDIATE takes the write lock first: two upgrades
                # take turns, as the advisory lock makes them on PostgreSQL.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                # Held until this transaction ends; the next instance then sees the new revision.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK})
            context.run_migrations()


def metadata():
    return current_app.extensions["migrate"].db.metadata


def skip_empty(context, revision, directives) -> None:
    """``flask db migrate`` with no model change writes no empty revision."""
    if getattr(context.config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
        directives[:] = []
        log.info("No changes in schema detected.")


if context.is_offline_mode():
    run_offline()
else:
    run_online()
