"""Signing in to the broker with a directory account (``BROKER_AUTH`` with ``ldap``), against a real
OpenLDAP (tests.slapd): accounts and groups made and kept in step, the throttle, refusals and their
audit, and what a person sees when the directory cannot answer.

The directory client on its own (broker/directory.py) is tested in tests/test_directory.py.
"""

from __future__ import annotations

import ldap3
import pytest
from sqlalchemy import select

from broker.extensions import db
from broker.models import AuditRecord
from broker.models import Group
from broker.models import User
from broker.services import users
from tests.slapd import DIRECTORY_USERS
from tests.slapd import GROUP_NAMES
from tests.slapd import GROUPS
from tests.slapd import SERVICE_PASSWORD
from tests.slapd import UNSENDABLE
from tests.slapd import dn_of
from tests.slapd import running_slapd
from tests.support import ADMIN
from tests.support import AuthActions
from tests.support import free_port


@pytest.fixture(scope="session")
def slapd(tmp_path_factory):
    """OpenLDAP with tests.slapd's users and groups, for the whole session."""
    yield from running_slapd(tmp_path_factory.mktemp("slapd"))


@pytest.fixture
def ldap_changes() -> dict:
    """Changes to the working LDAP settings; a test parametrizes it ("{name}" fields come from the Slapd)."""
    return {}


@pytest.fixture
def env_overrides(slapd, ldap_changes) -> dict:
    fields = {**vars(slapd), "other_ca_file": slapd.other_ca_file, "closed": free_port()}
    changes = {key: value.format(**fields) for key, value in ldap_changes.items()}
    return {**slapd.env(), **changes}


def records(app, outcome: str | None = None) -> list[AuditRecord]:
    with app.app_context():
        query = select(AuditRecord).where(AuditRecord.action == "sign_in").order_by(AuditRecord.id)
        found = list(db.session.scalars(query))
    return [entry for entry in found if outcome is None or entry.outcome == outcome]


def user_row(app, name: str) -> tuple[str, str, str | None, list[str]] | None:
    """(source, role, external ID, groups) of the account ``name``, or None."""
    with app.app_context():
        user = users.find(name)
        if user is None:
            return None
        groups = db.session.scalars(select(Group).where(Group.members.contains(user)).order_by(Group.name))
        return user.source, user.role, user.external_id, [group.name for group in groups]


def external_count(app) -> int:
    with app.app_context():
        return len(list(db.session.scalars(select(User).where(User.source != "local"))))


@pytest.fixture
def broker_groups(app):
    """The broker's own groups of the directory's names (external groups map to broker groups of the same name)."""
    with app.app_context():
        for name in GROUP_NAMES:
            db.session.add(Group(name=name))
        db.session.commit()


def page(response) -> str:
    return response.get_data(as_text=True)


# -- signing in ------------------------------------------------------------------------


def test_directory_user_signs_in_with_groups(app, client, auth, broker_groups):
    response = auth.login("alice", DIRECTORY_USERS["alice"][0], next="/")
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert client.get("/").status_code == 200
    assert user_row(app, "alice") == ("ldap", "agent", dn_of("alice"), ["helpdesk"])
    [entry] = records(app)
    assert (entry.outcome, entry.username, entry.detail) == ("ok", "alice", "ldap")
    assert "joined group helpdesk" in entry.reason


def test_admin_group_makes_an_admin(app, auth, broker_groups):
    assert auth.login("dana", DIRECTORY_USERS["dana"][0]).status_code == 302
    assert user_row(app, "dana") == ("ldap", "admin", dn_of("dana"), ["console-admins", "helpdesk"])


def test_the_name_is_the_directorys_spelling(app, auth):
    # uid matching is case-insensitive in LDAP; the account keeps the directory's spelling.
    assert auth.login("ALICE", DIRECTORY_USERS["alice"][0]).status_code == 302
    assert user_row(app, "alice")[0] == "ldap"
    assert [entry.username for entry in records(app, "ok")] == ["alice"]


def test_leaving_a_group_in_the_directory_leaves_it_here_at_next_sign_in(app, client, auth, slapd, broker_groups):
    password = DIRECTORY_USERS["carol"][0]
    assert auth.login("carol", password).status_code == 302
    assert user_row(app, "carol")[3] == ["helpdesk"]
    auth.logout()
    with slapd.root() as root:
        root.modify(f"cn=helpdesk,{GROUPS}", {"member": [(ldap3.MODIFY_DELETE, [dn_of("carol")])]})
    try:
        assert auth.login("carol", password).status_code == 302
        assert user_row(app, "carol")[3] == []
        assert "left group helpdesk" in records(app, "ok")[-1].reason
    finally:
        with slapd.root() as root:
            root.modify(f"cn=helpdesk,{GROUPS}", {"member": [(ldap3.MODIFY_ADD, [dn_of("carol")])]})


@pytest.mark.parametrize(
    "ldap_changes", [{"BROKER_LDAP_URL": "ldap://127.0.0.1:{ldap_port}/", "BROKER_LDAP_START_TLS": "true"}]
)
def test_start_tls_signs_in(app, auth):
    assert auth.login("bob", DIRECTORY_USERS["bob"][0]).status_code == 302
    assert user_row(app, "bob") == ("ldap", "agent", dn_of("bob"), [])


@pytest.mark.parametrize("ldap_changes", [{"BROKER_AUTH": "ldap,local"}])
def test_local_break_glass_account_signs_in_after_the_directory(app, auth):
    assert auth.login(*ADMIN).status_code == 302
    [entry] = records(app, "ok")
    assert (entry.username, entry.detail) == ("admin", "local")


