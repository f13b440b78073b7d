"""Who may open which console: groups, access rules, and the one check used everywhere.

Deny by default. An admin may open everything; anyone else only servers that one of
their rules (or one of their groups' rules) grants: a cloud, optionally narrowed by a
server-name glob and a metadata ``key=value``. A rule with ``power`` also lets them start
and reboot the servers it grants; an admin may power every server.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import func
from sqlalchemy import select

from broker.cloud.types import ServerInfo
from broker.extensions import db
from broker.models import AccessRule
from broker.models import Group
from broker.models import User
from broker.models import memberships
from broker.services import users


class PolicyError(Exception):
    """A group or rule change that cannot be made; the message says why."""


@dataclass(frozen=True)
class Grant:
    """One compiled rule."""

    cloud: str
    pattern: re.Pattern
    meta_key: str
    meta_value: str
    power: bool = False

    def allows(self, server: ServerInfo) -> bool:
        if self.cloud not in ("*", server.cloud) or not self.pattern.match(server.name):
            return False
        return not self.meta_key or server.metadata.get(self.meta_key) == self.meta_value


@dataclass(frozen=True)
class Access:
    """What one user may open, compiled once per request."""

    everything: bool
    grants: tuple[Grant, ...] = ()

    def allows(self, server: ServerInfo) -> bool:
        return self.everything or any(grant.allows(server) for grant in self.grants)

    def may_power(self, server: ServerInfo) -> bool:
        """True when one rule both grants ``server`` and carries the power permission (or for an admin)."""
        return self.everything or any(grant.power and grant.allows(server) for grant in self.grants)

    def may_use_cloud(self, cloud: str) -> bool:
        """True when some rule could grant a server of ``cloud`` (so its trouble concerns this user)."""
        return self.everything or any(grant.cloud in ("*", cloud) for grant in self.grants)

    def filter(self, servers: list[ServerInfo]) -> list[ServerInfo]:
        if self.everything:
            return servers
        return [server for server in servers if self.allows(server)]


def compile_rule(rule: AccessRule) -> Grant:
    pattern = re.compile(fnmatch.translate(rule.name_pattern or "*"))
    return Grant(rule.cloud, pattern, rule.meta_key, rule.meta_value, bool(rule.power))


def access_for(user: User) -> Access:
    """The user's access: everything for an admin, else their rules and their groups' rules."""
    if user.is_admin:
        return Access(everything=True)
    group_ids = select(memberships.c.group_id).where(memberships.c.user_id == user.id)
    rules = db.session.scalars(
        select(AccessRule).where((AccessRule.user_id == user.id) | (AccessRule.group_id.in_(group_ids)))
    )
    return Access(everything=False, grants=tuple(compile_rule(rule) for rule in rules))


def rules_on_unknown_clouds(clouds: Collection[str]) -> list[AccessRule]:
    """Rules that name a cloud no longer (or never) configured: they grant nothing."""
    return [rule for rule in all_rules() if rule.cloud != "*" and rule.cloud not in clouds]


def users_without_rules() -> list[User]:
    """Agents no rule of theirs or of their groups reaches: they can sign in and open nothing."""
    covered = select(AccessRule.user_id).where(AccessRule.user_id.is_not(None))
    via_groups = select(memberships.c.user_id).join(AccessRule, AccessRule.group_id == memberships.c.group_id)
    query = select(User).where(User.role != "admin", User.id.not_in(covered), User.id.not_in(via_groups))
    return list(db.session.scalars(query.order_by(User.username)))


# -- management (CLI and admin page) -----------------------------------------------


def check_name(name: str, what: str = "name") -> str:
    if not users.NAME.match(name or ""):
        raise PolicyError(f"A {what} is {users.NAME_RULE}.")
    return name


def find_group(name: str) -> Group | None:
    """The group called ``name``, whatever its case."""
    return db.session.scalar(select(Group).where(func.lower(Group.name) == (name or "").lower()))


def all_groups() -> list[Group]:
    return list(db.session.scalars(select(Group).order_by(Group.name)))


def all_rules() -> list[AccessRule]:
    return list(db.session.scalars(select(AccessRule).order_by(AccessRule.id)))


def add_group(name: str) -> Group:
    check_name(name, "group name")
    existing = find_group(name)
    if existing:
        raise PolicyError(f"group {existing.name} already exists (names are the same whatever their case)")
    group = Group(name=name)
    db.session.add(group)
    db.session.flush()
    return group


def require_group(name: str) -> Group:
    group = find_group(name)
    if group is None:
        raise PolicyError(f"no group called {name}")
    return group


def require_user(name: str) -> User:
    user = users.find(name)
    if user is None:
        raise PolicyError(f"no user called {name}")
    return user


def remove_group(name: str) -> None:
    db.session.delete(require_group(name))
    db.session.flush()


def add_member(group_name: str, username: str) -> None:
    group, user = require_group(group_name), require_user(username)
    if user.is_external:
        raise PolicyError(f"{username} signs in with {user.source}: their groups come from there, at each sign-in")
    if user in group.members:
        raise PolicyError(f"{username} is already in {group_name}")
    group.members.append(user)
    db.session.flush()


def remove_member(group_name: str, username: str) -> None:
    group, user = require_group(group_name), require_user(username)
    if user.is_external:
        raise PolicyError(f"{username} signs in with {user.source}: their groups come from there, at each sign-in")
    if user not in group.members:
        raise PolicyError(f"{username} is not in {group_name}")
    group.members.remove(user)
    db.session.flush()


def check_cloud(cloud: str, clouds: Collection[str]) -> str:
    """``cloud`` if it is ``*`` or a configured cloud name (``name/Region`` included), else say which are."""
    if cloud == "*" or cloud in clouds:
        return cloud
    known = ", ".join(sorted(clouds)) or "none"
    raise PolicyError(f"no cloud called {cloud!r}; the configured clouds are: {known} (or * for every cloud)")


def add_rule(
    *,
    cloud: str,
    clouds: Collection[str],
    user: str | None = None,
    group: str | None = None,
    name_pattern: str = "*",
    metadata: str = "",
    power: bool = False,
) -> AccessRule:
    """Grant ``user`` or ``group`` the consoles of ``cloud`` (``*``: every cloud), optionally narrowed."""
    if bool(user) == bool(group):
        raise PolicyError("a rule names either a user or a group")
    check_cloud(cloud, clouds)
    if not name_pattern or len(name_pattern) > 255:
        raise PolicyError("a name pattern is 1-255 characters (a glob such as web-*)")
    key, sep, value = metadata.partition("=")
    if metadata and (not sep or not key.strip() or len(metadata) > 255):
        raise PolicyError("metadata is given as key=value")
    rule = AccessRule(
        cloud=cloud, name_pattern=name_pattern, meta_key=key.strip(), meta_value=value.strip(), power=power
    )
    if user:
        rule.user = require_user(user)
    else:
        rule.group = require_group(group)
    twin = next((r for r in all_rules() if r.describe() == rule.describe()), None)
    if twin:
        raise PolicyError(f"rule {twin.id} already grants this: {twin.describe()}")
    db.session.add(rule)
    db.session.flush()
    return rule


def remove_rule(rule_id: int) -> str:
    rule = db.session.get(AccessRule, rule_id)
    if rule is None:
        raise PolicyError(f"no rule {rule_id}")
    text = rule.describe()
    db.session.delete(rule)
    db.session.flush()
    return text
