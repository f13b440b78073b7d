"""/metrics (never public), /readyz (no upstream call, no secret) and a request ID on every request."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import socket

import pytest
from bs4 import BeautifulSoup
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from broker import state
from broker.extensions import db
from broker.logs import broker_handler
from broker.models import AuditRecord
from broker.services import checks
from broker.web.observability import PROXY_WATCH
from broker.web.observability import RELAY_PROBE
from broker.web.observability import ProxyWatch
from tests.support import free_port
from tests.support import http_answering
from tests.support import relay_listening
from tests.support import require_redis
from tests.support import server_id

TOKEN = "metrics-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def env_overrides() -> dict:
    return {"BROKER_METRICS_TOKEN": TOKEN, "BROKER_METRICS_ALLOW": "10.9.8.0/24"}


def sample(client, name: str, **labels: str) -> float:
    """One sample's value as /metrics shows it (0 when not there yet)."""
    response = client.get("/metrics", headers=BEARER)
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return 0.0


def mint(client, auth, target: str):
    auth.login()
    return client.post(f"/api/consoles/{target}", headers={"X-CSRFToken": auth.csrf()})


# -- /metrics: who may read it -------------------------------------------------------


def test_metrics_with_the_token(client):
    response = client.get("/metrics", headers=BEARER)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    assert "# TYPE broker_console_mints_total counter" in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
    ids=["none", "wrong", "longer", "shorter", "basic", "no-scheme"],
)
def test_metrics_refused_looks_like_any_unknown_path(client, headers):
    response = client.get("/metrics", headers=headers)
    unknown = client.get("/no-such-page", headers=headers)
    assert response.status_code == unknown.status_code == 404
    assert "broker_" not in response.get_data(as_text=True)


def test_metrics_from_an_allowed_address_without_token(client):
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.9.8.7"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.9.9.7"}).status_code == 404


def test_a_forwarded_address_counts_only_behind_a_trusted_proxy(client):
    # BROKER_TRUSTED_PROXIES is 0 here: anyone can write X-Forwarded-For.
    assert client.get("/metrics", headers={"X-Forwarded-For": "10.9.8.7"}).status_code == 404


class TestBehindAProxy:
    @pytest.fixture
    def env_overrides(self) -> dict:
        return {"BROKER_METRICS_ALLOW": "10.9.8.0/24", "BROKER_TRUSTED_PROXIES": "1"}

    def test_the_client_address_the_proxy_names_is_allowed(self, client):
        assert client.get("/metrics", headers={"X-Forwarded-For": "10.9.8.7"}).status_code == 200
        assert client.get("/metrics", headers={"X-Forwarded-For": "192.0.2.1"}).status_code == 404


class TestMetricsOff:
    @pytest.fixture
    def env_overrides(self) -> dict:
        return {}

    def test_neither_setting_means_no_metrics(self, client):
        assert client.get("/metrics").status_code == 404
        assert client.get("/metrics", headers=BEARER).status_code == 404


# -- what is counted -----------------------------------------------------------------


def test_a_mint_counts_once_and_is_timed(client, auth):
    before = sample(client, "broker_console_mints_total", cloud="lab", outcome="ok")
    timed = sample(client, "broker_console_mint_seconds_count", status="200")
    assert mint(client, auth, server_id(1)).status_code == 200
    assert sample(client, "broker_console_mints_total", cloud="lab", outcome="ok") == before + 1
    assert sample(client, "broker_console_mint_seconds_count", status="200") == timed + 1


def test_a_failed_mint_counts_as_failed_with_its_status(client, auth):
    before = sample(client, "broker_console_mints_total", cloud="lab", outcome="failed")
    timed = sample(client, "broker_console_mint_seconds_count", status="409")
    ok = sample(client, "broker_console_mints_total", cloud="lab", outcome="ok")
    assert mint(client, auth, server_id(3)).status_code == 409  # db-01 is SHUTOFF
    assert sample(client, "broker_console_mints_total", cloud="lab", outcome="failed") == before + 1
    assert sample(client, "broker_console_mint_seconds_count", status="409") == timed + 1
    assert sample(client, "broker_console_mints_total", cloud="lab", outcome="ok") == ok


def test_a_cloud_name_nobody_configured_is_not_a_label(client, auth):
    auth.login()
    client.post(f"/api/consoles/{server_id(1)}?cloud=made-up-{os.getpid()}", headers={"X-CSRFToken": auth.csrf()})
    assert f"made-up-{os.getpid()}" not in client.get("/metrics", headers=BEARER).get_data(as_text=True)


