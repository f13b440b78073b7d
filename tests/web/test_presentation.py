"""How pages and the JSON API show things: console links, list rows and notices, the server panel, page data."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC
from datetime import datetime

import pytest
from flask import url_for
from flask_login import login_user

from broker import state
from broker.cloud.types import ServerInfo
from broker.services import users
from broker.services.inventory import Overview
from broker.services.inventory import Stale
from broker.services.power import actions_for
from broker.services.shortcuts import Opened
from broker.web import presentation
from broker.web.presentation import console_links
from tests.support import server_id

WEB = ServerInfo(server_id(1), "web-01", "ACTIVE", "lab", ("10.1.0.1",), "az-1")
DB = ServerInfo(server_id(3), "db-01", "SHUTOFF", "lab")
FAR = ServerInfo("far-1", "far-01", "ACTIVE", "beta/RegionOne")


@contextmanager
def page_for(app, username: str | None = None, path: str = "/"):
    """A request to ``path``, signed in as ``username`` when one is given."""
    with app.test_request_context(path):
        if username:
            login_user(users.find(username))
        yield


@pytest.mark.parametrize("server", ["a b", "ü/x", "/lead", "x?y#z", "%41&b=c+d", "semi;colon:@!$'()*,="])
@pytest.mark.parametrize("cloud", ["lab", "beta/RegionOne", "odd cloud&x=1#"])
def test_console_links_are_what_url_for_writes(app, server, cloud):
    servers = [ServerInfo(server, "n", "ACTIVE", cloud), ServerInfo("plain", "n", "ACTIVE", "lab")]
    with app.test_request_context("/"):
        expected = [url_for("views.console", ref=s.id, cloud=s.cloud) for s in servers]
        assert console_links(servers) == expected


def test_console_links_of_no_servers(app):
    with app.test_request_context("/"):
        assert console_links([]) == []


def test_notices_say_failures_first_then_stale_lists_in_minutes():
    overview = Overview([], {"down": "cloud unreachable"}, {"old": Stale(age=185.9, message="timed out")})
    assert presentation.notices(overview) == [
        {"kind": "failure", "cloud": "down", "text": "Cloud down could not be listed: cloud unreachable"},
        {
            "kind": "stale",
            "cloud": "old",
            "text": "Showing the list of cloud old from 3 min ago; refreshing it failed: timed out",
        },
    ]
    assert presentation.notices(Overview([WEB], {})) == []


def test_shortcut_and_recent_rows_pair_each_server_with_its_link(app):
    opened = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    with app.test_request_context("/"):
        links = console_links([WEB, FAR])
        assert presentation.shortcut_rows([WEB, FAR]) == [
            {"server": WEB, "link": links[0]},
            {"server": FAR, "link": links[1]},
        ]
        assert presentation.recent_rows([Opened(FAR, opened)]) == [
            {"server": FAR, "link": links[1], "opened_at": opened}
        ]
        assert presentation.recent_rows([]) == []


def test_server_list_marks_pins_and_counts_every_match(app):
    overview = Overview([WEB, DB, FAR], {"down": "no"}, {"old": Stale(age=61.4, message="slow")})
    with app.test_request_context("/"):
        body = presentation.server_list(overview, [WEB, FAR], {("beta/RegionOne", "far-1")}, "lab")
        links = console_links([WEB, FAR])
    assert [(s["id"], s["console_page"], s["pinned"]) for s in body["servers"]] == [
        (WEB.id, links[0], False),
        ("far-1", links[1], True),
    ]
    assert body["servers"][0] == {**WEB.to_json(), "console_page": links[0], "pinned": False}
    assert (body["total"], body["cloud"]) == (3, "lab")
    assert body["unavailable"] == [{"cloud": "down", "message": "no"}]
    assert body["stale"] == [{"cloud": "old", "age_seconds": 61, "message": "slow"}]
    assert body["notices"] == presentation.notices(overview)


def test_no_store_sets_the_status_and_keeps_the_answer_out_of_caches(app):
    with app.test_request_context("/"):
        response = presentation.no_store(app.response_class("x"), 201)
        assert (response.status_code, response.headers["Cache-Control"]) == (201, "no-store")
        assert presentation.no_store(app.response_class("x")).status_code == 200


@pytest.fixture
def env_overrides() -> dict:
    return {"BROKER_PANEL_METADATA": "owner"}


def with_metadata(server: ServerInfo) -> ServerInfo:
    return ServerInfo(
        server.id, server.name, server.status, server.cloud, metadata={"owner": "ops", "secret": "s3cret"}
    )


def test_the_panel_shows_only_the_chosen_metadata_and_no_power_without_the_permission(app):
    with page_for(app, "agent"):
        shown = presentation.panel(with_metadata(DB))
        link = console_links([DB])[0]
    assert shown["server"]["metadata"] == {"owner": "ops"}
    assert shown["server"]["id"] == DB.id and shown["server"]["status"] == "SHUTOFF"
    assert (shown["power"], shown["actions"], shown["console_page"]) == (False, [], link)


def test_the_panel_offers_the_actions_the_status_allows_to_whoever_may_power(app):
    with page_for(app, "admin"):
        shown = presentation.panel(DB)
    assert shown["power"] is True and shown["actions"] == actions_for("SHUTOFF") and shown["actions"]


def test_the_console_pages_data_points_at_the_routes_for_this_server(app):
    with page_for(app, "agent", "/console/web-01?cloud=lab"):
        page = presentation.console_page_data(WEB, "web-01", "always")
        ids = {"server_id": WEB.id, "cloud": "lab"}
        assert page["mintUrl"] == url_for("api.mint", **ids)
        assert page["openUrl"] == url_for("views.open_console", ref=WEB.id, cloud="lab")
        assert page["loginUrl"] == url_for("auth.login", next="/console/web-01?cloud=lab")
        assert page["brokerLink"] == "http://localhost/console/web-01"
        assert (page["panelUrl"], page["powerUrl"]) == (url_for("api.server", **ids), url_for("api.power", **ids))
        assert page["powerConfirmUrl"] == url_for("api.power_confirmation", **ids)
    assert page["swap"] == "always" and page["server"] == WEB.to_json() and page["power"] is False


def test_the_viewer_pages_data_asks_for_tickets_and_keeps_the_session_alive(app):
    with page_for(app, "agent", "/console/web-01"):
        page = presentation.viewer_page_data(WEB, "web-01")
        assert page["ticketUrl"] == url_for("api.relay_ticket", server_id=WEB.id, cloud="lab")
        assert page["keepaliveUrl"] == url_for("api.keepalive")
        assert page["loginUrl"] == url_for("auth.login", next="/console/web-01")
        idle = state.settings().session_idle
    assert page["typeLimit"] == presentation.TYPE_LIMIT and "mintUrl" not in page
    assert page["keepaliveEvery"] == max(30, idle // 4) < idle  # one missed beat signs nobody out
