"""The JSON API: minting console URLs and listing servers."""

from __future__ import annotations

import re
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy import update

from broker import state
from broker.demo.cloud import OTHER_PROJECT_SERVER_ID
from broker.extensions import db
from broker.models import AuditRecord
from broker.models import LiveConsole
from broker.models import SingleUseToken
from broker.services import policy
from broker.services import shortcuts
from broker.services import users
from broker.services.consoles import NOT_FOUND
from broker.throttle import parse_limit
from broker.web import api as api_module
from tests.support import ADMIN
from tests.support import AGENT
from tests.support import AuthActions
from tests.support import server_id


def signed_in_poster(client, auth, prefix: str):
    """Sign in; then POST to ``prefix + target`` with the page's CSRF token unless ``headers`` says otherwise."""
    auth.login()
    token = auth.csrf()

    def post(target: str, **kwargs):
        headers = kwargs.pop("headers", {"X-CSRFToken": token})
        return client.post(f"{prefix}{target}", headers=headers, **kwargs)

    return post


@pytest.fixture
def api(client, auth):
    return signed_in_poster(client, auth, "/api/consoles/")


def audit_rows(app):
    with app.app_context():
        return [r.to_json() for r in db.session.scalars(select(AuditRecord).where(AuditRecord.action == "console"))]


def test_mint_returns_the_documented_shape(api, app):
    response = api(server_id(1), json={"reason": "load"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["url"].startswith("http://127.0.0.1:6080/vnc_auto.html?path=%3Ftoken%3D")
    assert (body["type"], body["protocol"], body["expires_in"]) == ("novnc", "vnc", 600)
    assert body["expires_at"].endswith("Z")
    assert body["server"] == {"id": server_id(1), "name": "web-01", "status": "ACTIVE", "cloud": "lab"}
    [row] = audit_rows(app)
    assert (row["user"], row["outcome"], row["server_name"], row["detail"]) == ("agent", "ok", "web-01", "load")
    assert "token" not in str(row) and "vnc_auto" not in str(row)


def test_each_mint_is_fresh(api, fake):
    first = api(server_id(1)).get_json()["url"]
    second = api(server_id(1)).get_json()["url"]
    assert first != second
    assert fake.counts["console"] == 2


def test_refresh_reason_is_audited(api, app):
    api(server_id(1), json={"reason": "refresh"})
    assert audit_rows(app)[0]["detail"] == "refresh"


@pytest.mark.parametrize("data", ["", "\n", " " * 1000])
def test_an_empty_mint_body_is_a_load(api, app, data):
    """Nothing but whitespace is no body, however long: the mint is a page load, not a 400."""
    assert api(server_id(1), data=data).status_code == 200
    assert audit_rows(app)[0]["detail"] == "load"


def test_mint_without_csrf_header_is_refused(api, fake):
    response = api(server_id(1), headers={})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "csrf_failed"
    assert fake.counts["console"] == 0


def test_refresh_after_session_ended_gets_401_not_csrf_error(client, auth, fake):
    auth.login()
    token = auth.csrf()
    client.delete_cookie("session")
    response = client.post(f"/api/consoles/{server_id(1)}", headers={"X-CSRFToken": token})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "not_signed_in"
    assert fake.counts["console"] == 0


def test_stopped_server_gets_409_with_status(api, app):
    response = api(server_id(3))
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error.pop("request_id") == response.headers["X-Request-ID"]
    assert error == {
        "code": "server_not_running",
        "message": "The server db-01 is not running (SHUTOFF).",
        "server_status": "SHUTOFF",
    }
    assert audit_rows(app)[0]["outcome"] == "failed"


def test_unknown_server_gets_404(api, app):
    response = api(server_id(99))
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "server_not_found"
    assert audit_rows(app)[0]["reason"] == "no such server"


@pytest.mark.parametrize("target", ["..%2F..%2Fservers", "../../servers/detail", "a%00b", "x" * 10000])
def test_odd_ids_never_reach_the_cloud(api, fake, target):
    response = api(target)
    assert response.status_code == 404
    assert fake.counts["console"] == 0 and fake.counts["show"] == 0


@pytest.mark.parametrize("scheme", ["javascript", "data"])
def test_non_http_console_url_is_refused(api, fake, scheme):
    fake.faults.console_scheme = scheme
    response = api(server_id(1))
    assert response.status_code == 502
    body = response.get_data(as_text=True)
    assert "token" not in body and scheme + ":" not in body
    assert response.get_json()["error"]["code"] == "cloud_bad_response"


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        # A cloud's own failure: its status and fault name, never its free text.
        (500, 502, "Opening the console: cloud lab answered HTTP 500 (computeFault)."),
        (503, 503, "Opening the console: cloud lab answered HTTP 503 (serviceUnavailable)."),
        # A refusal the person can act on: the cloud's words.
        (429, 503, "Opening the console: Injected failure 429 for console."),
    ],
)
def test_cloud_trouble_maps_to_5xx(api, fake, status, code, message):
    api(server_id(2))  # warm the version check
    fake.faults.fail_next["console"] = [status] * 3
    response = api(server_id(1))
    assert response.status_code == code
    assert response.get_json()["error"]["message"] == message


