"""Settings: defaults, checks that name the variable, and the demo key kept on disk."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker import config
from broker import create_app
from broker.config import ConfigError
from broker.config import Environment
from broker.config import UndeclaredSetting
from broker.config import load_settings
from broker.extensions import db
from broker.models import AccessRule
from broker.services import users
from tests.support import ROOT


def test_defaults_outside_demo(tmp_path):
    settings = load_settings({"BROKER_SECRET_KEY": "k" * 32, "OS_CLOUD": "prod"}, str(tmp_path))
    assert not settings.demo
    assert (settings.console_ttl, settings.refresh_margin, settings.console_swap) == (600, 60, "idle")
    assert settings.database_url == f"sqlite:///{tmp_path}/broker.sqlite3"
    assert settings.clouds == ("prod",)


def test_several_clouds(tmp_path):
    settings = load_settings({"BROKER_SECRET_KEY": "k" * 32, "BROKER_CLOUDS": "a, b/RegionTwo"}, str(tmp_path))
    assert settings.clouds == ("a", "b/RegionTwo")


def test_missing_secret_key_outside_demo_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="BROKER_SECRET_KEY"):
        load_settings({"OS_AUTH_URL": "https://keystone.example/v3"}, str(tmp_path))


def test_app_refuses_to_start_without_a_key(tmp_path):
    with pytest.raises(SystemExit, match="BROKER_SECRET_KEY"):
        create_app({"ENV": {"OS_CLOUD": "prod"}, "INSTANCE_PATH": str(tmp_path)})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BROKER_CONSOLE_TTL", "ten"),
        ("BROKER_CONSOLE_TTL", "5"),
        ("BROKER_REFRESH_MARGIN", "-1"),
        ("BROKER_CONNECT_TIMEOUT", "0"),
        ("BROKER_CONSOLE_SWAP", "sometimes"),
        ("BROKER_DEMO", "maybe"),
        ("BROKER_PANEL_METADATA", ",".join(f"key{n}" for n in range(21))),
        ("BROKER_PANEL_METADATA", "k" * 256),
        # A typo must never switch brute-force protection off.
        ("BROKER_LOGIN_LIMIT", "five per minute"),
        ("BROKER_LOGIN_LIMIT", "5 per fortnight"),
        ("BROKER_LOGIN_LIMIT", "5/minute;10/hour"),
        ("BROKER_RATELIMIT_STORAGE_URL", "redis//x"),
        ("BROKER_RATELIMIT_STORAGE_URL", "nosuch://host"),
        ("BROKER_CONSOLE_HOSTS", "https://novnc.example.com"),
        ("BROKER_CONSOLE_HOSTS", "novnc.example.com:6080"),
        ("BROKER_CONSOLE_HOSTS", "good.example.com,bad host"),
        ("BROKER_DATABASE_URL", "postgres://u@db/broker"),
        ("BROKER_CONSOLE_MODE", "popup"),
        ("BROKER_RELAY_PATH", "relay"),
        ("BROKER_RELAY_PATH", "/relay?x=1"),
        ("BROKER_RELAY_URL", "http://127.0.0.1:5001/relay"),
        ("BROKER_RELAY_URL", "ws://127.0.0.1:5001/relay?ticket=x"),
        ("BROKER_RELAY_URL", "ws:///relay"),
        ("BROKER_RECORDING", "yes"),
        ("BROKER_RECORDING_DIR", "recordings"),
        ("BROKER_RECORDING_RETENTION_DAYS", "0"),
        ("BROKER_RECORDING_RETENTION_DAYS", "ninety"),
    ],
)
def test_bad_values_name_the_variable(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({"BROKER_SECRET_KEY": "k" * 32, name: value}, str(tmp_path))


@pytest.mark.parametrize(
    "value", ["127.0.0.1:6379", "redis.example.com:6379/0", ":s3cret@cache:6379", "http://cache:6379"]
)
def test_a_redis_url_without_its_scheme_names_the_variable_the_operator_set(tmp_path, value):
    """BROKER_REDIS_URL is also the throttle's storage unless BROKER_RATELIMIT_STORAGE_URL is set: an
    error must name the one the operator wrote, and never echo the value (it may hold a password)."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"BROKER_SECRET_KEY": "k" * 32, "BROKER_REDIS_URL": value}, str(tmp_path))
    message = str(caught.value)
    assert message.startswith("BROKER_REDIS_URL must look like redis://host:6379/0")
    assert "BROKER_RATELIMIT_STORAGE_URL" not in message and value not in message and "s3cret" not in message


