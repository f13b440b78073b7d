"""Who may open what: deny by default, rules per user and group, glob and metadata narrowing."""

from __future__ import annotations

import re

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import select

from broker.cloud.types import ServerInfo
from broker.extensions import db
from broker.models import AuditRecord
from broker.services import policy
from broker.services import users
from tests.support import FROM_THIS_SITE
from tests.support import server_id


def server(name: str, cloud: str = "lab", **metadata) -> ServerInfo:
    return ServerInfo(id="x", name=name, status="ACTIVE", cloud=cloud, metadata=metadata)


@pytest.mark.parametrize(
    ("rule", "target", "allowed"),
    [
        ({"cloud": "lab"}, server("web-01"), True),
        ({"cloud": "lab"}, server("web-01", cloud="prod"), False),
        ({"cloud": "*"}, server("web-01", cloud="prod"), True),
        ({"cloud": "lab", "name_pattern": "web-*"}, server("web-01"), True),
        ({"cloud": "lab", "name_pattern": "web-*"}, server("db-01"), False),
        ({"cloud": "lab", "name_pattern": "web-0?"}, server("web-10"), False),
        ({"cloud": "lab", "metadata": "team=ops"}, server("db-01", team="ops"), True),
        ({"cloud": "lab", "metadata": "team=ops"}, server("db-01", team="web"), False),
        ({"cloud": "lab", "metadata": "team=ops"}, server("db-01"), False),
    ],
)
def test_rules(app, rule, target, allowed):
    with app.app_context():
        users.add("zoe", "zoe-password-1")
        policy.add_rule(user="zoe", clouds=["lab", "prod"], **rule)
        assert policy.access_for(users.find("zoe")).allows(target) is allowed


def test_no_rule_no_access(app):
    with app.app_context():
        users.add("nora", "nora-password-1")
        assert not policy.access_for(users.find("nora")).allows(server("web-01"))


def test_group_rules_apply_to_members_only(app):
    with app.app_context():
        users.add("gus", "gus-password-1")
        users.add("hal", "hal-password-1")
        policy.add_group("dba")
        policy.add_member("dba", "gus")
        policy.add_rule(group="dba", cloud="lab", clouds=["lab"], name_pattern="db-*")
        assert policy.access_for(users.find("gus")).allows(server("db-01"))
        assert not policy.access_for(users.find("hal")).allows(server("db-01"))
        policy.remove_member("dba", "gus")
        assert not policy.access_for(users.find("gus")).allows(server("db-01"))


def test_admin_sees_everything(app):
    with app.app_context():
        assert policy.access_for(users.find("admin")).allows(server("anything", cloud="elsewhere"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cloud": "lab"}, "either a user or a group"),
        ({"cloud": "lab", "user": "agent", "group": "ops"}, "either a user or a group"),
        ({"cloud": "lab", "user": "ghost"}, "no user called ghost"),
        ({"cloud": "lab", "group": "ghost"}, "no group called ghost"),
        ({"cloud": "lab", "user": "agent", "metadata": "novalue"}, "key=value"),
        ({"cloud": "../x", "user": "agent"}, "no cloud called '../x'; the configured clouds are: beta/RegionOne, lab"),
        ({"cloud": "beta", "user": "agent"}, "no cloud called 'beta'"),
        ({"cloud": "Lab", "user": "agent"}, "no cloud called 'Lab'"),
    ],
)
def test_bad_rules_are_refused(app, fields, message):
    with app.app_context():
        before = [rule.describe() for rule in policy.all_rules()]
        with pytest.raises(policy.PolicyError, match=re.escape(message)):
            policy.add_rule(clouds=["lab", "beta/RegionOne"], **fields)
        db.session.commit()  # as the caller's boundary would: a refusal staged nothing
    with app.app_context():
        assert [rule.describe() for rule in policy.all_rules()] == before


