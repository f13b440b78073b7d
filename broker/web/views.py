"""Pages: the server list (with pinned and recent consoles), the console page, the name chooser and the pop-out."""

from __future__ import annotations

from flask import Blueprint
from flask import abort
from flask import current_app
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_login import current_user
from flask_login import login_required
from werkzeug.routing import PathConverter

from broker import state
from broker.cloud.types import ServerInfo
from broker.services import shortcuts
from broker.services.consoles import ConsoleService
from broker.services.inventory import Overview
from broker.services.power import actions_for

bp = Blueprint("views", __name__)


def service() -> ConsoleService:
    return state.consoles()


def cloud_arg() -> str | None:
    return request.args.get("cloud") or None


# Rows rendered into the list page; the instant search asks the API beyond that.
LIST_ROWS = 200


def notices(overview: Overview) -> list[dict]:
    """What the list says about clouds it could not list or shows from memory; the page and the API share it."""
    failed = [
        {"kind": "failure", "cloud": name, "text": f"Cloud {name} could not be listed: {message}"}
        for name, message in overview.failures.items()
    ]
    stale = [
        {
            "kind": "stale",
            "cloud": name,
            "text": f"Showing the list of cloud {name} from {int(s.age // 60)} min ago; "
            f"refreshing it failed: {s.message}",
        }
        for name, s in overview.stale.items()
    ]
    return failed + stale


def console_links(servers: list[ServerInfo]) -> list[str]:
    """Each server's console page as url_for writes it, with one url_for per cloud (a list may hold 10,000)."""
    path = PathConverter(current_app.url_map)  # what <path:ref> quotes the ID with
    base = url_for("views.console", ref="")
    queries: dict[str, str] = {}
    for server in servers:
        if server.cloud not in queries:
            queries[server.cloud] = url_for("views.console", ref="-", cloud=server.cloud).partition("?")[2]
    return [f"{base}{path.to_url(s.id)}?{queries[s.cloud]}" for s in servers]


def panel(server: ServerInfo) -> dict:
    """The server panel's data: the cloud's own fields, the admin-chosen metadata, and the power actions
    this user may run on it now (the JSON API and the console pages share it)."""
    shown = {key: server.metadata[key] for key in state.settings().panel_metadata if key in server.metadata}
    may_power = state.power().may_power(current_user, server)
    return {
        "server": {**server.to_json(), **server.details.to_json(), "metadata": shown},
        "power": may_power,
        "actions": actions_for(server.status) if may_power else [],
        "console_page": console_links([server])[0],
    }


def shortcut_rows(servers: list[ServerInfo]) -> list[dict]:
    return [{"server": s, "link": link} for s, link in zip(servers, console_links(servers), strict=True)]


@bp.get("/")
@login_required
def index():
    query = request.args.get("q", "")[:200]
    overview = service().overview(current_user, query, cloud_arg())
    servers = overview.servers[:LIST_ROWS]
    recent = shortcuts.recent(current_user, service())
    recent_rows = shortcut_rows([opened.server for opened in recent])
    for row, opened in zip(recent_rows, recent, strict=True):
        row["opened_at"] = opened.opened_at
    pinned = shortcuts.pinned(current_user, service())
    return render_template(
        "servers/list.html",
        pinned=shortcut_rows(pinned),
        recent=recent_rows,
        # Only servers the user may open are in the table, so the pins they may open are all it needs.
        pinned_ids={(s.cloud, s.id) for s in pinned},
        urls={"pins": url_for("api.pinned"), "servers": url_for("api.servers")},
        rows=zip(servers, console_links(servers), strict=True),
        shown=len(servers),
        total=len(overview.servers),
        notices=notices(overview),
        query=query,
        cloud=cloud_arg() or "",
        clouds=service().inventory.names(),
        list_rows=LIST_ROWS,
    )


def resolve_or_choose(ref: str):
    """One server for ``ref``, or a response: 404 page, or the chooser for a shared name."""
    matches = service().resolve(current_user, ref, cloud_arg())
    if not matches:
        abort(404, description=f"No server is called {ref!r}" if len(ref) < 200 else "No such server.")
    if len(matches) > 1:
        return None, render_template("console/chooser.html", name=ref, servers=matches)
    return matches[0], None


@bp.get("/console/<path:ref>")
@login_required
def console(ref: str):
    server, chooser = resolve_or_choose(ref)
    if chooser:
        return chooser
    return console_page(server, ref)


def console_page(server, ref: str):
    """The console shell; it mints with its own POST once loaded."""
    cloud = service().inventory.cloud(server.cloud)
    settings = state.settings()
    if cloud.console_mode == "relay":
        return viewer_page(server, ref)
    page = {
        "server": server.to_json(),
        "mintUrl": url_for("api.mint", server_id=server.id, cloud=server.cloud),
        "brokerLink": url_for("views.console", ref=ref, _external=True),
        "openUrl": url_for("views.open_console", ref=server.id, cloud=server.cloud),
        "loginUrl": url_for("auth.login", next=request.full_path.rstrip("?")),
        "margin": settings.refresh_margin,
        "idleSwapAfter": settings.idle_swap_after,
        "pauseAfter": settings.pause_after,
        "swap": cloud.console_swap,
        **panel_page_data(server),
    }
    return render_template("console/page.html", server=server, page=page, panel=page["panel"], power=page["power"])


def panel_page_data(server: ServerInfo) -> dict:
    """What both console pages need for the server panel and the power actions."""
    details = panel(server)
    ids = {"server_id": server.id, "cloud": server.cloud}
    return {
        "panel": details["server"],
        "power": details["power"],
        "actions": details["actions"],
        "panelUrl": url_for("api.server", **ids),
        "powerConfirmUrl": url_for("api.power_confirmation", **ids),
        "powerUrl": url_for("api.power", **ids),
    }


# Type text: more than this is not typing a password or a command, and would take the guest long to take in.
TYPE_LIMIT = 2000


def viewer_page(server, ref: str):
    """Relay mode: the broker's own viewer, which asks for a websocket ticket with its own POST."""
    page = {
        "server": server.to_json(),
        "ticketUrl": url_for("api.relay_ticket", server_id=server.id, cloud=server.cloud),
        "brokerLink": url_for("views.console", ref=ref, _external=True),
        "loginUrl": url_for("auth.login", next=request.full_path.rstrip("?")),
        "typeLimit": TYPE_LIMIT,
        "keepaliveUrl": url_for("api.keepalive"),
        # Well within the idle limit, so one missed beat does not sign anyone out.
        "keepaliveEvery": max(30, state.settings().session_idle // 4),
        **panel_page_data(server),
    }
    return render_template("console/viewer.html", server=server, page=page, panel=page["panel"], power=page["power"])


def from_this_site() -> bool:
    """The browser says this navigation started on a page of this broker.

    Only then may a GET mint: a link on another site, in a chat or in a mail, and an old
    browser that sends no Sec-Fetch-Site, get the console page, which mints after its own POST.
    """
    return request.headers.get("Sec-Fetch-Site") == "same-origin"


@bp.get("/console/<path:ref>/open")
@login_required
def open_console(ref: str):
    server, chooser = resolve_or_choose(ref)
    if chooser:
        return chooser
    # Relay mode never hands the cloud's URL to a browser: the pop-out is the viewer page.
    if not from_this_site() or service().mode(server) == "relay":
        return console_page(server, server.id)
    minted = service().mint(current_user, server.id, server.cloud, detail="popout")
    response = redirect(minted.console.url, code=303)
    response.headers["Cache-Control"] = "no-store"
    return response
