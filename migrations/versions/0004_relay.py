"""Relay mode: single-use websocket tickets and the consoles connected through a relay right now.

Both tables are new; nothing existing changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "relay_tickets",
        sa.Column("digest", sa.String(length=64), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("server_id", sa.String(length=64), nullable=False),
        sa.Column("server_name", sa.String(length=255), nullable=False),
        sa.Column("cloud", sa.String(length=64), nullable=False),
        sa.Column("origin", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_relay_tickets_user_id", "relay_tickets", ["user_id"])
    op.create_index("ix_relay_tickets_expires_at", "relay_tickets", ["expires_at"])
    op.create_table(
        "live_consoles",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("server_id", sa.String(length=64), nullable=False),
        sa.Column("server_name", sa.String(length=255), nullable=False),
        sa.Column("cloud", sa.String(length=64), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("instance", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.Column("to_cloud", sa.BigInteger(), nullable=False),
        sa.Column("to_browser", sa.BigInteger(), nullable=False),
        sa.Column("end_requested_by", sa.String(length=64), nullable=True),
    )
    for column in ("user_id", "session_id", "instance", "seen_at"):
        op.create_index(f"ix_live_consoles_{column}", "live_consoles", [column])


def downgrade():
    op.drop_table("live_consoles")
    op.drop_table("relay_tickets")