def test_a_failed_sign_in_counts_once(client, auth):
    before = sample(client, "broker_sign_ins_total", method="local", outcome="failed")
    ok = sample(client, "broker_sign_ins_total", method="local", outcome="ok")
    assert auth.login(password="wrong-password-zz").status_code == 401
    assert sample(client, "broker_sign_ins_total", method="local", outcome="failed") == before + 1
    assert sample(client, "broker_sign_ins_total", method="local", outcome="ok") == ok


# -- /readyz -------------------------------------------------------------------------


def test_ready(client, fake):
    calls = dict(fake.counts)
    response = client.get("/readyz", headers=BEARER)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] is True
    circuits = {"lab": {"lists": "closed", "consoles": "closed"}}
    assert body["checks"]["clouds"] == {"ok": True, "reason": "all circuits closed", "circuits": circuits}
    assert "redis" not in body["checks"] and "relay" not in body["checks"]
    assert body["checks"]["proxies"] == {
        "ok": True,
        "reason": "BROKER_TRUSTED_PROXIES=0: no request in the last hour had an X-Forwarded-For it does not match",
    }
    assert dict(fake.counts) == calls  # no upstream call
    assert TOKEN not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"HTTP_AUTHORIZATION": "Bearer wrong-token-0123456789abcdef"},
        {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"},
        # An address allowed to read /metrics is not enough: nginx passes /readyz to anyone.
        {"REMOTE_ADDR": "10.9.8.7"},
    ],
    ids=["none", "wrong-token", "basic", "metrics-address"],
)
def test_strangers_read_only_the_status(client, environ):
    response = client.get("/readyz", environ_base=environ)
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready"}
    assert response.headers["Cache-Control"] == "no-store"


class TestReadinessWithoutAToken:
    @pytest.fixture
    def env_overrides(self) -> dict:
        return {"BROKER_METRICS_ALLOW": "10.9.8.0/24"}

    def test_without_a_token_configured_nobody_reads_the_details(self, client):
        response = client.get("/readyz", headers=BEARER, environ_base={"REMOTE_ADDR": "10.9.8.7"})
        assert response.get_json() == {"status": "ready"}


def test_liveness_stays_as_it_was(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}


class TestDatabaseGone:
    @pytest.fixture
    def env_overrides(self, tmp_path) -> dict:
        (tmp_path / "db").mkdir()
        return {"BROKER_DATABASE_URL": f"sqlite:///{tmp_path}/db/broker.sqlite3", "BROKER_METRICS_TOKEN": TOKEN}

    def test_not_ready_names_the_database(self, app, client, tmp_path):
        with app.app_context():
            db.engine.dispose()
        shutil.rmtree(tmp_path / "db")  # SQLite cannot open a file in a folder that is gone
        stranger = client.get("/readyz")
        assert (stranger.status_code, stranger.get_json()) == (503, {"status": "not ready"})
        response = client.get("/readyz", headers=BEARER)
        assert response.status_code == 503
        body = response.get_json()
        assert body["status"] == "not ready"
        assert body["checks"]["database"] == {
            "ok": False,
            "reason": "the database did not answer SELECT 1 (OperationalError)",
        }
        assert str(tmp_path) not in response.get_data(as_text=True)


class TestRedis:
    @pytest.fixture
    def env_overrides(self) -> dict:
        return {"BROKER_REDIS_URL": require_redis(), "BROKER_METRICS_TOKEN": TOKEN}

    def test_redis_is_checked_when_configured(self, client):
        response = client.get("/readyz", headers=BEARER)
        assert response.status_code == 200
        assert response.get_json()["checks"]["redis"]["ok"] is True


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestRedisDown:
    @pytest.fixture
    def env_overrides(self) -> dict:
        # Flask-Limiter's storage would follow BROKER_REDIS_URL, and the fixture resets it.
        url = f"redis://:hunter2-redis-secret@127.0.0.1:{closed_port()}/0"
        return {"BROKER_REDIS_URL": url, "BROKER_RATELIMIT_STORAGE_URL": "memory://", "BROKER_METRICS_TOKEN": TOKEN}

    def test_strangers_read_degraded_and_nothing_of_redis(self, client):
        response = client.get("/readyz")
        assert (response.status_code, response.get_json()) == (200, {"status": "degraded"})

    def test_degraded_but_ready_naming_redis_not_its_password(self, client):
        # Every instance shares Redis: a 503 would empty the load balancer's pool at once.
        response = client.get("/readyz", headers=BEARER)
        assert response.status_code == 200
        assert response.get_json()["status"] == "degraded"
        redis_check = response.get_json()["checks"]["redis"]
        assert redis_check["ok"] is False
        assert redis_check["reason"].startswith("redis 127.0.0.1:")
        assert "unreachable" in redis_check["reason"]
        assert response.get_json()["checks"]["database"]["ok"] is True
        assert "hunter2" not in response.get_data(as_text=True)


