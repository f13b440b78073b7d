"""Admin pages and commands: managing users, groups and rules; reading the audit trail."""

from __future__ import annotations

import csv
import io
from datetime import UTC
from datetime import datetime

import pytest
from bs4 import BeautifulSoup

from broker import create_app
from broker import state
from broker.cloud.registry import Cloud
from broker.cloud.types import ServerInfo
from broker.extensions import db
from broker.models import AccessRule
from broker.models import AuditRecord
from broker.models import Group
from broker.models import User
from broker.models import UserSession
from broker.services import audit
from broker.services import identity
from broker.services import instances
from broker.services import policy
from broker.services import relay
from broker.services import users
from tests.support import ADMIN
from tests.support import broker_env
from tests.support import make_client


@pytest.fixture
def admin(client, auth):
    auth.login(*ADMIN)
    return client


def post(client, auth, path, **data):
    return client.post(path, data={"csrf_token": auth.csrf(), **data})


@pytest.mark.parametrize("path", ["/admin/", "/admin/audit", "/admin/audit.csv", "/admin/sessions", "/admin/instances"])
def test_agents_get_403_and_a_record(client, auth, app, path):
    auth.login()
    assert client.get(path).status_code == 403
    with app.app_context():
        [row] = audit.search(audit.Filter(action="admin", outcome="refused"))[0]
        assert row.username == "agent"


def test_admin_forms_change_users_groups_and_rules(admin, auth, app):
    assert post(admin, auth, "/admin/users", username="ivy", password="ivy-password-1", role="agent").status_code == 302
    post(admin, auth, "/admin/groups", name="night-shift")
    with app.app_context():
        group_id = policy.find_group("night-shift").id
    post(admin, auth, f"/admin/groups/{group_id}/members", username="ivy")
    post(admin, auth, "/admin/rules", subject="group:night-shift", cloud="lab", name_pattern="web-*")
    page = BeautifulSoup(admin.get("/admin/").get_data(as_text=True), "html.parser")
    assert "group night-shift may open web-* on cloud lab" in page.select_one("#rules").get_text()
    assert "ivy" in page.select_one('[data-group="night-shift"]').get_text()
    with app.app_context():
        actions = [r.detail for r in audit.search(audit.Filter(action="admin"))[0]]
        assert actions == ["rule_add", "member_add", "group_add", "user_add"]
        rule = policy.all_rules()[-1]
    post(admin, auth, f"/admin/rules/{rule.id}/remove")
    with app.app_context():
        assert [r.id for r in policy.all_rules()] != [] and rule.id not in [r.id for r in policy.all_rules()]


def test_failed_admin_change_is_shown_and_audited(admin, auth, app):
    response = post(admin, auth, "/admin/users", username="agent", password="whatever-123")
    assert response.status_code == 302
    assert "already exists" in admin.get("/admin/").get_data(as_text=True)
    with app.app_context():
        [row] = audit.search(audit.Filter(action="admin", outcome="failed"))[0]
        assert "already exists" in row.reason and "whatever-123" not in row.reason


def test_admin_forms_need_csrf(admin, app):
    response = admin.post("/admin/groups", data={"name": "x"})
    assert response.status_code == 400
    page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    assert page.select_one("#error")["data-code"] == "csrf_failed"
    assert page.select_one("#error-message").get_text().startswith("The form was stale or forged.")
    with app.app_context():
        assert policy.all_groups() == [] and audit.count(audit.Filter(action="admin")) == 0


def test_audit_page_filters_and_paginates(admin, app):
    with app.test_request_context():
        for n in range(120):
            audit.stage("console", "ok" if n % 2 else "failed", username=f"u{n % 3}", server_name=f"web-{n}")
        db.session.commit()
    page = BeautifulSoup(admin.get("/admin/audit?action=console").get_data(as_text=True), "html.parser")
    assert page.select_one("#audit-total").get_text() == "120"
    assert len(page.select("#audit tbody tr")) == 50
    assert page.select_one("#next-page") is not None
    page = BeautifulSoup(
        admin.get("/admin/audit?action=console&user=u1&outcome=ok").get_data(as_text=True), "html.parser"
    )
    assert page.select_one("#audit-total").get_text() == "20"
    page = BeautifulSoup(admin.get("/admin/audit?server=web-11").get_data(as_text=True), "html.parser")
    assert {td.get_text(strip=True) for td in page.select("#audit tbody td:nth-of-type(6)")} >= {"web-11"}