def test_a_bad_storage_url_still_names_its_own_variable(tmp_path):
    env = {"BROKER_SECRET_KEY": "k" * 32, "BROKER_REDIS_URL": "redis://cache:6379/0"}
    with pytest.raises(ConfigError, match="^BROKER_RATELIMIT_STORAGE_URL: "):
        load_settings({**env, "BROKER_RATELIMIT_STORAGE_URL": "nosuch://host"}, str(tmp_path))


TYPOS = [
    ("BROKER_LOGIN_LIMT", "BROKER_LOGIN_LIMIT"),
    ("BROKER_REDIS", "BROKER_REDIS_URL"),
    ("BROKER_DATABASE", "BROKER_DATABASE_URL"),
    ("BROKER_TRUSTED_PROXY", "BROKER_TRUSTED_PROXIES"),
    ("BROKER_CONSOLE_MODES", "BROKER_CONSOLE_MODE"),
    ("BROKER_OIDC_SECRET", "BROKER_OIDC_CLIENT_SECRET"),
]


@pytest.mark.parametrize(("typo", "meant"), TYPOS)
def test_an_unknown_setting_stops_start_up_naming_the_closest_one(tmp_path, typo, meant):
    """A typo used to be ignored: the default stayed in force and nothing said so."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"BROKER_SECRET_KEY": "k" * 32, "OS_CLOUD": "prod", typo: "1"}, str(tmp_path))
    assert str(caught.value) == (
        f"{typo} is not a broker setting: did you mean {meant}? (a misspelt setting would leave its default "
        "in force; deploy/broker.env.example lists them all)"
    )


def test_every_unknown_setting_is_named_at_once(tmp_path):
    env = {"BROKER_SECRET_KEY": "k" * 32, "BROKER_SESION_IDLE": "60", "BROKER_REDIS": "redis://r"}
    with pytest.raises(ConfigError, match="BROKER_REDIS is not .* BROKER_SESION_IDLE is not .*BROKER_SESSION_IDLE"):
        load_settings(env, str(tmp_path))


def test_other_variables_are_not_settings(tmp_path):
    """The test suite's own BROKER_TEST_*, the deploy wrapper's CONSOLE_BROKER_*, OS_*: none is refused."""
    env = {
        "BROKER_SECRET_KEY": "k" * 32,
        "BROKER_TEST_DB": "postgresql",
        "BROKER_TEST_SOMETHING_NEW": "1",
        "CONSOLE_BROKER_ENV": "/etc/console-broker/broker.env",
        "OS_CLOUD": "prod",
        "OS_REGION_NAME": "RegionOne",
        "RELAY_BIND": "127.0.0.1:5001",
    }
    assert load_settings(env, str(tmp_path)).clouds == ("prod",)


class Recording(dict):
    """An environment that remembers each name read from it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, name):
        self.read.add(name)
        return super().__getitem__(name)

    def __contains__(self, name):
        self.read.add(name)
        return super().__contains__(name)


def test_the_parser_reads_exactly_the_declared_settings(tmp_path):
    """SETTINGS is the one list: every branch of the parser (all sign-in methods on) reads each name in it and
    no other (a name it lacks cannot be read at all), so the list cannot drift from the parser."""
    everything = {
        "BROKER_SECRET_KEY": "k" * 32,
        "BROKER_AUTH": "local,oidc,ldap,header",
        "BROKER_OIDC_ISSUER": "https://idp.example.com",
        "BROKER_OIDC_CLIENT_ID": "broker",
        "BROKER_OIDC_CLIENT_SECRET": "secret",
        "BROKER_LDAP_URL": "ldaps://ldap.example.com",
        "BROKER_LDAP_USER_BASE": "ou=people,dc=example,dc=com",
        "BROKER_AUTH_HEADER": "X-Remote-User",
        "BROKER_AUTH_HEADER_FROM": "127.0.0.1",
    }
    env = Recording(everything)
    load_settings(env, str(tmp_path))
    assert {name for name in env.read if name.startswith("BROKER_")} == config.SETTINGS
    with pytest.raises(UndeclaredSetting, match="BROKER_NOT_DECLARED is read but missing"):
        Environment({}).get("BROKER_NOT_DECLARED")


