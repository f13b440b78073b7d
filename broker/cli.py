"""``flask --app app users add|list|set-password|remove``."""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import AppGroup

from broker import users

users_cli = AppGroup("users", help="Manage who may sign in to the broker.")


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


def existing(name: str) -> users.User:
    user = users.find(name)
    if user is None:
        raise click.ClickException(f"no user called {name}")
    return user


@users_cli.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May manage users and read the audit trail.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def add_user(name: str, admin: bool, password_stdin: bool) -> None:
    """Add a user (an agent unless --admin)."""
    try:
        user = users.add(name, read_password(password_stdin), "admin" if admin else "agent")
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added {user.username} ({user.role})")


@users_cli.command("list")
def list_users() -> None:
    """List users and their roles."""
    for user in users.all_users():
        click.echo(f"{user.username}\t{user.role}\t{user.created_at:%Y-%m-%d}")


@users_cli.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def set_password(name: str, password_stdin: bool) -> None:
    """Set a new password; the user's sessions end."""
    user = existing(name)
    try:
        users.set_password(user, read_password(password_stdin))
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"password changed for {name}")


@users_cli.command("remove")
@click.argument("name")
def remove_user(name: str) -> None:
    """Remove a user; their sessions end."""
    users.remove(existing(name))
    click.echo(f"removed {name}")


def register_commands(app: Flask) -> None:
    app.cli.add_command(users_cli)
