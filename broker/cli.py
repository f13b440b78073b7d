"""``flask --app app users|groups|rules|recordings ...``: manage who may sign in and open what, and recordings."""

from __future__ import annotations

import getpass
import sys

import click
from flask import Flask
from flask.cli import AppGroup
from flask.cli import ScriptInfo
from flask.cli import with_appcontext

from broker import schema
from broker import state
from broker.config import Settings
from broker.extensions import db
from broker.services import checks
from broker.services import management
from broker.services import policy
from broker.services import recordings
from broker.services import users

# The servers' environment: the EnvironmentFile= of deploy/console-broker@.service and the relay's unit.
ENV_FILE = "/etc/console-broker/broker.env"


class NotConfigured(click.ClickException):
    """A command refused before it did anything, for want of its environment (exit 2, as a usage error)."""

    exit_code = 2


def require_database(settings: Settings) -> None:
    """Commands act on the servers' database. In a shell without their environment (no BROKER_DATABASE_URL,
    no cloud) the app falls back to the demo's database, which no server of theirs reads: refuse there."""
    if settings.demo and not settings.demo_explicit and not settings.database_url_set:
        raise NotConfigured(
            "no database is configured (BROKER_DATABASE_URL is not set, nor a cloud), so this command would use "
            f"the demo's own database ({settings.database_url}), which your servers never read. Run it in their "
            f"environment: first 'set -a; . {ENV_FILE}; set +a' (the EnvironmentFile= of console-broker@.service), "
            "or through deploy/console-broker-flask. For the demo itself, set BROKER_DEMO=1."
        )


def loaded_app() -> Flask:
    return click.get_current_context().ensure_object(ScriptInfo).load_app()


def require_current_schema() -> None:
    """Before any users/groups/rules command: the servers' database; an empty one gets its schema (as a
    server start gives it); one that is not the code's stops the command, naming the fix."""
    with loaded_app().app_context():
        require_database(state.settings())
        if problem := schema.prepare(auto_upgrade=False).problem():
            raise click.ClickException(problem)


users_cli = AppGroup("users", help="Manage who may sign in to the broker.", callback=require_current_schema)
groups_cli = AppGroup("groups", help="Manage groups of users.", callback=require_current_schema)
rules_cli = AppGroup("rules", help="Manage who may open which consoles.", callback=require_current_schema)
recordings_cli = AppGroup(
    "recordings", help="Manage console recordings (BROKER_RECORDING).", callback=require_current_schema
)


def actor() -> str:
    """Audit records of CLI changes name the operating-system account."""
    return f"cli:{getpass.getuser()}"


def run(change, *args, **kwargs) -> None:
    """One admin change as one unit of work: the change and its audit record are committed here, together;
    a refused one commits only the record of its refusal. Anything else that goes wrong commits nothing."""
    try:
        text = change(actor(), *args, **kwargs)
    except management.ChangeError as exc:
        db.session.commit()
        raise click.ClickException(str(exc)) from None
    db.session.commit()
    click.echo(text)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        # Only the line ending goes (\n or \r\n); spaces are part of a password.
        return sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_cli.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May manage users and rules and read the audit trail.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def add_user(name: str, admin: bool, password_stdin: bool) -> None:
    """Add a user (an agent unless --admin)."""
    run(management.add_user, name, read_password(password_stdin), "admin" if admin else "agent")


@users_cli.command("list")
def list_users() -> None:
    """List users: name, role, source (local, oidc, ldap, header), created, last sign-in, groups."""
    for user in users.all_users():
        groups = ",".join(g.name for g in policy.all_groups() if user in g.members)
        last = f"{user.last_sign_in_at:%Y-%m-%d %H:%M}" if user.last_sign_in_at else "-"
        click.echo(f"{user.username}\t{user.role}\t{user.source}\t{user.created_at:%Y-%m-%d}\t{last}\t{groups}")


@users_cli.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def set_password(name: str, password_stdin: bool) -> None:
    """Set a new password; the user's sessions end."""
    if users.find(name) is None:
        raise click.ClickException(f"no user called {name}")
    run(management.set_password, name, read_password(password_stdin))


@users_cli.command("set-role")
@click.argument("name")
@click.argument("role", type=click.Choice(users.ROLES))
def set_role(name: str, role: str) -> None:
    """Make a user an admin or an agent."""
    run(management.set_role, name, role)


@users_cli.command("remove")
@click.argument("name")
def remove_user(name: str) -> None:
    """Remove a user; their sessions, memberships and rules end."""
    run(management.remove_user, name)


@groups_cli.command("add")
@click.argument("name")
def add_group(name: str) -> None:
    """Add a group."""
    run(management.add_group, name)