def test_timeout_is_504(api, fake):
    api(server_id(2))
    fake.faults.hang["console"] = 1.5
    response = api(server_id(1))
    assert response.status_code == 504
    assert response.get_json()["error"]["code"] == "cloud_timeout"


def test_list_api(client, auth):
    auth.login()
    body = client.get("/api/servers?q=web").get_json()
    assert [s["name"] for s in body["servers"]] == ["web-01", "web-02"]
    assert body["servers"][0] == {
        "id": server_id(1),
        "name": "web-01",
        "status": "ACTIVE",
        "cloud": "lab",
        "addresses": ["10.1.0.1"],
        "availability_zone": "az-1",
        "console_page": f"/console/{server_id(1)}?cloud=lab",
        "pinned": False,
    }
    assert body["unavailable"] == [] and body["stale"] == [] and body["notices"] == []
    assert body["cloud"] is None
    assert body["total"] == 2
    limited = client.get("/api/servers?limit=3").get_json()
    assert len(limited["servers"]) == 3 and limited["total"] == 7


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def list_clock(app) -> FakeClock:
    """The inventory's clock, so a test can age the cached lists."""
    clock = FakeClock()
    state.of(app).consoles.inventory.clock = clock
    return clock


def test_list_api_reports_a_cloud_that_failed_to_list(client, auth, fake):
    auth.login()
    fake.faults.fail_next["list"] = [500] * 3
    body = client.get("/api/servers").get_json()
    message = "Listing servers: cloud lab answered HTTP 500 (computeFault)."
    assert body["servers"] == [] and body["total"] == 0
    assert body["unavailable"] == [{"cloud": "lab", "message": message}]
    assert body["notices"] == [{"kind": "failure", "cloud": "lab", "text": f"Cloud lab could not be listed: {message}"}]


def test_list_api_reports_a_cloud_that_has_not_answered_yet(client, auth, app, fake):
    auth.login()
    state.of(app).consoles.inventory.cold_wait = 0.2
    fake.faults.hang["list"] = 30
    try:
        body = client.get("/api/servers").get_json()
    finally:
        fake.release_hangs()
    [notice] = body["notices"]
    assert notice["kind"] == "failure"
    assert (
        notice["text"]
        == "Cloud lab could not be listed: cloud lab has not answered yet; its servers will appear when it does."
    )


@pytest.mark.parametrize(("age", "minutes"), [(59.4, 0), (119.6, 1), (3600, 60)])
def test_list_api_reports_a_stale_list_with_its_age_and_reason(client, auth, fake, list_clock, age, minutes):
    auth.login()
    client.get("/api/servers")
    list_clock.now = age  # older than the cache lifetime: due for a refresh, which fails
    fake.faults.fail_next["list"] = [500] * 3
    body = client.get("/api/servers?q=web").get_json()
    reason = "Listing servers: cloud lab answered HTTP 500 (computeFault)."
    assert [s["name"] for s in body["servers"]] == ["web-01", "web-02"]
    assert body["unavailable"] == []
    assert body["stale"] == [{"cloud": "lab", "age_seconds": round(age), "message": reason}]
    # Whole minutes, rounded down, as the page says it.
    text = f"Showing the list of cloud lab from {minutes} min ago; refreshing it failed: {reason}"
    assert body["notices"] == [{"kind": "stale", "cloud": "lab", "text": text}]


class TestCloudNarrowing:
    @pytest.fixture
    def cloud_names(self):
        return ["lab", "beta/RegionOne"]

    def test_narrowed_list_names_its_cloud_and_links_with_it(self, client, auth):
        auth.login(*ADMIN)
        body = client.get("/api/servers", query_string={"cloud": "beta/RegionOne", "q": "web"}).get_json()
        assert body["cloud"] == "beta/RegionOne"
        assert [(s["name"], s["cloud"]) for s in body["servers"]] == [
            ("web-01", "beta/RegionOne"),
            ("web-02", "beta/RegionOne"),
        ]
        assert body["servers"][0]["console_page"] == f"/console/{server_id(1)}?cloud=beta/RegionOne"

    def test_without_narrowing_every_cloud_is_listed(self, client, auth):
        auth.login(*ADMIN)
        body = client.get("/api/servers?q=web-01").get_json()
        assert body["cloud"] is None
        assert [s["console_page"] for s in body["servers"]] == [
            f"/console/{server_id(1)}?cloud=lab",
            f"/console/{server_id(1)}?cloud=beta/RegionOne",
        ]

    def test_trouble_of_clouds_outside_the_narrowing_is_not_reported(self, client, auth, fake):
        auth.login(*ADMIN)
        fake.faults.fail_next["list"] = [500] * 3  # the first cloud asked fails
        body = client.get("/api/servers?cloud=lab").get_json()
        assert [n["cloud"] for n in body["notices"]] == ["lab"]
        assert client.get("/api/servers?cloud=beta/RegionOne").get_json()["notices"] == []

    def test_an_unknown_cloud_lists_nothing(self, client, auth):
        auth.login(*ADMIN)
        body = client.get("/api/servers?cloud=nowhere").get_json()
        assert (body["cloud"], body["servers"], body["total"], body["notices"]) == ("nowhere", [], 0, [])


