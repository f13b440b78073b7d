"""The schema of the broker as it was before migrations: users, groups, rules, sessions, the audit trail.

A database made by an earlier broker's ``create_all`` already holds these tables; it is
adopted as it is, with its data, and stamped with this revision. The first release (up to
0e35992) kept no sign-in sessions, so its databases get that table here; the second (up to
26eee57) made them all. Anything else holding some of these names is not the broker's and
is refused before any change.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The columns create_all made in every release before migrations (tests/data/schema-1-* and -2-*).
COLUMNS = {
    "users": {"id", "username", "password_hash", "role", "session_token", "created_at"},
    "groups": {"id", "name"},
    "group_members": {"group_id", "user_id"},
    "access_rules": {"id", "user_id", "group_id", "cloud", "name_pattern", "meta_key", "meta_value"},
    "user_sessions": {"id", "user_id", "started_at", "ended_at"},
    "audit": {
        "id",
        "at",
        "username",
        "action",
        "outcome",
        "cloud",
        "server_id",
        "server_name",
        "detail",
        "reason",
        "client",
        "user_agent",
    },
}
TABLES = set(COLUMNS)
FIRST_RELEASE = TABLES - {"user_sessions"}
NOT_OURS = "it was not made by the broker: use an empty database, or restore a backup"


def upgrade():
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names()) & TABLES
    if not existing:
        create_users_and_groups()
        create_sessions()
        create_audit()
        return
    refuse_unless_made_by_create_all(inspector, existing)
    if "user_sessions" not in existing:
        create_sessions()  # the first release kept no sign-in sessions
    if op.get_bind().dialect.name == "sqlite":
        never_reuse_rule_numbers()


def refuse_unless_made_by_create_all(inspector, existing: set[str]) -> None:
    """Adopt only the tables an earlier release made (the first's or the second's), with exactly its columns."""
    if existing not in (TABLES, FIRST_RELEASE):
        raise RuntimeError(
            f"the database has some of the broker's tables ({', '.join(sorted(existing))}) but not all; {NOT_OURS}"
        )
    differences = []
    for table in sorted(existing):
        found = {column["name"] for column in inspector.get_columns(table)}
        lacks, extra = COLUMNS[table] - found, found - COLUMNS[table]
        if lacks or extra:
            said = [f"lacks {', '.join(sorted(lacks))}"] if lacks else []
            said += [f"has {', '.join(sorted(extra))}"] if extra else []
            differences.append(f"{table}: {'; '.join(said)}")
    if differences:
        raise RuntimeError(
            f"the database's tables named like the broker's have other columns ({' / '.join(differences)}); {NOT_OURS}"
        )


def never_reuse_rule_numbers() -> None:
    """SQLite: rules made by the first release reuse the number of the last one removed (no AUTOINCREMENT);
    the audit trail names rules by number, so the table is copied into one that never does."""
    made = sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'access_rules'")
    if "AUTOINCREMENT" in op.get_bind().execute(made).scalar_one().upper():
        return
    with op.batch_alter_table("access_rules", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
        pass


def create_users_and_groups():
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("session_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_index("ix_users_username_folded", "users", [sa.text("lower(username)")], unique=True)
    op.create_table(
        "groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "group_members",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("group_id", "user_id"),
    )
    op.create_table(
        "access_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("cloud", sa.String(length=64), nullable=False),
        sa.Column("name_pattern", sa.String(length=255), nullable=False),
        sa.Column("meta_key", sa.String(length=255), nullable=False),
        sa.Column("meta_value", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        # Rule numbers are never reused: the audit trail names rules by number.
        sqlite_autoincrement=True,
    )


def create_sessions():
    op.create_table(
        "user_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_user_sessions_started_at", "user_sessions", ["started_at"])
    op.create_index("ix_user_sessions_user_id", "user_sessions", ["user_id"])


def create_audit():
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("cloud", sa.String(length=64), nullable=False),
        sa.Column("server_id", sa.String(length=64), nullable=False),
        sa.Column("server_name", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("action", "at", "server_id", "username"):
        op.create_index(f"ix_audit_{column}", "audit", [column])


def downgrade():
    raise RuntimeError("the first schema has nothing before it; restore a backup instead")
