"""Admin changes (users, groups, rules) made through one path that audits each of them."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection

from broker.services import audit
from broker.services import policy
from broker.services import relay
from broker.services import users
from broker.services.inventory import Inventory

ChangeError = (users.UserError, policy.PolicyError, relay.NoSuchConsole)


def apply(actor: str, detail: str, change: Callable[[], str]) -> str:
    """Run ``change`` (which returns a description) and stage its audit record beside it: one unit of work,
    which the caller commits (the request, or the command).

    A refused change raises before it stages anything (each one checks first); its refusal is staged
    instead, so the caller's commit keeps the record of it.
    """
    try:
        text = change()
    except ChangeError as exc:
        audit.stage("admin", "failed", username=actor, detail=detail, reason=str(exc))
        raise
    audit.stage("admin", "ok", username=actor, detail=detail, reason=text)
    return text


def add_user(actor: str, name: str, password: str, role: str) -> str:
    return apply(actor, "user_add", lambda: f"added {users.add(name, password, role).username} ({role})")


def set_password(actor: str, name: str, password: str) -> str:
    def change() -> str:
        users.set_password(policy.require_user(name), password)
        return f"password changed for {name}; their sessions ended"

    return apply(actor, "user_password", change)


def set_role(actor: str, name: str, role: str) -> str:
    def change() -> str:
        if name == actor and role != "admin":
            raise users.UserError("you cannot take away your own admin role")
        user = policy.require_user(name)
        before = user.role
        users.set_role(user, role)
        return f"{name} is now {role} (was {before})"

    return apply(actor, "user_role", change)


def remove_user(actor: str, name: str) -> str:
    def change() -> str:
        if name == actor:
            raise users.UserError("you cannot remove yourself")
        users.remove(policy.require_user(name))
        return f"removed {name}; their sessions ended"

    return apply(actor, "user_remove", change)


def add_group(actor: str, name: str) -> str:
    return apply(actor, "group_add", lambda: f"added group {policy.add_group(name).name}")


def remove_group(actor: str, name: str) -> str:
    return apply(actor, "group_remove", lambda: policy.remove_group(name) or f"removed group {name}")


def add_member(actor: str, group: str, user: str) -> str:
    return apply(actor, "member_add", lambda: policy.add_member(group, user) or f"added {user} to {group}")


def remove_member(actor: str, group: str, user: str) -> str:
    return apply(actor, "member_remove", lambda: policy.remove_member(group, user) or f"removed {user} from {group}")


def cloud_health(inventory: Inventory) -> dict:
    """Each configured cloud's health as its client last saw it."""
    return {name: cloud.client.health.snapshot() for name, cloud in inventory.clouds.items()}


def add_rule(actor: str, clouds: Collection[str], **fields) -> str:
    """Add a rule; ``clouds`` are the names it may use (every configured cloud, ``name/Region`` included)."""

    def change() -> str:
        rule = policy.add_rule(clouds=clouds, **fields)
        return f"rule {rule.id}: {rule.describe()}"

    return apply(actor, "rule_add", change)


def remove_rule(actor: str, rule_id: int) -> str:
    return apply(actor, "rule_remove", lambda: f"removed rule {rule_id}: {policy.remove_rule(rule_id)}")


def end_console(actor: str, row_id: int) -> str:
    """Ask a relay to close one live console; the browser hears so within seconds."""
    return apply(actor, "relay_end", lambda: relay.request_end(row_id, actor))
