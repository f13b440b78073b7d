"""Broker users: names and passwords that are safe to accept, adding and changing users, the sign-in check."""

from __future__ import annotations

import functools
import re
import secrets
import unicodedata
from datetime import UTC
from datetime import datetime
from pathlib import Path

from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import update
from werkzeug.security import check_password_hash
from werkzeug.security import generate_password_hash

from broker.extensions import db
from broker.models import ROLES
from broker.models import User
from broker.models import UserSession

# User and group names: ASCII letters, digits and . _ - @, starting with a letter or
# digit. No look-alikes from other scripts, nothing a URL path would rewrite (. or ..),
# and names are unique regardless of case (Admin is admin).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
NAME_RULE = "1-64 ASCII letters, digits or . _ - @, starting with a letter or digit"
MIN_PASSWORD = 12
COMMON_PASSWORDS = Path(__file__).resolve().parents[1] / "data" / "common-passwords.txt"
# Checked against when the user is unknown, so both paths cost one hash.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))


class UserError(Exception):
    """A user operation that cannot be done (duplicate name, bad password...)."""


def check_name(name: str, what: str = "user name") -> str:
    """``name`` if it is in the safe alphabet, else UserError saying what is allowed."""
    if not NAME.match(name or ""):
        raise UserError(f"A {what} is {NAME_RULE}.")
    return name


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords (read once, when a password is first set)."""
    lines = COMMON_PASSWORDS.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def check_password(password: str) -> str:
    """A new password: long enough, one a browser can type, not a common one (give or take digits and symbols)."""
    password = password or ""
    if len(password) < MIN_PASSWORD:
        raise UserError(f"A password needs at least {MIN_PASSWORD} characters.")
    if len(password) > 1024:
        raise UserError("A password may be at most 1024 characters.")
    if len(set(password)) == 1:
        raise UserError("A password cannot be one character repeated.")
    if any(c != "\t" and unicodedata.category(c) == "Cc" for c in password):
        # Most often a stray \r from a file saved with Windows line endings: a browser's password
        # field drops line breaks and no keyboard types the rest, so no one could ever sign in with it.
        raise UserError(
            "A password cannot contain a carriage return, line break or other control character "
            "(a tab is fine): no browser could type it to sign in."
        )
    folded = password.lower()
    core = folded.strip("0123456789!@#$%^&*()-_=+.,;:?~ ")
    if folded in common_passwords() or not core or core in common_passwords():
        raise UserError("This password is too common; choose another (a few unrelated words work well).")
    return password


def find(username: str) -> User | None:
    """The user called ``username``, whatever its case."""
    if not username or len(username) > 64 or "\x00" in username:
        return None  # no stored name is like that (and PostgreSQL refuses NUL in a query)
    return db.session.scalar(select(User).where(func.lower(User.username) == (username or "").lower()))


def add(username: str, password: str, role: str = "agent") -> User:
    username = check_name(username)
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    existing = find(username)
    if existing:
        raise UserError(f"user {existing.username} already exists (names are the same whatever their case)")
    user = User(username=username, password_hash=generate_password_hash(check_password(password)), role=role)
    db.session.add(user)
    db.session.flush()
    return user


def set_password(user: User, password: str) -> None:
    """New password; every session of this user ends."""
    require_local(user, "their password")
    user.password_hash = generate_password_hash(check_password(password))
    user.session_token = secrets.token_hex(16)
    # The session rows end too: the relay judges a live console by its session's row.
    db.session.execute(
        update(UserSession)
        .where(UserSession.user_id == user.id, UserSession.ended_at.is_(None))
        .values(ended_at=datetime.now(UTC))
    )
    db.session.flush()


def remove(user: User) -> None:
    db.session.delete(user)
    db.session.flush()


def authenticate(username: str, password: str) -> User | None:
    """The local user if the password matches; the same work is done for unknown names (and external ones)."""
    user = find(username) if username else None
    if user is None or user.is_external:
        check_password_hash(_DUMMY_HASH, password or "")
        return None
    return user if check_password_hash(user.password_hash, password or "") else None


def require_local(user: User, what: str) -> User:
    """An external account's password, role and groups are its directory's: refuse to edit them here."""
    if user.is_external:
        raise UserError(f"{user.username} signs in with {user.source}: {what} comes from there, not from the broker")
    return user


def set_role(user: User, role: str) -> None:
    require_local(user, "their role")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    user.role = role
    db.session.flush()


def any_users() -> bool:
    return db.session.scalar(select(User.id).limit(1)) is not None


def all_users() -> list[User]:
    return list(db.session.scalars(select(User).order_by(User.username)))
