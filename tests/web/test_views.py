"""Pages: the list and its search, console by ID or name, the chooser, the pop-out."""

from __future__ import annotations

import json

import pytest
from bs4 import BeautifulSoup

from broker import state
from broker.demo.cloud import OTHER_PROJECT_SERVER_ID
from broker.extensions import db
from broker.relay.serial import MAX_INPUT
from broker.services import audit
from broker.services import policy
from broker.web import presentation
from tests.support import FROM_THIS_SITE
from tests.support import server_id


@pytest.fixture
def signed_in(client, auth):
    auth.login()
    return client


def soup_of(response) -> BeautifulSoup:
    return BeautifulSoup(response.get_data(as_text=True), "html.parser")


def visible_names(soup) -> list[str]:
    return [row.select_one("a.server-link").get_text() for row in soup.select("#servers tbody tr")]


def test_list_shows_every_field(signed_in):
    soup = soup_of(signed_in.get("/"))
    row = soup.select("#servers tbody tr")[0]
    cells = [td.get_text(strip=True) for td in row.find_all("td")]
    assert cells == ["web-01", "ACTIVE", "10.1.0.1", "az-1", "lab", server_id(1)]
    assert len(soup.select("#servers tbody tr")) == 7


@pytest.mark.parametrize(
    ("query", "names"),
    [("web", ["web-01", "web-02"]), ("10.1.0.3", ["db-01"]), (server_id(4)[-6:], ["worker"]), ("WEB-02", ["web-02"])],
)
def test_search_by_name_ip_or_id(signed_in, query, names):
    soup = soup_of(signed_in.get("/", query_string={"q": query}))
    assert visible_names(soup) == names
    assert soup.select_one("#q")["value"] == query
    assert soup.select_one("#total-count").get_text() == str(len(names))


def test_search_with_no_match_says_so(signed_in):
    soup = soup_of(signed_in.get("/?q=zzz"))
    assert visible_names(soup) == []
    assert not soup.select_one("#no-match").has_attr("hidden")


def test_server_name_html_is_escaped(signed_in):
    html = signed_in.get("/").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;&amp;&lt;script&gt;" in html


def test_console_page_by_id(signed_in):
    response = signed_in.get(f"/console/{server_id(1)}")
    assert response.status_code == 200
    soup = soup_of(response)
    page = json.loads(soup.select_one("#console")["data-page"])
    assert page["mintUrl"] == f"/api/consoles/{server_id(1)}?cloud=lab"
    assert page["server"]["name"] == "web-01"
    assert page["margin"] == 60
    assert soup.select_one("#server-name").get_text() == "web-01"
    for control in ("#reconnect", "#fullscreen", "#open-tab", "#copy-link", "#freshness", "#console-frame"):
        assert soup.select_one(control) is not None, control
    # The shell never carries a console URL: the page mints with a POST.
    assert "vnc_auto.html" not in response.get_data(as_text=True)
    assert soup.select_one("#console-frame").get("src") is None


def test_console_page_by_name(signed_in):
    soup = soup_of(signed_in.get("/console/web-02"))
    assert json.loads(soup.select_one("#console")["data-page"])["server"]["id"] == server_id(2)


def test_console_page_with_hostile_name_escapes_data(signed_in):
    response = signed_in.get(f"/console/{server_id(6)}")
    html = response.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    soup = soup_of(response)
    assert json.loads(soup.select_one("#console")["data-page"])["server"]["name"].startswith("<b>bold")


def test_shared_name_shows_a_chooser(signed_in):
    soup = soup_of(signed_in.get("/console/worker"))
    links = [a["href"] for a in soup.select("#chooser a.choice")]
    assert links == [f"/console/{server_id(4)}?cloud=lab", f"/console/{server_id(5)}?cloud=lab"]


def test_unknown_server_is_a_404_page(signed_in):
    response = signed_in.get("/console/no-such-server")
    assert response.status_code == 404
    assert soup_of(response).select_one("#error-message").get_text() == "No server is called 'no-such-server'"


def test_cloud_filter_narrows(signed_in):
    assert signed_in.get("/console/web-01?cloud=other").status_code == 404
    assert signed_in.get("/console/web-01?cloud=lab").status_code == 200


def test_open_redirects_to_a_fresh_console(signed_in, fake):
    response = signed_in.get("/console/web-01/open", headers=FROM_THIS_SITE)
    assert response.status_code == 303
    assert response.headers["Location"].startswith("http://127.0.0.1:6080/vnc_auto.html?path=")
    assert response.headers["Cache-Control"] == "no-store"
    assert fake.counts["console"] == 1


