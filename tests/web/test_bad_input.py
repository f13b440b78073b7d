"""Hostile and malformed input, table-driven: each ends in a clear refusal, an audit
record where it is a security event, and no change to anything stored."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import func
from sqlalchemy import select

from broker.extensions import db
from broker.models import AuditRecord
from broker.services import policy
from broker.services import users
from tests.support import ADMIN
from tests.support import FROM_THIS_SITE
from tests.support import server_id

XSS = "<img src=x onerror=alert(1)>\"'><script>alert(2)</script>"


@dataclass
class Case:
    name: str
    method: str
    path: str
    status: int | tuple[int, ...]
    audit: tuple[str, str] | None = None  # (action, outcome) of the record it must leave
    data: dict | None = None
    headers: dict = field(default_factory=dict)
    csrf: bool = True
    signed_in: bool = True
    body: str | None = None  # sent as application/json
    as_admin: bool = False


MINT = f"/api/consoles/{server_id(1)}"

CASES = [
    # Server references that must never reach an upstream URL path.
    Case("id with ../", "POST", "/api/consoles/../../servers/detail", 404, ("console", "failed")),
    Case("id with encoded slashes", "POST", "/api/consoles/..%2F..%2Fservers", 404, ("console", "failed")),
    Case("id with NUL", "POST", "/api/consoles/abc%00def", 404, ("console", "failed")),
    Case("10 kB id", "POST", "/api/consoles/" + "a" * 10_000, 404, ("console", "failed")),
    Case("page with ../", "GET", "/console/..%2F..%2Fetc%2Fpasswd", 404),
    Case("page with NUL", "GET", "/console/a%00b", 404),
    Case("page with 10 kB name", "GET", "/console/" + "b" * 10_000, 404),
    Case("open with encoded slash", "GET", "/console/..%2Fx/open", 404),
    Case("page with script name", "GET", "/console/%3Cscript%3Ealert(1)%3C%2Fscript%3E", 404),
    # CSRF: missing or wrong tokens.
    Case("mint without CSRF", "POST", f"/api/consoles/{server_id(1)}", 400, ("request", "refused"), csrf=False),
    Case(
        "mint with wrong CSRF",
        "POST",
        f"/api/consoles/{server_id(1)}",
        400,
        ("request", "refused"),
        headers={"X-CSRFToken": "forged"},
        csrf=False,
    ),
    Case("logout without CSRF", "POST", "/logout", 400, ("request", "refused"), csrf=False),
    Case(
        "login without CSRF",
        "POST",
        "/login",
        400,
        ("request", "refused"),
        data={"username": "agent", "password": "agent-password-1"},
        csrf=False,
        signed_in=False,
    ),
    Case("admin change by an agent", "POST", "/admin/groups", 403, ("admin", "refused"), data={"name": "x"}),
    # Oversized fields.
    Case(
        "10 kB user name",
        "POST",
        "/login",
        401,
        ("sign_in", "failed"),
        data={"username": "u" * 10_000, "password": "p"},
        signed_in=False,
    ),
    # NUL bytes: PostgreSQL refuses them in text, so they must never reach a query or a record unchanged.
    Case(
        "user name with NUL",
        "POST",
        "/login",
        401,
        ("sign_in", "failed"),
        data={"username": "agent\x00", "password": "agent-password-1"},
        signed_in=False,
    ),
    Case("mint reason with NUL", "POST", MINT, 400, body='{"reason": "load\\u0000x"}'),
    Case(
        "100 kB password",
        "POST",
        "/login",
        413,
        data={"username": "agent", "password": "p" * 100_000},
        signed_in=False,
    ),
    # A signed-out API call: 401 JSON, never a redirect and never a mint.
    Case("mint signed out", "POST", f"/api/consoles/{server_id(1)}", 401, signed_in=False, csrf=False),
    # Mint bodies: only a small {"reason": ...} object, never a traceback.
    Case("mint body nested 20,000 deep", "POST", MINT, 400, body="[" * 20_000),
    Case("mint body nested object", "POST", MINT, 400, body='{"reason": ' * 30 + '"load"' + "}" * 30),
    Case("mint body 10 kB", "POST", MINT, 400, body='{"reason": "' + "x" * 10_000 + '"}'),
    Case("mint body a list", "POST", MINT, 400, body='["load"]'),
    Case("mint body a string", "POST", MINT, 400, body='"load"'),
    Case("mint body not JSON", "POST", MINT, 400, body="reason=load"),
    Case("mint body unknown key", "POST", MINT, 400, body='{"reason": "load", "admin": true}'),
    Case("mint body unknown reason", "POST", MINT, 400, body='{"reason": "steal"}'),
    Case("mint body reason not text", "POST", MINT, 400, body='{"reason": ["load"]}'),
    Case("mint body NaN", "POST", MINT, 400, body='{"reason": NaN}'),
    Case("mint body invalid UTF-8", "POST", MINT, 400, body=b'{"reason": "\xff"}'.decode("latin-1")),
    # A navigation from another site to the pop-out gets the page; it mints nothing.
    Case("open from another site", "GET", "/console/web-01/open", 200, headers={"Sec-Fetch-Site": "cross-site"}),
    Case("open with no same-site proof", "GET", "/console/web-01/open", 200),
    # Admin: only known filters reach url_for; odd values are clamped or refused.
    Case("audit ?endpoint=", "GET", "/admin/audit?endpoint=x", 200, as_admin=True),
    Case("audit ?_method=", "GET", "/admin/audit?_method=POST", 200, as_admin=True),
    Case("audit 20-digit page", "GET", "/admin/audit?page=" + "9" * 20, 200, as_admin=True),
    Case("audit date past the calendar", "GET", "/admin/audit?since=9999-12-31T23:59:59-14:00", 400, as_admin=True),
    Case("audit date before the calendar", "GET", "/admin/audit?until=0001-01-01T00:00%2B14:00", 400, as_admin=True),
    Case("csv date past the calendar", "GET", "/admin/audit.csv?since=9999-12-31T23:59:59-14:00", 400, as_admin=True),
    # Admin changes that must be refused, and audited as failed.
    *[
        Case(f"add user {label}", "POST", "/admin/users", 302, ("admin", "failed"), data=fields, as_admin=True)
        for label, fields in [
            ("Cyrillic look-alike", {"username": "\u0430dmin", "password": "long-enough-pass"}),
            ("fullwidth look-alike", {"username": "\uff41\uff44\uff4d\uff49\uff4e", "password": "long-enough-pass"}),
            ("same name other case", {"username": "Admin", "password": "long-enough-pass"}),
            ("named ..", {"username": "..", "password": "long-enough-pass"}),
            ("8-digit password", {"username": "newbie", "password": "12345678"}),
            ("common password", {"username": "newbie", "password": "password1234"}),
            ("spaces for a password", {"username": "newbie", "password": " " * 12}),
        ]
    ],
    Case("group named like another", "POST", "/admin/groups", 302, ("admin", "failed"), {"name": "x"}, as_admin=True),
    *[
        Case(f"rule on {cloud!r}", "POST", "/admin/rules", 302, ("admin", "failed"), as_admin=True, data=fields)
        for cloud, fields in [
            ("unknown cloud", {"subject": "user:agent", "cloud": "mycloud_typo"}),
            ("cloud in other case", {"subject": "user:agent", "cloud": "LAB"}),
            ("empty cloud", {"subject": "user:agent", "cloud": ""}),
        ]
    ],
]


def stored_state(app) -> tuple:
    with app.app_context():
        return (
            [(u.username, u.password_hash, u.role, u.session_token) for u in users.all_users()],
            [(g.name, [m.username for m in g.members]) for g in policy.all_groups()],
            [r.describe() for r in policy.all_rules()],
        )


def audit_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(AuditRecord))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case, client, auth, app, fake):
    if case.as_admin:
        auth.login(*ADMIN)
    elif case.signed_in:
        auth.login()
    if case.name == "group named like another":
        with app.app_context():
            policy.add_group("X")
            db.session.commit()
    headers = dict(case.headers)
    data = dict(case.data) if case.data is not None else None
    if case.csrf:
        token = auth.csrf()
        headers["X-CSRFToken"] = token
        if data is not None:
            data["csrf_token"] = token
    before, records_before = stored_state(app), audit_count(app)
    with app.app_context():
        latest = db.session.scalar(select(func.max(AuditRecord.id))) or 0
    if case.body is not None:
        headers["Content-Type"] = "application/json"
        data = case.body.encode("latin-1" if "invalid UTF-8" in case.name else "utf-8")
    response = client.open(case.path, method=case.method, headers=headers, data=data)
    assert response.status_code == case.status, response.get_data(as_text=True)[:300]
    if case.path.startswith("/api/"):
        assert response.get_json()["error"]["message"]
    assert fake.counts["console"] == 0 and fake.counts["show"] == 0
    assert stored_state(app) == before
    if case.audit:
        with app.app_context():
            new = db.session.scalars(select(AuditRecord).where(AuditRecord.id > latest))
            assert case.audit in [(r.action, r.outcome) for r in new]
    else:
        assert audit_count(app) == records_before


@pytest.mark.parametrize("path", ["/", f"/console/{server_id(6)}", "/console/worker"])
def test_hostile_server_name_is_inert(client, auth, path):
    auth.login()
    html = client.get(path).get_data(as_text=True)
    soup = BeautifulSoup(html, "html.parser")
    assert not soup.find("b"), "server name markup reached the page"
    assert all(script.get("src") for script in soup.find_all("script"))


def test_hostile_cloud_error_message_is_escaped(client, auth, fake):
    """Text of a 4xx (meant for clients) is shown, as text; a 5xx's free text is not shown at all."""
    auth.login()
    client.post(f"/api/consoles/{server_id(2)}", headers={"X-CSRFToken": auth.csrf()})  # warm the version check
    fake.faults.error_message = XSS
    fake.faults.fail_next["console"] = [400]
    html = client.get("/console/web-01/open", headers=FROM_THIS_SITE).get_data(as_text=True)
    assert "<script>alert(2)</script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    fake.faults.fail_next["console"] = [400]
    body = client.post(f"/api/consoles/{server_id(1)}", headers={"X-CSRFToken": auth.csrf()})
    assert body.get_json()["error"]["message"].endswith(XSS)  # JSON carries text; the page sets textContent
    fake.faults.fail_next["console"] = [500]
    body = client.post(f"/api/consoles/{server_id(1)}", headers={"X-CSRFToken": auth.csrf()})
    assert "alert" not in body.get_json()["error"]["message"]


def test_hostile_name_in_audit_page(client, auth, app):
    auth.login("admin", "admin-password-1")
    client.get(f"/console/{server_id(6)}/open", headers=FROM_THIS_SITE)
    html = client.get("/admin/audit").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html


@pytest.mark.parametrize("scheme", ["javascript", "data"])
def test_open_never_redirects_to_a_non_http_url(client, auth, fake, scheme):
    auth.login()
    fake.faults.console_scheme = scheme
    response = client.get("/console/web-01/open", headers=FROM_THIS_SITE)
    assert response.status_code == 502
    assert "Location" not in response.headers