def test_server_list_is_cached_and_the_mint_is_not(client, auth, fake):
    auth.login()
    for _ in range(3):
        client.get("/api/servers")
    assert fake.counts["list"] == 1


class TestConsoleHostAllowList:
    @pytest.fixture
    def env_overrides(self):
        return {"BROKER_CONSOLE_HOSTS": "console.example"}

    def test_console_on_other_host_is_refused(self, api):
        response = api(server_id(1))
        assert response.status_code == 502
        assert "not in BROKER_CONSOLE_HOSTS" in response.get_json()["error"]["message"]

    def test_frame_src_lists_only_the_allowed_hosts(self, client):
        csp = client.get("/login").headers["Content-Security-Policy"]
        assert "frame-src http://console.example:* https://console.example:*;" in csp


def spend_lookups(app, fake):
    state.of(app).consoles.lookup_budget = lambda username: False


@pytest.mark.usefixtures("web_only_agent")
class TestEveryMissAnswersAlike:
    """The agent may open web-* only: nothing in an answer tells why a server cannot be opened."""

    MISS = {"error": {"code": "server_not_found", "message": NOT_FOUND}}

    @pytest.mark.parametrize(
        ("target", "setup", "outcome"),
        [
            (server_id(99), None, "failed"),
            (server_id(3), None, "refused"),  # db-01
            (OTHER_PROJECT_SERVER_ID, None, "failed"),  # web-elsewhere, in a project not the broker's
            (server_id(99), spend_lookups, "failed"),
            (server_id(3), spend_lookups, "refused"),
        ],
        ids=["unknown", "forbidden", "other-project", "lookups-spent", "forbidden-lookups-spent"],
    )
    def test_mint(self, api, app, fake, target, setup, outcome):
        api(server_id(1))  # the list is cached
        if setup:
            setup(app, fake)
        response = api(target)
        body = response.get_json()
        # Each answer names its own request, and only that differs.
        assert body["error"].pop("request_id") == response.headers["X-Request-ID"]
        assert (response.status_code, body) == (404, self.MISS)
        assert fake.counts["console"] == 1
        assert audit_rows(app)[-1]["outcome"] == outcome

    def test_a_failing_cloud_is_cloud_trouble_whatever_the_id(self, api, app, fake):
        """Not "no such server": the cloud said nothing about the ID, so the answer does not depend on it."""
        api(server_id(1))  # the list is cached
        fake.faults.fail_next["show"] = [503] * 50  # every lookup, its retries included
        answers = []
        for target in (server_id(99), server_id(3)):
            response = api(target)
            body = response.get_json()
            assert body["error"].pop("request_id") == response.headers["X-Request-ID"]
            answers.append((response.status_code, body))
        assert answers[0] == answers[1]
        assert answers[0][0] == 503 and answers[0][1]["error"]["code"] == "server_unconfirmed"
        assert fake.counts["console"] == 1

    def test_console_page(self, client, auth):
        auth.login()
        forbidden = client.get(f"/console/{server_id(3)}")
        unknown = client.get(f"/console/{server_id(99)}")
        assert forbidden.status_code == unknown.status_code == 404

        def page(response, ref: str) -> str:
            # The CSRF token is signed with a timestamp: two pages a second apart differ there only.
            html = response.get_data(as_text=True).replace(ref, "X").replace(response.headers["X-Request-ID"], "R")
            # Both places the page carries it: the meta tag for scripts, and the sign-out form's field.
            return re.sub(r'name="csrf[-_]token" (?:content|value)="[^"]*"', "", html)

        assert page(forbidden, server_id(3)) == page(unknown, server_id(99))


def test_a_server_of_another_project_is_never_opened_even_by_an_admin(client, auth, fake):
    auth.login("admin", "admin-password-1")
    response = client.post(f"/api/consoles/{OTHER_PROJECT_SERVER_ID}", headers={"X-CSRFToken": auth.csrf()})
    assert response.status_code == 404
    assert client.get(f"/console/{OTHER_PROJECT_SERVER_ID}").status_code == 404
    assert fake.counts["show"] == 1 and fake.counts["console"] == 0


