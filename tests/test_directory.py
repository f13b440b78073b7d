"""The directory client (broker.directory) against a real OpenLDAP (tests.slapd): search-then-bind,
groups, names and passwords that never reach the directory, TLS settings and errors that name the
URL and never a password.

Signing in through the web pages with a directory account is tested in tests/web/test_ldap_sign_in.py.
"""

from __future__ import annotations

import pytest

from broker.config import ConfigError
from broker.config import LdapSettings
from broker.config import load_settings
from broker.directory import Directory
from broker.directory import DirectoryUnreachable
from tests.slapd import DIRECTORY_USERS
from tests.slapd import GROUPS
from tests.slapd import PEOPLE
from tests.slapd import SERVICE_DN
from tests.slapd import SERVICE_PASSWORD
from tests.slapd import UNSENDABLE
from tests.slapd import dn_of
from tests.slapd import running_slapd
from tests.support import free_port


@pytest.fixture(scope="session")
def slapd(tmp_path_factory):
    """OpenLDAP with tests.slapd's users and groups, for the whole session."""
    yield from running_slapd(tmp_path_factory.mktemp("slapd"))


@pytest.fixture
def directory(slapd) -> Directory:
    env = slapd.env()
    return Directory(
        LdapSettings(
            url=env["BROKER_LDAP_URL"],
            bind_dn=SERVICE_DN,
            bind_password=SERVICE_PASSWORD,
            user_base=PEOPLE,
            group_base=GROUPS,
            ca_file=slapd.ca_file,
        )
    )


def test_client_finds_user_and_groups(directory):
    found = directory.authenticate("dana", DIRECTORY_USERS["dana"][0])
    assert (found.dn, found.username, found.groups) == (dn_of("dana"), "dana", ("console-admins", "helpdesk"))


@pytest.mark.parametrize("name", ["", "a" * 65, "alice\x00", "alice\n", "*)(uid=*", "*"])
def test_client_refuses_bad_names(directory, name):
    assert directory.authenticate(name, DIRECTORY_USERS["alice"][0]) is None


@pytest.mark.parametrize("name", ["alice", "a" * 65, "bob\x00", "bob\x7f"])
def test_empty_password_and_bad_names_never_reach_the_directory(name):
    # Pointed at a closed port: any LDAP call would raise DirectoryUnreachable.
    closed = Directory(
        LdapSettings(url=f"ldaps://127.0.0.1:{free_port()}", bind_dn="", bind_password="", user_base=PEOPLE)
    )
    password = "" if name == "alice" else "some-password"
    assert closed.authenticate(name, password) is None


@pytest.mark.parametrize("password", UNSENDABLE)
def test_client_answers_an_unsendable_password_as_wrong(directory, password):
    assert directory.authenticate("alice", password) is None


def test_unreachable_error_names_the_url_not_the_password():
    url = f"ldaps://127.0.0.1:{free_port()}"
    closed = Directory(LdapSettings(url=url, bind_dn=SERVICE_DN, bind_password=SERVICE_PASSWORD, user_base=PEOPLE))
    with pytest.raises(DirectoryUnreachable) as caught:
        closed.authenticate("alice", "alice-password-1")
    assert url in str(caught.value)
    assert SERVICE_PASSWORD not in str(caught.value) and "alice-password-1" not in str(caught.value)


def test_verify_false_is_logged_loudly(caplog):
    Directory(LdapSettings(url="ldaps://ldap.example", bind_dn="", bind_password="", verify=False))
    assert any("NOT checked" in record.getMessage() and record.levelname == "WARNING" for record in caplog.records)


def test_plain_ldap_without_start_tls_stops_start_up(tmp_path, slapd):
    env = {**slapd.env(), "BROKER_SECRET_KEY": "k" * 32, "BROKER_DEMO": "false"}
    env["BROKER_LDAP_URL"] = f"ldap://127.0.0.1:{slapd.ldap_port}/"
    with pytest.raises(ConfigError, match="BROKER_LDAP_START_TLS"):
        load_settings(env, str(tmp_path))