@pytest.mark.parametrize("cloud", ["lab", "beta/RegionOne", "*"])
def test_every_configured_cloud_name_can_get_a_rule(app, cloud):
    with app.app_context():
        users.add("zoe", "zoe-password-1")
        rule = policy.add_rule(user="zoe", cloud=cloud, clouds=["lab", "beta/RegionOne"])
        assert rule.describe() == f"user zoe may open * on cloud {cloud}"


def error_page(response) -> dict:
    """What the error page says: its code and message."""
    page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    return {"code": page.select_one("#error")["data-code"], "message": page.select_one("#error-message").get_text()}


@pytest.mark.usefixtures("web_only_agent")
class TestNarrowAgent:
    """The agent may open web-* only."""

    @pytest.fixture
    def signed_in(self, client, auth):
        auth.login()
        return client

    def refusals(self, app):
        with app.app_context():
            query = select(AuditRecord).where(AuditRecord.outcome == "refused")
            return [r.to_json() for r in db.session.scalars(query)]

    def test_list_and_api_show_only_permitted(self, signed_in):
        html = signed_in.get("/").get_data(as_text=True)
        assert "web-01" in html and "db-01" not in html
        names = [s["name"] for s in signed_in.get("/api/servers").get_json()["servers"]]
        assert names == ["web-01", "web-02"]

    @pytest.mark.parametrize("ref", [server_id(3), "db-01"])
    def test_console_page_of_forbidden_server_is_like_unknown(self, signed_in, app, ref):
        other = "00000000-0000-4000-8000-000000000099" if ref != "db-01" else "nope"
        forbidden = signed_in.get(f"/console/{ref}")
        unknown = signed_in.get("/console/" + other)
        assert forbidden.status_code == unknown.status_code == 404
        assert self.refusals(app)[0]["server_name"] == "db-01"
        # The same page, word for word, but for the reference the person typed: nothing tells them it exists.
        expected = error_page(unknown)
        expected["message"] = expected["message"].replace(other, ref)
        assert error_page(forbidden) == expected
        assert expected["code"] == "not_found" and ref in expected["message"]
        if ref != "db-01":
            assert "db-01" not in forbidden.get_data(as_text=True)  # not even its name

    def test_open_of_forbidden_server(self, signed_in, fake, app):
        response = signed_in.get("/console/db-01/open", headers=FROM_THIS_SITE)
        assert response.status_code == 404
        assert "Location" not in response.headers  # no way on to a console
        assert error_page(response) == {"code": "not_found", "message": "No server is called 'db-01'"}
        assert fake.counts["console"] == 0
        assert len(self.refusals(app)) == 1

    def test_api_mint_of_forbidden_server_answers_like_unknown(self, signed_in, auth, fake, app):
        token = auth.csrf()
        forbidden = signed_in.post(f"/api/consoles/{server_id(3)}", headers={"X-CSRFToken": token})
        unknown = signed_in.post(f"/api/consoles/{server_id(99)}", headers={"X-CSRFToken": token})
        assert forbidden.status_code == unknown.status_code == 404
        # Identical but for the request's own reference.
        forbidden_error, unknown_error = (response.get_json()["error"] for response in (forbidden, unknown))
        assert forbidden_error.pop("request_id") != unknown_error.pop("request_id")
        assert forbidden_error == unknown_error
        assert fake.counts["console"] == 0
        [refusal] = self.refusals(app)
        assert (refusal["user"], refusal["server_id"], refusal["detail"]) == ("agent", server_id(3), "load")

    def test_chooser_lists_only_permitted(self, signed_in, app):
        with app.app_context():
            policy.add_rule(user="agent", cloud="lab", clouds=["lab"], name_pattern="worker", metadata="")
            db.session.commit()
        response = signed_in.get("/console/worker")
        assert response.status_code == 200  # chooser of 2
        page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
        choices = [(a.get_text(), a["href"]) for a in page.select("#chooser a.choice")]
        assert choices == [("worker", f"/console/{server_id(n)}?cloud=lab") for n in (4, 5)]