def test_open_on_stopped_server_explains(signed_in):
    response = signed_in.get("/console/db-01/open", headers=FROM_THIS_SITE)
    assert response.status_code == 409
    assert "The server db-01 is not running (SHUTOFF)." in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "none"},
        {},  # an old browser or a script: no proof that the navigation began here
    ],
    ids=["cross-site", "same-site", "typed-or-external-app", "no-header"],
)
def test_open_from_elsewhere_gets_the_console_page_and_mints_nothing(signed_in, fake, app, headers):
    response = signed_in.get("/console/web-01/open", headers=headers)
    assert response.status_code == 200
    soup = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    page = json.loads(soup.select_one("#console")["data-page"])
    assert page["server"]["name"] == "web-01"
    assert fake.counts["console"] == 0
    with app.app_context():
        assert audit.search(audit.Filter(action="console"))[1] == 0


def test_console_frame_is_sandboxed_without_top_navigation(signed_in):
    soup = BeautifulSoup(signed_in.get("/console/web-01").get_data(as_text=True), "html.parser")
    tokens = soup.select_one("#console-frame")["sandbox"]  # bs4 splits it into tokens
    assert {"allow-scripts", "allow-same-origin"} <= set(tokens)
    assert not [t for t in tokens if "top-navigation" in t or "popups" in t or "modals" in t]


def test_get_of_console_page_never_mints(signed_in, fake):
    signed_in.get("/console/web-01")
    assert fake.counts["console"] == 0


def test_security_headers(signed_in):
    response = signed_in.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'self'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_no_inline_script(signed_in):
    for path in ("/", "/console/web-01", "/login"):
        soup = soup_of(signed_in.get(path))
        for script in soup.find_all("script"):
            assert script.get("src"), path
            assert not script.get_text(strip=True), path


def test_not_a_demo(signed_in):
    assert soup_of(signed_in.get("/")).select_one("#demo-banner") is None


def test_cloud_down_shows_a_warning_not_an_error(signed_in, fake):
    fake.faults.fail_next["list"] = [500] * 3
    response = signed_in.get("/")
    assert response.status_code == 200
    text = soup_of(response).select_one(".cloud-failure").get_text()
    assert text == "Cloud lab could not be listed: Listing servers: cloud lab answered HTTP 500 (computeFault)."


def test_long_lists_are_capped_with_a_hint(signed_in, monkeypatch):
    from broker.web import views

    monkeypatch.setattr(views, "LIST_ROWS", 3)
    soup = soup_of(signed_in.get("/"))
    assert len(soup.select("#servers tbody tr")) == 3
    assert soup.select_one("#total-count").get_text() == "7"
    assert not soup.select_one("#more-hint").has_attr("hidden")


def test_agent_without_rules_is_told_why(client, auth, app):
    with app.app_context():
        for rule in policy.all_rules():
            policy.remove_rule(rule.id)
    auth.login()
    assert "ask an admin for access" in client.get("/").get_data(as_text=True)


def test_healthz_needs_no_sign_in_and_no_cloud(client, fake):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert fake.counts["list"] == 0 and fake.counts["token"] == 0


# -- the list page and /api/servers say the same (static/js/list.js renders the latter) ----


def page_and_api(client, query_string: dict) -> tuple[BeautifulSoup, dict]:
    soup = soup_of(client.get("/", query_string=query_string))
    return soup, client.get("/api/servers", query_string={**query_string, "limit": 200}).get_json()


def page_notices(soup) -> list[dict]:
    return [
        {"kind": p["class"][1].removeprefix("cloud-"), "cloud": p["data-cloud"], "text": p.get_text()}
        for p in soup.select("#cloud-notices p")
    ]


def test_the_page_shows_the_apis_rows_and_links(signed_in):
    soup, body = page_and_api(signed_in, {"q": "0"})
    links = [(a.get_text(), a["href"]) for a in soup.select("#servers tbody a.server-link")]
    assert links == [(s["name"], s["console_page"]) for s in body["servers"]]
    assert len(links) == 7
    assert soup.select_one("#shown-count").get_text() == str(len(body["servers"]))


def test_a_failed_cloud_reads_the_same_on_the_page_and_in_the_api(signed_in, fake):
    fake.faults.fail_next["list"] = [500] * 3
    soup, body = page_and_api(signed_in, {})
    assert page_notices(soup) == body["notices"]
    assert [n["kind"] for n in body["notices"]] == ["failure"]


def test_a_stale_list_reads_the_same_on_the_page_and_in_the_api(signed_in, app, fake):
    inventory = state.of(app).consoles.inventory
    signed_in.get("/")
    real = inventory.clock
    inventory.clock = lambda: real() + 150  # the list is two and a half minutes old
    fake.faults.fail_next["list"] = [500] * 3
    soup, body = page_and_api(signed_in, {"q": "web"})
    assert page_notices(soup) == body["notices"]
    [notice] = page_notices(soup)
    assert notice["kind"] == "stale"
    assert notice["text"].startswith(
        "Showing the list of cloud lab from 2 min ago; refreshing it failed: Listing servers"
    )
    assert visible_names(soup) == ["web-01", "web-02"]


