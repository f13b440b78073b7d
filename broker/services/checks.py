"""``flask --app app check``: what an operator runs before and after deploying; it mints nothing."""

from __future__ import annotations

from broker.cloud.health import Finding
from broker.services import policy
from broker.services import users
from broker.services.consoles import ConsoleService


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