def test_audit_time_range(admin, app):
    with app.test_request_context():
        audit.stage("console", "ok", username="agent", server_name="web-now")
        db.session.commit()
    response = admin.get("/admin/audit?since=2000-01-01&until=2000-01-02")
    assert response.status_code == 200
    page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    assert page.select_one("#audit-total").get_text() == "0" and page.select("#audit tbody tr") == []
    assert [page.select_one(f'input[name="{key}"]')["value"] for key in ("since", "until")] == [
        "2000-01-01",
        "2000-01-02",
    ]
    page = BeautifulSoup(
        admin.get("/admin/audit?since=2000-01-01&action=console").get_data(as_text=True), "html.parser"
    )
    assert page.select_one("#audit-total").get_text() == "1" and "web-now" in page.select_one("#audit tbody").get_text()
    response = admin.get("/admin/audit?since=yesterday")
    assert response.status_code == 400
    message = BeautifulSoup(response.get_data(as_text=True), "html.parser").select_one("#error-message").get_text()
    assert message == "since must be a date or time such as 2026-11-26 or 2026-11-26T14:00"


@pytest.mark.parametrize(
    ("query", "status"),
    [
        # Keys url_for itself would act on must never reach it.
        ("endpoint=x", 200),
        ("_method=POST", 200),
        ("_external=1&_scheme=javascript", 200),
        ("_anchor=x&user=agent", 200),
        ("page=x", 200),
        ("page=-3", 200),
        ("page=0", 200),
        ("page=" + "9" * 20, 200),
        ("page=" + "9" * 400, 200),
        # Dates at the edges of the calendar.
        ("since=9999-12-31T23:59:59-14:00", 400),
        ("until=0001-01-01T00:00:00%2B14:00", 400),
        ("since=0001-01-01", 200),
        ("until=9999-12-31T23:59:59", 200),
        ("since=" + "2026" * 100, 400),
    ],
)
def test_audit_page_survives_odd_query_strings(admin, query, status):
    response = admin.get(f"/admin/audit?{query}")
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    if status == 400:  # says which field and what it takes
        page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
        field = query.partition("=")[0]
        assert page.select_one("#error-message").get_text().startswith(f"{field} must be a date or time such as")
    if status == 200:
        page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
        links = [a["href"] for a in page.select("#export-csv, #prev-page, #next-page")]
        assert links and all(href.startswith("/admin/audit") for href in links)
        assert not any(key in href for href in links for key in ("endpoint", "_method", "_external", "_anchor"))


def test_audit_page_number_is_clamped_to_the_last_page(admin, app):
    with app.test_request_context():
        for n in range(60):
            audit.stage("console", "ok", username="agent", server_name=f"web-{n}")
        db.session.commit()
    page = BeautifulSoup(
        admin.get("/admin/audit?action=console&page=" + "9" * 20).get_data(as_text=True), "html.parser"
    )
    assert len(page.select("#audit tbody tr")) == 10
    assert "page=1" in page.select_one("#prev-page")["href"]


