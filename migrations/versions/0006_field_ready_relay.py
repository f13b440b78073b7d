"""Field-ready relay: a sign-in session's last use, kept where the relay can see it.

``user_sessions`` gains ``seen_at`` (the last request, or input in a relay console), so that the
relay can close a console whose session sat idle past BROKER_SESSION_IDLE. Sessions live at the
upgrade start from the moment of the upgrade: none ends at once for want of a time.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from datetime import UTC
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("user_sessions", sa.Column("seen_at", sa.DateTime(), nullable=True))
    sessions = sa.table("user_sessions", sa.column("seen_at", sa.DateTime()), sa.column("ended_at", sa.DateTime()))
    op.execute(sessions.update().where(sessions.c.ended_at.is_(None)).values(seen_at=datetime.now(UTC)))


def downgrade():
    with op.batch_alter_table("user_sessions") as batch:
        batch.drop_column("seen_at")