class TestOneCircuitOpen:
    @pytest.fixture
    def cloud_names(self) -> list[str]:
        return ["lab", "beta"]

    def test_one_open_circuit_is_reported_and_the_broker_stays_ready(self, app, client):
        breaker = state.of(app).consoles.inventory.clouds["beta"].client.breakers["consoles"]
        breaker.reason = "Opening the console: cloud beta answered HTTP 500 (secret-ish detail)"
        breaker.opened_at = breaker.clock()
        assert client.get("/readyz").get_json() == {"status": "ready"}  # no cloud names for strangers
        response = client.get("/readyz", headers=BEARER)
        assert response.status_code == 200
        clouds = response.get_json()["checks"]["clouds"]
        assert clouds["circuits"] == {
            "lab": {"lists": "closed", "consoles": "closed"},
            "beta": {"lists": "closed", "consoles": "open"},
        }
        assert clouds["reason"].startswith("circuit open for beta consoles (this worker)")
        assert "secret-ish" not in response.get_data(as_text=True)


# -- /readyz: the relay (relay mode only) --------------------------------------------------------


@pytest.mark.parametrize("console_mode", ["relay"])
class TestRelay:
    """A cloud with console_mode: relay, its relay at RELAY_BIND: reported to the token's holder, never 503."""

    def test_a_listening_relay_is_reported(self, app, client, monkeypatch):
        with relay_listening(app) as port:
            monkeypatch.setenv("RELAY_BIND", f"127.0.0.1:{port}")
            response = client.get("/readyz", headers=BEARER)
        assert response.status_code == 200
        body = response.get_json()
        assert body["status"] == "ready"
        assert body["checks"]["relay"] == {"ok": True, "reason": f"relay answers at http://127.0.0.1:{port}/relay"}

    def test_a_relay_that_is_down_degrades_without_503(self, client, monkeypatch):
        # Every instance shares the relay: a 503 would take them all out of the load balancer at once.
        port = free_port()
        monkeypatch.setenv("RELAY_BIND", f"127.0.0.1:{port}")
        response = client.get("/readyz", headers=BEARER)
        assert response.status_code == 200
        assert response.get_json()["status"] == "degraded"
        assert response.get_json()["checks"]["relay"] == {
            "ok": False,
            "reason": f"relay unreachable at http://127.0.0.1:{port}/relay (ConnectionRefusedError): "
            "start it (the Procfile's relay: line) or fix RELAY_BIND",
        }
        # A stranger's request makes the instance connect nowhere: its status leaves the relay out.
        assert client.get("/readyz").get_json() == {"status": "ready"}

    def test_something_else_at_the_address_is_not_the_relay_and_is_asked_once(self, client, monkeypatch):
        with http_answering(404, b"Not Found") as (port, asked):
            monkeypatch.setenv("RELAY_BIND", f"127.0.0.1:{port}")
            first = client.get("/readyz", headers=BEARER).get_json()
            again = client.get("/readyz", headers=BEARER).get_json()
            client.get("/readyz")
        assert first == again and first["status"] == "degraded"
        assert first["checks"]["relay"]["reason"] == (
            f"relay: http://127.0.0.1:{port}/relay answers HTTP 404 but it is not the relay: "
            "another program listens there: fix RELAY_BIND to where the relay listens"
        )
        assert asked == ["/relay"]  # the answer is kept a few seconds; strangers cause no probe

    def test_the_answer_is_kept_only_a_few_seconds(self, app, client, monkeypatch):
        now = [1000.0]
        app.extensions[RELAY_PROBE].clock = lambda: now[0]
        with http_answering(404, b"Not Found") as (port, asked):
            monkeypatch.setenv("RELAY_BIND", f"127.0.0.1:{port}")
            client.get("/readyz", headers=BEARER)
            now[0] += checks.RELAY_PROBE_TTL - 0.1
            client.get("/readyz", headers=BEARER)
            now[0] += 0.2
            client.get("/readyz", headers=BEARER)
        assert asked == ["/relay", "/relay"]