# Where the broker's processes read their environment: the package, the app and gunicorn's files, the Procfile.
SOURCES = [*sorted((ROOT / "broker").rglob("*.py")), ROOT / "app.py", ROOT / "gunicorn.conf.py"]
# (Not request.environ: that is a request's WSGI environment.)
ENV_READ = re.compile(r"""(?<!request\.)(?:environ|env|getenv)\s*(?:\.get\(|\[|\()\s*f?["']([A-Z][A-Z0-9_]+)["']""")
BROKER_NAME = re.compile(r"(?<![A-Z0-9_])BROKER_[A-Z0-9_]*[A-Z0-9]")


def test_every_variable_the_code_reads_is_declared():
    """Names read outside the parser (the relay's RELAY_BIND, the Procfile's WEB_CONCURRENCY...) and every
    BROKER_* name the code mentions are in broker.config's lists too."""
    known = config.SETTINGS | config.PROCESS_VARIABLES | config.CLOUD_VARIABLES | config.REQUESTS_VARIABLES
    read: dict[str, str] = {}
    for path in SOURCES:
        text = path.read_text()
        for name in {*ENV_READ.findall(text), *BROKER_NAME.findall(text)}:
            if not (name + "_").startswith(config.TEST_PREFIX):  # the test suite's own, named in config.py
                read.setdefault(name, str(path.relative_to(ROOT)))
    read.update((name, "Procfile") for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "Procfile").read_text()))
    assert {"RELAY_BIND", "OS_CLIENT_CONFIG_FILE", "WEB_CONCURRENCY", "BROKER_LOG_FORMAT"} <= read.keys()
    assert {name: where for name, where in read.items() if name not in known} == {}


@pytest.mark.parametrize(
    ("value", "types"),
    [(None, ("novnc",)), ("", ("novnc",)), ("serial", ("serial",)), (" Novnc , serial ", ("novnc", "serial"))],
)
def test_console_types_every_cloud_offers(tmp_path, value, types):
    env = {"BROKER_SECRET_KEY": "k" * 32, "OS_CLOUD": "prod"}
    if value is not None:
        env["BROKER_CONSOLE_TYPES"] = value
    assert load_settings(env, str(tmp_path)).console_types == types


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("novnc,spice", "BROKER_CONSOLE_TYPES: 'spice' is not a console type; use some of novnc, serial"),
        ("serial,serial", "BROKER_CONSOLE_TYPES names a console type twice"),
    ],
)
def test_console_types_that_are_not_known_stop_start_up(tmp_path, value, message):
    env = {"BROKER_SECRET_KEY": "k" * 32, "OS_CLOUD": "prod", "BROKER_CONSOLE_TYPES": value}
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(env, str(tmp_path))


def test_recording_settings(tmp_path):
    """Off by default, under the instance folder, kept 90 days; a shared directory is named by its path."""
    defaults = load_settings({"BROKER_SECRET_KEY": "k" * 32}, str(tmp_path))
    assert (defaults.recording, defaults.recording_dir, defaults.recording_retention_days) == (
        "off",
        tmp_path / "recordings",
        90,
    )
    env = {
        "BROKER_SECRET_KEY": "k" * 32,
        "BROKER_RECORDING": "all",
        "BROKER_RECORDING_DIR": "/srv/recordings",
        "BROKER_RECORDING_RETENTION_DAYS": "30",
    }
    chosen = load_settings(env, str(tmp_path))
    assert (chosen.recording, str(chosen.recording_dir), chosen.recording_retention_days) == (
        "all",
        "/srv/recordings",
        30,
    )
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="^BROKER_RECORDING_DIR is not a directory"):
        load_settings({**env, "BROKER_RECORDING_DIR": str(tmp_path / "a-file")}, str(tmp_path))


def test_relay_mode_settings(tmp_path):
    base = {"BROKER_SECRET_KEY": "k" * 32, "OS_CLOUD": "prod"}
    default = load_settings(base, str(tmp_path))
    assert (default.console_mode, default.relay_path, default.relay_url) == ("iframe", "/relay", None)
    chosen = {"BROKER_CONSOLE_MODE": "Relay", "BROKER_RELAY_PATH": "/c/ws", "BROKER_RELAY_URL": "wss://{host}:5001/ws"}
    relay = load_settings({**base, **chosen}, str(tmp_path))
    assert (relay.console_mode, relay.relay_path, relay.relay_url) == ("relay", "/c/ws", "wss://{host}:5001/ws")


