"""The users table."""

from __future__ import annotations

import secrets
from datetime import UTC
from datetime import datetime

from sqlalchemy import Index
from sqlalchemy import String
from sqlalchemy import func
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from broker.extensions import db

ROLES = ("admin", "agent")
# Where an account comes from. Only local accounts have a password here; the others are
# kept in step with their directory at every sign-in.
SOURCES = ("local", "oidc", "ldap", "header")
# The password hash of an account that signs in elsewhere: no password ever matches it.
NO_PASSWORD = "!"


class User(db.Model):
    """A person who may sign in; also what flask-login keeps as the signed-in user (it reads the four
    members below), so the model needs nothing of Flask."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="agent")
    # Changes whenever the password changes; sessions carry it, so old ones end.
    session_token: Mapped[str] = mapped_column(String(64), default=lambda: secrets.token_hex(16))
    created_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))
    source: Mapped[str] = mapped_column(String(16), default="local", server_default="local")
    # The directory's own key for the account (OIDC issuer and sub, LDAP DN, the header's name).
    external_id: Mapped[str | None] = mapped_column(String(512), default=None)
    last_sign_in_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        Index("ix_users_username_folded", func.lower(username), unique=True),
        Index("ix_users_external", source, external_id, unique=True),
    )

    # What flask-login asks of a user object: every stored user is an active, real account.
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        """The session's key: a password change (new session_token) ends every session that holds the old one."""
        return f"{self.id}:{self.session_token}"

    @property
    def is_external(self) -> bool:
        return self.source != "local"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
