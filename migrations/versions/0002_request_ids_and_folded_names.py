"""Request IDs in the audit trail; case-insensitive unique user names on databases made before them.

Databases adopted by 0001 may predate the unique index on ``lower(username)``; it is
added here unless two stored names differ only in case, which stops the upgrade with
those names so an admin can remove one first.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FOLDED = "ix_users_username_folded"


def upgrade():
    # Checked before any change; the upgrade is one transaction (env.py), so a refusal leaves the database as it was.
    bind = op.get_bind()
    # (The inspector cannot see expression indexes on SQLite, so the check is the query itself.)
    clashes = bind.execute(
        sa.text("SELECT lower(username) FROM users GROUP BY lower(username) HAVING count(*) > 1")
    ).scalars()
    if clashes := sorted(clashes):
        raise RuntimeError(
            "user names that differ only in case must be made unique first (remove one of each with "
            f"'flask --app app users remove NAME'): {', '.join(clashes)}"
        )
    op.create_index(FOLDED, "users", [sa.text("lower(username)")], unique=True, if_not_exists=True)
    with op.batch_alter_table("audit") as batch:
        batch.add_column(sa.Column("request_id", sa.String(length=64), nullable=False, server_default=""))


def downgrade():
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("request_id")