@groups_cli.command("list")
def list_groups() -> None:
    """List groups and their members."""
    for group in policy.all_groups():
        click.echo(f"{group.name}\t{','.join(u.username for u in group.members)}")


@groups_cli.command("remove")
@click.argument("name")
def remove_group(name: str) -> None:
    """Remove a group and its rules."""
    run(management.remove_group, name)


@groups_cli.command("add-member")
@click.argument("group")
@click.argument("user")
def add_member(group: str, user: str) -> None:
    """Put a user in a group."""
    run(management.add_member, group, user)


@groups_cli.command("remove-member")
@click.argument("group")
@click.argument("user")
def remove_member(group: str, user: str) -> None:
    """Take a user out of a group."""
    run(management.remove_member, group, user)


@rules_cli.command("add")
@click.option("--user", help="Grant to this user.")
@click.option("--group", help="Grant to this group.")
@click.option("--cloud", required=True, help="Cloud name, or * for every cloud.")
@click.option("--name-pattern", default="*", show_default=True, help="Glob on server names, e.g. web-*.")
@click.option("--metadata", default="", help="Only servers with this metadata key=value.")
@click.option("--power", is_flag=True, help="Also start and reboot the servers it grants (off by default).")
def add_rule(user: str | None, group: str | None, cloud: str, name_pattern: str, metadata: str, power: bool) -> None:
    """Grant a user or group the consoles of a cloud, optionally narrowed."""
    run(
        management.add_rule,
        state.consoles().inventory.names(),
        user=user,
        group=group,
        cloud=cloud,
        name_pattern=name_pattern,
        metadata=metadata,
        power=power,
    )


@rules_cli.command("list")
def list_rules() -> None:
    """List access rules."""
    for rule in policy.all_rules():
        click.echo(f"{rule.id}\t{rule.describe()}")


@rules_cli.command("remove")
@click.argument("rule_id", type=int)
def remove_rule(rule_id: int) -> None:
    """Remove an access rule by its number."""
    run(management.remove_rule, rule_id)


@recordings_cli.command("prune")
def prune_recordings() -> None:
    """Delete recordings older than BROKER_RECORDING_RETENTION_DAYS, each audited (run daily by a timer)."""
    settings = state.settings()
    days = settings.recording_retention_days
    deleted = recordings.prune(settings.recording_dir, days, actor())
    # Each deletion's record, committed once the files are gone (an audit of what happened, not of what was meant).
    db.session.commit()
    for recording in deleted:
        click.echo(f"deleted {recording.id}\t{recording.username}\t{recording.server_name}\t{recording.cloud}")
    click.echo(
        f"{len(deleted)} recording{'s' if len(deleted) != 1 else ''} older than {days} days deleted "
        f"from {settings.recording_dir}"
    )


MARKS = {"ok": "ok  ", "note": "note", "fail": "FAIL"}


@click.command("check")
@with_appcontext
def check() -> None:
    """Check settings, clouds (sign in, endpoint, one server listed), users and rules; mint nothing."""
    settings = state.settings()
    require_database(settings)
    service = state.consoles()
    database = checks.check_database()
    findings = [
        *database,
        *checks.check_redis(state.redis()),
        *checks.check_clouds_files(settings),
        *checks.check_clouds(service),
        # Users and rules can only be read from a schema this code knows.
        *(checks.check_access(service.inventory.names()) if database[0].level == "ok" else []),
        *(checks.check_instances(settings, service) if database[0].level == "ok" else []),
        *checks.check_console_hosts(service, bool(settings.console_hosts)),
        *checks.check_relay(settings, service),
        *checks.check_proxies(settings, state.redis()),
    ]
    for finding in findings:
        click.echo(f"{MARKS[finding.level]}  {finding.text}")
    failed = sum(finding.level == "fail" for finding in findings)
    if failed:
        raise click.ClickException(f"{failed} problem{'s' if failed > 1 else ''} found")
    click.echo("no problems found")


def register_commands(app: Flask) -> None:
    for group in (users_cli, groups_cli, rules_cli, recordings_cli):
        app.cli.add_command(group)
    app.cli.add_command(check)
    guard_migrations(app)


def guard_migrations(app: Flask) -> None:
    """Flask-Migrate's ``db`` group (migrate.init_app added it) behind require_database, since 'db upgrade'
    without the environment would upgrade the demo's database: a group of this app's own with the same
    options and commands, so the library's shared group is left as it is."""
    migrations = app.cli.commands.get("db")
    if not isinstance(migrations, click.Group) or migrations.callback is None:
        return
    run = migrations.callback

    @with_appcontext
    def refuse_then_run(**options):
        require_database(state.settings())
        return run(**options)

    guarded = click.Group(
        "db", commands=migrations.commands, params=migrations.params, help=migrations.help, callback=refuse_then_run
    )
    app.cli.add_command(guarded)
