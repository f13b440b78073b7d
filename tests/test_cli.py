"""``flask users ...``: adding, listing, changing passwords, removing."""

from __future__ import annotations

from broker import users
from broker.extensions import db


def test_add_list_remove(runner, app):
    result = runner.invoke(args=["users", "add", "carol", "--admin", "--password-stdin"], input="carol-pass-1\n")
    assert result.exit_code == 0, result.output
    assert "added carol (admin)" in result.output
    listing = runner.invoke(args=["users", "list"]).output
    assert "carol\tadmin" in listing and "agent\tagent" in listing
    with app.app_context():
        stored = users.find("carol").password_hash
        assert "carol-pass-1" not in stored
        assert users.authenticate("carol", "carol-pass-1") is not None
    assert runner.invoke(args=["users", "remove", "carol"]).exit_code == 0
    with app.app_context():
        assert users.find("carol") is None


def test_add_refuses_duplicates_and_short_passwords(runner):
    result = runner.invoke(args=["users", "add", "agent", "--password-stdin"], input="long-enough-1\n")
    assert result.exit_code != 0 and "already exists" in result.output
    result = runner.invoke(args=["users", "add", "dave", "--password-stdin"], input="short\n")
    assert result.exit_code != 0 and "at least 8" in result.output


def test_add_refuses_odd_names(runner):
    result = runner.invoke(args=["users", "add", "<script>", "--password-stdin"], input="long-enough-1\n")
    assert result.exit_code != 0


def test_set_password(runner, app):
    result = runner.invoke(args=["users", "set-password", "agent", "--password-stdin"], input="brand-new-pass\n")
    assert result.exit_code == 0
    with app.app_context():
        assert users.authenticate("agent", "brand-new-pass") is not None
        assert users.authenticate("agent", "agent-password-1") is None


def test_unknown_user(runner):
    result = runner.invoke(args=["users", "remove", "nobody"])
    assert result.exit_code != 0 and "no user called nobody" in result.output


def test_interactive_password_prompt(runner, app):
    result = runner.invoke(args=["users", "add", "erin"], input="erin-pass-12\nerin-pass-12\n")
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert db.session.get(users.User, users.find("erin").id).role == "agent"
