"""Logs never carry console tokens or passwords."""

from __future__ import annotations

import io
import logging

from broker.logs import RedactQueryStrings
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
