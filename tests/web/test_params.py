"""What a request carries in: the ``cloud`` parameter, small JSON bodies, where a navigation started."""

from __future__ import annotations

import pytest
from werkzeug.exceptions import BadRequest

from broker.web.params import cloud_arg
from broker.web.params import from_this_site
from broker.web.params import json_object

FIELDS = {"action", "confirmation"}
TOO_LARGE = "The request body must be a small JSON object (at most 64 bytes)."
NOT_JSON = "The request body is not valid JSON."
WRONG_SHAPE = "The request body must be a JSON object with string fields action, confirmation."


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", None),  # absent: every cloud
        ("cloud=", None),  # empty: every cloud, as the list's "All clouds" option sends it
        ("cloud=lab", "lab"),
        ("cloud=beta%2FRegionOne", "beta/RegionOne"),
        ("cloud=odd+cloud%26x%3D1%23", "odd cloud&x=1#"),
        ("cloud=%20", " "),  # not trimmed: a name nobody has lists nothing, as before
        ("cloud=lab&cloud=beta", "lab"),  # the first, as request.args.get reads it
        ("Cloud=lab", None),  # the name is case-sensitive
    ],
)
def test_cloud_arg(app, query, expected):
    with app.test_request_context(f"/api/servers?{query}"):
        assert cloud_arg() == expected


def body_of(app, data: bytes | str, content_type: str = "application/json", limit: int = 64, **kwargs) -> dict:
    with app.test_request_context("/api/x", method="POST", data=data, content_type=content_type):
        return json_object(limit, FIELDS, **kwargs)


def refusal(app, data: bytes | str, content_type: str = "application/json", **kwargs) -> str:
    """The 400's message for ``data``: it must be a 400, never another error."""
    with pytest.raises(BadRequest) as refused:
        body_of(app, data, content_type, **kwargs)
    assert refused.value.code == 400
    return refused.value.description


@pytest.mark.parametrize("data", [b"", b"   ", b"\n\t "])
def test_an_empty_body_is_an_empty_object(app, data):
    assert body_of(app, data) == {}


def test_a_small_object_of_known_string_fields_is_taken(app):
    assert body_of(app, '{"action": "start"}') == {"action": "start"}
    assert body_of(app, '{"action": "start", "confirmation": "x"}') == {"action": "start", "confirmation": "x"}


def test_the_content_type_is_not_what_is_checked(app):
    """As before the two parsers became one: the body decides, whatever the Content-Type says."""
    assert body_of(app, '{"action": "start"}', content_type="text/plain") == {"action": "start"}
    assert refusal(app, "action=start", content_type="application/x-www-form-urlencoded") == NOT_JSON


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("action=start", NOT_JSON),
        ('{"action": "start"', NOT_JSON),
        (b'{"action": "\xff"}', NOT_JSON),  # not UTF-8
        ('["start"]', WRONG_SHAPE),
        ('"start"', WRONG_SHAPE),
        ("null", WRONG_SHAPE),
        ("3", WRONG_SHAPE),
        ('{"action": "start", "admin": "yes"}', WRONG_SHAPE),
        ('{"action": ["start"]}', WRONG_SHAPE),
        ('{"action": null}', WRONG_SHAPE),
        ('{"action": NaN}', WRONG_SHAPE),
        ('{"action": {"nested": "x"}}', WRONG_SHAPE),
    ],
)
def test_bad_bodies_are_400s_that_say_why(app, data, message):
    assert refusal(app, data) == message


@pytest.mark.parametrize("data", ["[" * 20_000, '{"a": ' * 10_000])
def test_nesting_deeper_than_the_parser_recurses_is_a_400_not_a_crash(app, data):
    assert refusal(app, data, limit=100_000) == NOT_JSON


def test_a_body_over_the_limit_is_refused_before_it_is_parsed(app):
    at_limit = '{"action": "' + "x" * (64 - len('{"action": ""}')) + '"}'
    assert len(at_limit) == 64 and body_of(app, at_limit)["action"].startswith("x")
    assert refusal(app, at_limit + " ") == TOO_LARGE
    assert refusal(app, "[" * 65) == TOO_LARGE  # not even parsed


def test_the_refusal_names_the_shape_the_caller_gives(app):
    shape = '{"reason": one of load, refresh}'
    assert refusal(app, '["load"]', shape=shape) == f"The request body must be {shape}."


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "none"}, False),  # typed into the address bar, or a bookmark
        ({}, False),  # an old browser says nothing
    ],
)
def test_from_this_site(app, headers, expected):
    with app.test_request_context("/console/web-01/open", headers=headers):
        assert from_this_site() is expected
