"""What sign-in methods share: the safe ``next``, a directory user's session, the way back, the provider's logout."""

from __future__ import annotations

import pytest
from flask import get_flashed_messages
from flask import session
from flask_login import current_user
from sqlalchemy import select

from broker.extensions import db
from broker.models import AuditRecord
from broker.models import UserSession
from broker.services import identity
from broker.services import users
from broker.web import signin

UNSAFE = ["https://evil.example/", "//evil.example", "/\\evil.example", "javascript:alert(1)", "evil", "/\x00x", ""]


@pytest.mark.parametrize("target", [*UNSAFE, None, "/\x7fx", "/" + "x" * 2048, "/x\ny", "http:/x"])
def test_unsafe_next_is_none(target):
    assert signin.safe_next(target) is None


@pytest.mark.parametrize("target", ["/", "/console/web-01", "/console/worker?cloud=lab", "/a/b#c", "/" + "x" * 2047])
def test_a_path_on_this_site_is_kept(target):
    assert signin.safe_next(target) == target


def dn(name: str) -> identity.ExternalIdentity:
    return identity.ExternalIdentity(source="ldap", subject=f"uid={name},dc=example", username=name, groups=())


def sign_in_records() -> list[tuple[str, str, str]]:
    rows = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "sign_in"))
    return [(r.username, r.outcome, r.detail) for r in rows]


def test_begin_external_provisions_starts_a_session_and_audits_the_method(app):
    with app.test_request_context("/login", method="POST"):
        synced = signin.begin_external(dn("dora"))
        assert synced.user.username == "dora" and synced.user.source == "ldap"
        assert current_user.is_authenticated and current_user.username == "dora"
        assert session["method"] == "ldap"
        assert db.session.get(UserSession, session["sid"]).method == "ldap"
        assert sign_in_records() == [("dora", "ok", "ldap")]


def test_a_refused_identity_leaves_nothing_behind_and_nobody_signed_in(app):
    """The local account ``agent`` holds the name: the directory's agent may not take it over."""
    with app.test_request_context("/login", method="POST"):
        with pytest.raises(identity.IdentityRefused) as refused:
            signin.begin_external(dn("agent"))
        assert "already exists" in refused.value.message
        assert not current_user.is_authenticated and "sid" not in session
        assert users.find("agent").source == "local"
        assert identity.find_external("ldap", "uid=agent,dc=example") is None
        assert sign_in_records() == []


def test_external_sign_in_goes_on_to_the_target(app):
    with app.test_request_context("/login", method="POST"):
        response = signin.external_sign_in(dn("dora"), "/console/web-01")
        assert (response.status_code, response.location) == (302, "/console/web-01")
        assert current_user.username == "dora"


def test_external_sign_in_refused_is_audited_and_said_on_the_login_page(app):
    with app.test_request_context("/login", method="POST"):
        response = signin.external_sign_in(dn("agent"), "/console/web-01")
        assert (response.status_code, response.location) == (302, "/login?stay=1")
        [message] = get_flashed_messages()
        assert message.startswith("An account with your user name already exists here.")
        assert sign_in_records() == [("agent", "refused", "ldap")]
        assert not current_user.is_authenticated


def test_back_to_login_flashes_and_stays_on_the_login_page(app):
    with app.test_request_context("/"):
        response = signin.back_to_login("Single sign-on did not work.")
        assert response.location == "/login?stay=1"
        assert get_flashed_messages(with_categories=True) == [("error", "Single sign-on did not work.")]


def test_without_a_provider_sign_out_stays_here(app):
    with app.test_request_context("/logout", method="POST"):
        assert signin.provider_logout_url() is None


def test_a_registered_provider_says_where_sign_out_goes(app):
    answers = iter(["https://idp.example/logout", None])
    signin.register_provider_logout(app, lambda: next(answers))
    with app.test_request_context("/logout", method="POST"):
        assert signin.provider_logout_url() == "https://idp.example/logout"
        assert signin.provider_logout_url() is None  # the provider's own "not this session"