def test_a_page_opened_with_a_cloud_keeps_it_for_the_search(signed_in):
    soup = soup_of(signed_in.get("/?cloud=lab"))
    assert soup.select_one("#server-list")["data-cloud"] == "lab"
    # One cloud: no chooser, so the form carries the narrowing itself.
    assert soup.select_one("#cloud-filter") is None
    assert soup.select_one('form.search input[type="hidden"][name="cloud"]')["value"] == "lab"
    unnarrowed = soup_of(signed_in.get("/"))
    assert unnarrowed.select_one("#server-list")["data-cloud"] == ""
    assert unnarrowed.select_one('form.search input[name="cloud"]') is None


class TestSeveralClouds:
    @pytest.fixture
    def cloud_names(self):
        return ["lab", "beta/RegionOne"]

    def test_narrowed_page_links_with_its_cloud(self, client, auth):
        auth.login("admin", "admin-password-1")
        soup, body = page_and_api(client, {"cloud": "beta/RegionOne"})
        hrefs = [a["href"] for a in soup.select("#servers tbody a.server-link")]
        assert hrefs == [s["console_page"] for s in body["servers"]]
        assert hrefs[0] == f"/console/{server_id(1)}?cloud=beta/RegionOne"
        assert soup.select_one("#cloud-filter option[selected]")["value"] == "beta/RegionOne"
        assert soup.select_one('form.search input[type="hidden"]') is None  # the chooser carries it


@pytest.mark.parametrize(
    ("user", "query", "shown"),
    [
        ("agent", "zzz", "No servers match this search."),
        ("agent", "  ", "No servers to show: ask an admin for access."),
        ("admin", "", "No servers to show."),
    ],
)
def test_the_empty_state_gives_the_script_both_messages(client, auth, app, user, query, shown):
    with app.app_context():
        for rule in policy.all_rules():
            policy.remove_rule(rule.id)
    auth.login(user, f"{user}-password-1")
    empty = soup_of(client.get("/", query_string={"q": query, "cloud": "nowhere"})).select_one("#no-match")
    assert empty.get_text() == shown and not empty.has_attr("hidden")
    assert empty["data-no-match"] == "No servers match this search."
    hint = ": ask an admin for access" if user == "agent" else ""
    assert empty["data-none"] == f"No servers to show{hint}."


# -- relay mode: the broker's own viewer ----------------------------------------------------


@pytest.mark.parametrize("console_mode", ["relay"])
@pytest.mark.parametrize("path", ["/console/web-01", "/console/web-01/open"])
def test_relay_mode_pages_hold_no_console_url(signed_in, fake, console_mode, path):
    """The viewer page asks for a ticket itself; even the pop-out never redirects to the cloud."""
    response = signed_in.get(path, headers=FROM_THIS_SITE)
    assert response.status_code == 200
    soup = soup_of(response)
    assert soup.select_one("iframe") is None
    page = json.loads(soup.select_one("#console")["data-page"])
    assert page["ticketUrl"] == f"/api/relay-tickets/{server_id(1)}?cloud=lab"
    assert page["typeLimit"] == 2000 and page["server"]["name"] == "web-01"
    assert (page["keepaliveUrl"], page["keepaliveEvery"]) == ("/api/session/keepalive", 900)
    assert "mintUrl" not in page and "openUrl" not in page
    assert fake.counts["console"] == 0
    assert not [s for s in soup.find_all("script") if s.string and s.string.strip()]  # no inline script


def test_the_list_opens_with_pinned_and_recent_servers(client, auth):
    auth.login()
    csrf = auth.csrf()
    for n in (4, 1):
        assert client.post(f"/api/consoles/{server_id(n)}?cloud=lab", headers={"X-CSRFToken": csrf}).status_code == 200
    client.put(f"/api/pins/{server_id(2)}?cloud=lab", headers={"X-CSRFToken": csrf})
    page = BeautifulSoup(client.get("/").get_data(as_text=True), "html.parser")
    pinned = page.find(id="pinned")
    recent = page.find(id="recent")
    assert not pinned.has_attr("hidden") and not recent.has_attr("hidden")
    assert [a.get_text() for a in pinned.select("a")] == ["web-02"]
    assert [a.get_text() for a in recent.select("a")] == ["web-01", "worker"]
    assert recent.select("a")[0]["href"] == f"/console/{server_id(1)}?cloud=lab"
    # web-02's row in the table shows it pinned; web-01's does not.
    states = {b["aria-label"]: b["aria-pressed"] for b in page.select("#servers button.pin")}
    assert (states["Pin web-02"], states["Pin web-01"]) == ("true", "false")


