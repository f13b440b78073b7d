"""Accounts of people who sign in through a directory: OpenID Connect, LDAP or a trusted proxy header.

The directory is the source of truth. An external account is found by its source and the
directory's own key (never by name), made the first time that person signs in, and its
role and group memberships are set from the directory's groups at every sign-in.

Names from different sources are kept apart: a name is held by one account only, of one
source. A directory user whose name is already an account of another source (a local
break-glass admin, say) is refused and the refusal audited; an admin removes or renames
one of the two. No external sign-in ever takes over an existing account.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime

from sqlalchemy import select

from broker.extensions import db
from broker.models import NO_PASSWORD
from broker.models import Group
from broker.models import User
from broker.services import users


@dataclass(frozen=True)
class ExternalIdentity:
    """Who a directory says signed in: ``subject`` is its stable key (OIDC issuer+sub, LDAP DN, header name)."""

    source: str
    subject: str
    username: str
    groups: tuple[str, ...] = ()
    # OIDC only: the provider's session ID, for back-channel logout.
    sid: str | None = None


class IdentityRefused(Exception):
    """A directory user who cannot have a broker account; ``message`` is for them, ``reason`` for the audit."""

    def __init__(self, message: str, reason: str):
        super().__init__(reason)
        self.message = message
        self.reason = reason


@dataclass
class Synced:
    """The account after sign-in, and what changed in it (for the sign-in's audit record)."""

    user: User
    changes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "; ".join(self.changes)


def find_external(source: str, subject: str) -> User | None:
    return db.session.scalar(select(User).where(User.source == source, User.external_id == subject))


def sign_in(identity: ExternalIdentity, admin_groups: tuple[str, ...]) -> Synced:
    """The broker account of ``identity``: made the first time, its name, role and groups re-synced every time.

    Staged, not committed (the request commits it with the sign-in's record). IdentityRefused comes before
    anything is staged.
    """
    name = usable_name(identity)
    user = find_external(identity.source, identity.subject)
    synced = Synced(user) if user is not None else Synced(create(identity, name))
    if user is not None and user.username != name:
        claim_name(identity, name)
        synced.changes.append(f"renamed from {user.username}")
        user.username = name
    role = "admin" if set(identity.groups) & set(admin_groups) else "agent"
    if synced.user.role != role:
        synced.changes.append(f"role {synced.user.role} -> {role}")
        synced.user.role = role
    synced.changes.extend(sync_groups(synced.user, identity.groups))
    synced.user.last_sign_in_at = datetime.now(UTC)
    db.session.flush()
    return synced


def usable_name(identity: ExternalIdentity) -> str:
    name = (identity.username or "").strip()
    if not users.NAME.match(name):
        raise IdentityRefused(
            "Your account's user name cannot be used here. Ask an administrator.",
            f"{identity.source} user name {name[:64]!r} is not a broker name ({users.NAME_RULE})",
        )
    return name


def claim_name(identity: ExternalIdentity, name: str) -> None:
    """Refuse ``name`` when an account of another source (or another person) holds it."""
    holder = users.find(name)
    if holder is not None and (holder.source, holder.external_id) != (identity.source, identity.subject):
        raise IdentityRefused(
            "An account with your user name already exists here. Ask an administrator.",
            f"{identity.source} user {name} refused: the name belongs to a {holder.source} account",
        )


def create(identity: ExternalIdentity, name: str) -> User:
    claim_name(identity, name)
    user = User(
        username=name, password_hash=NO_PASSWORD, role="agent", source=identity.source, external_id=identity.subject
    )
    db.session.add(user)
    db.session.flush()
    return user


def sync_groups(user: User, names: tuple[str, ...]) -> list[str]:
    """Membership of exactly the broker groups named like the directory's groups; what changed."""
    wanted = set(names)
    changes = []
    for group in db.session.scalars(select(Group).order_by(Group.name)):
        member = user in group.members
        if group.name in wanted and not member:
            group.members.append(user)
            changes.append(f"joined group {group.name}")
        elif group.name not in wanted and member:
            group.members.remove(user)
            changes.append(f"left group {group.name}")
    return changes
