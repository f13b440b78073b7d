"""External accounts: made at first sign-in, kept in step with the directory, never taking over another's name."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from broker.extensions import db
from broker.models import AuditRecord
from broker.services import identity
from broker.services import management
from broker.services import policy
from broker.services import users
from broker.services.identity import ExternalIdentity
from broker.services.identity import IdentityRefused

ADMINS = ("broker-admins",)


def alice(**changes) -> ExternalIdentity:
    fields = {"source": "oidc", "subject": "https://idp|sub-1", "username": "alice", "groups": ("helpdesk",)}
    return ExternalIdentity(**{**fields, **changes})


@pytest.fixture
def ctx(app):
    with app.test_request_context():
        for name in ("helpdesk", "dba"):
            policy.add_group(name)
        db.session.commit()
        yield


def test_first_sign_in_makes_an_agent_in_the_directorys_groups_with_no_password(ctx):
    synced = identity.sign_in(alice(), ADMINS)
    db.session.commit()
    user = users.find("alice")
    assert (user.source, user.external_id, user.role) == ("oidc", "https://idp|sub-1", "agent")
    assert [g.name for g in policy.all_groups() if user in g.members] == ["helpdesk"]
    assert synced.describe() == "joined group helpdesk" and user.last_sign_in_at is not None
    assert users.authenticate("alice", "") is None and users.authenticate("alice", "!") is None


def test_every_sign_in_resyncs_role_and_groups(ctx):
    identity.sign_in(alice(), ADMINS)
    synced = identity.sign_in(alice(groups=("dba", "broker-admins")), ADMINS)
    db.session.commit()
    user = users.find("alice")
    assert user.role == "admin"
    assert synced.changes == ["role agent -> admin", "joined group dba", "left group helpdesk"]
    identity.sign_in(alice(groups=()), ADMINS)
    assert users.find("alice").role == "agent"
    assert not [g for g in policy.all_groups() if user in g.members]


@pytest.mark.parametrize("holder", ["local", "ldap"])
def test_a_name_held_by_another_source_is_never_taken_over(ctx, holder):
    if holder == "local":
        users.add("Alice", "alice-local-password-1", "admin")
    else:
        identity.sign_in(alice(source="ldap", subject="uid=alice,ou=people"), ADMINS)
    db.session.commit()
    with pytest.raises(IdentityRefused, match=f"the name belongs to a {holder} account"):
        identity.sign_in(alice(groups=ADMINS), ADMINS)
    db.session.rollback()
    assert users.find("alice").source == holder
    assert db.session.scalar(select(users.User).where(users.User.source == "oidc")) is None


def test_a_rename_in_the_directory_follows_unless_the_name_is_taken(ctx):
    identity.sign_in(alice(), ADMINS)
    assert identity.sign_in(alice(username="alice.b"), ADMINS).changes[0] == "renamed from alice"
    users.add("carol", "carol-local-password-1")
    with pytest.raises(IdentityRefused):
        identity.sign_in(alice(username="carol"), ADMINS)


@pytest.mark.parametrize("name", ["", "*)(uid=*", "a" * 65, "ａlice", "../x"])
def test_names_that_are_no_broker_name_are_refused(ctx, name):
    with pytest.raises(IdentityRefused, match="is not a broker name"):
        identity.sign_in(alice(username=name), ADMINS)


def test_an_external_accounts_password_role_and_groups_cannot_be_edited_here(ctx):
    identity.sign_in(alice(), ADMINS)
    db.session.commit()
    for change, args in (
        (management.set_password, ("alice", "a-new-password-123")),
        (management.set_role, ("alice", "admin")),
        (management.add_member, ("dba", "alice")),
        (management.remove_member, ("helpdesk", "alice")),
    ):
        with pytest.raises(management.ChangeError, match="alice signs in with oidc"):
            change("admin", *args)
    assert users.find("alice").role == "agent"
    refusals = db.session.scalars(select(AuditRecord).where(AuditRecord.outcome == "failed")).all()
    assert len(refusals) == 4