# -- relay mode: websocket tickets instead of console URLs --------------------------------


@pytest.fixture
def relay_api(client, auth):
    return signed_in_poster(client, auth, "/api/relay-tickets/")


@pytest.mark.parametrize("console_mode", ["relay"])
def test_a_relay_ticket_names_the_server_and_the_relay_but_mints_nothing(relay_api, fake, console_mode):
    response = relay_api(server_id(1), query_string={"cloud": "lab"})
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"ticket", "url", "expires_in", "server"}
    # The URL names the console for a load balancer (the same relay for its watchers).
    assert body["url"] == f"ws://localhost/relay?console=lab%2F{server_id(1)}" and body["expires_in"] == 30
    server = body["server"]
    assert (server["id"], server["name"], server["status"], server["cloud"]) == (
        server_id(1),
        "web-01",
        "ACTIVE",
        "lab",
    )
    assert len(body["ticket"]) >= 40
    assert fake.counts["console"] == 0


@pytest.mark.parametrize("console_mode", ["relay"])
@pytest.mark.parametrize("env_overrides", [{"BROKER_RELAY_URL": "ws://127.0.0.1:5001/relay"}])
def test_a_relay_on_its_own_port_is_named_and_allowed_by_the_csp(relay_api, client, console_mode, env_overrides):
    assert relay_api(server_id(1)).get_json()["url"] == f"ws://127.0.0.1:5001/relay?console=lab%2F{server_id(1)}"
    csp = client.get("/").headers["Content-Security-Policy"]
    assert "connect-src 'self' ws://127.0.0.1:5001;" in csp


@pytest.mark.parametrize("console_mode", ["relay"])
def test_in_relay_mode_no_console_url_reaches_a_browser(api, app, console_mode, fake):
    response = api(server_id(1))
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "viewer_only"
    assert fake.counts["console"] == 0
    [row] = audit_rows(app)
    assert (row["outcome"], row["reason"]) == ("refused", "this cloud's consoles open only through the relay")


@pytest.mark.parametrize("console_mode", ["relay"])
@pytest.mark.parametrize("env_overrides", [{"BROKER_MAX_CONSOLES_PER_USER": "2"}])
def test_a_ticket_past_the_consoles_one_person_may_have_open_is_refused_with_429(
    relay_api, app, console_mode, env_overrides
):
    with app.app_context():
        user = users.find(AGENT[0])
        for n in range(2):
            db.session.add(
                LiveConsole(
                    user_id=user.id,
                    username=user.username,
                    session_id=f"s{n}",
                    server_id=server_id(n + 1),
                    cloud="lab",
                    instance="relay-a:1",
                )
            )
        db.session.commit()
    response = relay_api(server_id(1), query_string={"cloud": "lab"})
    assert response.status_code == 429
    error = response.get_json()["error"]
    assert error["code"] == "too_many_consoles"
    assert error["message"].startswith("You have 2 consoles open, the most one person may have at once (2).")
    assert "ticket" not in response.get_json()


def test_an_iframe_cloud_gives_no_relay_tickets(relay_api):
    response = relay_api(server_id(1))
    assert response.status_code == 400
    assert "not through the relay" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("console_mode", ["relay"])
@pytest.mark.parametrize(
    ("target", "status"),
    [(server_id(99), 404), ("../../etc", 404), (OTHER_PROJECT_SERVER_ID, 404)],
)
def test_no_ticket_for_a_server_the_user_may_not_open(relay_api, app, console_mode, target, status):
    response = relay_api(target)
    assert response.status_code == status
    assert "ticket" not in response.get_json()
    [row] = audit_rows(app)
    assert (row["outcome"], row["detail"]) in {("failed", "relay"), ("refused", "relay")}


@pytest.mark.parametrize("console_types", [("novnc", "serial")])
def test_a_serial_ticket_goes_through_the_relay_even_for_an_iframe_cloud(relay_api, app, fake, console_types):
    response = relay_api(server_id(1), query_string={"cloud": "lab", "type": "serial"})
    assert response.status_code == 201
    body = response.get_json()
    assert body["url"] == f"ws://localhost/relay?serial=lab%2F{server_id(1)}" and body["server"]["id"] == server_id(1)
    with app.app_context():
        [row] = db.session.scalars(select(SingleUseToken)).all()
        # A serial ticket is a token of its own purpose: it never opens a graphical console.
        assert (row.purpose, row.server_id) == ("relay-serial", server_id(1))
    assert fake.counts["console"] == 0


@pytest.mark.parametrize("console_mode", ["relay"])
def test_no_serial_ticket_for_a_cloud_that_offers_no_serial_consoles(relay_api, app, console_mode):
    response = relay_api(server_id(1), query_string={"type": "serial"})
    assert response.status_code == 404
    assert response.get_json()["error"]["message"] == "Cloud lab offers no serial consoles."
    with app.app_context():
        assert db.session.scalars(select(SingleUseToken)).all() == []


