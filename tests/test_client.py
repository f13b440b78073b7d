"""The compute client against a stand-in cloud on loopback, including its error paths."""

from __future__ import annotations

import pytest
from conftest import make_client
from conftest import server_id

from broker.cloud import errors
from broker.cloud.client import Timeouts
from broker.cloud.client import parse_version


def test_lists_every_server_across_pages(fake):
    compute = make_client(fake, page_size=3)
    servers = compute.list_servers()
    assert [s.id for s in servers] == fake.order
    assert fake.counts["list"] == 3  # 7 servers in pages of 3
    web = servers[0]
    assert (web.name, web.status, web.addresses, web.az, web.cloud) == (
        "web-01",
        "ACTIVE",
        ("10.1.0.1",),
        "az-1",
        "lab",
    )


def test_mints_with_microversion_26(compute, fake):
    console = compute.create_console(server_id(1))
    assert console.url.startswith("http://127.0.0.1:6080/vnc_auto.html?path=%3Ftoken%3D")
    assert (console.type, console.protocol) == ("novnc", "vnc")
    token = console.url.rpartition("%3D")[2]
    assert fake.check_console_token(token).name == "web-01"


def test_falls_back_to_legacy_action_below_26(compute, fake):
    fake.faults.max_version = "2.5"
    console = compute.create_console(server_id(1))
    assert "vnc_auto.html" in console.url
    assert compute.max_version() == (2, 5)


def test_one_keystone_token_serves_many_calls(compute, fake):
    for _ in range(20):
        compute.create_console(server_id(1))
    compute.list_servers()
    assert fake.counts["token"] == 1


def test_revoked_token_reauthenticates_once(compute, fake):
    compute.create_console(server_id(1))
    fake.revoke_tokens()
    assert compute.create_console(server_id(2)).url
    assert fake.counts["token"] == 2


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (404, errors.ServerNotFound, "server_not_found"),
        (409, errors.ServerNotReady, "server_not_running"),
        (400, errors.ConsoleUnavailable, "console_unavailable"),
        (403, errors.CloudRefused, "cloud_refused"),
        (406, errors.CloudError, "cloud_error"),
        (429, errors.CloudBusy, "cloud_busy"),
        (500, errors.CloudError, "cloud_error"),
        (501, errors.ConsoleUnavailable, "console_unavailable"),
        (503, errors.CloudBusy, "cloud_busy"),
    ],
)
def test_error_statuses_become_typed_errors_with_upstream_message(compute, fake, status, kind, code):
    compute.max_version()
    fake.faults.fail_next["console"] = [status] * 3  # more than the retries, for the transient ones
    with pytest.raises(kind) as caught:
        compute.create_console(server_id(1))
    assert caught.value.code == code
    assert caught.value.upstream_status == status
    assert f"Injected failure {status} for console." in caught.value.message


def test_retry_after_is_kept(compute, fake):
    compute.max_version()
    fake.faults.fail_next["console"] = [429] * 3
    with pytest.raises(errors.CloudBusy) as caught:
        compute.create_console(server_id(1))
    assert caught.value.retry_after == 0.05


def test_unknown_server_is_not_found(compute):
    with pytest.raises(errors.ServerNotFound, match="could not be found"):
        compute.create_console(server_id(99))


def test_stopped_server_is_not_ready(compute):
    with pytest.raises(errors.ServerNotReady, match="is not ready"):
        compute.create_console(server_id(3))


def test_read_timeout_is_reported(fake):
    compute = make_client(fake, timeouts=Timeouts(connect=1, read=0.3))
    compute.max_version()
    fake.faults.hang["console"] = 1.0
    with pytest.raises(errors.CloudTimeout, match="did not answer in time"):
        compute.create_console(server_id(1))


def test_unreachable_cloud(fake):
    compute = make_client(fake)
    fake.public_base = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(errors.CloudUnreachable):
        compute.list_servers()


def test_keystone_down_is_unreachable(compute, fake):
    fake.faults.keystone_down = True
    with pytest.raises(errors.CloudUnreachable, match="identity service"):
        compute.list_servers()


def test_malformed_json_is_a_bad_response(compute, fake):
    fake.faults.malformed.add("list")
    with pytest.raises(errors.CloudBadResponse, match="malformed JSON"):
        compute.list_servers()


@pytest.mark.parametrize("scheme", ["javascript", "data", "file", "ftp"])
def test_console_url_that_is_not_http_is_refused(compute, fake, scheme):
    fake.faults.console_scheme = scheme
    with pytest.raises(errors.CloudBadResponse, match="not http"):
        compute.create_console(server_id(1))


def test_html_in_server_name_is_kept_as_text(compute):
    names = [s.name for s in compute.list_servers()]
    assert "<b>bold</b>&<script>alert(1)</script>" in names


def test_version_root_strips_project(compute, fake):
    assert compute.version_root() == f"{fake.public_base}/compute/v2.1/"


@pytest.mark.parametrize(("raw", "parsed"), [("2.96", (2, 96)), ("", (2, 0)), ("2.6", (2, 6)), ("x.y", (2, 0))])
def test_parse_version(raw, parsed):
    assert parse_version(raw) == parsed
