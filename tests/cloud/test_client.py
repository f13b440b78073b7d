"""The compute client against a stand-in cloud on loopback, including its error paths."""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker.cloud import errors
from broker.cloud.client import CONSOLE_BODIES
from broker.cloud.client import CONSOLE_SCHEMES
from broker.cloud.client import LEGACY_CONSOLE_ACTIONS
from broker.cloud.client import details_from_nova
from broker.cloud.client import owned
from broker.cloud.client import safe_text
from broker.cloud.types import Timeouts
from broker.config import CONSOLE_TYPES
from broker.demo.cloud import OTHER_PROJECT_ID
from broker.demo.cloud import OTHER_PROJECT_SERVER_ID
from broker.web.errors import cloud_answer
from tests.support import make_client
from tests.support import server_id


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


def test_every_console_type_a_cloud_may_offer_can_be_minted():
    # broker.config validates console_types; the client holds how each is minted, in both API eras.
    assert set(CONSOLE_TYPES) == set(CONSOLE_BODIES) == set(LEGACY_CONSOLE_ACTIONS) == set(CONSOLE_SCHEMES)


def test_mints_a_serial_console_as_nova_serialproxy_websocket(compute, fake):
    console = compute.create_console(server_id(1), "serial")
    assert console.url.startswith("ws://127.0.0.1:6083/?token=")
    assert (console.type, console.protocol) == ("serial", "serial")
    token = console.url.rpartition("=")[2]
    assert fake.check_console_token(token, "serial").name == "web-01"
    assert fake.check_console_token(token) is None  # a serial token opens no graphical console


def test_a_serial_console_below_26_comes_from_the_legacy_action(compute, fake):
    fake.faults.max_version = "2.5"
    console = compute.create_console(server_id(1), "serial")
    assert console.url.startswith("ws://127.0.0.1:6083/?token=") and console.type == "serial"


@pytest.mark.parametrize(("kind", "base"), [("serial", "http://127.0.0.1:6083"), ("serial", "file://h")])
def test_a_serial_url_that_is_not_a_websocket_is_refused(compute, fake, kind, base):
    fake.serial_base = base
    with pytest.raises(errors.CloudBadResponse, match=r"not ws\(s\); it was refused"):
        compute.create_console(server_id(1), kind)


def test_a_graphical_url_on_a_websocket_scheme_is_refused(compute, fake):
    fake.faults.console_scheme = "ws"
    with pytest.raises(errors.CloudBadResponse, match=r"not http\(s\)"):
        compute.create_console(server_id(1))


@pytest.mark.parametrize("kind", ["novnc", "serial"])
def test_a_console_type_the_cloud_switched_off_is_unavailable(compute, fake, kind):
    fake.faults.unavailable_consoles = [kind]
    with pytest.raises(errors.ConsoleUnavailable, match=f"Unavailable console type {kind}"):
        compute.create_console(server_id(1), kind)
    other = "serial" if kind == "novnc" else "novnc"
    assert compute.create_console(server_id(1), other).type == other


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
    ("status", "kind", "code", "shown"),
    [
        (404, errors.ServerNotFound, "server_not_found", "Injected failure 404 for console."),
        (409, errors.ServerNotReady, "server_not_running", "Injected failure 409 for console."),
        (400, errors.ConsoleUnavailable, "console_unavailable", "Injected failure 400 for console."),
        (403, errors.CloudRefused, "cloud_refused", "Injected failure 403 for console."),
        (406, errors.CloudError, "cloud_error", "Injected failure 406 for console."),
        (429, errors.CloudBusy, "cloud_busy", "Injected failure 429 for console."),
        # The cloud's own failures: their status and fault name, not their free text.
        (500, errors.CloudError, "cloud_error", "cloud lab answered HTTP 500 (computeFault)."),
        (501, errors.ConsoleUnavailable, "console_unavailable", "cloud lab answered HTTP 501 (notImplemented)."),
        (503, errors.CloudBusy, "cloud_busy", "cloud lab answered HTTP 503 (serviceUnavailable)."),
    ],
)
def test_error_statuses_become_typed_errors_with_a_safe_message(compute, fake, status, kind, code, shown):
    compute.max_version()
    fake.faults.fail_next["console"] = [status] * 3  # more than the retries, for the transient ones
    with pytest.raises(kind) as caught:
        compute.create_console(server_id(1))
    assert cloud_answer(caught.value)[1] == code  # the slug a person's API client gets
    assert caught.value.upstream_status == status
    assert caught.value.message == f"Opening the console: {shown}"


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


def test_the_version_range_is_discovered_once_through_keystoneauth(compute, fake):
    assert compute.max_version() == (2, 96)
    assert compute.max_version() == (2, 96)
    assert fake.counts["versions"] == 1


def test_an_unreadable_version_document_is_tried_again_not_kept(compute, fake):
    # keystoneauth1 falls back to the catalog's endpoint, without versions, when discovery fails.
    fake.faults.fail_next["versions"] = [500]
    with pytest.raises(errors.CloudUnreachable, match="did not say which microversions"):
        compute.create_console(server_id(1))
    assert fake.counts["console"] == 0
    assert compute.create_console(server_id(1)).url
    assert compute.max_version() == (2, 96)


