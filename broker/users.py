"""Broker users: the model, password hashing and the sign-in check."""

from __future__ import annotations

import secrets
from datetime import UTC
from datetime import datetime

from flask_login import UserMixin
from sqlalchemy import String
from sqlalchemy import select
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from werkzeug.security import check_password_hash
from werkzeug.security import generate_password_hash

from broker.extensions import db

ROLES = ("admin", "agent")
# Checked against when the user is unknown, so both paths cost one hash.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))


class UserError(Exception):
    """A user operation that cannot be done (duplicate name, bad password...)."""


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="agent")
    # Changes whenever the password changes; sessions carry it, so old ones end.
    session_token: Mapped[str] = mapped_column(String(64), default=lambda: secrets.token_hex(16))
    created_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token}"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def check_username(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
        raise UserError("A user name is 1-64 letters, digits or . _ - @")
    return name


def check_password(password: str) -> str:
    if len(password or "") < 8:
        raise UserError("A password needs at least 8 characters.")
    if len(password) > 1024:
        raise UserError("A password may be at most 1024 characters.")
    return password


def find(username: str) -> User | None:
    return db.session.scalar(select(User).where(User.username == username))


def load(user_id: str) -> User | None:
    """flask-login's loader: the id must match the user's current session token."""
    raw_id, _, token = (user_id or "").partition(":")
    if not raw_id.isdigit():
        return None
    user = db.session.get(User, int(raw_id))
    valid = user is not None and secrets.compare_digest(user.session_token, token)
    # Hand the pooled connection back now: the request may next wait seconds on a
    # cloud, and a connection held through that starves every other request.
    # The user stays usable (its columns are loaded), detached from the session.
    db.session.close()
    return user if valid else None


def add(username: str, password: str, role: str = "agent") -> User:
    username = check_username(username)
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if find(username):
        raise UserError(f"user {username} already exists")
    user = User(username=username, password_hash=generate_password_hash(check_password(password)), role=role)
    db.session.add(user)
    db.session.commit()
    return user


def set_password(user: User, password: str) -> None:
    """New password; every session of this user ends."""
    user.password_hash = generate_password_hash(check_password(password))
    user.session_token = secrets.token_hex(16)
    db.session.commit()


def remove(user: User) -> None:
    db.session.delete(user)
    db.session.commit()


def authenticate(username: str, password: str) -> User | None:
    """The user if the password matches; the same work is done for unknown names."""
    user = find(username) if username else None
    if user is None:
        check_password_hash(_DUMMY_HASH, password or "")
        return None
    return user if check_password_hash(user.password_hash, password or "") else None


def all_users() -> list[User]:
    return list(db.session.scalars(select(User).order_by(User.username)))
