"""Admin changes (broker.services.management): each one audited with who made it and what it did,
a refused one rolled back and audited as failed, and a change never stored without its record.

The service is called as the admin pages call it (in a request), then the caller's boundary
commits; what is asserted is read back in a fresh session."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from broker import state
from broker.extensions import db
from broker.models import AuditRecord
from broker.models import UserSession
from broker.services import audit
from broker.services import management
from broker.services import policy
from broker.services import users
from tests.support import ADMIN
from tests.support import AGENT

ACTOR = ADMIN[0]
CLOUDS = ["lab"]  # the names a rule may use: the configured clouds, as the admin page passes them
PASSWORD = "a-new-password-for-the-agent"


@pytest.fixture
def ctx(app):
    """A request's context, as the admin pages call the service in."""
    with app.test_request_context():
        yield
        db.session.remove()


def committed(app, read):
    """``read()`` in a fresh app context once the caller's boundary has committed."""
    db.session.commit()
    with app.app_context():
        try:
            return read()
        finally:
            db.session.remove()


def admin_records() -> list[tuple[str, str, str, str]]:
    """(who, what, outcome, description) of every admin record, oldest first."""
    query = select(AuditRecord).where(AuditRecord.action == "admin").order_by(AuditRecord.id)
    return [(r.username, r.detail, r.outcome, r.reason) for r in db.session.scalars(query)]


def stored_state() -> tuple:
    """Users and roles, groups and members, rules: everything an admin change may touch."""
    return (
        [(u.username, u.role) for u in users.all_users()],
        [(g.name, sorted(m.username for m in g.members)) for g in policy.all_groups()],
        [r.describe() for r in policy.all_rules()],
    )


# -- accepted changes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "detail", "description"),
    [
        (lambda: management.add_user(ACTOR, "bea", PASSWORD, "agent"), "user_add", "added bea (agent)"),
        (lambda: management.set_role(ACTOR, AGENT[0], "admin"), "user_role", "agent is now admin (was agent)"),
        (
            lambda: management.set_password(ACTOR, AGENT[0], PASSWORD),
            "user_password",
            "password changed for agent; their sessions ended",
        ),
        (lambda: management.remove_user(ACTOR, AGENT[0]), "user_remove", "removed agent; their sessions ended"),
        (lambda: management.add_group(ACTOR, "night-shift"), "group_add", "added group night-shift"),
        (
            lambda: management.add_rule(ACTOR, CLOUDS, user=AGENT[0], cloud="lab", name_pattern="web-*"),
            "rule_add",
            "rule 2: user agent may open web-* on cloud lab",
        ),
        (lambda: management.remove_rule(ACTOR, 1), "rule_remove", "removed rule 1: user agent may open * on cloud lab"),
    ],
)
def test_an_accepted_change_is_stored_and_audited_ok_with_its_description(app, ctx, change, detail, description):
    assert change() == description
    assert committed(app, admin_records) == [(ACTOR, detail, "ok", description)]


def test_the_stored_outcome_of_each_user_change(app, ctx):
    agent_id = users.find(AGENT[0]).id
    db.session.add(UserSession(id="agent-laptop", user_id=agent_id))
    db.session.commit()
    management.add_user(ACTOR, "bea", PASSWORD, "admin")
    management.set_role(ACTOR, AGENT[0], "admin")
    assert committed(app, stored_state)[0] == [("admin", "admin"), ("agent", "admin"), ("bea", "admin")]
    management.set_password(ACTOR, AGENT[0], PASSWORD)
    ended = committed(app, lambda: db.session.get(UserSession, "agent-laptop").ended_at)
    assert ended is not None
    with app.app_context():
        assert users.authenticate(AGENT[0], PASSWORD) is not None and users.authenticate(*AGENT) is None
    management.remove_user(ACTOR, AGENT[0])
    assert committed(app, stored_state)[0] == [("admin", "admin"), ("bea", "admin")]


