"""``flask users ...``: adding, listing, changing passwords, removing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from broker import cli
from broker import create_app
from broker.extensions import db
from broker.models import User
from broker.services import identity
from broker.services import users
from tests.support import ROOT

# What a refused password with a carriage return or other control character is told.
REFUSED_CONTROL = "cannot contain a carriage return, line break or other control character"


def test_add_list_remove(runner, app):
    result = runner.invoke(args=["users", "add", "carol", "--admin", "--password-stdin"], input="carol-pass-1\n")
    assert result.exit_code == 0, result.output
    assert "added carol (admin)" in result.output
    listing = runner.invoke(args=["users", "list"]).output
    assert "carol\tadmin" in listing and "agent\tagent" in listing
    with app.app_context():
        stored = users.find("carol").password_hash
        assert "carol-pass-1" not in stored
        assert users.authenticate("carol", "carol-pass-1") is not None
    assert runner.invoke(args=["users", "remove", "carol"]).exit_code == 0
    with app.app_context():
        assert users.find("carol") is None


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short", "at least 12 characters"),
        ("12345678", "at least 12 characters"),
        ("password", "at least 12 characters"),
        (" " * 8, "at least 12 characters"),
        (" " * 12, "one character repeated"),
        ("a" * 20, "one character repeated"),
        ("123456789012", "too common"),
        ("qwertyuiop123", "too common"),
        ("Password1234!", "too common"),
        ("!!monkey123456", "too common"),
        ("p" * 1025, "at most 1024"),
    ],
)
def test_weak_passwords_are_refused(runner, app, password, message):
    for args in (["users", "add", "dave", "--password-stdin"], ["users", "set-password", "agent", "--password-stdin"]):
        result = runner.invoke(args=args, input=password + "\n")
        assert result.exit_code != 0 and message in result.output, result.output
    with app.app_context():
        assert users.find("dave") is None
        assert users.authenticate("agent", "agent-password-1") is not None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("agent", "user agent already exists"),
        ("Agent", "user agent already exists"),
        ("AGENT", "user agent already exists"),
        ("\u0430gent", "ASCII letters"),  # Cyrillic a
        ("\uff41gent", "ASCII letters"),  # fullwidth a
        ("<script>", "ASCII letters"),
        (".", "ASCII letters"),
        ("..", "ASCII letters"),
        ("_hidden", "ASCII letters"),
        ("a b", "ASCII letters"),
        ("x" * 65, "ASCII letters"),
    ],
)
def test_odd_or_look_alike_names_are_refused(runner, app, name, message):
    result = runner.invoke(args=["users", "add", name, "--password-stdin"], input="long-enough-1\n")
    assert result.exit_code != 0 and message in result.output, result.output
    with app.app_context():
        assert [u.username for u in users.all_users()] == ["admin", "agent"]


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_password_stdin_strips_only_the_line_ending(runner, app, ending):
    password = "  spaces kept, ends in a tab\t"
    result = runner.invoke(args=["users", "add", "dave", "--password-stdin"], input=password + ending)
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert users.authenticate("dave", password) is not None
        assert users.authenticate("dave", password.strip()) is None
        assert users.authenticate("dave", password + "\r") is None


@pytest.mark.parametrize("password", ["long-enough-pass\x00", "\x1blong-enough-pass", "long-enough\x7fpass"])
def test_a_password_no_browser_can_type_is_refused(runner, app, password):
    for args in (["users", "add", "dave", "--password-stdin"], ["users", "set-password", "agent", "--password-stdin"]):
        result = runner.invoke(args=args, input=password + "\n")
        assert result.exit_code != 0 and REFUSED_CONTROL in result.output, result.output
    with app.app_context():
        assert users.find("dave") is None
        assert users.authenticate("agent", "agent-password-1") is not None


def test_sign_in_name_is_case_insensitive(client, auth):
    assert auth.login(username="AGENT").status_code == 302


def test_set_password(runner, app):
    result = runner.invoke(args=["users", "set-password", "agent", "--password-stdin"], input="brand-new-pass\n")
    assert result.exit_code == 0
    with app.app_context():
        assert users.authenticate("agent", "brand-new-pass") is not None
        assert users.authenticate("agent", "agent-password-1") is None


def test_unknown_user(runner):
    result = runner.invoke(args=["users", "remove", "nobody"])
    assert result.exit_code != 0 and "no user called nobody" in result.output


def test_interactive_password_prompt(runner, app):
    result = runner.invoke(args=["users", "add", "erin"], input="erin-pass-12\nerin-pass-12\n")
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert db.session.get(User, users.find("erin").id).role == "agent"


def operator(tmp_path, *args: str, input: str = "") -> subprocess.CompletedProcess:
    """``flask --app app *args`` as an operator runs it, on a database of its own in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OS_"))}
    env.update(BROKER_SECRET_KEY="k" * 32, BROKER_DATABASE_URL=f"sqlite:///{tmp_path}/b.sqlite3", OS_CLOUD="x")
    env.update(OS_CLIENT_CONFIG_FILE=str(tmp_path / "clouds.yaml"))
    (tmp_path / "clouds.yaml").write_text(
        "clouds:\n  x:\n    auth:\n      auth_url: http://127.0.0.1:9/v3\n      username: u\n      password: p\n"
        "      project_id: p\n      user_domain_id: default\n"
    )
    flask = [sys.executable, "-m", "flask", "--app", "app"]
    return subprocess.run([*flask, *args], cwd=ROOT, env=env, input=input, capture_output=True, text=True, timeout=60)


