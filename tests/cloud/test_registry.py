"""Loading clouds from clouds.yaml: each mistake an operator makes stops start-up with its fix."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

from broker.cloud import errors
from broker.cloud.registry import CloudConfigError
from broker.cloud.registry import load_clouds
from broker.cloud.types import Timeouts
from broker.demo import serve
from tests.support import ROOT

GOOD = """clouds:
  prod:
    auth:
      auth_url: http://127.0.0.1:9/v3
      username: broker
      password: service-password-1
      project_id: p1
      user_domain_id: default
    region_name: RegionOne
"""

MISTAKES = [
    (
        "typo in an auth key",
        GOOD.replace("password:", "pasword:"),
        "prod",
        "auth has 'pasword', which the password plugin does not take; it takes: auth_url",
    ),
    ("malformed file", GOOD + "  lab: {auth: [\n", "prod", "clouds.yaml line 11, column 1: not valid YAML"),
    ("unknown cloud", GOOD, "staging", "cloud 'staging' is not in {file}; the clouds there are: prod."),
    ("cloud name in other case", GOOD, "Prod", "the clouds there are: prod."),
    ("unknown region", GOOD, "prod/RegionTwo", "cloud prod/RegionTwo:"),
    ("unknown console mode", GOOD + "    console_mode: popup\n", "prod", "cloud prod: console_mode must be"),
]


@pytest.fixture
def clouds_file(tmp_path, monkeypatch):
    path = tmp_path / "clouds.yaml"
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    return path


def load(*names: str, mode: str = "iframe"):
    return load_clouds(names, timeouts=Timeouts(1, 1), default_ttl=600, default_swap="idle", default_mode=mode)


@pytest.mark.parametrize(("label", "text", "name", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistakes_are_named_with_their_fix(clouds_file, label, text, name, message):
    clouds_file.write_text(text)
    with pytest.raises(CloudConfigError) as caught:
        load(name)
    assert message.format(file=clouds_file) in str(caught.value)
    assert "service-password-1" not in str(caught.value)


def test_no_clouds_file_lists_where_it_was_looked_for(clouds_file):
    with pytest.raises(CloudConfigError) as caught:
        load("prod")
    text = str(caught.value)
    assert "no clouds.yaml was found; searched:" in text
    assert str(clouds_file) in text and "/etc/openstack/clouds.yaml" in text


def test_a_good_entry_loads(clouds_file):
    clouds_file.write_text(GOOD)
    [cloud] = load("prod")
    assert cloud.name == "prod" and cloud.console_ttl == 600 and cloud.console_mode == "iframe"


def test_console_mode_per_cloud_overrides_the_default(clouds_file):
    clouds_file.write_text(GOOD + GOOD.replace("clouds:\n  prod:", "  lab:") + "    console_mode: relay\n")
    assert [(c.name, c.console_mode) for c in load("prod", "lab")] == [("prod", "iframe"), ("lab", "relay")]
    assert [c.console_mode for c in load("prod", mode="relay")] == ["relay"]


@pytest.mark.parametrize(("label", "text", "name", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_the_broker_stops_on_them_as_the_operator_starts_it(tmp_path, label, text, name, message):
    path = tmp_path / "clouds.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OS_"))}
    env.update(
        OS_CLIENT_CONFIG_FILE=str(path),
        BROKER_CLOUDS=name,
        BROKER_SECRET_KEY="k" * 32,
        BROKER_DATABASE_URL=f"sqlite:///{tmp_path}/b.sqlite3",
    )
    argv = [sys.executable, "-m", "flask", "--app", "app", "users", "list"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert message.format(file=path) in done.stderr
    assert "Traceback" not in done.stderr and "service-password-1" not in done.stderr


@pytest.fixture
def registry_log(caplog):
    """The broker's loggers do not propagate to the root logger caplog watches once an app has set them up."""
    broker_log = logging.getLogger("broker")
    watch = not broker_log.propagate
    if watch:
        broker_log.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="broker")
    yield caplog
    if watch:
        broker_log.removeHandler(caplog.handler)


@pytest.mark.parametrize(
    ("mode", "readers"),
    [(0o644, "its group and every user"), (0o640, "its group"), (0o604, "every user"), (0o600, None), (0o400, None)],
)
def test_a_clouds_file_others_may_read_is_a_warning_at_start(clouds_file, registry_log, mode, readers):
    clouds_file.write_text(GOOD)
    clouds_file.chmod(mode)
    [cloud] = load("prod")  # a warning, not a stop: container secrets are often mounted 0644
    warned = [r.getMessage() for r in registry_log.records if r.levelno == logging.WARNING]
    if readers is None:
        assert warned == []
    else:
        assert warned == [
            f"{clouds_file} is readable by {readers} (mode {mode:04o}), and it holds the clouds' credentials: "
            "chmod 600 it, owned by the broker's user"
        ]


@pytest.fixture
def cloud_from_environment(fake, monkeypatch, tmp_path):
    """The stand-in cloud through its OS_* variables, in an environment with no proxy, CA bundle or netrc."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name.startswith("OS_") or name.endswith("CA_BUNDLE"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "no-clouds.yaml"))
    for name, value in serve.environment(fake).items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_without_proxy_settings_calls_do_not_read_the_environment(cloud_from_environment):
    [cloud] = load()
    assert cloud.client.list_servers()
    # requests would scan every variable on every call for proxies, a CA bundle and a netrc file: none is set.
    assert cloud.client.adapter.session.session.trust_env is False


@pytest.mark.parametrize("setting", ["http_proxy", "HTTP_PROXY", "REQUESTS_CA_BUNDLE", "NETRC"])
def test_a_proxy_ca_bundle_or_netrc_in_the_environment_is_still_honoured(cloud_from_environment, tmp_path, setting):
    value = {"NETRC": str(tmp_path / "netrc")}.get(setting, "http://127.0.0.1:9")
    if setting == "NETRC":
        (tmp_path / "netrc").write_text("machine example.com login a password b\n")
    cloud_from_environment.setenv(setting, value)
    [cloud] = load()
    assert cloud.client.adapter.session.session.trust_env is True


def test_a_proxy_in_the_environment_carries_the_calls(cloud_from_environment):
    cloud_from_environment.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens: every call fails there
    [cloud] = load()
    with pytest.raises(errors.CloudUnreachable):
        cloud.client.list_servers()


def test_console_types_per_cloud_override_the_default(clouds_file):
    clouds_file.write_text(GOOD + GOOD.replace("clouds:\n  prod:", "  lab:") + "    console_types: [novnc, Serial]\n")
    loaded = load_clouds(
        ("prod", "lab"), timeouts=Timeouts(1, 1), default_ttl=600, default_swap="idle", default_types=("serial",)
    )
    assert [(c.name, c.console_types) for c in loaded] == [("prod", ("serial",)), ("lab", ("novnc", "serial"))]
    assert load("prod")[0].console_types == ("novnc",)  # nothing said anywhere: the graphical console only


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[novnc, spice]", "cloud prod: console_types: 'spice' is not a console type; use some of novnc, serial"),
        ("novnc", "cloud prod: console_types must list console types"),
        ("[]", "cloud prod: console_types must list console types"),
        ("[serial, serial]", "cloud prod: console_types names a console type twice"),
    ],
)
def test_console_types_that_are_not_a_list_of_known_types_stop_start_up(clouds_file, value, message):
    clouds_file.write_text(GOOD + f"    console_types: {value}\n")
    with pytest.raises(CloudConfigError, match=re.escape(message)):
        load("prod")