def test_groups_and_members_are_stored_and_each_step_audited(app, ctx):
    management.add_group(ACTOR, "night-shift")
    management.add_member(ACTOR, "night-shift", AGENT[0])
    assert committed(app, stored_state)[1] == [("night-shift", ["agent"])]
    management.remove_member(ACTOR, "night-shift", AGENT[0])
    assert committed(app, stored_state)[1] == [("night-shift", [])]
    management.remove_group(ACTOR, "night-shift")
    assert committed(app, stored_state)[1] == []
    done = committed(app, admin_records)
    assert [(detail, outcome) for _, detail, outcome, _ in done] == [
        ("group_add", "ok"),
        ("member_add", "ok"),
        ("member_remove", "ok"),
        ("group_remove", "ok"),
    ]


def test_no_password_reaches_the_audit_trail(app, ctx):
    management.add_user(ACTOR, "bea", PASSWORD, "agent")
    management.set_password(ACTOR, "bea", PASSWORD + "-2")
    with pytest.raises(users.UserError):
        management.set_password(ACTOR, "bea", "short-pass")
    records = committed(app, admin_records)
    assert len(records) == 3
    assert not any("password-for" in field or "short-pass" in field for record in records for field in record)


# -- refused changes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "detail", "reason"),
    [
        (lambda: management.add_user(ACTOR, "Agent", PASSWORD, "agent"), "user_add", "user agent already exists"),
        (lambda: management.add_user(ACTOR, "bea", "short", "agent"), "user_add", "at least 12 characters"),
        (lambda: management.set_role(ACTOR, ACTOR, "agent"), "user_role", "cannot take away your own admin role"),
        (lambda: management.set_role(ACTOR, AGENT[0], "root"), "user_role", "role must be one of admin, agent"),
        (lambda: management.remove_user(ACTOR, ACTOR), "user_remove", "you cannot remove yourself"),
        (lambda: management.set_password(ACTOR, "ghost", PASSWORD), "user_password", "no user called ghost"),
        (lambda: management.add_member(ACTOR, "ghosts", AGENT[0]), "member_add", "no group called ghosts"),
        (
            lambda: management.add_rule(ACTOR, CLOUDS, user=AGENT[0], cloud="nowhere"),
            "rule_add",
            "no cloud called 'nowhere'",
        ),
        (lambda: management.remove_rule(ACTOR, 999), "rule_remove", "999"),
    ],
)
def test_a_refused_change_stores_nothing_and_is_audited_failed_with_why(app, ctx, change, detail, reason):
    before = stored_state()
    with pytest.raises(management.ChangeError) as refused:
        change()
    assert reason in str(refused.value)
    assert committed(app, stored_state) == before
    [(who, what, outcome, why)] = committed(app, admin_records)
    assert (who, what, outcome) == (ACTOR, detail, "failed") and reason in why


def test_an_external_account_is_refused_whatever_the_change(app, ctx):
    from broker.services import identity

    identity.sign_in(identity.ExternalIdentity("oidc", "https://idp|olga", "olga"), ())
    db.session.commit()
    with pytest.raises(management.ChangeError, match="olga signs in with oidc"):
        management.set_role(ACTOR, "olga", "admin")
    assert committed(app, lambda: users.find("olga").role) == "agent"
    assert committed(app, admin_records)[-1][1:3] == ("user_role", "failed")


def test_a_change_and_its_audit_record_are_stored_together_or_not_at_all(app, monkeypatch):
    from broker.services import audit as audit_service

    def unstorable(action, outcome, **fields):
        return AuditRecord(action=None, outcome=outcome)  # NOT NULL: its insert fails

    monkeypatch.setattr(audit_service, "entry_for", unstorable)
    with app.test_request_context(), pytest.raises(IntegrityError, match="(?i)not.null"):
        management.add_user("admin", "newbie", "newbie-password-1", "agent")
        db.session.commit()  # the boundary's commit, where a service only stages
    with app.app_context():
        assert users.find("newbie") is None
        assert audit.count(audit.Filter(action="admin")) == 0


# -- what the admin page shows ---------------------------------------------------------


def test_cloud_health_is_each_configured_clouds_as_its_client_saw_it(ctx):
    inventory = state.consoles().inventory
    assert management.cloud_health(inventory) == {"lab": inventory.clouds["lab"].client.health.snapshot()}
