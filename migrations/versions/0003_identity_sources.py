"""Accounts from other directories (OpenID Connect, LDAP, a trusted proxy header) beside local ones.

Every existing account is local. An external account is keyed by its source and the
directory's own ID; its sessions remember how they were signed in to and the provider's
session ID, for back-channel logout.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    # add_column and create_index only: SQLite's batch mode would copy the users table and lose
    # its expression index, which it cannot reflect.
    op.add_column("users", sa.Column("source", sa.String(length=16), nullable=False, server_default="local"))
    op.add_column("users", sa.Column("external_id", sa.String(length=512), nullable=True))
    op.add_column("users", sa.Column("last_sign_in_at", sa.DateTime(), nullable=True))
    op.create_index("ix_users_external", "users", ["source", "external_id"], unique=True)
    op.add_column("user_sessions", sa.Column("method", sa.String(length=16), nullable=False, server_default="local"))
    op.add_column("user_sessions", sa.Column("external_sid", sa.String(length=255), nullable=True))
    op.create_index("ix_user_sessions_external_sid", "user_sessions", ["external_sid"])


def downgrade():
    op.drop_index("ix_user_sessions_external_sid", "user_sessions")
    op.drop_index("ix_users_external", "users")
    for table, column in (
        ("user_sessions", "external_sid"),
        ("user_sessions", "method"),
        ("users", "last_sign_in_at"),
        ("users", "external_id"),
        ("users", "source"),
    ):
        op.drop_column(table, column)  # SQLite 3.35+ drops a column in place
