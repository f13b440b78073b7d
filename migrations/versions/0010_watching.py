"""Watching a console: invites, watchers' live rows, and audit records linked to their console.

``single_use_tokens.subject`` names what a token is about beyond its server (the live console an
invite or a watch ticket is for). ``live_consoles.watching`` is the console a watcher's row watches
(none for the person who opened it) and ``live_consoles.role`` says how it is there (``open``,
``watch``, ``observe``). ``audit.console_id`` links the records of one console (its opening,
invites, joins, hand-overs, its end) to one another. Rows at the upgrade are consoles their
people opened, linked to nothing; the downgrade drops the columns with what they said.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("single_use_tokens") as table:
        table.add_column(sa.Column("subject", sa.String(length=64), nullable=False, server_default=""))
    with op.batch_alter_table("live_consoles") as table:
        table.add_column(sa.Column("watching", sa.Integer(), nullable=True))
        table.add_column(sa.Column("role", sa.String(length=16), nullable=False, server_default="open"))
    with op.batch_alter_table("audit") as table:
        table.add_column(sa.Column("console_id", sa.Integer(), nullable=True))
        table.create_index("ix_audit_console_id", ["console_id"])


def downgrade():
    with op.batch_alter_table("audit") as table:
        table.drop_index("ix_audit_console_id")
        table.drop_column("console_id")
    with op.batch_alter_table("live_consoles") as table:
        table.drop_column("role")
        table.drop_column("watching")
    with op.batch_alter_table("single_use_tokens") as table:
        table.drop_column("subject")
