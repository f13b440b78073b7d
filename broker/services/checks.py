"""``flask --app app check``: what an operator runs before and after deploying; it mints nothing."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from broker import schema
from broker.cloud.health import Finding
from broker.services import policy
from broker.services import users
from broker.services.consoles import ConsoleService
from broker.shared import SharedRedis


def check_database() -> list[Finding]:
    """The database answers and its schema is the one this code needs."""
    try:
        found = schema.inspect_state()
    except SQLAlchemyError as exc:
        return [Finding("fail", f"database unreachable ({type(exc.orig or exc).__name__}): check BROKER_DATABASE_URL")]
    if problem := found.problem():
        return [Finding("fail", problem)]
    if found.empty:
        return [Finding("fail", f"the database is empty: create its tables with '{schema.UPGRADE_COMMAND}'")]
    return [Finding("ok", f"database schema is current (revision {found.head})")]


def check_redis(shared: SharedRedis | None) -> list[Finding]:
    """Redis, when configured: shared sign-in limits and server lists need it."""
    if shared is None:
        return [Finding("note", "no BROKER_REDIS_URL: sign-in limits and server lists are per process")]
    up, reason = shared.status()
    if up:
        return [Finding("ok", reason)]
    return [Finding("fail", f"{reason}: the broker runs on per-process state until it answers; check BROKER_REDIS_URL")]


def check_clouds(service: ConsoleService) -> list[Finding]:
    """Each cloud: sign in, compute endpoint and versions, one server listed."""
    findings: list[Finding] = []
    for cloud in service.inventory.clouds.values():
        findings.extend(cloud.client.probe())
    return findings


def check_access(clouds: list[str]) -> list[Finding]:
    """Users and rules: someone can sign in, and every rule can grant something."""
    findings: list[Finding] = []
    if not users.any_users():
        findings.append(
            Finding("fail", "no users: create the first admin with 'flask --app app users add NAME --admin'")
        )
    for rule in policy.rules_on_unknown_clouds(clouds):
        findings.append(
            Finding(
                "fail",
                f"rule {rule.id} ({rule.describe()}) names a cloud that is not configured (configured: "
                f"{', '.join(clouds) or 'none'}); it grants nothing: remove it with 'rules remove {rule.id}' "
                "or fix BROKER_CLOUDS",
            )
        )
    for user in policy.users_without_rules():
        findings.append(
            Finding(
                "note",
                f"user {user.username} has no rule (nor a group with one), so they can open no console: "
                f"'rules add --user {user.username} --cloud NAME' or 'groups add-member GROUP {user.username}'",
            )
        )
    return findings


def check_console_hosts(service: ConsoleService, configured: bool) -> list[Finding]:
    """Which hosts console URLs may point at (the CSP's frame-src says the same)."""
    if not service.console_hosts:
        return [
            Finding(
                "note",
                "console URLs are accepted from any http(s) host: set BROKER_CONSOLE_HOSTS to the noVNC proxy hosts",
            )
        ]
    source = "BROKER_CONSOLE_HOSTS" if configured else "the clouds' API hosts (set BROKER_CONSOLE_HOSTS to change)"
    return [Finding("ok", f"console URLs are accepted from {', '.join(service.console_hosts)} ({source})")]
