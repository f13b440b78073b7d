"""Migrations: an empty database gets the schema, an old one is upgraded in place with its data, and a
server never starts on a schema that is not the code's. On SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from datetime import UTC
from datetime import datetime

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy import inspect
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from werkzeug.security import generate_password_hash

from broker import create_app
from broker import schema
from broker import startup
from broker.config import StartupStopped
from broker.extensions import db
from broker.services import audit
from broker.services import policy
from broker.services import users
from tests.support import ROOT
from tests.support import require_postgres

# The newest revision the scripts define: every upgrade must reach it.
HEAD = ScriptDirectory(str(ROOT / "migrations")).get_current_head()
UPGRADE = "run 'flask --app app db upgrade' with the server's environment"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """An empty database of each kind, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/broker.sqlite3"
        return
    server = make_url(require_postgres())
    name = f"broker_schema_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield server.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def operator_env(url: str) -> dict:
    """What a server or a command of a real deployment reads (the cloud is never called here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OS_"))}
    env.update(
        BROKER_SECRET_KEY="k" * 32,
        BROKER_DATABASE_URL=url,
        OS_AUTH_URL="http://127.0.0.1:9/identity/v3",
        OS_USERNAME="svc",
        OS_PASSWORD="svc-password",
        OS_PROJECT_ID="p",
        OS_USER_DOMAIN_ID="default",
    )
    return env


def start(url: str, tmp_path):
    """Build the app as a worker does; StartupStopped when it refuses."""
    return create_app({"ENV": operator_env(url), "CLOUDS": [], "INSTANCE_PATH": str(tmp_path / "instance")})


def flask(url: str, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "flask", "--app", "app", *args]
    return subprocess.run(argv, cwd=ROOT, env=operator_env(url), capture_output=True, text=True, timeout=120)


# Every release that changed the schema, oldest first, frozen as it made it in
# tests/data/schema-<release>.<dialect>.sql: by create_all before migrations existed, then by its
# migrations (the revision it reached). Each names its stop and last commit in its first line.
RELEASES = {
    "1-create_all": None,  # stop 6: users, groups, rules, audit; no sign-in sessions
    "2-create_all": None,  # stop 14: sign-in sessions, unique lower(username)
    "3-0004": "0004",  # stop 15: migrations, identity sources, relay
    "4-0005": "0005",  # stop 16: pins, power
    "5-0008": "0008",  # stop 26: seen_at, instances, single-use tokens
    "6-0009": "0009",  # stop 27: serial consoles (live_consoles.kind)
}


def load_schema(url: str, release: str) -> None:
    """The tables a release made, exactly."""
    engine = create_engine(url)
    script = (ROOT / "tests" / "data" / f"schema-{release}.{engine.dialect.name}.sql").read_text()
    with engine.begin() as connection:
        raw = connection.connection.driver_connection
        if engine.dialect.name == "sqlite":
            raw.executescript(script)
        else:
            raw.execute(script)
    engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    return names


def add_old_rows(url: str) -> None:
    """Two users, a group with a member and a rule, an audit record and, in releases that kept them, a
    sign-in session and a pin: written as every release wrote them (no column a later one added)."""
    engine = create_engine(url)
    now = datetime.now(UTC).replace(tzinfo=None)
    present = set(inspect(engine).get_table_names())
    with engine.begin() as connection:
        for id_, name, role in ((1, "olga", "admin"), (2, "ivan", "agent")):
            password_hash = generate_password_hash(f"{name}-password-1")
            connection.execute(
                text(
                    "INSERT INTO users (id, username, password_hash, role, session_token, created_at) "
                    "VALUES (:id, :name, :hash, :role, 'tok', :now)"
                ),
                {"id": id_, "name": name, "hash": password_hash, "role": role, "now": now},
            )
        connection.execute(text("INSERT INTO groups (id, name) VALUES (1, 'ops')"))
        connection.execute(text("INSERT INTO group_members (group_id, user_id) VALUES (1, 2)"))
        connection.execute(
            text(
                "INSERT INTO access_rules (id, group_id, cloud, name_pattern, meta_key, meta_value) "
                "VALUES (7, 1, 'prod', 'web-*', '', '')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO audit (at, username, action, outcome, cloud, server_id, server_name, detail, reason, "
                "client, user_agent) VALUES (:now, 'olga', 'console', 'ok', 'prod', 's1', 'web-01', 'load', '', "
                "'10.0.0.1', 'Firefox')"
            ),
            {"now": now},
        )
        if engine.dialect.name == "postgresql":
            # Numbered as the release numbered them: its sequences, not the explicit IDs above, give the next.
            for table in ("users", "groups", "access_rules"):
                last = f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                connection.execute(text(last))
        if "user_sessions" in present:
            connection.execute(
                text("INSERT INTO user_sessions (id, user_id, started_at) VALUES ('s-olga', 1, :now)"), {"now": now}
            )
            if "seen_at" in {column["name"] for column in inspect(connection).get_columns("user_sessions")}:
                # Releases since 0006 write a session's last use with it.
                connection.execute(text("UPDATE user_sessions SET seen_at = :now"), {"now": now})
        if "live_consoles" in present:
            connection.execute(
                text(
                    "INSERT INTO live_consoles (user_id, username, session_id, server_id, server_name, cloud, client, "
                    "instance, started_at, seen_at, to_cloud, to_browser) VALUES (2, 'ivan', 's', 's1', 'web-01', "
                    "'prod', '10.0.0.2', 'relay-a:1', :now, :now, 0, 0)"
                ),
                {"now": now},
            )
        if "pins" in present:
            connection.execute(
                text("INSERT INTO pins (user_id, cloud, server_id, created_at) VALUES (2, 'prod', 's1', :now)"),
                {"now": now},
            )
    engine.dispose()


def revision(url: str) -> str | None:
    engine = create_engine(url)
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    engine.dispose()
    return current


def test_an_empty_database_gets_the_schema_of_the_models_at_start(database, tmp_path):
    app = start(database, tmp_path)
    assert revision(database) == HEAD
    with app.app_context(), db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), db.metadata)
    assert differences == []


def test_flask_db_upgrade_creates_the_schema_from_empty(database):
    done = flask(database, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert "Running upgrade  -> 0001" in done.stderr and "Running upgrade 0002 -> 0003" in done.stderr
    assert revision(database) == HEAD


@pytest.mark.parametrize("release", RELEASES)
def test_every_releases_database_is_refused_at_start_then_upgraded_in_place_with_its_data(database, tmp_path, release):
    load_schema(database, release)
    add_old_rows(database)
    made_by = RELEASES[release]
    behind = f"behind this broker \\(at {made_by}," if made_by else "made by a broker older than its migrations"
    with pytest.raises(StartupStopped, match=behind) as stopped:
        start(database, tmp_path)
    assert UPGRADE in str(stopped.value)
    refused = flask(database, "users", "list")
    assert refused.returncode == 1 and UPGRADE in refused.stderr

    done = flask(database, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert revision(database) == HEAD
    app = start(database, tmp_path)
    with app.app_context():
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), db.metadata) == []
        assert users.authenticate("OLGA", "olga-password-1").role == "admin"
        assert users.authenticate("ivan", "ivan-password-1").source == "local"
        assert [(g.name, [u.username for u in g.members]) for g in policy.all_groups()] == [("ops", ["ivan"])]
        [record] = audit.page(audit.Filter())
        assert (record.username, record.server_name, record.request_id) == ("olga", "web-01", "")
    listed = flask(database, "rules", "list")
    assert listed.returncode == 0 and listed.stdout.splitlines() == ["7\tgroup ops may open web-* on cloud prod"]
    engine = create_engine(database)
    with engine.begin() as connection:
        if made_by:  # a release that kept them: still there, and the one live session still live
            assert connection.execute(text("SELECT seen_at IS NOT NULL FROM user_sessions")).scalar_one()
        if made_by in ("0005", "0008", "0009"):
            assert connection.execute(text("SELECT user_id, server_id FROM pins")).one() == (2, "s1")
        if made_by:  # a console live at the upgrade was graphical, the only kind there was, opened by its person
            query = text("SELECT username, kind, role, watching FROM live_consoles")
            assert connection.execute(query).one() == ("ivan", "novnc", "open", None)
        # Rule numbers are never reused, whatever release made the table: the audit trail names rules by number.
        connection.execute(text("DELETE FROM access_rules WHERE id = 7"))
        connection.execute(
            text(
                "INSERT INTO access_rules (group_id, cloud, name_pattern, meta_key, meta_value) "
                "VALUES (1, 'p', '*', '', '')"
            )
        )
        assert connection.execute(text("SELECT id FROM access_rules")).scalar_one() == 8
    engine.dispose()


def test_a_first_release_database_with_names_differing_in_case_stops_the_upgrade_untouched_naming_them(database):
    load_schema(database, "1-create_all")  # the first release had no unique lower(username) index
    engine = create_engine(database)
    with engine.begin() as connection:
        for n, name in enumerate(["Alice", "alice", "bob"], start=1):
            connection.execute(
                text(
                    "INSERT INTO users (id, username, password_hash, role, session_token, created_at) "
                    "VALUES (:id, :name, 'x', 'agent', 't', :now)"
                ),
                {"id": n, "name": name, "now": datetime.now(UTC).replace(tzinfo=None)},
            )
    before = tables(database)
    done = flask(database, "db", "upgrade")
    assert done.returncode == 1
    assert "user names that differ only in case must be made unique first" in done.stderr
    assert "alice" in done.stderr and "bob" not in done.stderr
    # The upgrade is one transaction on SQLite too: 0001's new table and copied rules are rolled back.
    assert tables(database) == before and revision(database) is None
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM users WHERE username = 'Alice'"))
    engine.dispose()
    assert flask(database, "db", "upgrade").returncode == 0
    assert revision(database) == HEAD


def test_an_unreachable_database_stops_start_up_naming_it_without_its_password(tmp_path):
    url = "postgresql+psycopg://broker:s3cret-pw@127.0.0.1:9/broker"
    with pytest.raises(StartupStopped) as stopped:
        start(url, tmp_path)
    assert str(stopped.value) == (
        "console-broker: database unavailable: cannot use the database postgresql+psycopg://broker:***@127.0.0.1:9/"
        "broker: nothing accepts connections at 127.0.0.1:9 (connection refused): is PostgreSQL running there, "
        "and are the host and port in BROKER_DATABASE_URL right? (exit 75, so that systemd tries again)"
    )
    # A server that is down may come back: not exit 3, which the units' RestartPreventExitStatus= keeps down.
    assert stopped.value.code == os.EX_TEMPFAIL


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        ({"host": "db.invalid"}, "the host name db.invalid does not resolve: fix the host in BROKER_DATABASE_URL"),
        (
            {"database": "no_such_db"},
            'the server has no database "no_such_db": create it (createdb --owner ROLE no_such_db) '
            "or fix the database name in BROKER_DATABASE_URL",
        ),
        (
            {"username": "no_such_role"},
            'the server has no role "no_such_role": create it (createuser no_such_role) or fix the user in '
            "BROKER_DATABASE_URL",
        ),
    ],
    ids=["host", "database", "role"],
)
def test_a_database_that_cannot_be_used_stops_start_up_saying_which_setting_is_wrong(
    postgres_url, tmp_path, change, cause
):
    url = make_url(postgres_url).set(**change)
    with pytest.raises(StartupStopped) as stopped:
        start(url.render_as_string(hide_password=False), tmp_path)
    where = url.render_as_string(hide_password=True)
    assert str(stopped.value) == f"console-broker: configuration error: cannot use the database {where}: {cause}"
    assert stopped.value.code == 3  # a restart cannot fix it


@pytest.mark.parametrize(
    ("driver_says", "cause", "lasting"),
    [
        (
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  password '
            'authentication failed for user "broker"',
            'the server refused the password of role "broker": fix the password in BROKER_DATABASE_URL',
            True,
        ),
        (
            'could not translate host name "db" to address: Name or service not known',
            "the host name db does not resolve: fix the host in BROKER_DATABASE_URL",
            True,
        ),
        (
            "connection timeout expired",
            "no answer from db:5432 within 10 s: is the host in BROKER_DATABASE_URL right, and does a firewall "
            "let this host through?",
            False,
        ),
        (
            'connection to server at "10.0.0.5", port 5432 failed: FATAL:  the database system is starting up',
            "the database server at db:5432 is starting up",
            False,
        ),
        ("something new", "OperationalError: something new", True),
    ],
)
def test_the_drivers_words_become_the_operators(driver_says, cause, lasting):
    error = OperationalError("SELECT 1", {}, psycopg.OperationalError(driver_says))
    found = schema.unreachable(error, make_url("postgresql+psycopg://broker:pw@db/broker"))
    assert (found.cause, found.lasting) == (cause, lasting)


def test_a_server_on_a_schema_behind_the_code_refuses_to_start(database, tmp_path):
    assert flask(database, "db", "upgrade", "0001").returncode == 0
    with pytest.raises(StartupStopped, match=f"behind this broker \\(at 0001, needs {HEAD}\\)") as stopped:
        start(database, tmp_path)
    assert UPGRADE in str(stopped.value)


def test_a_schema_from_a_newer_broker_is_refused(database, tmp_path):
    start(database, tmp_path)
    engine = create_engine(database)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(StartupStopped, match="at schema revision 0099, which this broker does not know"):
        start(database, tmp_path)


def test_the_first_schema_refuses_a_database_that_is_not_the_brokers(database, tmp_path):
    engine = create_engine(database)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    done = flask(database, "db", "upgrade")
    assert done.returncode == 1
    assert "has some of the broker's tables (users) but not all" in done.stderr


def test_tables_named_like_the_first_releases_but_not_made_by_it_are_refused_untouched(database):
    engine = create_engine(database)
    with engine.begin() as connection:
        for table in ("users", "groups", "group_members", "access_rules", "audit"):
            connection.execute(text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, note VARCHAR(10))"))
    engine.dispose()
    before = tables(database)
    done = flask(database, "db", "upgrade")
    assert done.returncode == 1
    assert "tables named like the broker's have other columns (access_rules: lacks cloud" in done.stderr
    assert "it was not made by the broker" in done.stderr
    assert tables(database) == before and revision(database) is None


def test_two_instances_starting_together_on_an_empty_postgresql_both_come_up(postgres_url, tmp_path):
    server = make_url(postgres_url)
    name = f"broker_schema_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        argv = [sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"]
        runs = [
            subprocess.Popen(argv, cwd=ROOT, env=operator_env(url), stderr=subprocess.PIPE, text=True) for _ in range(3)
        ]
        outcomes = [(run.wait(timeout=120), run.stderr.read()) for run in runs]
        assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
        # The advisory lock made them take turns: the schema was made once.
        assert sum("Running upgrade  -> 0001" in err for _, err in outcomes) == 1
        assert revision(url) == HEAD
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def test_identity_sources_upgrade_keeps_accounts_local_and_downgrade_removes_them(database, tmp_path):
    assert flask(database, "db", "upgrade", "0002").returncode == 0
    add_old_rows(database)
    assert flask(database, "db", "upgrade").returncode == 0
    engine = create_engine(database)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT username, source, external_id FROM users ORDER BY id")).all()
    assert [tuple(row) for row in rows] == [("olga", "local", None), ("ivan", "local", None)]
    done = flask(database, "db", "downgrade", "0002")
    assert done.returncode == 0, done.stderr
    with engine.connect() as connection:
        assert connection.execute(text("SELECT username FROM users ORDER BY id")).scalars().all() == ["olga", "ivan"]
        # The expression index survived: names still clash whatever their case.
        with pytest.raises(Exception, match="(?i)unique"):
            connection.execute(
                text(
                    "INSERT INTO users (username, password_hash, role, session_token, created_at) "
                    "VALUES ('OLGA', 'x', 'agent', 't', '2026-01-01')"
                )
            )
    engine.dispose()


def test_the_relay_waits_for_the_schema_and_never_makes_it(database, tmp_path, monkeypatch):
    """The relay process builds the same app, but the schema (and the demo account) are the web process's."""
    monkeypatch.setattr(startup, "SCHEMA_WAIT", 1)
    relay = {"ENV": operator_env(database), "CLOUDS": [], "INSTANCE_PATH": str(tmp_path / "i"), "SCHEMA_OWNER": False}
    with pytest.raises(StartupStopped, match="no schema yet: start the web process"):
        create_app(relay)
    assert inspect(create_engine(database)).get_table_names() == []
    start(database, tmp_path)  # the web process makes it
    with create_app(relay).app_context():
        assert schema.inspect_state().up_to_date