class TestRegionClouds:
    @pytest.fixture
    def cloud_names(self):
        return ["lab", "beta/RegionOne"]

    def test_page_offers_the_configured_clouds(self, admin):
        page = BeautifulSoup(admin.get("/admin/").get_data(as_text=True), "html.parser")
        options = [o["value"] for o in page.select('#add-rule select[name="cloud"] option')]
        assert options == ["*", "lab", "beta/RegionOne"]

    def test_rule_on_a_region_cloud_from_page_and_cli(self, admin, auth, runner, app):
        post(admin, auth, "/admin/rules", subject="user:agent", cloud="beta/RegionOne", name_pattern="web-*")
        result = runner.invoke(args=["rules", "add", "--user", "agent", "--cloud", "beta/RegionOne"])
        assert result.exit_code == 0, result.output
        with app.app_context():
            described = [r.describe() for r in policy.all_rules()]
        assert "user agent may open web-* on cloud beta/RegionOne" in described
        assert "user agent may open * on cloud beta/RegionOne" in described

    @pytest.mark.parametrize("cloud", ["beta", "Beta/RegionOne", "mycloud_typo", "../x", ""])
    def test_unknown_cloud_is_refused_with_the_valid_names(self, admin, auth, runner, app, cloud):
        with app.app_context():
            before = len(policy.all_rules())
        result = runner.invoke(args=["rules", "add", "--user", "agent", "--cloud", cloud])
        assert result.exit_code != 0
        assert "the configured clouds are: beta/RegionOne, lab" in result.output
        post(admin, auth, "/admin/rules", subject="user:agent", cloud=cloud)
        assert "the configured clouds are: beta/RegionOne, lab" in admin.get("/admin/").get_data(as_text=True)
        with app.app_context():
            assert len(policy.all_rules()) == before


def test_rows_are_reached_by_number_whatever_their_name(admin, auth, app):
    """A name a URL path would rewrite (. or .., from before names were checked) can still be removed."""
    with app.app_context():
        for name in (".", ".."):
            db.session.add(User(username=name, password_hash="x", role="agent"))
            db.session.add(Group(name=name))
        db.session.commit()
        ids = [(u.id, u.username) for u in users.all_users() if u.username in (".", "..")]
        group_ids = [g.id for g in policy.all_groups() if g.name in (".", "..")]
    page = BeautifulSoup(admin.get("/admin/").get_data(as_text=True), "html.parser")
    for user_id, _ in ids:
        link = page.select_one(f'a[href="/admin/users/{user_id}/remove"]')
        assert link is not None
        assert post(admin, auth, link["href"]).status_code == 302
    for group_id in group_ids:
        assert post(admin, auth, f"/admin/groups/{group_id}/remove").status_code == 302
    with app.app_context():
        assert [u.username for u in users.all_users()] == ["admin", "agent"]
        assert policy.all_groups() == []
    assert post(admin, auth, "/admin/users/999/remove").status_code == 404
    with app.app_context():
        assert [u.username for u in users.all_users()] == ["admin", "agent"]  # a miss removes no one
        assert audit.count(audit.Filter(action="admin", outcome="ok")) == len(ids) + len(group_ids)


def test_csv_export_keeps_formulas_as_text(admin, app):
    with app.test_request_context():
        audit.stage("console", "ok", username="agent", server_name='=HYPERLINK("http://evil")')
        db.session.commit()
    response = admin.get("/admin/audit.csv?action=console")
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert rows[-1]["server_name"] == '\'=HYPERLINK("http://evil")'
    assert set(rows[0]) == set(audit.CSV_FIELDS)


def test_records_are_append_only(app):
    with app.test_request_context():
        entry = audit.stage("console", "ok", username="agent")
        db.session.commit()
        entry.outcome = "failed"
        with pytest.raises(PermissionError):
            db.session.commit()
        db.session.rollback()
        with pytest.raises(PermissionError):
            db.session.delete(db.session.get(AuditRecord, entry.id))
            db.session.commit()


def test_cli_groups_and_rules(runner, app):
    assert runner.invoke(args=["groups", "add", "dba"]).exit_code == 0
    assert runner.invoke(args=["groups", "add-member", "dba", "agent"]).exit_code == 0
    result = runner.invoke(args=["rules", "add", "--group", "dba", "--cloud", "lab", "--name-pattern", "db-*"])
    assert result.exit_code == 0, result.output
    assert "group dba may open db-* on cloud lab" in runner.invoke(args=["rules", "list"]).output
    assert "dba\tagent" in runner.invoke(args=["groups", "list"]).output
    result = runner.invoke(args=["rules", "add", "--user", "ghost", "--cloud", "lab"])
    assert result.exit_code != 0 and "no user called ghost" in result.output
    with app.app_context():
        details = [r.detail for r in audit.search(audit.Filter(action="admin"))[0]]
        assert details == ["rule_add", "rule_add", "member_add", "group_add"]
        assert audit.search(audit.Filter(action="admin"))[0][0].username.startswith("cli:")


