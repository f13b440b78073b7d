"""Power actions (broker/services/power.py): asked and confirmed in two steps, each confirmation good once and
only for its own user, session, server, cloud and action; every attempt audited. The routes' side of the same
(statuses, JSON, CSRF) is in tests/web/test_api.py."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy import update

from broker import state
from broker.cloud import errors
from broker.extensions import db
from broker.models import AuditRecord
from broker.models import SingleUseToken
from broker.services import policy
from broker.services import tokens
from broker.services import users
from broker.services.power import CONFIRMATION_TTL
from broker.services.power import PURPOSE
from broker.services.power import PowerRefused
from broker.services.power import PowerService
from broker.services.power import actions_for
from tests.support import ADMIN
from tests.support import AGENT
from tests.support import server_id

SESSION = "session-1"
WEB_01 = server_id(1)  # ACTIVE
DB_01 = server_id(3)  # SHUTOFF


@pytest.fixture
def power(app) -> PowerService:
    with app.app_context():
        yield state.power()


def grant_power(name_pattern: str = "*") -> None:
    policy.add_rule(user=AGENT[0], cloud="lab", clouds=["lab"], name_pattern=name_pattern, power=True)
    db.session.commit()


def agent():
    return users.find(AGENT[0])


def confirm(power: PowerService, server: str = WEB_01, action: str = "reboot-soft", session: str = SESSION) -> str:
    return power.confirm(agent(), session, server, "lab", action).token


def act(
    power: PowerService,
    token: str,
    server: str = WEB_01,
    action: str = "reboot-soft",
    session: str = SESSION,
    user: str = AGENT[0],
):
    """As the power route does it: claim, commit (the confirmation is spent for good), then send."""
    someone = users.find(user)
    claimed = power.claim(someone, session, server, "lab", action, token)
    db.session.commit()
    return power.send(someone, claimed, action)


def power_rows() -> list[AuditRecord]:
    return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == "power").order_by(AuditRecord.id)))


def refused_as_unconfirmed(power: PowerService, token: str, **request) -> None:
    with pytest.raises(PowerRefused) as refused:
        act(power, token, **request)
    assert refused.value.code == "confirmation_invalid"


@pytest.mark.parametrize(
    ("status", "actions"),
    [
        ("ACTIVE", ["reboot-soft", "reboot-hard"]),
        ("SHUTOFF", ["start", "reboot-hard"]),
        ("ERROR", ["reboot-hard"]),
        ("BUILD", []),
    ],
)
def test_the_actions_offered_fit_the_servers_status(status, actions):
    assert actions_for(status) == actions


def test_a_confirmation_asks_the_question_and_stores_only_its_hash_bound_to_the_request(power):
    grant_power()
    confirmation = power.confirm(agent(), SESSION, DB_01, "lab", "start")
    assert (confirmation.action, confirmation.server.name, confirmation.question) == (
        "start",
        "db-01",
        "Start server db-01?",
    )
    [row] = db.session.scalars(select(SingleUseToken)).all()
    assert confirmation.token not in repr(vars(row)) and row.digest == tokens.digest(confirmation.token)
    assert (row.purpose, row.user_id, row.session_id, row.server_id, row.cloud, row.scope) == (
        PURPOSE,
        agent().id,
        SESSION,
        DB_01,
        "lab",
        "start",
    )
    lifetime = row.expires_at.replace(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(seconds=CONFIRMATION_TTL - 5) < lifetime <= timedelta(seconds=CONFIRMATION_TTL)


def test_a_confirmed_action_reaches_the_cloud_once_and_is_audited(power, fake):
    grant_power()
    token = confirm(power, DB_01, "start")
    assert fake.actions == []  # nothing happens before the confirmation comes back
    server = act(power, token, DB_01, "start")
    assert server.id == DB_01 and fake.actions == [(DB_01, "os-start")]
    [row] = power_rows()
    assert (row.username, row.outcome, row.detail, row.server_name) == (AGENT[0], "ok", "start", "db-01")
    assert token not in row.reason


def test_a_replayed_confirmation_is_refused_and_audited(power, fake):
    grant_power()
    token = confirm(power)
    act(power, token)
    refused_as_unconfirmed(power, token)
    assert fake.actions == [(WEB_01, "reboot-SOFT")]
    assert [(r.outcome, r.detail) for r in power_rows()] == [("ok", "reboot-soft"), ("refused", "reboot-soft")]
    assert power_rows()[1].reason == "no valid confirmation (missing, used, expired, or issued for another request)"


@pytest.mark.parametrize("token", ["", "made-up", "x" * 200])
def test_a_forged_confirmation_is_refused_and_audited(power, fake, token):
    grant_power()
    refused_as_unconfirmed(power, token, action="reboot-hard")
    assert fake.actions == []
    [row] = power_rows()
    assert row.outcome == "refused" and "confirmation" in row.reason


@pytest.mark.parametrize(
    "request_",
    [
        {"action": "reboot-hard"},
        {"server": server_id(2)},
        {"session": "session-2"},
        {"user": ADMIN[0]},  # an admin may power anything, but not with the agent's confirmation
    ],
    ids=["action", "server", "session", "user"],
)
def test_a_confirmation_holds_only_for_its_own_request_and_stays_good_for_it(power, fake, request_):
    grant_power()
    token = confirm(power)
    refused_as_unconfirmed(power, token, **request_)
    assert fake.actions == []
    act(power, token)
    assert fake.actions == [(WEB_01, "reboot-SOFT")]


def test_an_expired_confirmation_is_refused(power, fake):
    grant_power()
    token = confirm(power)
    db.session.execute(update(SingleUseToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    db.session.commit()
    refused_as_unconfirmed(power, token)
    assert fake.actions == []


def test_the_confirmation_is_used_up_and_committed_before_the_action_goes_to_the_cloud(app, power, fake, monkeypatch):
    """So that a second request with it, however soon, finds it used, and a failed action is not sent again with it."""
    grant_power()
    token = confirm(power)
    client = power.consoles.inventory.cloud("lab").client
    send = client.server_action
    seen_used: list[bool] = []

    def sending(server: str, action: str) -> None:
        with app.app_context():  # a session of its own: it sees only what was committed
            seen_used.append(db.session.get(SingleUseToken, tokens.digest(token)).used_at is not None)
        send(server, action)

    monkeypatch.setattr(client, "server_action", sending)
    fake.faults.fail_next["action"] = [503] * 3
    with pytest.raises(errors.CloudError):
        act(power, token)
    assert seen_used == [True]
    db.session.commit()  # the request answers with the cloud's error and commits its record
    refused_as_unconfirmed(power, token)
    assert [(r.outcome, r.detail) for r in power_rows()] == [("failed", "reboot-soft"), ("refused", "reboot-soft")]


@pytest.mark.parametrize("step", ["confirm", "act"])
def test_power_without_the_permission_is_refused_and_audited(power, fake, step):
    # The agent may open every server of the cloud (the suite's rule), but no rule gives power.
    with pytest.raises(PowerRefused) as refused:
        confirm(power) if step == "confirm" else act(power, "made-up")
    assert refused.value.code == "power_not_allowed" and "web-01" in refused.value.message
    assert fake.actions == []
    [row] = power_rows()
    assert (row.outcome, row.reason) == ("refused", "no access rule grants power actions on this server")


def test_an_action_that_does_not_fit_the_status_is_refused_before_anything_is_stored(power):
    grant_power()
    with pytest.raises(PowerRefused) as refused:
        confirm(power, WEB_01, "start")
    assert (refused.value.code, refused.value.message) == (
        "wrong_state",
        "Server web-01 is ACTIVE: start needs it SHUTOFF.",
    )
    assert db.session.scalars(select(SingleUseToken)).all() == []


def test_the_clouds_refusal_is_audited_as_its_policy(power, fake):
    grant_power()
    token = confirm(power)
    fake.faults.fail_next["action"] = [403] * 3
    fake.faults.error_message = "Policy doesn't allow os_compute_api:servers:reboot"
    with pytest.raises(errors.ActionForbidden):
        act(power, token)
    [row] = power_rows()
    assert row.outcome == "refused" and row.reason.startswith("the cloud's policy: ")