class Clock:
    """``time`` as broker/__init__.py uses it, on a clock that moves only when it sleeps."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_relay_says_at_once_and_every_10_s_that_it_waits_for_the_schema(database, tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(startup, "time", clock)
    said: list[tuple[float, str]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append((clock.now, record.getMessage()))

    keep = Keep(logging.WARNING)
    logging.getLogger("broker").addHandler(keep)
    relay = {"ENV": operator_env(database), "CLOUDS": [], "INSTANCE_PATH": str(tmp_path / "i"), "SCHEMA_OWNER": False}
    try:
        with pytest.raises(StartupStopped, match="no schema yet") as stopped:
            create_app(relay)
    finally:
        logging.getLogger("broker").removeHandler(keep)
    waiting = [(at, line) for at, line in said if line.startswith("waiting for the database schema")]
    assert [at for at, _ in waiting] == [0, 10, 20, 30, 40, 50]
    assert waiting[1][1] == (
        "waiting for the database schema (10 s of 60): run 'flask --app app db upgrade' with this environment, "
        "or start the web process, which makes it in an empty database"
    )
    # The web process or the operator may still make it: exit 75, which systemd restarts on (not 3).
    assert stopped.value.code == os.EX_TEMPFAIL


def test_agent_day_upgrade_gives_existing_rules_no_power_and_downgrade_keeps_them(database, tmp_path):
    assert flask(database, "db", "upgrade", "0002").returncode == 0
    add_old_rows(database)
    assert flask(database, "db", "upgrade").returncode == 0
    engine = create_engine(database)
    with engine.connect() as connection:
        row = connection.execute(text("SELECT id, name_pattern, power FROM access_rules")).one()
        # No one gets a power action an admin did not give: every existing rule is open-only.
        assert (row.id, row.name_pattern, bool(row.power)) == (7, "web-*", False)
        assert connection.execute(text("SELECT count(*) FROM pins")).scalar_one() == 0
    done = flask(database, "db", "downgrade", "0004")
    assert done.returncode == 0, done.stderr
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id, name_pattern FROM access_rules")).one() == (7, "web-*")
        assert "pins" not in inspect(connection).get_table_names()
    engine.dispose()


def test_single_use_tokens_replace_the_ticket_and_confirmation_tables_and_a_downgrade_gives_them_back(database):
    assert flask(database, "db", "upgrade", "0002").returncode == 0
    add_old_rows(database)
    assert flask(database, "db", "upgrade", "0007").returncode == 0
    engine = create_engine(database)
    soon = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as connection:  # a ticket and a confirmation live at the upgrade
        connection.execute(
            text(
                "INSERT INTO relay_tickets (digest, user_id, session_id, server_id, server_name, cloud, origin, "
                "expires_at) VALUES ('t', 2, 's', 's1', 'web-01', 'prod', 'https://b.example', :soon)"
            ),
            {"soon": soon},
        )
        connection.execute(
            text(
                "INSERT INTO power_confirmations (digest, user_id, session_id, server_id, cloud, action, expires_at) "
                "VALUES ('c', 2, 's', 's1', 'prod', 'start', :soon)"
            ),
            {"soon": soon},
        )
    done = flask(database, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert {"relay_tickets", "power_confirmations"} & tables(database) == set()
    with engine.connect() as connection:
        # Tokens live seconds: none is carried over, a page asks again.
        assert connection.execute(text("SELECT count(*) FROM single_use_tokens")).scalar_one() == 0
    done = flask(database, "db", "downgrade", "0007")
    assert done.returncode == 0, done.stderr
    columns = {table: [c["name"] for c in inspect(engine).get_columns(table)] for table in tables(database)}
    assert "single_use_tokens" not in columns
    # As 0004 and 0005 made them.
    ticket = ["digest", "user_id", "session_id", "server_id", "server_name", "cloud", "origin", "expires_at", "used_at"]
    confirmation = ["digest", "user_id", "session_id", "server_id", "cloud", "action", "expires_at", "used_at"]
    assert (columns["relay_tickets"], columns["power_confirmations"]) == (ticket, confirmation)
    engine.dispose()
    assert flask(database, "db", "upgrade").returncode == 0
    assert revision(database) == HEAD


def test_live_consoles_say_their_kind_and_who_watches_and_a_downgrade_drops_only_that(database):
    assert flask(database, "db", "upgrade").returncode == 0
    engine = create_engine(database)
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO live_consoles (user_id, username, session_id, server_id, server_name, cloud, client, "
                "instance, started_at, seen_at, to_cloud, to_browser, kind, watching, role) VALUES (2, 'ivan', 's', "
                "'s1', 'web-01', 'prod', '10.0.0.2', 'relay-a:1', :now, :now, 0, 0, 'serial', 7, 'watch')"
            ),
            {"now": now},
        )
        # 0010's: an audit record linked to its console.
        connection.execute(
            text(
                "INSERT INTO audit (at, username, action, outcome, cloud, server_id, server_name, detail, reason, "
                "client, user_agent, console_id) VALUES (:now, 'ivan', 'watch', 'ok', '', '', '', '', '', '', '', 7)"
            ),
            {"now": now},
        )
    done = flask(database, "db", "downgrade", "0008")
    assert done.returncode == 0, done.stderr
    with engine.connect() as connection:
        assert connection.execute(text("SELECT username, server_id FROM live_consoles")).one() == ("ivan", "s1")
        assert connection.execute(text("SELECT username, action FROM audit")).one() == ("ivan", "watch")
    columns = {table: {c["name"] for c in inspect(engine).get_columns(table)} for table in ("live_consoles", "audit")}
    assert not {"kind", "watching", "role"} & columns["live_consoles"] and "console_id" not in columns["audit"]
    assert "subject" not in {column["name"] for column in inspect(engine).get_columns("single_use_tokens")}
    engine.dispose()
    assert flask(database, "db", "upgrade").returncode == 0
    assert revision(database) == HEAD