@pytest.mark.parametrize("kind", ["user", "group", "member", "rule"])
def test_removing_anything_asks_first(admin, auth, app, kind):
    post(admin, auth, "/admin/groups", name="night-shift")
    with app.app_context():
        group = policy.find_group("night-shift")
        policy.add_member("night-shift", "agent")
        db.session.commit()
        agent = users.find("agent")
        rule_id = policy.all_rules()[0].id
        path = {
            "user": f"/admin/users/{agent.id}/remove",
            "group": f"/admin/groups/{group.id}/remove",
            "member": f"/admin/groups/{group.id}/members/{agent.id}/remove",
            "rule": f"/admin/rules/{rule_id}/remove",
        }[kind]
    page = BeautifulSoup(admin.get("/admin/").get_data(as_text=True), "html.parser")
    assert page.select_one(f'a[href="{path}"]') is not None
    before = stored(app)
    question = BeautifulSoup(admin.get(path).get_data(as_text=True), "html.parser")
    assert question.select_one("#confirm h1").get_text().endswith("?")
    assert question.select_one("#confirm form")["action"] == path
    assert stored(app) == before  # asking changed nothing
    assert post(admin, auth, path).status_code == 302
    assert stored(app) != before


def stored(app) -> tuple:
    with app.app_context():
        return (
            [u.username for u in users.all_users()],
            [(g.name, [m.username for m in g.members]) for g in policy.all_groups()],
            [r.id for r in policy.all_rules()],
        )


def test_role_change_from_page_and_cli(admin, auth, app, runner):
    with app.app_context():
        agent_id = users.find("agent").id
    post(admin, auth, f"/admin/users/{agent_id}/role", role="admin")
    with app.app_context():
        assert users.find("agent").role == "admin"
    result = runner.invoke(args=["users", "set-role", "agent", "agent"])
    assert result.exit_code == 0 and "agent is now agent (was admin)" in result.output
    assert runner.invoke(args=["users", "set-role", "agent", "root"]).exit_code != 0
    with app.app_context():
        assert users.find("agent").role == "agent"
        details = [r.detail for r in audit.search(audit.Filter(action="admin"))[0]]
        assert details[:2] == ["user_role", "user_role"]


def test_admin_cannot_demote_themselves(admin, auth, app):
    with app.app_context():
        admin_id = users.find("admin").id
    post(admin, auth, f"/admin/users/{admin_id}/role", role="agent")
    assert "cannot take away your own admin role" in admin.get("/admin/").get_data(as_text=True)
    with app.app_context():
        assert users.find("admin").role == "admin"


def test_password_reset_from_the_page_ends_their_sessions(admin, auth, app):
    agent_browser = app.test_client()
    from tests.support import AuthActions

    AuthActions(agent_browser).login()
    assert agent_browser.get("/").status_code == 200
    with app.app_context():
        agent_id = users.find("agent").id
    post(admin, auth, f"/admin/users/{agent_id}/password", password="short")
    assert "at least 12 characters" in admin.get("/admin/").get_data(as_text=True)
    assert agent_browser.get("/").status_code == 200
    post(admin, auth, f"/admin/users/{agent_id}/password", password="a-fresh-long-password")
    assert agent_browser.get("/").status_code == 302
    with app.app_context():
        assert users.authenticate("agent", "a-fresh-long-password") is not None


def test_rule_numbers_are_never_reused(runner, app):
    def add() -> int:
        result = runner.invoke(args=["rules", "add", "--user", "admin", "--cloud", "lab"])
        assert result.exit_code == 0, result.output
        return int(result.output.split()[1].rstrip(":"))

    first = add()
    assert runner.invoke(args=["rules", "remove", str(first)]).exit_code == 0
    assert add() == first + 1


