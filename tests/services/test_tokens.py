"""Single-use tokens: only the hash stored, used once by whoever claims first, refused when expired or
when a binding does not hold (spent by that attempt or left for the right one, as the purpose asks)."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy import update

from broker.extensions import db
from broker.models import SingleUseToken
from broker.services import tokens
from broker.services import users
from broker.services.clock import aware
from tests.support import ADMIN
from tests.support import AGENT

PURPOSE = "test"
TTL = 60


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield


def bindings(name: str = AGENT[0]) -> dict:
    """Everything a token of the tests is bound to, as a claim names it."""
    return {
        "user_id": users.find(name).id,
        "session_id": "session-1",
        "server_id": "server-1",
        "cloud": "lab",
        "scope": "https://broker.example",
    }


def issued(purpose: str = PURPOSE, ttl: int = TTL, **changes) -> str:
    token = tokens.issue(purpose, ttl, **{**bindings(), **changes}, server_name="web-01")
    db.session.commit()  # the caller's commit: tokens only stage
    return token


def claimed(token: str, purpose: str = PURPOSE, spent_by_any_attempt: bool = False, **changes) -> tokens.Claim:
    claim = tokens.claim(purpose, token, spent_by_any_attempt=spent_by_any_attempt, **{**bindings(), **changes})
    db.session.commit()
    return claim


def stored() -> list[SingleUseToken]:
    return list(db.session.scalars(select(SingleUseToken).order_by(SingleUseToken.expires_at)))


def expire(token: str, seconds_ago: float) -> None:
    past = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    db.session.execute(
        update(SingleUseToken).where(SingleUseToken.digest == tokens.digest(token)).values(expires_at=past)
    )
    db.session.commit()


def test_only_the_hash_is_stored_with_the_purpose_bindings_and_expiry(ctx):
    before = datetime.now(UTC)
    token = issued()
    [row] = stored()
    assert token not in repr(vars(row))
    assert row.digest == hashlib.sha256(token.encode()).hexdigest() == tokens.digest(token)
    expected = {**bindings(), "purpose": PURPOSE, "server_name": "web-01", "used_at": None}
    assert {name: getattr(row, name) for name in expected} == expected
    assert timedelta(seconds=TTL) <= aware(row.expires_at) - before < timedelta(seconds=TTL + 5)


def test_a_token_is_granted_once_and_a_replay_is_refused_as_used(ctx):
    token = issued()
    first = claimed(token)
    assert first.granted and first.row.digest == tokens.digest(token)
    assert stored()[0].used_at is not None
    again = claimed(token)
    assert (again.granted, again.refusal) == (False, tokens.USED)


@pytest.mark.parametrize("token", ["made-up", "", "x" * 200])
def test_a_token_never_issued_is_unknown(ctx, token):
    issued()
    claim = claimed(token)
    assert (claim.row, claim.refusal) == (None, tokens.UNKNOWN)
    assert stored()[0].used_at is None


def test_a_token_of_another_purpose_is_unknown_and_left_for_its_own(ctx):
    token = issued(purpose="power")
    assert claimed(token, purpose="relay", spent_by_any_attempt=True).refusal == tokens.UNKNOWN
    assert stored()[0].used_at is None
    assert claimed(token, purpose="power").granted


@pytest.mark.parametrize("spent_by_any_attempt", [False, True], ids=["left", "spent"])
def test_an_expired_token_is_refused(ctx, spent_by_any_attempt):
    token = issued()
    expire(token, seconds_ago=1)
    claim = claimed(token, spent_by_any_attempt=spent_by_any_attempt)
    assert claim.refusal == tokens.EXPIRED and claim.row is not None


@pytest.mark.parametrize(
    ("binding", "other"),
    [
        ("user_id", None),  # the admin's ID, filled in below
        ("session_id", "session-2"),
        ("server_id", "server-2"),
        ("cloud", "other-cloud"),
        ("scope", "https://evil.example"),
    ],
)
def test_each_binding_that_does_not_hold_is_named_and_the_token_left_for_the_right_claim(ctx, binding, other):
    token = issued()
    wrong = users.find(ADMIN[0]).id if binding == "user_id" else other
    claim = claimed(token, **{binding: wrong})
    assert (claim.granted, claim.refusal) == (False, binding)
    assert stored()[0].used_at is None
    assert claimed(token).granted


@pytest.mark.parametrize("binding", tokens.BINDINGS)
def test_a_token_spent_by_any_attempt_is_used_up_by_a_wrong_one(ctx, binding):
    token = issued()
    wrong = users.find(ADMIN[0]).id if binding == "user_id" else "other"
    assert claimed(token, spent_by_any_attempt=True, **{binding: wrong}).refusal == binding
    assert claimed(token, spent_by_any_attempt=True).refusal == tokens.USED


def test_a_claim_checks_only_the_bindings_it_names(ctx):
    token = issued()
    claim = tokens.claim(PURPOSE, token, session_id="session-1")
    assert claim.granted and claim.row.server_id == "server-1"
    with pytest.raises(TypeError, match="not bindings of a single-use token: action"):
        tokens.claim(PURPOSE, token, action="start")


def test_a_claim_only_stages_the_caller_commits_or_not(ctx):
    token = issued()
    assert tokens.claim(PURPOSE, token, **bindings()).granted
    db.session.rollback()
    assert stored()[0].used_at is None
    assert claimed(token).granted


def test_of_many_claims_at_once_exactly_one_wins(app, ctx):
    token = issued()
    claimers = 6
    start = threading.Barrier(claimers)
    refusals: list[str | None] = []

    def claim() -> None:
        with app.app_context():
            start.wait(timeout=10)
            refusals.append(claimed(token).refusal)

    threads = [threading.Thread(target=claim) for _ in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(refusals, key=str) == [None] + [tokens.USED] * (claimers - 1)


def test_issuing_removes_tokens_expired_a_while_ago_and_keeps_recent_ones_to_say_expired(ctx):
    old, recent = issued(), issued(purpose="power")
    expire(old, seconds_ago=tokens.KEEP_EXPIRED + 60)
    expire(recent, seconds_ago=1)
    fresh = issued()
    assert {row.digest for row in stored()} == {tokens.digest(recent), tokens.digest(fresh)}
    assert claimed(old).refusal == tokens.UNKNOWN
    assert claimed(recent, purpose="power").refusal == tokens.EXPIRED


def test_long_values_are_cut_to_their_columns(ctx):
    token = tokens.issue(PURPOSE, TTL, **{**bindings(), "scope": "o" * 300}, server_name="n" * 300)
    db.session.commit()
    [row] = stored()
    assert (len(row.scope), len(row.server_name)) == (255, 255)
    assert claimed(token, scope="o" * 255).granted


# -- what a token is about (subject), and reading one without using it (peek) ------------------------------


def test_a_subject_is_stored_cut_to_its_column_and_checked_as_a_binding(ctx):
    token = issued(subject="41")
    assert stored()[0].subject == "41"
    refused = claimed(token, subject="42")
    assert (refused.granted, refused.refusal) == (False, "subject")
    assert stored()[0].used_at is None  # left for a claim about the right thing
    assert claimed(token, subject="41").granted
    assert issued(subject="9" * 100) and {row.subject for row in stored()} == {"41", "9" * 64}


def test_a_token_issued_without_a_subject_has_an_empty_one(ctx):
    issued()
    assert stored()[0].subject == ""


def test_peek_reads_a_token_of_its_purpose_without_using_it(ctx):
    token = issued(subject="41", scope="named")
    row = tokens.peek(PURPOSE, token)
    assert (row.subject, row.scope, row.used_at) == ("41", "named", None)
    db.session.commit()
    assert stored()[0].used_at is None
    assert claimed(token, scope="named").granted
    assert tokens.peek(PURPOSE, token).used_at is not None  # a used one is still read: its claim says "used"


@pytest.mark.parametrize("token", ["", "made-up", "x" * (tokens.LONGEST + 1), "other-purpose"])
def test_peek_finds_nothing_for_a_token_that_is_not_one_of_its_purpose(ctx, token):
    if token == "other-purpose":
        token = issued(purpose="power")
    assert tokens.peek(PURPOSE, token) is None