@pytest.mark.parametrize("console_mode", ["relay"])
@pytest.mark.parametrize("kind", ["spice", "SERIAL", "serial,novnc", "x" * 300], ids=["spice", "upper", "two", "long"])
def test_a_console_type_that_is_not_one_is_a_400(relay_api, console_mode, kind):
    response = relay_api(server_id(1), query_string={"type": kind})
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == '"type" must be one of novnc, serial.'


@pytest.mark.parametrize("console_mode", ["relay"])
def test_a_ticket_needs_the_session_and_the_csrf_token(client, auth, console_mode):
    assert client.post(f"/api/relay-tickets/{server_id(1)}").status_code == 401
    auth.login()
    assert client.post(f"/api/relay-tickets/{server_id(1)}").status_code == 400  # no X-CSRFToken


@pytest.mark.parametrize("console_mode", ["relay"])
@pytest.mark.parametrize("env_overrides", [{"BROKER_RELAY_URL": "ws://{host}:5001/relay"}])
@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("127.0.0.1:5000", "127.0.0.1"),
        ("localhost:5000", "localhost"),
        ("[::1]:5000", "[::1]"),
        ("broker.example", "broker.example"),
    ],
)
def test_a_relay_on_another_port_of_the_pages_host(relay_api, client, console_mode, env_overrides, host, name):
    """The session cookie reaches another port of the same host name only: the URL follows the page's host."""
    assert relay_api(server_id(1)).get_json()["url"] == f"ws://localhost:5001/relay?console=lab%2F{server_id(1)}"
    csp = client.get("/login", headers={"Host": host}).headers["Content-Security-Policy"]
    assert f"connect-src 'self' ws://{name}:5001;" in csp


def test_keepalive_keeps_a_session_in_use_and_needs_one(client, auth):
    """A relay console makes no requests of its own; the viewer's keepalive says someone is using it."""
    assert client.post("/api/session/keepalive").status_code == 401
    auth.login()
    assert client.post("/api/session/keepalive").status_code == 400  # no CSRF token
    assert client.post("/api/session/keepalive", headers={"X-CSRFToken": auth.csrf()}).status_code == 204


# -- power actions: a rule's power permission, a single-use confirmation, an audit record each -----


def power_rows(app) -> list[dict]:
    with app.app_context():
        rows = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "power").order_by(AuditRecord.id))
        return [r.to_json() for r in rows]


def grant_power(app, name_pattern: str = "*") -> None:
    with app.app_context():
        policy.add_rule(user="agent", cloud="lab", clouds=["lab"], name_pattern=name_pattern, power=True)
        db.session.commit()


@pytest.fixture
def power_api(client, auth):
    """POST a JSON body to a server's power routes with the page's CSRF token."""
    auth.login()
    token = auth.csrf()

    def call(server: str, step: str, body: dict | None = None, headers: dict | None = None):
        return client.post(
            f"/api/servers/{server}/{step}?cloud=lab",
            json=body,
            headers={"X-CSRFToken": token} if headers is None else headers,
        )

    def raw(server: str, step: str, data: str):
        url = f"/api/servers/{server}/{step}?cloud=lab"
        return client.post(url, data=data, headers={"X-CSRFToken": token, "Content-Type": "application/json"})

    call.raw = raw
    return call


def step_body(step: str, action: str) -> dict:
    """What each step sends: the action, and in the second step a confirmation (a made-up one here)."""
    return {"action": action, "confirmation": "made-up"} if step == "power" else {"action": action}


def confirmed(power_api, server: str, action: str):
    """Both steps, as the page does them: ask for a confirmation, then send it."""
    confirmation = power_api(server, "power-confirmations", {"action": action})
    assert confirmation.status_code == 201, confirmation.get_json()
    token = confirmation.get_json()["confirmation"]
    return power_api(server, "power", {"action": action, "confirmation": token}), token


def test_start_a_stopped_server_in_two_steps_each_audited(power_api, app, fake):
    grant_power(app)
    stopped = server_id(3)
    confirmation = power_api(stopped, "power-confirmations", {"action": "start"})
    assert confirmation.status_code == 201 and confirmation.headers["Cache-Control"] == "no-store"
    body = confirmation.get_json()
    assert body["question"] == "Start server db-01?" and body["expires_in"] == 120
    assert fake.actions == []  # nothing happens before the confirmation comes back
    done = power_api(stopped, "power", {"action": "start", "confirmation": body["confirmation"]})
    assert done.status_code == 202
    assert done.get_json()["action"] == "start" and done.get_json()["server"]["id"] == stopped
    assert fake.actions == [(stopped, "os-start")]
    [row] = power_rows(app)
    assert (row["user"], row["outcome"], row["detail"], row["server_name"]) == ("agent", "ok", "start", "db-01")
    assert body["confirmation"] not in str(row)