def test_commands_print_results_on_stdout_and_logs_on_stderr(tmp_path):
    """As an operator runs them: ``users list | cut -f1`` gives names only."""
    added = operator(tmp_path, "users", "add", "olga", "--admin", "--password-stdin", input="olga-password-1\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout == "added olga (admin)\n"
    assert '"action": "admin"' in added.stderr  # the audit line, for whoever collects logs
    listed = operator(tmp_path, "users", "list")
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["olga"]


def test_password_stdin_refuses_a_stray_carriage_return(tmp_path):
    """A real process's stdin (unlike the test runner's) keeps a \\r that is not part of the line ending."""
    stray = "olga-password-1\r\r\n"  # say, a password file saved with a Windows line ending, plus one more \r
    added = operator(tmp_path, "users", "add", "olga", "--password-stdin", input=stray)
    assert added.returncode != 0 and REFUSED_CONTROL in added.stderr, added.stderr
    assert operator(tmp_path, "users", "list").stdout == ""
    assert operator(tmp_path, "users", "add", "olga", "--password-stdin", input="olga-password-1\r\n").returncode == 0
    changed = operator(tmp_path, "users", "set-password", "olga", "--password-stdin", input="olga-password-2\r\r")
    assert changed.returncode != 0 and REFUSED_CONTROL in changed.stderr, changed.stderr


def test_users_list_shows_source_and_last_sign_in(runner, app, auth):
    auth.login()
    with app.test_request_context():
        identity.sign_in(identity.ExternalIdentity("header", "olga", "olga"), ())
        db.session.commit()
    rows = {line.split("\t")[0]: line.split("\t") for line in runner.invoke(args=["users", "list"]).output.splitlines()}
    assert rows["olga"][1:3] == ["agent", "header"] and rows["olga"][4] != "-"
    assert rows["agent"][1:3] == ["agent", "local"] and rows["agent"][4] != "-"  # signed in just now
    assert rows["admin"][2] == "local" and rows["admin"][4] == "-"  # never signed in


# What a command run without the servers' environment file is told (the file is the units' EnvironmentFile=).
NO_DATABASE = "no database is configured (BROKER_DATABASE_URL is not set, nor a cloud)"
SOURCE_IT = "set -a; . /etc/console-broker/broker.env; set +a"
REFUSED = [
    ["users", "add", "olga", "--admin", "--password-stdin"],
    ["users", "list"],
    ["groups", "add", "ops"],
    ["rules", "list"],
    ["db", "upgrade"],
    ["db", "current"],
    ["check"],
]


def bare_app(tmp_path, **env):
    """The app as a command builds it in a shell without the servers' environment: no database, no cloud."""
    return create_app({"ENV": env, "INSTANCE_PATH": str(tmp_path / "instance")})


@pytest.mark.parametrize("args", REFUSED, ids=[" ".join(a[:2]) for a in REFUSED])
def test_commands_without_the_servers_environment_refuse(tmp_path, args):
    """Before, 'users add --admin' exited 0 and made an admin in instance/demo.sqlite3, which no server reads."""
    app = bare_app(tmp_path)
    result = app.test_cli_runner().invoke(args=args, input="olga-password-1\n")
    assert result.exit_code == 2, result.output
    assert NO_DATABASE in result.output and SOURCE_IT in result.output and "BROKER_DEMO=1" in result.output
    with app.app_context():
        assert users.all_users() == []


def test_the_demo_chosen_by_name_or_a_configured_database_is_used(tmp_path):
    demo = bare_app(tmp_path / "demo", BROKER_DEMO="1")
    assert demo.test_cli_runner().invoke(args=["users", "list"]).output.startswith("demo\tadmin")
    database = f"sqlite:///{tmp_path}/b.sqlite3"
    own = bare_app(tmp_path / "own", BROKER_DATABASE_URL=database)
    result = own.test_cli_runner().invoke(args=["users", "add", "olga", "--password-stdin"], input="olga-password-1\n")
    assert result.exit_code == 0, result.output
    assert own.test_cli_runner().invoke(args=["db", "current"]).exit_code == 0


def test_the_file_named_is_the_units_environment_file():
    for unit in ("console-broker@.service", "console-broker-relay.service"):
        assert f"EnvironmentFile={cli.ENV_FILE}\n" in (ROOT / "deploy" / unit).read_text()
    assert f"ENV_FILE=${{CONSOLE_BROKER_ENV:-{cli.ENV_FILE}}}" in (ROOT / "deploy" / "console-broker-flask").read_text()


@pytest.mark.parametrize(
    ("mode", "line"),
    [
        (
            0o644,
            "FAIL  {path} is readable by its group and every user (mode 0644), and it holds the clouds' credentials",
        ),
        (0o600, "ok    {path} is readable by its owner only"),
    ],
)
def test_check_fails_on_a_clouds_file_others_may_read(tmp_path, mode, line):
    """At start-up it is a warning (container secrets are often mounted 0644); check fails on it."""
    path = tmp_path / "clouds.yaml"
    path.touch(mode=mode)
    path.chmod(mode)  # whatever the umask
    done = operator(tmp_path, "check")
    assert line.format(path=path) in done.stdout, done.stdout
    assert done.returncode == 1  # the cloud at 127.0.0.1:9 never answers either
    assert (f"{path} is readable by" in done.stderr) == (mode == 0o644)  # the start's warning
