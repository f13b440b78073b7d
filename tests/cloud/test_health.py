"""A cloud's health: messages that name the fix, and one log line each time its state changes."""

from __future__ import annotations

import logging

import pytest
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from broker.cloud import errors
from broker.cloud.client import ComputeClient
from broker.cloud.health import Health
from broker.cloud.health import describe_identity
from broker.cloud.resilience import CircuitBreaker
from broker.cloud.resilience import RetryPolicy
from broker.cloud.types import Timeouts
from tests.support import make_client
from tests.support import server_id


def client_as(fake, *, password: str | None = None, region: str | None = None, **kwargs) -> ComputeClient:
    auth = v3.Password(
        auth_url=fake.auth_url,
        username=fake.username,
        password=password or fake.password,
        project_id=fake.project_id,
        user_domain_id="default",
    )
    session = ks_session.Session(auth=auth, timeout=2)
    return ComputeClient(
        "lab",
        session,
        region_name=region or fake.region,
        timeouts=Timeouts(1, 1),
        retry=RetryPolicy(attempts=1),
        **kwargs,
    )


@pytest.fixture
def cloud_log(caplog):
    """Records of the ``broker.cloud`` logger (the broker's loggers do not reach the root one)."""
    logger = logging.getLogger("broker.cloud")
    logger.addHandler(caplog.handler)
    propagate, logger.propagate = logger.propagate, False  # each record once, whatever else is set up
    yield caplog
    logger.propagate = propagate
    logger.removeHandler(caplog.handler)


def test_refused_credentials_are_named_as_such_not_unreachable(fake):
    compute = client_as(fake, password="not-the-password-9")
    with pytest.raises(errors.CloudRefused) as caught:
        compute.list_servers()
    message = caught.value.message
    assert f"the credentials (or their project scope) were refused by {fake.auth_url}" in message
    assert "unreachable" not in message and "not-the-password-9" not in message


def test_a_refused_connection_names_the_url(fake):
    compute = make_client(fake, retry=RetryPolicy(attempts=1))
    fake.public_base = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(errors.CloudUnreachable) as caught:
        compute.list_servers()
    assert "cannot connect to http://127.0.0.1:9/" in caught.value.message


def test_a_region_without_compute_names_the_regions_the_catalog_offers(fake):
    compute = client_as(fake, region="RegionTwo")
    with pytest.raises(errors.CloudError) as caught:
        compute.list_servers()
    message = caught.value.message
    assert f"no compute endpoint in region RegionTwo; it has compute in: {fake.region}" in message
    assert "Set region_name" in message and "compute_endpoint_override" not in message


def test_an_open_circuit_keeps_the_root_cause(fake):
    compute = make_client(fake, retry=RetryPolicy(attempts=1), breaker=CircuitBreaker(threshold=2, cooldown=60))
    fake.public_base = "http://127.0.0.1:9"
    for _ in range(2):
        with pytest.raises(errors.CloudUnreachable):
            compute.list_servers()
    with pytest.raises(errors.CircuitOpen) as caught:
        compute.list_servers()
    assert "is failing (last error: Listing servers: cloud lab: cannot connect to http://127.0.0.1:9/" in str(
        caught.value
    )
    assert compute.health.snapshot().last_error.startswith("Listing servers: cloud lab: cannot connect")


def test_state_changes_are_logged_once_each_with_who_the_broker_is(fake, cloud_log):
    compute = make_client(fake, retry=RetryPolicy(attempts=1), breaker=CircuitBreaker(threshold=100))
    assert compute.health.snapshot().state == "unknown"
    compute.list_servers()
    assert compute.health.snapshot().state == "ok"
    fake.faults.fail_next["list"] = [500, 500, 500]
    for _ in range(3):
        with pytest.raises(errors.CloudError):
            compute.list_servers()
    compute.list_servers()
    failing = [r for r in cloud_log.records if "is failing" in r.getMessage()]
    again = [r for r in cloud_log.records if "answers again" in r.getMessage()]
    assert len(failing) == 1 and failing[0].levelno == logging.ERROR
    assert len(again) == 1 and again[0].levelno == logging.WARNING
    line = failing[0].getMessage()
    for part in (f"auth_url={fake.auth_url}", f"user={fake.username}", "user_domain=default"):
        assert part in line
    assert f"project={fake.project_id}" in line and f"region={fake.region}" in line
    assert "upstream status 500" in line and fake.password not in line
    snapshot = compute.health.snapshot()
    assert snapshot.state == "ok" and snapshot.last_error_at and snapshot.last_success >= snapshot.last_error_at


def test_answers_about_one_server_leave_the_cloud_healthy(compute, cloud_log):
    compute.list_servers()
    with pytest.raises(errors.ServerNotFound):
        compute.get_server(server_id(99))
    with pytest.raises(errors.ServerNotReady):
        compute.create_console(server_id(3))
    assert compute.health.snapshot().state == "ok"
    assert not [r for r in cloud_log.records if "is failing" in r.getMessage()]


def test_identity_never_includes_a_secret():
    auth = v3.ApplicationCredential(
        auth_url="https://keystone.example/v3", application_credential_id="ac-1", application_credential_secret="s3"
    )
    text = describe_identity(auth, "RegionOne")
    assert text == "auth_url=https://keystone.example/v3 application_credential=ac-1 region=RegionOne"
    health = Health("x", text)
    health.failed("boom", 503)
    assert health.snapshot().upstream_status == 503


def test_answered_within_is_this_processs_own_recent_success():
    """What the inventory asks before it shows a list another process walked."""
    now = [1000.0]
    health = Health("lab", "auth_url=x", clock=lambda: now[0])
    assert not health.answered_within(30)  # never called: unknown
    health.succeeded()
    now[0] += 29
    assert health.answered_within(30)
    now[0] += 2
    assert not health.answered_within(30)  # too long ago to say
    health.succeeded()
    health.failed("refused")
    assert not health.answered_within(30)  # the last call failed