def test_an_exact_duplicate_rule_is_refused(admin, auth, runner, app):
    result = runner.invoke(args=["rules", "add", "--user", "agent", "--cloud", "lab"])
    assert result.exit_code != 0 and "already grants this: user agent may open * on cloud lab" in result.output
    post(admin, auth, "/admin/rules", subject="user:agent", cloud="lab", name_pattern="*")
    assert "already grants this" in admin.get("/admin/").get_data(as_text=True)
    with app.app_context():
        assert len(policy.all_rules()) == 1


def test_admin_page_shows_each_clouds_health(admin, app, fake):
    page = BeautifulSoup(admin.get("/admin/").get_data(as_text=True), "html.parser")
    assert page.select_one('#clouds tr[data-cloud="lab"] .state').get_text() == "not called yet"
    admin.get("/")  # lists the cloud
    row = BeautifulSoup(admin.get("/admin/").get_data(as_text=True), "html.parser").select_one(
        '#clouds tr[data-cloud="lab"]'
    )
    assert row.select_one(".state").get_text() == "answering"
    assert row.select("td")[2].get_text().endswith("UTC")
    fake.password = "rotated-password-1"
    with app.app_context():
        client = state.of(app).consoles.inventory.clouds["lab"].client
    client.adapter.session.invalidate()
    client.probe()
    row = BeautifulSoup(admin.get("/admin/").get_data(as_text=True), "html.parser").select_one(
        '#clouds tr[data-cloud="lab"]'
    )
    assert row.select_one(".state").get_text() == "failing"
    assert "the credentials (or their project scope) were refused" in row.select("td")[3].get_text()


def test_rules_on_clouds_no_longer_configured_are_flagged(admin, app):
    with app.app_context():
        db.session.add(AccessRule(cloud="old-lab", name_pattern="*", user_id=users.find("agent").id))
        db.session.commit()
    page = BeautifulSoup(admin.get("/admin/").get_data(as_text=True), "html.parser")
    [flagged] = page.select("#rules li.orphan")
    assert "no cloud old-lab is configured: this rule grants nothing" in flagged.get_text()


@pytest.mark.parametrize(
    ("path", "data", "message"),
    [
        ("/admin/users/{agent}/role", {"role": "root"}, "Role: Not a valid choice"),
        ("/admin/users", {"username": "newbie", "password": "long-enough-pass", "role": "root"}, "Not a valid choice"),
        ("/admin/rules", {"subject": "everyone", "cloud": "lab"}, "Who: choose a user or a group"),
        ("/admin/groups", {"name": "g" * 65}, "Group name: Field cannot be longer than 64 characters"),
    ],
)
def test_admin_forms_bound_and_type_their_fields(admin, auth, app, path, data, message):
    with app.app_context():
        agent_id = users.find("agent").id
        before = (users.find("agent").role, len(policy.all_rules()), len(policy.all_groups()))
    assert post(admin, auth, path.format(agent=agent_id), **data).status_code == 302
    assert message in admin.get("/admin/").get_data(as_text=True)
    with app.app_context():
        assert (users.find("agent").role, len(policy.all_rules()), len(policy.all_groups())) == before
        assert users.find("newbie") is None


def test_each_users_source_and_last_sign_in_are_shown_and_an_external_one_cannot_be_edited(admin, app):
    with app.test_request_context():
        policy.add_group("helpdesk")
        identity.sign_in(identity.ExternalIdentity("oidc", "https://idp|42", "olga", ("helpdesk",)), ())
        db.session.commit()
    page = BeautifulSoup(admin.get("/admin/").get_data(as_text=True), "html.parser")
    olga = page.select_one('#users tr[data-user="olga"]')
    assert olga.select_one(".source").get_text() == "oidc"
    assert olga.select_one(".last-sign-in").get_text().endswith("UTC")
    # No role or password form for an account whose directory decides them.
    assert olga.select_one('select[name="role"]') is None and olga.select_one('input[name="password"]') is None
    assert "(from oidc)" in olga.get_text()
    agent = page.select_one('#users tr[data-user="agent"]')
    assert (
        agent.select_one(".source").get_text() == "local" and agent.select_one(".last-sign-in").get_text() == "\u2014"
    )
    assert agent.select_one('input[name="password"]') is not None