class TestRelayUrlWithHost:
    """BROKER_RELAY_URL=ws://{host}:PORT/relay: {host} is the host this request was made to."""

    @pytest.fixture
    def relay_port(self) -> int:
        return free_port()

    @pytest.fixture
    def env_overrides(self, relay_port) -> dict:
        return {
            "BROKER_METRICS_TOKEN": TOKEN,
            "BROKER_CONSOLE_MODE": "relay",
            "BROKER_RELAY_URL": f"ws://{{host}}:{relay_port}/relay",
        }

    def test_the_requests_host_is_probed_not_the_bind_address(self, app, client, monkeypatch, relay_port):
        monkeypatch.setenv("RELAY_BIND", "192.0.2.1:1")  # what check would use; /readyz has the page's host
        with relay_listening(app, relay_port):
            response = client.get("/readyz", headers=BEARER, base_url="http://127.0.0.1:5000")
        relay = response.get_json()["checks"]["relay"]
        assert relay == {"ok": True, "reason": f"relay answers at http://127.0.0.1:{relay_port}/relay"}


# -- request IDs ---------------------------------------------------------------------


def test_a_request_id_is_generated_when_absent(client):
    first = client.get("/healthz").headers["X-Request-ID"]
    second = client.get("/healthz").headers["X-Request-ID"]
    assert HEX_ID.fullmatch(first) and HEX_ID.fullmatch(second) and first != second


def test_a_clients_own_request_id_is_not_believed_without_a_proxy(client):
    response = client.get("/healthz", headers={"X-Request-ID": "chosen-by-client"})
    assert HEX_ID.fullmatch(response.headers["X-Request-ID"])


class TestRequestIdBehindAProxy:
    @pytest.fixture
    def env_overrides(self) -> dict:
        return {"BROKER_TRUSTED_PROXIES": "1"}

    def test_the_proxys_request_id_is_kept(self, client):
        assert (
            client.get("/healthz", headers={"X-Request-ID": "lb-1.2_3-abc"}).headers["X-Request-ID"] == "lb-1.2_3-abc"
        )

    @pytest.mark.parametrize(
        "hostile",
        ["x" * 65, "has space", "line\nbreak", "line\r\nX-Injected: 1", "", "<script>", "caf\u00e9", "a;b"],
        ids=["too-long", "space", "newline", "crlf", "empty", "markup", "non-ascii", "semicolon"],
    )
    def test_a_hostile_request_id_is_replaced(self, client, hostile):
        # Through the WSGI environ: the test client's header checks would refuse a newline.
        response = client.get("/healthz", environ_overrides={"HTTP_X_REQUEST_ID": hostile})
        assert HEX_ID.fullmatch(response.headers["X-Request-ID"])

    def test_the_id_reaches_the_error_body_the_audit_record_and_the_log(self, app, client, auth, monkeypatch):
        stream = io.StringIO()
        monkeypatch.setattr(broker_handler(logging.getLogger("broker")), "stream", stream)
        auth.login()
        response = client.post(
            f"/api/consoles/{server_id(99)}", headers={"X-CSRFToken": auth.csrf(), "X-Request-ID": "req-404-abc"}
        )
        assert response.status_code == 404
        assert response.headers["X-Request-ID"] == "req-404-abc"
        assert response.get_json()["error"]["request_id"] == "req-404-abc"
        audit_lines = [line for line in stream.getvalue().splitlines() if " broker.audit [req-404-abc]: " in line]
        assert len(audit_lines) == 1 and json.loads(audit_lines[0].partition("]: ")[2])["action"] == "console"
        with app.app_context():
            row = db.session.scalars(select(AuditRecord).order_by(AuditRecord.id.desc())).first()
            assert (row.action, row.request_id) == ("console", "req-404-abc")


# -- the proxy count -------------------------------------------------------------------

FORWARDED = {"X-Forwarded-For": "198.51.100.7"}
# What the log says when X-Forwarded-For reaches a broker that believes no proxy (127.0.0.1: the test client).
NO_PROXY_BELIEVED = (
    "X-Forwarded-For came from 127.0.0.1 but BROKER_TRUSTED_PROXIES=0 believes no proxy: every client has "
    "127.0.0.1's address (sign-in limits, audit). Set BROKER_TRUSTED_PROXIES to the number of proxies in front "
    "(1 for the shipped nginx); with none in front, a client sent the header itself"
)


def proxy_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "X-Forwarded-For" in r.getMessage()]


