"""deploy/broker.env.example shows every setting the code reads, and the docs say what the code does.

The names come from broker.config, the one list that start-up also checks against (an unknown
``BROKER_*`` variable stops it) and that tests/test_config.py holds against the code's reads.
"""

from __future__ import annotations

import re

import pytest

from broker import config
from tests.support import ROOT

EXAMPLE = ROOT / "deploy" / "broker.env.example"
EVERY_NAME = config.SETTINGS | config.PROCESS_VARIABLES | config.CLOUD_VARIABLES


def shown(name: str, text: str) -> bool:
    """``NAME=`` on a line of its own or in a comment (an optional setting, or one a unit sets)."""
    return re.search(rf"(?<![A-Z0-9_]){name}=", text) is not None


def assignments(text: str) -> dict[str, str]:
    """The lines that set something, as systemd and sh read them (comments on lines of their own)."""
    pairs = (line.partition("=") for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {name: value.strip('"') for name, _, value in pairs}


def test_the_example_shows_every_setting_the_code_reads():
    text = EXAMPLE.read_text()
    assert sorted(name for name in EVERY_NAME if not shown(name, text)) == []


def test_the_example_sets_only_known_names_and_passes_start_up(tmp_path):
    values = assignments(EXAMPLE.read_text())
    assert sorted(set(values) - EVERY_NAME) == []
    settings = config.load_settings({**values, "BROKER_SECRET_KEY": "k" * 64}, str(tmp_path))
    assert settings.clouds == ("prod",) and settings.trusted_proxies == 1
    # Never BIND: this file is every instance's, and it would override the unit's per-instance BIND.
    assert "BIND" not in values and "PORT" not in values


def test_the_docs_give_the_secret_key_length_the_code_enforces(tmp_path):
    least = config.SECRET_KEY_MIN_LENGTH
    readme = (ROOT / "README.md").read_text()
    assert re.findall(r"`BROKER_SECRET_KEY` \((\d+)\+ characters", readme) == [str(least)]
    assert f"shorter than {least} characters stops start-up" in EXAMPLE.read_text()
    base = {"OS_CLOUD": "prod"}
    assert config.load_settings({**base, "BROKER_SECRET_KEY": "k" * least}, str(tmp_path)).secret_key
    with pytest.raises(config.ConfigError) as caught:
        config.load_settings({**base, "BROKER_SECRET_KEY": "k" * (least - 1)}, str(tmp_path))
    assert str(caught.value) == f"BROKER_SECRET_KEY is too short; use at least {least} random characters"
