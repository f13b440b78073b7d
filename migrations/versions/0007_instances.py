"""Instances: each web and relay process records its version and a fingerprint of its settings.

A new table; nothing existing changes. Rows come and go with the processes (each writes its own
at start, touches it every 30 s and deletes it at exit), so the upgrade adds none.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("fallback_fingerprints", sa.Text(), nullable=False),
        sa.Column("clouds", sa.Text(), nullable=False),
        sa.Column("console_mode", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_instances_seen_at", "instances", ["seen_at"])


def downgrade():
    op.drop_table("instances")