def test_strangers_cannot_lock_out_a_directory_users_own_browser(app, auth):
    password = DIRECTORY_USERS["bob"][0]
    assert auth.login("bob", password).status_code == 302  # bob's own browser, which gets a device cookie
    auth.logout()
    stranger = AuthActions(app.test_client())
    assert [stranger.login("bob", f"guess-{n}").status_code for n in range(6)] == [401] * 5 + [429]
    assert stranger.login("bob", password).status_code == 429  # the account is throttled for everyone else
    assert auth.login("bob", password).status_code == 302  # but not for its owner's browser


def test_a_directory_users_own_browser_has_its_own_limit(app, auth):
    password = DIRECTORY_USERS["bob"][0]
    assert auth.login("bob", password).status_code == 302
    auth.logout()
    assert [auth.login("bob", f"guess-{n}").status_code for n in range(6)] == [401] * 5 + [429]


# -- refused -------------------------------------------------------------------------


def test_wrong_password_is_refused_and_audited(app, auth):
    response = auth.login("alice", "not-alice-password")
    assert response.status_code == 401
    assert "Wrong user name or password." in page(response)
    [entry] = records(app)
    assert entry.outcome == "failed" and "not-alice-password" not in str(entry.to_json())
    assert user_row(app, "alice") is None


@pytest.mark.parametrize("password", UNSENDABLE)
def test_a_password_with_a_control_character_is_a_wrong_password(app, auth, caplog, password):
    answers = [auth.login("alice", password) for _ in range(6)]
    assert [answer.status_code for answer in answers] == [401] * 5 + [429]  # counted like any wrong guess
    assert "Wrong user name or password." in page(answers[0])
    audited = [(entry.outcome, entry.reason) for entry in records(app)]
    assert audited[:5] == [("failed", "wrong user name or password")] * 5
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]  # no false outage in the log
    assert user_row(app, "alice") is None


@pytest.mark.parametrize("name", ["nobody", "*)(uid=*", "*", "alice)(|(uid=*", "*)(objectClass=*", "al*"])
def test_unknown_names_and_filter_injection_are_refused(app, auth, name):
    # Escaped into the filter, "*)(uid=*" is a name nobody has, not a filter matching everyone.
    response = auth.login(name, DIRECTORY_USERS["alice"][0])
    assert response.status_code == 401
    assert "Wrong user name or password." in page(response)
    assert external_count(app) == 0
    [entry] = records(app)
    assert entry.outcome == "failed" and entry.username.startswith("?")  # a keyed hash, not the typed name


def test_a_directory_name_held_by_a_local_account_is_refused(app, client, auth):
    response = auth.login("agent", DIRECTORY_USERS["agent"][0])
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert "An account with your user name already exists here" in page(client.get(response.headers["Location"]))
    assert user_row(app, "agent") == ("local", "agent", None, [])
    [entry] = records(app)
    assert (entry.outcome, entry.detail) == ("refused", "ldap")
    assert client.get("/", headers={"Accept": "text/html"}).status_code == 302  # not signed in
    assert client.get_cookie("broker_device") is None  # nor does this browser get a sign-in budget of its own


def test_empty_password_never_reaches_the_form_check(app, client, auth):
    response = auth.login("alice", "")
    assert response.status_code == 401
    assert external_count(app) == 0


# -- the directory cannot answer ---------------------------------------------------------


DOWN = [
    pytest.param({"BROKER_LDAP_URL": "ldaps://127.0.0.1:{closed}/"}, "Connection refused", id="closed-port"),
    pytest.param({"BROKER_LDAP_CA_FILE": "{other_ca_file}"}, "CERTIFICATE_VERIFY_FAILED", id="cert-of-another-ca"),
    pytest.param(
        {"BROKER_LDAP_URL": "ldaps://127.0.0.2:{ldaps_port}/"},
        "ssl wrapping error: certificate",
        id="cert-for-another-name",
    ),
    pytest.param(
        {
            "BROKER_LDAP_URL": "ldap://127.0.0.1:{ldap_port}/",
            "BROKER_LDAP_START_TLS": "true",
            "BROKER_LDAP_CA_FILE": "{other_ca_file}",
        },
        "CERTIFICATE_VERIFY_FAILED",
        id="start-tls-another-ca",
    ),  # fmt: skip
    pytest.param({"BROKER_LDAP_BIND_PASSWORD": "wrong"}, "service account", id="service-account-refused"),
]


@pytest.mark.parametrize(("ldap_changes", "why"), DOWN)
def test_unreachable_directory_says_so_and_local_accounts_still_sign_in(app, client, auth, why):
    response = auth.login("alice", DIRECTORY_USERS["alice"][0])
    assert response.status_code == 503
    assert "The directory is unreachable; local accounts can still sign in." in page(response)
    assert external_count(app) == 0
    [entry] = records(app)
    assert (entry.outcome, entry.detail) == ("failed", "ldap")
    assert entry.reason.startswith("directory unreachable: ldap") and why in entry.reason
    assert SERVICE_PASSWORD not in entry.reason and "alice-password" not in entry.reason
    assert auth.login(*ADMIN).status_code == 302
    assert records(app, "ok")[-1].username == "admin"


@pytest.mark.parametrize("ldap_changes", [{"BROKER_AUTH": "ldap", "BROKER_LDAP_URL": "ldaps://127.0.0.1:{closed}/"}])
def test_unreachable_directory_without_local_accounts(auth):
    response = auth.login("alice", DIRECTORY_USERS["alice"][0])
    assert response.status_code == 503
    assert "The directory is unreachable. Try again in a few minutes." in page(response)
