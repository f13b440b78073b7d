"""Broker users (broker.services.users): safe names and passwords, adding, changing and removing
accounts, and the sign-in check.

Each change is read back after the commit its caller (a request, a CLI command) makes, in a
fresh session: what a person relies on is what is stored, not what one session holds."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from broker.extensions import db
from broker.models import User
from broker.models import UserSession
from broker.services import identity
from broker.services import policy
from broker.services import users
from tests.support import ADMIN
from tests.support import AGENT

GOOD_PASSWORD = "correct horse battery staple"


@pytest.fixture
def ctx(app):
    """An app context to call the service in, as a command or a request holds one."""
    with app.app_context():
        yield
        db.session.remove()


def committed(app, read):
    """``read()`` in a fresh app context (and session) once the caller has committed."""
    db.session.commit()  # the boundary's commit: services only stage
    with app.app_context():
        try:
            return read()
        finally:
            db.session.remove()


def sign_in_rows(user_id: int, *ids: str) -> None:
    """Open sign-in sessions for ``user_id``, as sign-ins leave them."""
    for sid in ids:
        db.session.add(UserSession(id=sid, user_id=user_id))
    db.session.commit()


def open_sessions(user_id: int) -> list[str]:
    query = select(UserSession.id).where(UserSession.user_id == user_id, UserSession.ended_at.is_(None))
    return sorted(db.session.scalars(query))


def external(name: str = "olga", source: str = "oidc") -> User:
    """An account a directory provides (no password here)."""
    identity.sign_in(identity.ExternalIdentity(source, f"https://idp|{name}", name), ())
    return users.find(name)


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "web-team", "ops.night_shift", "bea@example.org", "9lives", "x" * 64])
def test_names_in_the_safe_alphabet_are_accepted_as_given(name):
    assert users.check_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "-dash", "_under", "with space", "ünï", "a/b", "x" * 65, "a\x00"])
def test_other_names_are_refused_saying_what_is_allowed(name):
    with pytest.raises(users.UserError, match=f"A group name is {users.NAME_RULE}"):
        users.check_name(name, "group name")


def test_find_ignores_case_and_never_matches_what_no_name_can_be(ctx):
    assert users.find("AGENT").username == "agent"
    for impossible in ("", "x" * 65, "age\x00nt"):
        assert users.find(impossible) is None


# -- passwords --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "at least 12 characters"),
        ("eleven-char", "at least 12 characters"),
        ("x" * 1025, "at most 1024 characters"),
        ("a" * 12, "one character repeated"),
        ("a-long-password\r", "carriage return"),
        ("a-long\npassword", "line break"),
        ("a-long\x00password", "control character"),
        ("password1234", "too common"),
        ("PASSWORD1234", "too common"),  # whatever the case
        ("!!password123!!", "too common"),  # give or take digits and symbols
        ("1234567890!!", "too common"),  # nothing but digits and symbols
    ],
)
def test_passwords_people_could_not_type_or_would_guess_are_refused(password, message):
    with pytest.raises(users.UserError, match=message):
        users.check_password(password)


@pytest.mark.parametrize("password", [GOOD_PASSWORD, "tab\tis-fine-here", "xy" * 512, "exactly12chr"])
def test_a_sound_password_is_accepted_unchanged(password):
    assert users.check_password(password) == password


def test_the_common_list_is_the_shipped_file():
    common = users.common_passwords()
    assert "password" in common and len(common) > 1000
    assert not any(line.startswith("#") for line in common)


# -- adding -----------------------------------------------------------------------------


def test_an_added_user_is_stored_with_a_hash_never_the_password(app, ctx):
    users.add("bea", GOOD_PASSWORD, role="admin")
    bea = committed(app, lambda: users.find("bea"))
    assert (bea.username, bea.role, bea.source) == ("bea", "admin", "local")
    assert GOOD_PASSWORD not in bea.password_hash and bea.password_hash.startswith(("scrypt:", "pbkdf2:"))
    with app.app_context():
        assert users.authenticate("bea", GOOD_PASSWORD).username == "bea"


@pytest.mark.parametrize(
    ("name", "password", "role", "message"),
    [
        ("Agent", GOOD_PASSWORD, "agent", "user agent already exists (names are the same whatever their case)"),
        ("bea", GOOD_PASSWORD, "root", "role must be one of admin, agent"),
        ("bea", "short", "agent", "at least 12 characters"),
        ("..", GOOD_PASSWORD, "agent", "A user name is"),
    ],
)
def test_a_refused_add_stores_nothing(app, ctx, name, password, role, message):
    with pytest.raises(users.UserError, match=re.escape(message)):
        users.add(name, password, role)
    names = committed(app, lambda: [u.username for u in users.all_users()])
    assert names == ["admin", "agent"]


def test_any_users_and_all_users_in_name_order(app, ctx):
    assert users.any_users()
    users.add("carol", GOOD_PASSWORD)
    users.add("bea", GOOD_PASSWORD)
    assert committed(app, lambda: [u.username for u in users.all_users()]) == ["admin", "agent", "bea", "carol"]


# -- signing in -------------------------------------------------------------------------


def test_authenticate_needs_the_right_password_of_a_local_account(ctx):
    assert users.authenticate("agent", AGENT[1]).username == "agent"
    assert users.authenticate("AGENT", AGENT[1]).username == "agent"  # names are one whatever their case
    assert users.authenticate("agent", AGENT[1].upper()) is None
    assert users.authenticate("agent", "") is None
    assert users.authenticate("nobody", AGENT[1]) is None
    assert users.authenticate("", "") is None


def test_an_external_account_never_signs_in_with_a_password_here(ctx):
    olga = external()
    db.session.commit()
    assert olga.password_hash == "!" and users.authenticate("olga", "!") is None


# -- changing ---------------------------------------------------------------------------


def test_a_new_password_ends_every_session_of_that_user_and_no_one_elses(app, ctx):
    agent, admin = users.find(AGENT[0]), users.find(ADMIN[0])
    sign_in_rows(agent.id, "agent-laptop", "agent-phone")
    sign_in_rows(admin.id, "admin-laptop")
    cookie_token, admin_token = agent.session_token, admin.session_token
    users.set_password(agent, GOOD_PASSWORD)

    def read():
        agent, admin = users.find(AGENT[0]), users.find(ADMIN[0])
        return agent.session_token, admin.session_token, open_sessions(agent.id), open_sessions(admin.id)

    agent_token, still_admin, agent_open, admin_open = committed(app, read)
    assert agent_token != cookie_token and agent_open == []  # old cookies and the relay's rows both end
    assert still_admin == admin_token and admin_open == ["admin-laptop"]
    with app.app_context():
        assert users.authenticate(AGENT[0], GOOD_PASSWORD) is not None
        assert users.authenticate(*AGENT) is None


def test_a_refused_password_changes_nothing(app, ctx):
    agent = users.find(AGENT[0])
    sign_in_rows(agent.id, "agent-laptop")
    before = agent.session_token
    with pytest.raises(users.UserError, match="too common"):
        users.set_password(agent, "password1234")
    after = committed(app, lambda: (users.find(AGENT[0]).session_token, open_sessions(agent.id)))
    assert after == (before, ["agent-laptop"])
    with app.app_context():
        assert users.authenticate(*AGENT) is not None


def test_a_role_change_keeps_the_users_sessions_and_password(app, ctx):
    agent = users.find(AGENT[0])
    sign_in_rows(agent.id, "agent-laptop")
    token, password_hash = agent.session_token, agent.password_hash
    users.set_role(agent, "admin")

    def read():
        agent = users.find(AGENT[0])
        return agent.role, agent.session_token, agent.password_hash, open_sessions(agent.id)

    # The next request sees the new role; nobody is signed out for it.
    assert committed(app, read) == ("admin", token, password_hash, ["agent-laptop"])


def test_an_unknown_role_is_refused_and_the_role_kept(app, ctx):
    with pytest.raises(users.UserError, match="role must be one of admin, agent"):
        users.set_role(users.find(AGENT[0]), "root")
    assert committed(app, lambda: users.find(AGENT[0]).role) == "agent"


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (lambda user: users.set_password(user, GOOD_PASSWORD), "their password"),
        (lambda user: users.set_role(user, "admin"), "their role"),
    ],
)
def test_an_external_accounts_password_and_role_are_its_directorys(app, ctx, change, what):
    olga = external(source="ldap")
    db.session.commit()
    with pytest.raises(users.UserError, match=f"olga signs in with ldap: {what} comes from there"):
        change(olga)
    stored = committed(app, lambda: (users.find("olga").role, users.find("olga").password_hash))
    assert stored == ("agent", "!")


# -- removing ---------------------------------------------------------------------------


def test_removing_a_user_ends_their_sessions_and_keeps_everyone_elses(app, ctx):
    agent, admin = users.find(AGENT[0]), users.find(ADMIN[0])
    agent_id = agent.id
    sign_in_rows(agent.id, "agent-laptop")
    sign_in_rows(admin.id, "admin-laptop")
    users.remove(agent)

    def read():
        return users.find(AGENT[0]), db.session.get(UserSession, "agent-laptop"), open_sessions(admin.id)

    gone, session, admin_open = committed(app, read)
    assert gone is None and session is None  # the relay finds no session to go on with
    assert admin_open == ["admin-laptop"]
    with app.app_context():
        assert db.session.get(User, agent_id) is None


def test_removing_a_user_removes_their_rules_and_memberships(app, ctx):
    policy.add_group("ops")
    policy.add_member("ops", "agent")
    users.remove(users.find("agent"))
    assert policy.all_rules() == []
    assert policy.find_group("ops").members == []
    stored = committed(app, lambda: (policy.all_rules(), policy.find_group("ops").members))
    assert stored == ([], [])
