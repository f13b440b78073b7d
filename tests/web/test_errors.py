"""How errors leave the broker: cloud trouble mapped to statuses and slugs in the web layer."""

from __future__ import annotations

import inspect

import pytest

from broker.cloud import errors
from broker.web.errors import CLOUD_ANSWERS
from broker.web.errors import cloud_answer

KINDS = [kind for _, kind in inspect.getmembers(errors, inspect.isclass) if issubclass(kind, errors.CloudError)]


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
def test_every_cloud_error_has_an_answer_and_carries_no_web_status(kind):
    status, slug = cloud_answer(kind("message"))
    assert 400 <= status < 600 and slug
    assert not hasattr(kind, "status") and not hasattr(kind, "code")


@pytest.mark.parametrize(
    ("exc", "answer"),
    [
        (errors.CircuitOpen("x"), (503, "cloud_unreachable")),
        (errors.CloudBusyHere("x"), (503, "cloud_busy")),
        (errors.ServerNotReady("x", upstream_status=409), (409, "server_not_running")),
        (errors.CloudError("x", upstream_status=406), (502, "cloud_error")),
    ],
)
def test_a_subclass_answers_as_its_nearest_listed_kind(exc, answer):
    assert cloud_answer(exc) == answer


def test_the_table_lists_only_cloud_errors():
    assert all(issubclass(kind, errors.CloudError) for kind in CLOUD_ANSWERS)