def test_a_new_agent_sees_no_empty_pinned_or_recent_sections(client, auth):
    auth.login()
    page = BeautifulSoup(client.get("/").get_data(as_text=True), "html.parser")
    assert page.find(id="pinned").has_attr("hidden") and page.find(id="recent").has_attr("hidden")


@pytest.mark.parametrize("console_mode", ["iframe", "relay"])
def test_power_controls_appear_only_with_the_permission(client, auth, app, console_mode):
    auth.login()
    plain = BeautifulSoup(client.get(f"/console/{server_id(1)}?cloud=lab").get_data(as_text=True), "html.parser")
    assert plain.find(id="power-reboot-soft") is None and plain.find(id="power-dialog") is None
    assert json.loads(plain.find(id="console")["data-page"])["power"] is False
    with app.app_context():
        policy.add_rule(user="agent", cloud="lab", clouds=["lab"], power=True)
        db.session.commit()
    page = BeautifulSoup(client.get(f"/console/{server_id(1)}?cloud=lab").get_data(as_text=True), "html.parser")
    data = json.loads(page.find(id="console")["data-page"])
    assert (data["power"], data["actions"]) == (True, ["reboot-soft", "reboot-hard"])
    assert data["powerUrl"] == f"/api/servers/{server_id(1)}/power?cloud=lab"
    assert not page.find(id="power-reboot-soft").has_attr("hidden") and page.find(id="power-dialog") is not None
    stopped = BeautifulSoup(client.get(f"/console/{server_id(3)}?cloud=lab").get_data(as_text=True), "html.parser")
    assert stopped.find(id="power-reboot-soft").has_attr("hidden") and stopped.find(id="power-start") is not None


# -- serial consoles ----------------------------------------------------------------------------


@pytest.mark.parametrize("console_types", [("novnc", "serial")])
@pytest.mark.parametrize("console_mode", ["iframe", "relay"])
def test_the_serial_console_page_asks_for_a_serial_ticket_and_holds_no_url(
    signed_in, fake, console_mode, console_types
):
    response = signed_in.get("/console/web-01/serial", headers=FROM_THIS_SITE)
    assert response.status_code == 200
    soup = soup_of(response)
    page = json.loads(soup.select_one("#console")["data-page"])
    assert page["ticketUrl"] == f"/api/relay-tickets/{server_id(1)}?cloud=lab&type=serial"
    assert page["graphicalUrl"] == f"/console/{server_id(1)}?cloud=lab"
    assert page["brokerLink"] == "http://localhost/console/web-01/serial"
    assert (page["pasteLimit"], page["username"]) == (presentation.PASTE_LIMIT, "agent")
    assert fake.counts["console"] == 0  # the page mints nothing; the relay does, for its ticket
    assert not [s for s in soup.find_all("script") if s.string and s.string.strip()]
    # xterm.js writes its own <style> elements: this page, and only this page, allows inline styles.
    assert "style-src 'self' 'unsafe-inline';" in response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in response.headers["Content-Security-Policy"]
    graphical = signed_in.get("/console/web-01")
    assert "style-src 'self';" in graphical.headers["Content-Security-Policy"]
    # The graphical page links to the serial one, and has it ready for when VNC cannot be had.
    links = soup_of(graphical)
    assert links.select_one("#serial-link")["href"] == f"/console/{server_id(1)}/serial?cloud=lab"
    assert links.select_one("#notice-serial").has_attr("hidden")


@pytest.mark.parametrize("console_mode", ["iframe", "relay"])
def test_no_serial_console_page_or_link_where_the_cloud_offers_none(signed_in, console_mode):
    response = signed_in.get("/console/web-01/serial")
    assert response.status_code == 404
    assert "Cloud lab offers no serial consoles." in response.get_data(as_text=True)
    graphical = soup_of(signed_in.get("/console/web-01"))
    assert graphical.select_one("#serial-link") is None and graphical.select_one("#notice-serial") is None


@pytest.mark.parametrize("console_types", [("novnc", "serial")])
@pytest.mark.parametrize("ref", [server_id(99), OTHER_PROJECT_SERVER_ID, "no-such-name"])
def test_the_serial_page_of_a_server_the_user_may_not_open_is_a_404(signed_in, fake, console_types, ref):
    assert signed_in.get(f"/console/{ref}/serial").status_code == 404
    assert fake.counts["console"] == 0


def test_a_paste_the_page_allows_fits_in_one_message_the_relay_takes():
    assert presentation.PASTE_LIMIT * 4 <= MAX_INPUT  # four UTF-8 bytes at most per character