def test_an_external_users_role_cannot_be_posted_into_something_else(admin, auth, app):
    with app.test_request_context():
        identity.sign_in(identity.ExternalIdentity("ldap", "uid=olga,ou=people", "olga"), ())
        db.session.commit()
        olga_id = users.find("olga").id
    post(admin, auth, f"/admin/users/{olga_id}/role", role="admin")
    page = admin.get("/admin/").get_data(as_text=True)
    assert "olga signs in with ldap: their role comes from there" in page
    with app.app_context():
        assert users.find("olga").role == "agent"


# -- live consoles (relay mode) ------------------------------------------------------------


def live_console(app, username: str = "agent", server_name: str = "web-<01>", kind: str = "novnc") -> int:
    """A console as a relay would have registered it."""
    with app.app_context():
        user = users.find(username)
        db.session.add(UserSession(id=f"sid-{username}", user_id=user.id))
        db.session.commit()
        ticket = relay.Ticket(
            user.id, username, f"sid-{username}", "srv-1", server_name, "lab", "http://localhost", kind
        )
        row_id = relay.opened(ticket, client="192.0.2.9", instance="relay-host:4242")
        relay.report([report_of(row_id, ticket, to_cloud=2048, to_browser=3 * 1024 * 1024)], LIMITS)
        db.session.commit()  # as the relay host commits each call
        return row_id


LIMITS = relay.Limits(lifetime=3600, idle=3600)


def report_of(row_id: int, ticket: relay.Ticket, to_cloud: int = 0, to_browser: int = 0) -> relay.LiveReport:
    """The relay's poll report of the console ``live_console`` registered."""
    server = ServerInfo(ticket.server_id, ticket.server_name, "ACTIVE", ticket.cloud)
    started = datetime.now(UTC)
    return relay.LiveReport(row_id, ticket, server, "192.0.2.9", "relay-host:4242", started, to_cloud, to_browser)


def test_live_consoles_are_listed_with_who_where_and_how_much(admin, app):
    live_console(app)
    page = BeautifulSoup(admin.get("/admin/sessions").get_data(as_text=True), "html.parser")
    [row] = page.select("#live-consoles tbody tr")
    cells = [td.get_text(" ", strip=True) for td in row.find_all("td")]
    assert cells[:8] == ["agent", "web-<01>", "lab", cells[3], "2.0 kB", "3.1 MB", "192.0.2.9", "relay-host:4242"]
    assert "<01>" not in str(row).replace("&lt;01&gt;", "")  # escaped, like everything from upstream
    assert row.select_one("button.end-session")["aria-label"] == "End the console of web-<01> opened by agent"


def test_a_serial_console_is_marked_as_one(admin, app):
    live_console(app, kind="serial")
    page = BeautifulSoup(admin.get("/admin/sessions").get_data(as_text=True), "html.parser")
    [row] = page.select("#live-consoles tbody tr")
    assert row.find_all("td")[1].get_text(" ", strip=True) == "web-<01> (serial)"


def test_end_session_asks_the_relay_to_close_it_ends_that_sign_in_and_is_audited(admin, auth, app):
    row_id = live_console(app)
    response = post(admin, auth, f"/admin/sessions/{row_id}/end")
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/sessions")
    with app.app_context():
        user = users.find("agent")
        ticket = relay.Ticket(user.id, "agent", "sid-agent", "srv-1", "web-<01>", "lab", "http://localhost")
        assert relay.report([report_of(row_id, ticket)], LIMITS) == {row_id: relay.ENDED_BY_ADMIN}
        db.session.commit()  # as the relay host commits each call
        assert db.session.get(UserSession, "sid-agent").ended_at is not None
        [row] = audit.search(audit.Filter(action="admin"))[0]
        assert (row.username, row.detail, row.outcome) == ("admin", "relay_end", "ok")
        assert row.reason.endswith("and that sign-in session: agent must sign in again")
    page = BeautifulSoup(admin.get("/admin/sessions").get_data(as_text=True), "html.parser")
    assert page.select_one("#live-consoles tbody tr").get_text(" ", strip=True).endswith("ending…")


