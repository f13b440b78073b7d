"""Serial consoles: each live console says which kind it is.

``live_consoles.kind`` is ``novnc`` (graphical) or ``serial``, so that admins see which console a
person has open. Rows live at the upgrade are graphical (the only kind there was); the downgrade
drops the column with what it said.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("live_consoles") as table:
        table.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="novnc"))


def downgrade():
    with op.batch_alter_table("live_consoles") as table:
        table.drop_column("kind")