def test_the_first_mints_at_once_share_one_discovery(compute, fake):
    fake.faults.hang["versions"] = 0.3  # the first reader is still waiting when the others ask
    with ThreadPoolExecutor(12) as pool:
        consoles = list(pool.map(lambda _: compute.create_console(server_id(1)), range(12)))
    assert all(console.url for console in consoles)
    assert fake.counts["versions"] == 1


@pytest.fixture
def cloud_log():
    """What the client logs on ``broker.cloud`` (WARNING and up) while the test runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("broker.cloud")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


# -- upstream text made safe to show ----------------------------------------------------

DB_URL = "postgresql+psycopg://nova:s3cr3t@db.internal:5432/nova"


@pytest.mark.parametrize(
    ("raw", "kept", "gone"),
    [
        (
            f"DBConnectionError: cannot reach {DB_URL}",
            ["DBConnectionError", "db.internal:5432/nova"],
            ["s3cr3t", "nova:"],
        ),
        ("see amqp://guest:p@ss/w0rd@rabbit:5672/ now", ["rabbit:5672"], ["p@ss", "w0rd", "guest"]),
        (
            "console https://proxy:6080/vnc.html?token=abc123&lang=EN",
            ["https://proxy:6080/vnc.html"],
            ["abc123", "lang"],
        ),
        ("auth failed: X-Auth-Token=gAAAAAB12 password=hunter2", ["auth failed"], ["gAAAAAB12", "hunter2"]),
        ("bad\x00\x1b[31mred\u202edlrow\r\nnext", ["bad", "red", "next"], ["\x00", "\x1b", "\u202e", "\r", "\n"]),
        ("Instance is not ready. Is it running? Try later.", ["Is it running? Try later."], []),
    ],
    ids=["db-url", "password-with-at-and-slash", "token-query", "secret-pairs", "control-chars", "plain-question"],
)
def test_safe_text_cuts_what_must_not_be_shown(raw, kept, gone):
    text = safe_text(raw)
    for part in kept:
        assert part in text
    for part in gone:
        assert part not in text


def test_safe_text_is_bounded():
    assert len(safe_text("x" * 5000)) == 200
    assert len(safe_text("x" * 5000, limit=1000)) == 1000


def test_a_5xx_body_is_shown_as_status_and_fault_and_logged_redacted(compute, fake, cloud_log):
    fake.faults.error_message = f"Traceback: OperationalError {DB_URL}"
    fake.faults.fail_next["list"] = [500] * 3
    with pytest.raises(errors.CloudError) as caught:
        compute.list_servers()
    assert caught.value.message == "Listing servers: cloud lab answered HTTP 500 (computeFault)."
    logged = cloud_log.getvalue()
    assert "cloud lab: Listing servers: HTTP 500 computeFault: Traceback: OperationalError" in logged
    assert "db.internal" in logged and "s3cr3t" not in logged


def test_a_4xx_message_is_shown_redacted(compute, fake):
    compute.max_version()
    fake.faults.error_message = "Console refused for https://proxy/vnc.html?token=abc123 " + "x" * 400
    fake.faults.fail_next["console"] = [400]
    with pytest.raises(errors.ConsoleUnavailable) as caught:
        compute.create_console(server_id(1))
    assert caught.value.message.startswith("Opening the console: Console refused for https://proxy/vnc.html?")
    assert "abc123" not in caught.value.message
    assert len(caught.value.message) < 250


# -- only the configured project's servers ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "mine"),
    [
        ({"id": "x", "tenant_id": "p1"}, True),
        ({"id": "x", "tenant_id": "p2"}, False),
        ({"id": "x"}, False),
        ({"id": "x", "tenant_id": None}, False),
        ({"id": "x", "tenant_id": ""}, False),
        ("not a server", False),
    ],
)
def test_owned_needs_the_project_in_tenant_id(body, mine):
    assert owned(body, "p1") is mine


def test_another_projects_server_is_not_found_by_id(compute, fake):
    # The stand-in cloud answers as for an admin account: the server is there for any project.
    raw = compute.adapter.get(f"/servers/{OTHER_PROJECT_SERVER_ID}", raise_exc=False).json()["server"]
    assert raw["tenant_id"] == OTHER_PROJECT_ID
    with pytest.raises(errors.ServerNotFound):
        compute.get_server(OTHER_PROJECT_SERVER_ID)
    assert compute.get_server(server_id(1)).name == "web-01"


def test_another_projects_servers_are_left_out_of_the_list(compute, fake, cloud_log):
    fake.faults.list_every_project = True
    raw = compute.adapter.get("/servers/detail", raise_exc=False).json()["servers"]
    assert OTHER_PROJECT_SERVER_ID in [s["id"] for s in raw]
    ids = [s.id for s in compute.list_servers()]
    assert ids == fake.order and OTHER_PROJECT_SERVER_ID not in ids
    assert "left out 1 listed servers" in cloud_log.getvalue()


# -- any failure inside the client is that cloud's CloudError ---------------------------


@pytest.mark.parametrize(
    "failure",
    [
        Exception("password is a required attribute"),  # keystoneauth1, for a clouds.yaml entry without one
        RuntimeError(f"bug in a library near {DB_URL}"),
        KeyError("catalog"),
    ],
    ids=["bare-exception", "runtime-error", "key-error"],
)
@pytest.mark.parametrize("call", ["list_servers", "get_server", "create_console"])
def test_any_failure_becomes_the_clouds_error(fake, monkeypatch, cloud_log, failure, call):
    compute = make_client(fake, max_in_flight=1)
    compute.max_version()

    def explode(*args, **kwargs):
        raise failure

    monkeypatch.setattr(compute.adapter, "request", explode)
    args = () if call == "list_servers" else (server_id(1),)
    with pytest.raises(errors.CloudError) as caught:
        getattr(compute, call)(*args)
    assert "cloud lab failed in the broker" in caught.value.message
    assert type(failure).__name__ in caught.value.message and "s3cr3t" not in caught.value.message
    circuit = "consoles" if call == "create_console" else "lists"
    assert compute.breakers[circuit].failures == 1  # reported to that call's breaker
    with compute.bulkhead:  # and its slot handed back
        pass
    logged = cloud_log.getvalue()
    assert f"failed: {type(failure).__name__}: " in logged and "s3cr3t" not in logged


def test_a_malformed_server_is_the_clouds_error(compute, fake):
    fake.servers[server_id(2)].addresses = ["not", "a", "mapping"]
    with pytest.raises(errors.CloudError, match="Listing servers: cloud lab failed in the broker"):
        compute.list_servers()


# -- the server panel's fields and power actions ---------------------------------------


def test_the_list_keeps_the_panels_fields_as_the_cloud_gave_them(compute, fake):
    broken = fake.servers[server_id(4)]
    broken.status, broken.flavor = "ERROR", "m1.large"
    broken.fault = {"code": 500, "message": "No valid host was found.", "created": "2026-01-05T09:31:00Z"}
    servers = {s.id: s for s in compute.list_servers()}
    details = servers[server_id(4)].details.to_json()
    assert details == {
        "task_state": "",
        "vm_state": "error",
        "power_state": "NOSTATE",
        "fault": {"code": 500, "message": "No valid host was found."},
        "flavor": "m1.large",
        "image": "b1f2c3d4-0000-4000-8000-0000000000aa",
        "created": "2026-01-05T09:30:00Z",
        "updated": "2026-01-05T09:30:00Z",
    }
    running = servers[server_id(1)].details
    assert (running.power_state, running.vm_state, running.fault_message) == ("RUNNING", "active", "")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # From microversion 2.47 the flavor is embedded by its name.
        ({"flavor": {"original_name": "m1.tiny", "vcpus": 1}}, {"flavor": "m1.tiny"}),
        # Booted from a volume: Nova sends "" for the image.
        ({"image": ""}, {"image": ""}),
        # What is not the documented shape is left empty, never shown raw.
        ({"flavor": "m1", "image": ["x"], "OS-EXT-STS:power_state": "1", "fault": "boom"}, {"flavor": "", "image": ""}),
        ({"fault": {"code": True, "message": "x?token=secret"}}, {"fault_code": None, "fault_message": "x?<redacted>"}),
        ({"OS-EXT-STS:task_state": "powering-on\u202e", "OS-EXT-STS:power_state": 4}, {"task_state": "powering-on"}),
    ],
)
def test_panel_fields_are_validated_and_made_safe(fields, expected):
    details = details_from_nova({"id": "x", **fields})
    assert {name: getattr(details, name) for name in expected} == expected


def test_start_and_reboot_send_novas_action_bodies(compute, fake):
    stopped = server_id(3)
    compute.server_action(stopped, "start")
    compute.server_action(server_id(1), "reboot-soft")
    compute.server_action(server_id(2), "reboot-hard")
    assert fake.actions == [(stopped, "os-start"), (server_id(1), "reboot-SOFT"), (server_id(2), "reboot-HARD")]


def test_an_action_the_state_does_not_allow_is_not_ready_with_novas_reason(compute):
    with pytest.raises(errors.ServerNotReady) as caught:
        compute.server_action(server_id(1), "start")
    assert caught.value.message == (
        f"Starting the server: Cannot 'start' instance {server_id(1)} while it is in vm_state active"
    )


def test_an_action_the_clouds_policy_forbids_is_action_forbidden_not_bad_credentials(compute, fake):
    fake.faults.fail_next["action"] = [403]
    with pytest.raises(errors.ActionForbidden) as caught:
        compute.server_action(server_id(1), "reboot-hard")
    assert cloud_answer(caught.value) == (403, "cloud_policy")
    # The cloud is fine: a policy answer about one action does not count against its health.
    assert not compute.breaker.is_open