def test_ending_a_console_needs_csrf_and_an_admin(admin, client, auth, app):
    row_id = live_console(app)
    assert admin.post(f"/admin/sessions/{row_id}/end").status_code == 400
    auth.logout()
    auth.login()
    assert post(client, auth, f"/admin/sessions/{row_id}/end").status_code == 403
    with app.app_context():
        user = users.find("agent")
        ticket = relay.Ticket(user.id, "agent", "sid-agent", "srv-1", "web-<01>", "lab", "http://localhost")
        assert relay.report([report_of(row_id, ticket)], LIMITS) == {}  # the relay is asked to end nothing
        assert db.session.get(UserSession, "sid-agent").ended_at is None
        assert audit.count(audit.Filter(action="admin", outcome="ok")) == 0
        [refusal] = audit.search(audit.Filter(action="admin", outcome="refused"))[0]
        assert refusal.username == "agent"


def test_power_is_off_unless_the_rule_says_so_from_the_cli_or_the_page(admin, auth, runner, app):
    plain = runner.invoke(args=["rules", "add", "--user", "agent", "--cloud", "lab", "--name-pattern", "db-*"])
    assert plain.exit_code == 0 and "agent may open db-* on cloud lab" in plain.output
    powered = runner.invoke(
        args=["rules", "add", "--user", "agent", "--cloud", "lab", "--name-pattern", "web-*", "--power"]
    )
    assert powered.exit_code == 0 and "agent may open and power web-* on cloud lab" in powered.output
    post(admin, auth, "/admin/rules", subject="user:agent", cloud="lab", name_pattern="worker", power="y")
    post(admin, auth, "/admin/rules", subject="user:agent", cloud="lab", name_pattern="build-*")
    with app.app_context():
        by_pattern = {rule.name_pattern: rule.power for rule in policy.all_rules()}
    assert by_pattern == {"*": False, "db-*": False, "web-*": True, "worker": True, "build-*": False}
    page = BeautifulSoup(admin.get("/admin/").get_data(as_text=True), "html.parser")
    assert "agent may open and power worker on cloud lab" in page.find(id="rules").get_text()
    assert page.find("input", {"name": "power", "type": "checkbox"}).find_parent("label") is not None


def test_instances_page_lists_each_process_and_marks_what_differs(admin, app, tmp_path, fake):
    clouds = [Cloud(name, make_client(fake, name), 600, "idle", "relay") for name in ("lab", "prod")]
    config = {"ENV": broker_env(tmp_path), "CLOUDS": clouds, "INSTANCE_PATH": str(tmp_path / "i2"), "TESTING": True}
    other = create_app(config)  # another host's instance on the same database, with other clouds
    html = admin.get("/admin/instances").get_data(as_text=True)
    page = BeautifulSoup(html, "html.parser")
    assert page.select_one('.subnav a[aria-current="page"]').get_text() == "Instances"
    assert page.select_one("#instance-total").get_text() == "2"
    [first, second] = page.select("#instances tbody tr")
    assert [td.get_text(" ", strip=True) for td in first.select("td")[:6]] == [
        first["data-name"],
        "web",
        instances.version(),
        f"key {instances.fingerprint('test-secret-key-0123456789')[:8]}",
        f"lab {fake.auth_url} {fake.region}",
        "iframe",
    ]
    assert first.select(".differs") == []
    assert [td["data-column"] for td in second.select(".differs")] == ["clouds", "console_mode"]
    assert second.select_one('[data-column="clouds"]').get_text(" ", strip=True).endswith("(differs)")
    findings = [li.get_text(" ", strip=True) for li in page.select("#instance-findings li")]
    assert [text.split(":")[0] for text in findings] == ["Problem", "Problem"]
    assert findings[0].startswith("Problem: running instances disagree on clouds (")
    assert findings[1].startswith("Problem: running instances disagree on console mode (")
    assert "test-secret-key-0123456789" not in html
    with other.app_context():
        db.engine.dispose()
