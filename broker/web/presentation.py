"""How pages and the JSON API show things: console links, list rows and notices, the server panel, page data."""

from __future__ import annotations

from flask import current_app
from flask import request
from flask import url_for
from flask_login import current_user
from werkzeug.routing import PathConverter

from broker import state
from broker.cloud.types import ServerInfo
from broker.models import LiveConsole
from broker.services.inventory import Overview
from broker.services.power import actions_for
from broker.services.shortcuts import Opened

# Type text: more than this is not typing a password or a command, and would take the guest long to take in.
TYPE_LIMIT = 2000
# Characters one paste into the serial console may hold: at most 4 UTF-8 bytes each, within the one
# message the relay takes from a browser (broker.relay.serial.MAX_INPUT, 64 KiB).
PASTE_LIMIT = 16000


def no_store(response, status: int = 200):
    """``response`` with ``status``, kept out of every cache (it carries a secret or a moment's state)."""
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


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


def shortcut_rows(servers: list[ServerInfo]) -> list[dict]:
    """Pinned or recent servers as the list page's quick items: the server and its console link."""
    return [{"server": s, "link": link} for s, link in zip(servers, console_links(servers), strict=True)]


def recent_rows(recent: list[Opened]) -> list[dict]:
    """Recently opened consoles as quick items, each with when it was opened."""
    rows = shortcut_rows([opened.server for opened in recent])
    for row, opened in zip(rows, recent, strict=True):
        row["opened_at"] = opened.opened_at
    return rows


def server_list(overview: Overview, shown: list[ServerInfo], pins: set[tuple[str, str]], cloud: str | None) -> dict:
    """The list API's answer: the rows ``shown`` (with their console pages and pins) and what the page says."""
    links = console_links(shown)
    return {
        "servers": [
            {**s.to_json(), "console_page": link, "pinned": (s.cloud, s.id) in pins}
            for s, link in zip(shown, links, strict=True)
        ],
        "total": len(overview.servers),
        "cloud": cloud,
        "unavailable": [{"cloud": name, "message": msg} for name, msg in overview.failures.items()],
        "stale": [
            {"cloud": name, "age_seconds": round(s.age), "message": s.message} for name, s in overview.stale.items()
        ],
        "notices": notices(overview),
    }


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


def console_page_data(server: ServerInfo, ref: str, swap: str) -> dict:
    """The console page's data: it mints with its own POST once loaded, and swaps consoles as ``swap`` says."""
    settings = state.settings()
    return {
        "server": server.to_json(),
        "mintUrl": url_for("api.mint", server_id=server.id, cloud=server.cloud),
        "brokerLink": url_for("views.console", ref=ref, _external=True),
        "openUrl": url_for("views.open_console", ref=server.id, cloud=server.cloud),
        "serialUrl": serial_link(server),
        "loginUrl": url_for("auth.login", next=request.full_path.rstrip("?")),
        "margin": settings.refresh_margin,
        "idleSwapAfter": settings.idle_swap_after,
        "pauseAfter": settings.pause_after,
        "swap": swap,
        **panel_page_data(server),
    }


def serial_page_data(server: ServerInfo, ref: str) -> dict:
    """The serial console's data: a serial ticket with its own POST, the session kept alive, pastes bounded."""
    return {
        "server": server.to_json(),
        "ticketUrl": url_for("api.relay_ticket", server_id=server.id, cloud=server.cloud, type="serial"),
        "brokerLink": url_for("views.serial_console", ref=ref, _external=True),
        "graphicalUrl": url_for("views.console", ref=server.id, cloud=server.cloud),
        "loginUrl": url_for("auth.login", next=request.full_path.rstrip("?")),
        "pasteLimit": PASTE_LIMIT,
        # Said on the toolbar to everyone on it (BROKER_RECORDING=all).
        "recorded": state.settings().recording == "all",
        "username": current_user.username,
        "keepaliveUrl": url_for("api.keepalive"),
        "keepaliveEvery": max(30, state.settings().session_idle // 4),
        **panel_page_data(server),
    }


def serial_link(server: ServerInfo) -> str | None:
    """The serial console page of ``server``, when its cloud offers one."""
    if not state.consoles().offers(server, "serial"):
        return None
    return url_for("views.serial_console", ref=server.id, cloud=server.cloud)


def viewer_page_data(server: ServerInfo, ref: str) -> dict:
    """The relay viewer's data: it asks for a websocket ticket with its own POST, and keeps the session alive."""
    return {
        "server": server.to_json(),
        "ticketUrl": url_for("api.relay_ticket", server_id=server.id, cloud=server.cloud),
        "brokerLink": url_for("views.console", ref=ref, _external=True),
        "loginUrl": url_for("auth.login", next=request.full_path.rstrip("?")),
        "typeLimit": TYPE_LIMIT,
        "serialUrl": serial_link(server),
        "keepaliveUrl": url_for("api.keepalive"),
        # Well within the idle limit, so one missed beat does not sign anyone out.
        "keepaliveEvery": max(30, state.settings().session_idle // 4),
        # Where the opener invites others to watch: the page puts its console's ID (the relay tells it) for the 0.
        "invitesUrl": url_for("api.invite", console_id=0),
        # Said on the toolbar to the driver and every watcher (BROKER_RECORDING=all).
        "recorded": state.settings().recording == "all",
        **panel_page_data(server),
    }


def watch_page_data(server: ServerInfo, console: LiveConsole, invite: str) -> dict:
    """The viewer's data for watching someone's console: a watch ticket with its own POST (spending the invite),
    no power actions, and nothing typed reaching the server unless control is given."""
    page = viewer_page_data(server, server.id)
    watch_link = url_for("views.watch", console_id=console.id, _external=True)
    page.update(
        ticketUrl=url_for("api.watch_ticket", console_id=console.id),
        brokerLink=watch_link,
        watch={"console": console.id, "invite": invite, "owner": console.username},
        serialUrl=None,
        power=False,
        actions=[],
    )
    return page