def test_a_replayed_power_request_is_refused_and_audited(power_api, app, fake):
    grant_power(app)
    first, token = confirmed(power_api, server_id(1), "reboot-soft")
    assert first.status_code == 202
    again = power_api(server_id(1), "power", {"action": "reboot-soft", "confirmation": token})
    assert again.status_code == 403 and again.get_json()["error"]["code"] == "confirmation_invalid"
    assert fake.actions == [(server_id(1), "reboot-SOFT")]
    assert [(r["outcome"], r["detail"]) for r in power_rows(app)] == [("ok", "reboot-soft"), ("refused", "reboot-soft")]


@pytest.mark.parametrize(
    "forged",
    [
        {"action": "reboot-hard"},  # no confirmation at all
        {"action": "reboot-hard", "confirmation": "made-up"},
        {"action": "reboot-hard", "confirmation": "x" * 200},
    ],
)
def test_a_forged_power_request_is_refused_and_audited(power_api, app, fake, forged):
    grant_power(app)
    response = power_api(server_id(1), "power", forged)
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "confirmation_invalid"
    assert fake.actions == []
    [row] = power_rows(app)
    assert row["outcome"] == "refused" and "confirmation" in row["reason"]


def test_a_confirmation_holds_only_for_its_own_action_server_and_session(power_api, app, fake, client):
    grant_power(app)
    token = power_api(server_id(1), "power-confirmations", {"action": "reboot-soft"}).get_json()["confirmation"]
    harder = power_api(server_id(1), "power", {"action": "reboot-hard", "confirmation": token})
    other_server = power_api(server_id(2), "power", {"action": "reboot-soft", "confirmation": token})
    assert harder.status_code == other_server.status_code == 403
    # The same user signed in elsewhere (another session) cannot use it either.
    elsewhere = app.test_client()
    AuthActions(elsewhere).login()
    csrf = AuthActions(elsewhere).csrf()
    stolen = elsewhere.post(
        f"/api/servers/{server_id(1)}/power?cloud=lab",
        json={"action": "reboot-soft", "confirmation": token},
        headers={"X-CSRFToken": csrf},
    )
    assert stolen.status_code == 403 and fake.actions == []
    # Still good for what it was issued for.
    ok = power_api(server_id(1), "power", {"action": "reboot-soft", "confirmation": token})
    assert ok.status_code == 202


def test_an_expired_confirmation_is_refused(power_api, app, fake):
    grant_power(app)
    token = power_api(server_id(1), "power-confirmations", {"action": "reboot-soft"}).get_json()["confirmation"]
    with app.app_context():
        expired = datetime.now(UTC) - timedelta(seconds=1)
        db.session.execute(update(SingleUseToken).where(SingleUseToken.purpose == "power").values(expires_at=expired))
        db.session.commit()
    response = power_api(server_id(1), "power", {"action": "reboot-soft", "confirmation": token})
    assert response.status_code == 403 and fake.actions == []


@pytest.mark.parametrize("step", ["power-confirmations", "power"])
def test_power_without_the_permission_is_refused_and_audited(power_api, app, fake, step):
    # The agent may open every server of the cloud (the suite's rule), but no rule gives power.
    response = power_api(server_id(1), step, step_body(step, "reboot-hard"))
    assert response.status_code == 403
    error = response.get_json()["error"]
    assert error["code"] == "power_not_allowed" and "web-01" in error["message"]
    assert fake.actions == []
    [row] = power_rows(app)
    assert (row["outcome"], row["reason"]) == ("refused", "no access rule grants power actions on this server")


def test_power_granted_for_some_servers_only_reaches_those(power_api, app, fake):
    grant_power(app, name_pattern="web-*")
    assert confirmed(power_api, server_id(1), "reboot-soft")[0].status_code == 202
    refused = power_api(server_id(4), "power-confirmations", {"action": "reboot-soft"})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "power_not_allowed"
    assert fake.actions == [(server_id(1), "reboot-SOFT")]


@pytest.mark.parametrize("step", ["power-confirmations", "power"])
def test_power_on_a_server_outside_every_rule_is_not_found_and_audited(power_api, app, fake, web_only_agent, step):
    with app.app_context():
        policy.add_rule(user="agent", cloud="lab", clouds=["lab"], name_pattern="web-*", power=True)
        db.session.commit()
    response = power_api(server_id(3), step, step_body(step, "start"))
    assert response.status_code == 404 and response.get_json()["error"]["message"] == NOT_FOUND
    assert fake.actions == []
    [row] = power_rows(app)
    assert (row["outcome"], row["server_name"], row["detail"]) == ("refused", "db-01", "start")


