"""Logs never carry console tokens or passwords."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime

import pytest
from flask import g

from broker.logs import JsonFormatter
from broker.logs import RedactQueryStrings
from broker.logs import broker_handler
from broker.logs import configure_logging
from tests.support import server_id


def test_request_lines_lose_their_query_string():
    record = logging.LogRecord(
        "werkzeug",
        logging.INFO,
        __file__,
        1,
        '"%s" %s %s',
        ("GET /vnc_auto.html?path=%3Ftoken%3Dabc HTTP/1.1", "200", "-"),
        None,
    )
    RedactQueryStrings().filter(record)
    assert record.getMessage() == '"GET /vnc_auto.html?<redacted> HTTP/1.1" 200 -'


def test_gunicorn_access_atoms_lose_their_query_string():
    atoms = {
        "r": "GET /demo-console/vnc_auto.html?path=%3Ftoken%3Dabc HTTP/1.1",
        "q": "path=%3Ftoken%3Dabc",
        "s": "200",
    }
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, '"%(r)s" %(s)s q=%(q)s', (atoms,), None)
    RedactQueryStrings().filter(record)
    assert record.getMessage() == '"GET /demo-console/vnc_auto.html?<redacted> HTTP/1.1" 200 q=<redacted>'


def test_audit_log_line_has_no_token_or_password(client, auth):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("broker").addHandler(handler)
    auth.login(password="wrong-password-zz")
    auth.login()
    token = auth.csrf()
    url = client.post(f"/api/consoles/{server_id(1)}", headers={"X-CSRFToken": token}).get_json()["url"]
    logging.getLogger("broker").removeHandler(handler)
    out = stream.getvalue()
    assert '"action": "console"' in out and '"action": "sign_in"' in out
    secret = url.rpartition("%3D")[2]
    for leaked in (secret, "wrong-password-zz", "agent-password-1", "vnc_auto.html?"):
        assert leaked not in out


@pytest.fixture
def json_logs():
    """gunicorn's access log as the master sets it up (a text handler), then BROKER_LOG_FORMAT=json."""
    stream = io.StringIO()
    access = logging.getLogger("gunicorn.access")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    configure_logging(fmt="json")
    yield stream
    access.removeHandler(handler)
    configure_logging(fmt="text")


def test_json_access_lines_still_lose_their_query_string(json_logs):
    atoms = {
        "r": "GET /demo-console/vnc_auto.html?path=%3Ftoken%3Dabc HTTP/1.1",
        "q": "path=%3Ftoken%3Dabc",
        "s": "200",
        "{x-request-id}o": "0123abcd",
    }
    logging.getLogger("gunicorn.access").info('"%(r)s" %(s)s q=%(q)s', atoms)
    [line] = json_logs.getvalue().splitlines()
    entry = json.loads(line)
    assert entry.pop("time").endswith("+00:00")
    assert entry == {
        "level": "INFO",
        "logger": "gunicorn.access",
        "message": '"GET /demo-console/vnc_auto.html?<redacted> HTTP/1.1" 200 q=<redacted>',
        "request_id": "0123abcd",
    }


def test_json_time_is_iso_8601_utc():
    record = logging.LogRecord("broker", logging.WARNING, __file__, 1, "at %s", ("noon",), None)
    record.created = 1_700_000_000.25
    entry = json.loads(JsonFormatter().format(record))
    assert entry["time"] == "2023-11-14T22:13:20.250+00:00"
    assert datetime.fromisoformat(entry["time"]).utcoffset().total_seconds() == 0
    assert (entry["message"], entry["request_id"]) == ("at noon", "-")


class TestJsonFormat:
    @pytest.fixture
    def env_overrides(self) -> dict:
        return {"BROKER_LOG_FORMAT": "json"}

    def test_every_line_of_a_request_is_json_with_its_request_id(self, client, auth, monkeypatch):
        stream = io.StringIO()
        monkeypatch.setattr(broker_handler(logging.getLogger("broker")), "stream", stream)
        response = auth.login(password="wrong-password-zz")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        [audit] = [line for line in lines if line["logger"] == "broker.audit"]
        assert audit["request_id"] == response.headers["X-Request-ID"]
        assert json.loads(audit["message"])["outcome"] == "failed"
        assert "wrong-password-zz" not in stream.getvalue()

    def test_an_exception_is_one_json_line_with_its_traceback(self, app, monkeypatch):
        stream = io.StringIO()
        monkeypatch.setattr(broker_handler(logging.getLogger("broker")), "stream", stream)
        with app.test_request_context("/"):
            g.request_id = "req-with-error"
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError:
                logging.getLogger("broker.web").exception("it broke")
        [line] = stream.getvalue().splitlines()
        entry = json.loads(line)
        assert (entry["message"], entry["level"], entry["request_id"]) == ("it broke", "ERROR", "req-with-error")
        assert (
            entry["exception"].startswith("Traceback") and "ZeroDivisionError: division by zero" in entry["exception"]
        )
