"""``flask --app app check``: every cloud signed in to and listed, users and rules that can work; no mint."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from broker import create_app
from broker import heartbeat
from broker import state
from broker.cloud.registry import Cloud
from broker.extensions import db
from broker.models import AccessRule
from broker.relay import server as relay_server
from broker.services import checks
from broker.services import instances
from broker.services import policy
from broker.services import users
from tests.support import ROOT
from tests.support import broker_env
from tests.support import free_port
from tests.support import http_answering
from tests.support import make_client
from tests.support import relay_listening


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


# -- the relay (relay mode only) -------------------------------------------------------------


def test_the_probe_expects_what_the_relay_answers():
    assert checks.RELAY_PROBE_ANSWER == relay_server.PROBE_ANSWER


def test_no_relay_line_without_relay_mode(runner, monkeypatch):
    monkeypatch.setenv("RELAY_BIND", f"127.0.0.1:{free_port()}")  # nothing there: never probed
    result = runner.invoke(args=["check"])
    assert result.exit_code == 0, result.output
    assert "relay" not in result.output


@pytest.mark.parametrize("console_types", [("novnc", "serial")])
def test_serial_consoles_need_the_relay_even_for_an_iframe_cloud(runner, monkeypatch, console_types):
    port = free_port()
    monkeypatch.setenv("RELAY_BIND", f"127.0.0.1:{port}")
    result = runner.invoke(args=["check"])
    assert result.exit_code == 1
    assert f"FAIL  relay unreachable at http://127.0.0.1:{port}/relay" in result.output


@pytest.mark.parametrize("console_mode", ["relay"])
class TestRelayMode:
    """A cloud with console_mode: relay; the relay found at RELAY_BIND, or at BROKER_RELAY_URL."""

    def test_a_listening_relay_passes(self, app, runner, monkeypatch):
        with relay_listening(app) as port:
            monkeypatch.setenv("RELAY_BIND", f"127.0.0.1:{port}")
            result = runner.invoke(args=["check"])
        assert result.exit_code == 0, result.output
        assert f"ok    relay answers at http://127.0.0.1:{port}/relay" in result.output.splitlines()

    def test_a_relay_that_is_down_fails_naming_it_and_the_setting(self, runner, monkeypatch):
        port = free_port()
        monkeypatch.setenv("RELAY_BIND", f"127.0.0.1:{port}")
        result = runner.invoke(args=["check"])
        assert result.exit_code == 1
        assert (
            f"FAIL  relay unreachable at http://127.0.0.1:{port}/relay (ConnectionRefusedError): "
            "start it (the Procfile's relay: line) or fix RELAY_BIND"
        ) in result.output.splitlines()

    def test_the_default_address_is_the_procfiles(self, runner, monkeypatch):
        monkeypatch.delenv("RELAY_BIND", raising=False)
        monkeypatch.setenv("RELAY_PORT", str(free_port()))
        result = runner.invoke(args=["check"])
        assert f"relay unreachable at http://127.0.0.1:{os.environ['RELAY_PORT']}/relay" in result.output
        assert "or fix RELAY_PORT" in result.output and result.exit_code == 1

    @pytest.mark.parametrize(
        ("status", "body", "headers"),
        [
            (404, b"Not Found", {}),
            (200, b"<!doctype html><title>Console Broker</title>", {}),
            (200, b"console-broker relay\nand more", {}),
            (301, b"", {"Location": "/elsewhere"}),
        ],
        ids=["web-app-404", "a-page", "longer-body", "redirect"],
    )
    def test_something_else_at_the_address_fails_as_not_the_relay(self, runner, monkeypatch, status, body, headers):
        with http_answering(status, body, headers) as (port, asked):
            monkeypatch.setenv("RELAY_BIND", f"127.0.0.1:{port}")
            result = runner.invoke(args=["check"])
        assert result.exit_code == 1
        assert (
            f"FAIL  relay: http://127.0.0.1:{port}/relay answers HTTP {status} but it is not the relay: "
            "another program listens there: fix RELAY_BIND to where the relay listens"
        ) in result.output.splitlines()
        assert asked == ["/relay"]  # one plain GET, no redirect followed

    def test_a_bad_relay_bind_fails_naming_it(self, runner, monkeypatch):
        monkeypatch.setenv("RELAY_BIND", "localhost")
        result = runner.invoke(args=["check"])
        assert result.exit_code == 1
        assert "FAIL  relay: RELAY_BIND must give a host and a port such as 127.0.0.1:5001, got 'localhost'" in (
            result.output
        )


class TestRelayUrl:
    """BROKER_CONSOLE_MODE=relay and BROKER_RELAY_URL (the relay on a port of its own, as ./dev demo runs it)."""

    @pytest.fixture
    def relay_port(self) -> int:
        return free_port()

    @pytest.fixture
    def env_overrides(self, relay_port) -> dict:
        return {"BROKER_CONSOLE_MODE": "relay", "BROKER_RELAY_URL": f"ws://{{host}}:{relay_port}/relay"}

    @pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
    def test_host_stands_for_the_relays_own_bind_address(self, app, runner, monkeypatch, relay_port, bind):
        monkeypatch.setenv("RELAY_BIND", f"{bind}:{relay_port}")
        with relay_listening(app, relay_port):
            result = runner.invoke(args=["check"])
        assert result.exit_code == 0, result.output
        assert f"ok    relay answers at http://127.0.0.1:{relay_port}/relay" in result.output.splitlines()

    def test_nothing_listening_fails_naming_the_setting(self, runner, monkeypatch, relay_port):
        monkeypatch.setenv("RELAY_BIND", f"127.0.0.1:{relay_port}")
        result = runner.invoke(args=["check"])
        assert result.exit_code == 1
        assert (
            f"FAIL  relay unreachable at http://127.0.0.1:{relay_port}/relay (ConnectionRefusedError): "
            "start it (the Procfile's relay: line) or fix BROKER_RELAY_URL"
        ) in result.output.splitlines()


class TestRelayUrlLeadsElsewhere:
    """BROKER_RELAY_URL names an address where the web app (or another program) answers."""

    @pytest.fixture
    def elsewhere(self):
        with http_answering(404, b"Not Found") as answering:
            yield answering

    @pytest.fixture
    def env_overrides(self, elsewhere) -> dict:
        return {"BROKER_CONSOLE_MODE": "relay", "BROKER_RELAY_URL": f"wss://127.0.0.1:{elsewhere[0]}/relay"}

    def test_a_wss_url_is_probed_with_tls_and_fails_naming_the_setting(self, runner, elsewhere):
        result = runner.invoke(args=["check"])
        assert result.exit_code == 1
        # https spoken to a plain HTTP server.
        assert f"FAIL  relay: TLS with https://127.0.0.1:{elsewhere[0]}/relay failed (SSLError: " in result.output
        assert "): fix BROKER_RELAY_URL" in result.output


class TestRelayUrlToTheWebApp:
    @pytest.fixture
    def elsewhere(self):
        with http_answering(404, b"Not Found") as answering:
            yield answering

    @pytest.fixture
    def env_overrides(self, elsewhere) -> dict:
        return {"BROKER_CONSOLE_MODE": "relay", "BROKER_RELAY_URL": f"ws://127.0.0.1:{elsewhere[0]}/relay"}

    def test_fails_naming_the_setting_and_the_route(self, runner, elsewhere):
        result = runner.invoke(args=["check"])
        assert result.exit_code == 1
        assert (
            f"FAIL  relay: http://127.0.0.1:{elsewhere[0]}/relay answers HTTP 404 but it is not the relay: "
            "fix BROKER_RELAY_URL or the proxy's route for /relay"
        ) in result.output.splitlines()


# -- the proxy count (what the web processes saw, through Redis) ----------------------------

# What check says of a request with X-Forwarded-For from 127.0.0.1 (the test client) to a broker
# that believes no proxy.
NO_PROXY_BELIEVED = (
    "X-Forwarded-For came from 127.0.0.1 but BROKER_TRUSTED_PROXIES=0 believes no proxy: every client has "
    "127.0.0.1's address (sign-in limits, audit). Set BROKER_TRUSTED_PROXIES to the number of proxies in front "
    "(1 for the shipped nginx); with none in front, a client sent the header itself"
)


def test_without_redis_check_says_it_cannot_see_the_requests(runner):
    result = runner.invoke(args=["check"])
    assert result.exit_code == 0, result.output
    assert (
        "note  BROKER_TRUSTED_PROXIES=0: without BROKER_REDIS_URL check cannot see whether requests match it; "
        "the web log warns 'X-Forwarded-For came from' when they do not"
    ) in result.output.splitlines()


class TestProxyCount:
    @pytest.fixture
    def env_overrides(self, redis_url) -> dict:
        return {"BROKER_REDIS_URL": redis_url}

    def test_what_a_web_process_saw_fails_the_check(self, client, runner):
        before = runner.invoke(args=["check"])
        assert before.exit_code == 0, before.output
        assert (
            "ok    BROKER_TRUSTED_PROXIES=0: no request in the last hour had an X-Forwarded-For it does not match"
        ) in before.output.splitlines()
        client.get("/login", headers={"X-Forwarded-For": "198.51.100.7"})  # nginx, as the broker sees it
        result = runner.invoke(args=["check"])
        assert result.exit_code == 1
        assert f"FAIL  {NO_PROXY_BELIEVED}; seen less than a minute ago" in result.output.splitlines()

    def test_one_seen_under_another_count_is_a_note(self, app, runner):
        seen = checks.ProxySighting(peer="10.0.0.5", hops=1, count=2, at=time.time() - 600)
        checks.note_proxy_sighting(state.of(app).redis, seen)
        result = runner.invoke(args=["check"])
        assert result.exit_code == 0, result.output
        assert (
            "note  X-Forwarded-For came from 10.0.0.5 with 1 address but BROKER_TRUSTED_PROXIES=2 expects 2, so it "
            "is ignored: every client has 10.0.0.5's address (sign-in limits, audit). Set BROKER_TRUSTED_PROXIES "
            "to the number of proxies in front (1 for the shipped nginx); seen 10 min ago under "
            "BROKER_TRUSTED_PROXIES=2, which is 0 now: this lapses an hour after an instance with the old value "
            "last saw such a request"
        ) in result.output.splitlines()


# -- instances that disagree ----------------------------------------------------------------------


def another_instance(tmp_path, fake, names=("lab",), mode="iframe"):
    """A second instance on the app fixture's database (and key), with clouds and console mode of its own."""
    clouds = [Cloud(name, make_client(fake, name), 600, "idle", mode) for name in names]
    config = {"ENV": broker_env(tmp_path), "CLOUDS": clouds, "INSTANCE_PATH": str(tmp_path / "i2"), "TESTING": True}
    return create_app(config)