def test_an_action_that_does_not_fit_the_status_is_refused_before_asking(power_api, app, fake):
    grant_power(app)
    response = power_api(server_id(1), "power-confirmations", {"action": "start"})
    assert response.status_code == 409
    assert response.get_json()["error"] == {
        "code": "wrong_state",
        "message": "Server web-01 is ACTIVE: start needs it SHUTOFF.",
        "request_id": response.get_json()["error"]["request_id"],
    }


@pytest.mark.parametrize(
    ("status", "http", "code", "outcome"),
    [(409, 409, "server_busy", "failed"), (403, 403, "cloud_policy", "refused"), (503, 503, "cloud_busy", "failed")],
)
def test_the_clouds_no_is_answered_clearly_and_audited(power_api, app, fake, status, http, code, outcome):
    grant_power(app)
    fake.faults.fail_next["action"] = [status] * 3
    fake.faults.error_message = "Cannot 'reboot' instance while it is in task_state rebooting"
    response, _ = confirmed(power_api, server_id(1), "reboot-soft")
    assert response.status_code == http
    error = response.get_json()["error"]
    assert error["code"] == code
    if status < 500:
        assert "task_state rebooting" in error["message"]
    [row] = power_rows(app)
    assert row["outcome"] == outcome and row["detail"] == "reboot-soft"


def test_an_admin_may_power_without_a_rule(client, auth, fake):
    auth.login(*ADMIN)
    csrf = auth.csrf()
    url = f"/api/servers/{server_id(1)}/power"
    token = client.post(
        f"{url}-confirmations", json={"action": "reboot-hard"}, headers={"X-CSRFToken": csrf}
    ).get_json()["confirmation"]
    done = client.post(url, json={"action": "reboot-hard", "confirmation": token}, headers={"X-CSRFToken": csrf})
    assert done.status_code == 202 and fake.actions == [(server_id(1), "reboot-HARD")]


@pytest.mark.parametrize(
    "body",
    [
        {"action": "shutdown"},
        {"action": "start", "extra": "x"},
        {"action": ["start"]},
        "not json",
        "   ",  # only whitespace: an empty body, so no action
        {"action": "start", "confirmation": "x" * 600},
    ],
)
def test_bad_power_bodies_are_400s(power_api, app, fake, body):
    grant_power(app)
    step = "power" if isinstance(body, dict) and "confirmation" in body else "power-confirmations"
    send = power_api.raw if isinstance(body, str) else power_api
    response = send(server_id(3), step, body)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_request"
    assert fake.actions == []


def test_power_needs_the_csrf_token_and_a_session(power_api, app, fake, client):
    grant_power(app)
    forged = power_api(server_id(1), "power-confirmations", {"action": "reboot-soft"}, headers={})
    assert forged.status_code == 400 and forged.get_json()["error"]["code"] == "csrf_failed"
    stranger = app.test_client()
    anonymous = stranger.post(f"/api/servers/{server_id(1)}/power?cloud=lab", json={"action": "reboot-soft"})
    assert anonymous.status_code == 401 and fake.actions == []


# -- the server panel ------------------------------------------------------------------------


@pytest.mark.parametrize("env_overrides", [{"BROKER_PANEL_METADATA": "team, ticket-queue"}])
def test_the_panel_shows_why_a_server_is_broken(client, auth, fake):
    broken = fake.servers[server_id(4)]
    broken.status = "ERROR"
    broken.fault = {"code": 500, "message": "No valid host <b>was</b> found.", "created": "2026-01-05T09:31:00Z"}
    broken.metadata = {"team": "ops", "secret-ish": "not shown", "ticket-queue": "L2"}
    auth.login()
    response = client.get(f"/api/servers/{server_id(4)}?cloud=lab")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    panel = body["server"]
    assert panel["fault"] == {"code": 500, "message": "No valid host <b>was</b> found."}
    assert (panel["status"], panel["flavor"], panel["availability_zone"]) == ("ERROR", "m1.small", "az-1")
    assert panel["metadata"] == {"team": "ops", "ticket-queue": "L2"}
    assert (body["power"], body["actions"]) == (False, [])
    assert body["console_page"] == f"/console/{server_id(4)}?cloud=lab"


def test_the_panel_offers_the_actions_that_fit_when_power_is_granted(client, auth, app):
    grant_power(app)
    auth.login()
    stopped = client.get(f"/api/servers/{server_id(3)}?cloud=lab").get_json()
    running = client.get(f"/api/servers/{server_id(1)}?cloud=lab").get_json()
    assert (stopped["power"], stopped["actions"]) == (True, ["start", "reboot-hard"])
    assert running["actions"] == ["reboot-soft", "reboot-hard"]