@pytest.mark.parametrize(
    ("env_overrides", "forwarded", "warned"),
    [
        ({}, None, None),
        ({}, "198.51.100.7", "came from 127.0.0.1 but BROKER_TRUSTED_PROXIES=0 believes no proxy"),
        ({}, "203.0.113.9, 198.51.100.7", "came from 127.0.0.1 but BROKER_TRUSTED_PROXIES=0 believes no proxy"),
        ({"BROKER_TRUSTED_PROXIES": "1"}, None, None),
        ({"BROKER_TRUSTED_PROXIES": "1"}, "198.51.100.7", None),
        ({"BROKER_TRUSTED_PROXIES": "1"}, "203.0.113.9, 198.51.100.7", None),
        (
            {"BROKER_TRUSTED_PROXIES": "2"},
            "198.51.100.7",
            "came from 127.0.0.1 with 1 address but BROKER_TRUSTED_PROXIES=2 expects 2, so it is ignored",
        ),
    ],
    ids=["none-none", "none-one", "none-two", "one-none", "one-one", "one-two", "two-one"],
)
def test_a_forwarded_address_the_count_does_not_believe_is_warned_of(client, caplog, forwarded, warned):
    client.get("/healthz", headers={"X-Forwarded-For": forwarded} if forwarded else {})
    if warned is None:
        assert proxy_warnings(caplog) == []
    else:
        [line] = proxy_warnings(caplog)
        assert warned in line and "every client has 127.0.0.1's address (sign-in limits, audit)" in line


def test_the_warning_names_the_setting_at_most_once_a_minute(app, client, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(broker_handler(logging.getLogger("broker")), "stream", stream)
    now = [1_700_000_000.0]
    app.extensions[PROXY_WATCH].clock = lambda: now[0]

    def warnings() -> list[str]:
        return [line for line in stream.getvalue().splitlines() if "X-Forwarded-For came from" in line]

    for _ in range(5):
        client.get("/login", headers=FORWARDED)
    [line] = warnings()
    # The whole line, as the journal shows it: time, level, logger, the request's ID, the message.
    said = re.escape(f"{NO_PROXY_BELIEVED} (said at most once a minute)")
    assert re.fullmatch(rf"\S+ \S+ WARNING broker\.web\.observability \[[0-9a-f]{{32}}\]: {said}", line), line
    now[0] += 59
    client.get("/login", headers=FORWARDED)
    assert len(warnings()) == 1
    now[0] += 1
    client.get("/login", headers=FORWARDED)
    assert len(warnings()) == 2


def test_readyz_details_show_it_and_strangers_read_degraded(client):
    client.get("/login", headers=FORWARDED)
    assert client.get("/readyz").get_json() == {"status": "degraded"}
    response = client.get("/readyz", headers=BEARER)
    assert response.status_code == 200  # a wrong count is no reason to leave the load balancer
    body = response.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["proxies"] == {"ok": False, "reason": f"{NO_PROXY_BELIEVED}; seen less than a minute ago"}


class TestProxyCountThroughRedis:
    """Each web process notes what it saw in Redis, where every worker's /readyz (and check) read it."""

    @pytest.fixture
    def env_overrides(self, redis_url) -> dict:
        return {"BROKER_REDIS_URL": redis_url, "BROKER_METRICS_TOKEN": TOKEN}

    def test_another_worker_reports_what_one_saw(self, app, client):
        client.get("/login", headers=FORWARDED)
        app.extensions[PROXY_WATCH] = ProxyWatch()  # another worker, which saw nothing itself
        proxies = client.get("/readyz", headers=BEARER).get_json()["checks"]["proxies"]
        assert proxies == {"ok": False, "reason": f"{NO_PROXY_BELIEVED}; seen less than a minute ago"}
        assert 3500 < state.of(app).redis.client.ttl(checks.PROXY_SIGHTING_KEY) <= checks.PROXY_SIGHTING_TTL


def test_the_error_page_shows_the_reference(client):
    response = client.get("/no-such-page")
    reference = BeautifulSoup(response.get_data(as_text=True), "html.parser").find(id="error-reference")
    assert reference.get_text(strip=True) == f"Reference: {response.headers['X-Request-ID']}"


def test_power_actions_count_by_action_and_outcome(client, auth):
    refused = sample(client, "broker_power_actions_total", cloud="lab", action="reboot-hard", outcome="refused")
    auth.login()
    response = client.post(
        f"/api/servers/{server_id(1)}/power-confirmations?cloud=lab",
        json={"action": "reboot-hard"},
        headers={"X-CSRFToken": auth.csrf()},
    )
    assert response.status_code == 403  # the suite's agent has no power permission
    after = sample(client, "broker_power_actions_total", cloud="lab", action="reboot-hard", outcome="refused")
    assert after == refused + 1