def process(app) -> str:
    with app.app_context():
        [row] = [row for row in instances.running() if row.id == app.extensions[heartbeat.EXTENSION].row_id]
        return f"{row.name} {row.role}"


def test_instances_that_agree_pass(runner, app, tmp_path, fake):
    other = another_instance(tmp_path, fake)
    result = runner.invoke(args=["check"])
    assert result.exit_code == 0, result.output
    assert (
        f"ok    2 running instance processes ({process(app)}, {process(other)}) agree on clouds and console mode, "
        "and accept each other's BROKER_SECRET_KEY"
    ) in result.output.splitlines()


@pytest.mark.parametrize(
    ("names", "mode", "what"),
    [(("lab", "prod"), "iframe", "clouds"), (("lab",), "relay", "console mode")],
    ids=["clouds", "console-mode"],
)
def test_instances_with_other_clouds_or_console_mode_both_run_and_fail_the_check(
    runner, app, tmp_path, fake, names, mode, what
):
    other = another_instance(tmp_path, fake, names, mode)  # started: only the secret key refuses a start
    result = runner.invoke(args=["check"])
    assert result.exit_code == 1
    lab = f"lab {fake.auth_url} {fake.region}"
    theirs = {"clouds": f"{lab}; prod {fake.auth_url} {fake.region}", "console mode": "relay"}[what]
    ours = {"clouds": lab, "console mode": "iframe"}[what]
    fix = {
        "clouds": "a person's server list depends on the instance that answers; give every instance the same "
        "BROKER_CLOUDS (or OS_CLOUD) and clouds.yaml",
        "console mode": "a console page from one instance may ask another for what it does not give; set the same "
        "BROKER_CONSOLE_MODE (and console_mode in clouds.yaml) on every instance",
    }[what]
    assert (
        f"FAIL  running instances disagree on {what} ({process(app)}: {ours}; {process(other)}: {theirs}): {fix}"
    ) in result.output.splitlines()


def test_this_environments_secret_key_is_held_against_the_running_instances(app):
    with app.app_context():
        settings = replace(state.settings(), secret_key="another-key-0123456789abcdef")
        [line] = [f for f in checks.check_instances(settings, state.consoles()) if f.level == "fail"]
        rotating = replace(settings, secret_key_fallbacks=(state.settings().secret_key,))
        assert [f.level for f in checks.check_instances(rotating, state.consoles())] == ["ok"]
    assert line.text.startswith(
        f"this environment's BROKER_SECRET_KEY (key {instances.fingerprint(settings.secret_key)[:8]}) is neither the "
        f"key of the running instances ({process(app)}) nor accepted by them: an instance started with it refuses"
    )


def test_no_running_instance_is_a_note(runner, app):
    heartbeat.leave(app)
    result = runner.invoke(args=["check"])
    assert result.exit_code == 0, result.output
    assert (
        "note  no instance has recorded itself on this database in the last 90 s: none is running, or they run a "
        "release from before instances were recorded"
    ) in result.output.splitlines()