def test_fresh_panel_reads_the_server_again_and_follows_it_to_active(client, auth, fake):
    auth.login()
    assert client.get(f"/api/servers/{server_id(3)}?cloud=lab").get_json()["server"]["status"] == "SHUTOFF"
    fake.servers[server_id(3)].status = "ACTIVE"
    cached = client.get(f"/api/servers/{server_id(3)}?cloud=lab").get_json()["server"]["status"]
    fresh = client.get(f"/api/servers/{server_id(3)}?cloud=lab&fresh=1").get_json()["server"]["status"]
    assert (cached, fresh) == ("SHUTOFF", "ACTIVE")
    # The list learned it too: the next cached answer says ACTIVE.
    assert client.get(f"/api/servers/{server_id(3)}?cloud=lab").get_json()["server"]["status"] == "ACTIVE"


def test_the_panel_of_a_server_outside_the_rules_is_not_found(client, auth, web_only_agent):
    auth.login()
    response = client.get(f"/api/servers/{server_id(3)}?cloud=lab")
    assert response.status_code == 404 and response.get_json()["error"]["message"] == NOT_FOUND


# -- pins ---------------------------------------------------------------------------------------


def test_pins_are_kept_per_user_across_sign_out(client, auth, app):
    auth.login()
    csrf = auth.csrf()
    first = client.put(f"/api/pins/{server_id(2)}?cloud=lab", headers={"X-CSRFToken": csrf})
    again = client.put(f"/api/pins/{server_id(2)}?cloud=lab", headers={"X-CSRFToken": csrf})
    assert (first.status_code, again.status_code) == (201, 200)
    client.put(f"/api/pins/{server_id(1)}?cloud=lab", headers={"X-CSRFToken": csrf})
    auth.logout()
    auth.login()
    assert [s["name"] for s in client.get("/api/pins").get_json()["pins"]] == ["web-02", "web-01"]
    rows = client.get("/api/servers?q=web").get_json()["servers"]
    assert [(s["name"], s["pinned"]) for s in rows] == [("web-01", True), ("web-02", True)]
    # Another user's pins are their own.
    auth.logout()
    auth.login(*ADMIN)
    assert client.get("/api/pins").get_json()["pins"] == []


def test_unpin_removes_and_is_idempotent(client, auth):
    auth.login()
    csrf = auth.csrf()
    client.put(f"/api/pins/{server_id(1)}?cloud=lab", headers={"X-CSRFToken": csrf})
    assert client.delete(f"/api/pins/{server_id(1)}?cloud=lab", headers={"X-CSRFToken": csrf}).status_code == 204
    assert client.delete(f"/api/pins/{server_id(1)}?cloud=lab", headers={"X-CSRFToken": csrf}).status_code == 204
    assert client.get("/api/pins").get_json()["pins"] == []


def test_a_pin_needs_a_server_the_user_may_open_and_the_csrf_token(client, auth, app, web_only_agent):
    auth.login()
    csrf = auth.csrf()
    outside = client.put(f"/api/pins/{server_id(3)}?cloud=lab", headers={"X-CSRFToken": csrf})
    assert outside.status_code == 404
    forged = client.put(f"/api/pins/{server_id(1)}?cloud=lab")
    assert forged.status_code == 400 and forged.get_json()["error"]["code"] == "csrf_failed"
    assert client.get("/api/pins").get_json()["pins"] == []


def test_a_pinned_server_no_longer_granted_drops_out(client, auth, app):
    auth.login()
    csrf = auth.csrf()
    client.put(f"/api/pins/{server_id(3)}?cloud=lab", headers={"X-CSRFToken": csrf})
    with app.app_context():
        for rule in policy.all_rules():
            policy.remove_rule(rule.id)
        policy.add_rule(user="agent", cloud="lab", clouds=["lab"], name_pattern="web-*")
        db.session.commit()
    assert client.get("/api/pins").get_json()["pins"] == []


def test_pins_are_capped(client, auth, monkeypatch):
    monkeypatch.setattr(shortcuts, "MAX_PINS", 2)
    auth.login()
    csrf = auth.csrf()
    for n in (1, 2):
        assert client.put(f"/api/pins/{server_id(n)}?cloud=lab", headers={"X-CSRFToken": csrf}).status_code == 201
    third = client.put(f"/api/pins/{server_id(4)}?cloud=lab", headers={"X-CSRFToken": csrf})
    assert third.status_code == 400 and third.get_json()["error"]["code"] == "too_many_pins"


def test_fresh_reads_are_bounded_per_user_then_the_cache_answers(client, auth, fake, monkeypatch):
    monkeypatch.setattr(api_module, "FRESH_READS", parse_limit("2 per minute"))
    auth.login()
    client.get(f"/api/servers/{server_id(3)}?cloud=lab")
    shows = fake.counts["show"]
    for _ in range(4):
        assert client.get(f"/api/servers/{server_id(3)}?cloud=lab&fresh=1").status_code == 200
    assert fake.counts["show"] == shows + 2