def test_old_secret_keys_are_accepted_from_fallbacks_and_given_to_flask(tmp_path):
    env = {"BROKER_SECRET_KEY": "n" * 32, "OS_CLOUD": "prod", "BROKER_SECRET_KEY_FALLBACKS": f" {'o' * 32} , "}
    settings = load_settings(env, str(tmp_path))
    assert settings.secret_key_fallbacks == ("o" * 32,)
    assert "o" * 32 not in repr(settings)
    assert load_settings({"BROKER_SECRET_KEY": "n" * 32}, str(tmp_path)).secret_key_fallbacks == ()
    app = create_app(
        {
            "ENV": {**env, "BROKER_DATABASE_URL": f"sqlite:///{tmp_path}/b.sqlite3"},
            "CLOUDS": [],
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "TESTING": True,
        }
    )
    assert app.config["SECRET_KEY_FALLBACKS"] == ["o" * 32]
    # Flask-WTF signs with the last key, as Flask's sessions do, and accepts the others.
    assert app.config["WTF_CSRF_SECRET_KEY"] == ["o" * 32, "n" * 32]
    with app.app_context():
        db.engine.dispose()


def test_a_short_fallback_key_stops_start_up_without_echoing_it(tmp_path):
    env = {"BROKER_SECRET_KEY": "n" * 32, "BROKER_SECRET_KEY_FALLBACKS": f"{'o' * 32},changeme"}
    with pytest.raises(ConfigError) as caught:
        load_settings(env, str(tmp_path))
    assert str(caught.value) == (
        "BROKER_SECRET_KEY_FALLBACKS: key 2 of 2 is too short; each must have at least 16 characters, "
        "like BROKER_SECRET_KEY"
    )


def test_demo_key_is_generated_once_and_kept(tmp_path):
    first = load_settings({}, str(tmp_path))
    second = load_settings({}, str(tmp_path))
    assert first.demo and second.demo
    assert first.secret_key == second.secret_key
    assert len(first.secret_key) >= 32
    assert (tmp_path / "demo-secret-key").stat().st_mode & 0o077 == 0


def test_panel_metadata_keys_are_a_trimmed_list(tmp_path):
    env = {"BROKER_SECRET_KEY": "k" * 32, "BROKER_PANEL_METADATA": " owner, ticket-queue ,,"}
    assert load_settings(env, str(tmp_path)).panel_metadata == ("owner", "ticket-queue")


@pytest.mark.parametrize("value", ["5 per 5 minutes", "10/hour", "3 per minute"])
def test_login_limits_that_parse_are_kept(tmp_path, value):
    settings = load_settings({"BROKER_SECRET_KEY": "k" * 32, "BROKER_LOGIN_LIMIT": value}, str(tmp_path))
    assert settings.login_limit == value


def test_app_refuses_to_start_with_an_unparsable_login_limit(tmp_path):
    env = {"BROKER_SECRET_KEY": "k" * 32, "BROKER_DEMO": "1", "BROKER_LOGIN_LIMIT": "five per minute"}
    with pytest.raises(SystemExit, match="BROKER_LOGIN_LIMIT"):
        create_app({"ENV": env, "INSTANCE_PATH": str(tmp_path)})


BAD_STARTS = [
    ({"OS_CLOUD": "prod"}, "BROKER_SECRET_KEY is not set"),
    ({"BROKER_DEMO": "1", "BROKER_LOGIN_LIMIT": "five per minute"}, "BROKER_LOGIN_LIMIT"),
    ({"BROKER_DEMO": "1", "BROKER_RATELIMIT_STORAGE_URL": "redis//x"}, "BROKER_RATELIMIT_STORAGE_URL"),
    ({"BROKER_DEMO": "1", "BROKER_DATABASE_URL": "postgres://u@db/broker"}, "write postgresql+psycopg://"),
    ({"BROKER_DEMO": "1", "BROKER_DATABASE_URL": "redis://x"}, "no database dialect called 'redis'"),
    ({"BROKER_DEMO": "1", "BROKER_DATABASE_URL": "not a url"}, "BROKER_DATABASE_URL is not a database URL"),
    (
        {"BROKER_DEMO": "1", "BROKER_LOGIN_LIMT": "3 per hour"},
        "BROKER_LOGIN_LIMT is not a broker setting: did you mean",
    ),
]


