"""``flask --app app check``: every cloud signed in to and listed, users and rules that can work; no mint."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from broker import state
from broker.extensions import db
from broker.models import AccessRule
from broker.services import policy
from broker.services import users
from tests.support import ROOT


def test_a_healthy_setup_passes_and_mints_nothing(runner, fake):
    result = runner.invoke(args=["check"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"ok    database schema is current (revision {schema_head()})"
    assert lines[1] == "note  no BROKER_REDIS_URL: sign-in limits and server lists are per process"
    assert lines[2].startswith("ok    cloud lab: signed in (auth_url=" + fake.auth_url)
    assert lines[3].startswith("ok    cloud lab: compute endpoint http://127.0.0.1:")
    assert lines[4] == "ok    cloud lab: compute API up to 2.96: consoles through remote-consoles at 2.6"
    assert lines[5] == "ok    cloud lab: lists servers (first: web-01)"
    assert "console URLs are accepted from 127.0.0.1" in result.output
    assert lines[-1] == "no problems found"
    assert fake.counts["console"] == 0


def schema_head() -> str:
    return ScriptDirectory(str(ROOT / "migrations")).get_current_head()


def test_a_database_behind_the_code_fails_the_check_and_reads_no_users(runner, app):
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    try:
        result = runner.invoke(args=["check"])
    finally:  # on a PostgreSQL run the next test shares this database
        with app.app_context(), db.engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": schema_head()})
    assert result.exit_code == 1
    assert f"FAIL  the database schema is behind this broker (at 0001, needs {schema_head()})" in result.output
    assert "run 'flask --app app db upgrade'" in result.output
    assert "no users" not in result.output and "has no rule" not in result.output


@pytest.mark.parametrize(
    ("url", "line"),
    [
        (None, "ok    redis "),
        ("redis://127.0.0.1:1/0", "FAIL  redis 127.0.0.1:1/0 unreachable (ConnectionError)"),
    ],
)
def test_redis_is_checked_when_configured(app, redis_url, url, line):
    from broker.shared import SharedRedis

    state.of(app).redis = SharedRedis(url or redis_url)
    result = app.test_cli_runner().invoke(args=["check"])
    assert line in result.output
    assert (result.exit_code == 0) == (url is None)


def test_a_cloud_that_refuses_the_credentials_fails_the_check(runner, fake):
    fake.password = "rotated-password-1"
    result = runner.invoke(args=["check"])
    assert result.exit_code == 1
    assert "FAIL  Signing in: cloud lab: the credentials (or their project scope) were refused" in result.output
    assert "lists servers" not in result.output and "1 problem found" in result.output


def test_rules_on_clouds_that_are_not_configured_fail_the_check(runner, app):
    with app.app_context():
        # Written before the cloud was renamed in BROKER_CLOUDS (add_rule itself refuses unknown clouds).
        db.session.add(AccessRule(cloud="old-lab", name_pattern="*", user_id=users.find("agent").id))
        db.session.commit()
        rule_id = policy.rules_on_unknown_clouds(["lab"])[0].id
    result = runner.invoke(args=["check"])
    assert result.exit_code == 1
    assert f"FAIL  rule {rule_id} (user agent may open * on cloud old-lab) names a cloud that is not configured" in (
        result.output
    )
    assert f"remove it with 'rules remove {rule_id}'" in result.output


def test_users_without_rules_are_noted(runner, app):
    with app.app_context():
        users.add("newbie", "newbie-password-1")
        policy.add_group("ops")
        users.add("grouped", "grouped-password-1")
        policy.add_member("ops", "grouped")
        policy.add_rule(group="ops", cloud="lab", clouds=["lab"])
        db.session.commit()
    result = runner.invoke(args=["check"])
    assert result.exit_code == 0
    assert "note  user newbie has no rule" in result.output
    assert "user grouped" not in result.output and "user agent" not in result.output


def test_check_as_the_operator_runs_it(tmp_path, fake):
    """A shell with the OS_* variables of the cloud and a database without users."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OS_"))}
    env.update(
        BROKER_SECRET_KEY="k" * 32,
        BROKER_DATABASE_URL=f"sqlite:///{tmp_path}/b.sqlite3",
        OS_AUTH_URL=fake.auth_url,
        OS_USERNAME=fake.username,
        OS_PASSWORD=fake.password,
        OS_PROJECT_ID=fake.project_id,
        OS_USER_DOMAIN_ID="default",
        OS_REGION_NAME=fake.region,
    )
    flask = [sys.executable, "-m", "flask", "--app", "app"]
    fresh = subprocess.run([*flask, "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "FAIL  the database is empty: create its tables with 'flask --app app db upgrade'" in fresh.stdout
    assert subprocess.run([*flask, "db", "upgrade"], cwd=ROOT, env=env, capture_output=True, timeout=60).returncode == 0
    done = subprocess.run([*flask, "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "ok    cloud envvars: lists servers (first: web-01)" in done.stdout
    assert "FAIL  no users: create the first admin with 'flask --app app users add NAME --admin'" in done.stdout
    assert "Error: 1 problem found" in done.stderr
    assert fake.password not in done.stdout + done.stderr
