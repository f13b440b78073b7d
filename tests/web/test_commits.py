"""One unit of work per request and per command: a change and its audit record are stored together or not at all."""

from __future__ import annotations

import pytest

from broker.models import AuditRecord
from broker.services import audit
from broker.services import management
from broker.services import users
from broker.web import admin as admin_pages
from tests.support import ADMIN


@pytest.fixture
def admin(client, auth):
    auth.login(*ADMIN)
    return client


def add_newbie(client, auth):
    form = {"csrf_token": auth.csrf(), "username": "newbie", "password": "newbie-password-1", "role": "agent"}
    return client.post("/admin/users", data=form)


def stored(app) -> tuple[bool, list[tuple[str, str]]]:
    """Whether the user "newbie" exists, and the admin records about adding them, as (outcome, reason)."""
    with app.app_context():
        rows = audit.page(audit.Filter(action="admin"))
        return users.find("newbie") is not None, [(r.outcome, r.reason) for r in rows if r.detail == "user_add"]


def test_a_failure_after_a_change_and_its_record_leaves_neither_behind(admin, auth, app, monkeypatch):
    def broken_flash(*args, **kwargs):
        raise RuntimeError("the page broke after the change was made")

    # The change and its record are staged by now; the route fails before it answers.
    monkeypatch.setattr(admin_pages, "flash", broken_flash)
    assert add_newbie(admin, auth).status_code == 500
    assert stored(app) == (False, [])


def test_a_change_that_succeeds_is_stored_with_its_record(admin, auth, app):
    assert add_newbie(admin, auth).status_code == 302
    assert stored(app) == (True, [("ok", "added newbie (agent)")])


def test_a_refused_change_keeps_the_record_of_its_refusal(admin, auth, app):
    add_newbie(admin, auth)
    assert add_newbie(admin, auth).status_code == 302  # back to the page, which says why
    exists, records = stored(app)
    assert exists
    assert records[0][0] == "failed" and "already exists" in records[0][1]


def test_a_commit_that_fails_stores_nothing_and_fails_the_request(admin, auth, app, monkeypatch):
    def unstorable(action, outcome, **fields):
        return AuditRecord(action=None, outcome=outcome)  # NOT NULL: its insert fails at the commit

    monkeypatch.setattr(audit, "entry_for", unstorable)
    assert add_newbie(admin, auth).status_code == 500
    monkeypatch.undo()
    assert stored(app) == (False, [])


def test_a_command_that_fails_after_its_change_stores_nothing(runner, app, monkeypatch):
    def broken_stage(*args, **kwargs):
        raise RuntimeError("the record could not be made")

    monkeypatch.setattr(management.audit, "stage", broken_stage)
    result = runner.invoke(args=["users", "add", "newbie", "--password-stdin"], input="newbie-password-1\n")
    assert result.exit_code != 0
    monkeypatch.undo()
    assert stored(app) == (False, [])


def test_a_command_stores_its_change_and_record_together(runner, app):
    result = runner.invoke(args=["users", "add", "newbie", "--password-stdin"], input="newbie-password-1\n")
    assert result.exit_code == 0, result.output
    exists, records = stored(app)
    assert exists and records == [("ok", "added newbie (agent)")]
