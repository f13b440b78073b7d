"""The helpdesk agent's day: pinned servers, single-use power confirmations, and the ``power`` permission.

Two tables are new; ``access_rules`` gains ``power``, false for every existing rule, so no one
gets a power action they were not given.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    # A plain ADD COLUMN: a batch copy on SQLite would drop the table's AUTOINCREMENT (rule numbers are never reused).
    op.add_column("access_rules", sa.Column("power", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "pins",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("cloud", sa.String(length=64), nullable=False),
        sa.Column("server_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("user_id", "cloud", "server_id", name="uq_pins_user_server"),
    )
    op.create_index("ix_pins_user_id", "pins", ["user_id"])
    op.create_table(
        "power_confirmations",
        sa.Column("digest", sa.String(length=64), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("server_id", sa.String(length=64), nullable=False),
        sa.Column("cloud", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_power_confirmations_user_id", "power_confirmations", ["user_id"])
    op.create_index("ix_power_confirmations_expires_at", "power_confirmations", ["expires_at"])


def downgrade():
    op.drop_table("power_confirmations")
    op.drop_table("pins")
    with op.batch_alter_table("access_rules", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("power")
