"""Single-use tokens: relay tickets and power confirmations become rows of one table.

``single_use_tokens`` replaces ``relay_tickets`` and ``power_confirmations``: the same hash and
bindings, with a ``purpose`` ("relay", "power") and one ``scope`` column for what only its
purpose binds (a ticket's page origin, a confirmation's action). Both old tables are dropped with
their rows and the downgrade brings them back empty: a ticket lives 30 s and a confirmation 2
minutes, so at worst a page opened during the upgrade asks again for a console or a confirmation.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "single_use_tokens",
        sa.Column("digest", sa.String(length=64), primary_key=True),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("server_id", sa.String(length=64), nullable=False),
        sa.Column("server_name", sa.String(length=255), nullable=False),
        sa.Column("cloud", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_single_use_tokens_user_id", "single_use_tokens", ["user_id"])
    op.create_index("ix_single_use_tokens_expires_at", "single_use_tokens", ["expires_at"])
    op.drop_table("relay_tickets")
    op.drop_table("power_confirmations")


def downgrade():
    # As 0004 and 0005 made them.
    op.create_table(
        "relay_tickets",
        *_bindings(),
        sa.Column("server_name", sa.String(length=255), nullable=False),
        sa.Column("cloud", sa.String(length=64), nullable=False),
        sa.Column("origin", sa.String(length=255), nullable=False),
        *_lifetime(),
    )
    op.create_table(
        "power_confirmations",
        *_bindings(),
        sa.Column("cloud", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        *_lifetime(),
    )
    for table in ("relay_tickets", "power_confirmations"):
        op.create_index(f"ix_{table}_user_id", table, ["user_id"])
        op.create_index(f"ix_{table}_expires_at", table, ["expires_at"])
    op.drop_table("single_use_tokens")


def _bindings() -> list[sa.Column]:
    return [
        sa.Column("digest", sa.String(length=64), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("server_id", sa.String(length=64), nullable=False),
    ]


def _lifetime() -> list[sa.Column]:
    return [
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
    ]