def operator_env(tmp_path, extra: dict) -> dict:
    """A shell like an operator's: no BROKER_* or OS_* but what the test sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OS_"))}
    return {**env, "BROKER_SECRET_KEY": "k" * 32, **extra} if "OS_CLOUD" not in extra else {**env, **extra}


@pytest.mark.parametrize(("extra", "message"), BAD_STARTS, ids=[m for _, m in BAD_STARTS])
def test_bad_configuration_stops_gunicorn_instead_of_restarting_workers(tmp_path, extra, message):
    env = operator_env(tmp_path, {"BROKER_DATABASE_URL": f"sqlite:///{tmp_path}/b.sqlite3", **extra})
    env.update(BIND="127.0.0.1:0", PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    web = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    done = subprocess.run(
        ["sh", "-c", "exec " + web.removeprefix("web:")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    # The master checks before it forks: one message, exit 3, no worker restarted forever.
    assert done.returncode == 3
    assert done.stderr.count("configuration error") == 1 and message in done.stderr
    assert "Booting worker" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("extra", "message"), BAD_STARTS[:3], ids=[m for _, m in BAD_STARTS[:3]])
def test_bad_configuration_stops_a_command_with_exit_3(tmp_path, extra, message):
    env = operator_env(tmp_path, {"BROKER_DATABASE_URL": f"sqlite:///{tmp_path}/b.sqlite3", **extra})
    argv = [sys.executable, "-m", "flask", "--app", "app", "users", "list"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert message in done.stderr and "Traceback" not in done.stderr


def test_an_unknown_setting_stops_check(tmp_path):
    env = operator_env(tmp_path, {"BROKER_DATABASE_URL": f"sqlite:///{tmp_path}/b.sqlite3", "BROKER_DEMO": "1"})
    argv = [sys.executable, "-m", "flask", "--app", "app", "check"]
    done = subprocess.run(
        argv, cwd=ROOT, env={**env, "BROKER_LOGIN_LIMT": "3 per hour"}, capture_output=True, text=True
    )
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert "BROKER_LOGIN_LIMT is not a broker setting: did you mean BROKER_LOGIN_LIMIT?" in done.stderr


def test_no_users_yet_says_how_to_create_the_first_admin(tmp_path, caplog):
    env = {"BROKER_SECRET_KEY": "k" * 32, "BROKER_DATABASE_URL": f"sqlite:///{tmp_path}/b.sqlite3", "OS_CLOUD": "x"}
    broker_log = logging.getLogger("broker")  # it does not propagate to the root logger caplog watches
    broker_log.addHandler(caplog.handler)
    try:
        app = create_app({"ENV": env, "CLOUDS": [], "INSTANCE_PATH": str(tmp_path)})
        assert "create the first admin with 'flask --app app users add NAME --admin'" in caplog.text
        with app.app_context():
            users.add("olga", "olga-password-1", "admin")
            db.session.commit()
        caplog.clear()
        create_app({"ENV": env, "CLOUDS": [], "INSTANCE_PATH": str(tmp_path)})
        assert "first admin" not in caplog.text
    finally:
        broker_log.removeHandler(caplog.handler)


def test_rules_naming_unconfigured_clouds_are_reported_at_start_up(tmp_path, caplog, fake):
    from broker.cloud.registry import Cloud
    from broker.extensions import db
    from tests.support import make_client

    env = {"BROKER_SECRET_KEY": "k" * 32, "BROKER_DATABASE_URL": f"sqlite:///{tmp_path}/b.sqlite3", "OS_CLOUD": "x"}
    lab = [Cloud("lab", make_client(fake), console_ttl=600, console_swap="idle")]
    app = create_app({"ENV": env, "CLOUDS": lab, "INSTANCE_PATH": str(tmp_path)})
    with app.app_context():
        user = users.add("olga", "olga-password-1")
        db.session.add(AccessRule(cloud="old-lab", name_pattern="web-*", user_id=user.id))
        db.session.commit()
    broker_log = logging.getLogger("broker")
    broker_log.addHandler(caplog.handler)
    try:
        create_app({"ENV": env, "CLOUDS": lab, "INSTANCE_PATH": str(tmp_path)})
    finally:
        broker_log.removeHandler(caplog.handler)
    assert "rule 1 (user olga may open web-* on cloud old-lab) names a cloud that is not configured" in caplog.text
    assert "(configured: lab)" in caplog.text
