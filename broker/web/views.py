"""Pages: the server list (with pinned and recent consoles), the console page, the name chooser and the pop-out."""

from __future__ import annotations

from flask import Blueprint
from flask import abort
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_login import current_user
from flask_login import login_required

from broker import state
from broker.cloud.types import ServerInfo
from broker.services import shortcuts
from broker.services import watching
from broker.services.consoles import ConsoleService
from broker.web import presentation
from broker.web import security
from broker.web.params import cloud_arg
from broker.web.params import from_this_site

bp = Blueprint("views", __name__)


def service() -> ConsoleService:
    return state.consoles()


# Rows rendered into the list page; the instant search asks the API beyond that.
LIST_ROWS = 200


@bp.get("/")
@login_required
def index():
    query = request.args.get("q", "")[:200]
    overview = service().overview(current_user, query, cloud_arg())
    servers = overview.servers[:LIST_ROWS]
    recent = shortcuts.recent(current_user, service())
    pinned = shortcuts.pinned(current_user, service())
    return render_template(
        "servers/list.html",
        pinned=presentation.shortcut_rows(pinned),
        recent=presentation.recent_rows(recent),
        # Only servers the user may open are in the table, so the pins they may open are all it needs.
        pinned_ids={(s.cloud, s.id) for s in pinned},
        urls={"pins": url_for("api.pinned"), "servers": url_for("api.servers")},
        rows=zip(servers, presentation.console_links(servers), strict=True),
        shown=len(servers),
        total=len(overview.servers),
        notices=presentation.notices(overview),
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


def console_page(server: ServerInfo, ref: str):
    """The console shell (it mints with its own POST once loaded), or in relay mode the broker's own viewer."""
    cloud = service().inventory.cloud(server.cloud)
    if cloud.console_mode == "relay":
        page = presentation.viewer_page_data(server, ref)
        template = "console/viewer.html"
    else:
        page = presentation.console_page_data(server, ref, cloud.console_swap)
        template = "console/page.html"
    return render_template(template, server=server, page=page, panel=page["panel"], power=page["power"])


@bp.get("/console/<path:ref>/serial")
@login_required
def serial_console(ref: str):
    """The serial console page: xterm.js on the relay (the serial URL never reaches the browser)."""
    server, chooser = resolve_or_choose(ref)
    if chooser:
        return chooser
    if not service().offers(server, "serial"):
        abort(404, description=f"Cloud {server.cloud} offers no serial consoles.")
    page = presentation.serial_page_data(server, ref)
    security.allow_inline_styles()
    return render_template("console/serial.html", server=server, page=page, panel=page["panel"], power=page["power"])


@bp.get("/console/live/<int:console_id>/watch")
@login_required
def watch(console_id: int):
    """Watch someone's live console: with their invite (``?invite=``, used up by the page's POST, never by this
    GET), or as an admin observing. The same authorization as opening the server."""
    row = watching.live_console(console_id)
    server = service().permitted(
        current_user, row.server_id, row.cloud, detail="join", action="watch", console_id=row.id
    )
    page = presentation.watch_page_data(server, row, request.args.get("invite", "")[:128])
    return render_template("console/viewer.html", server=server, page=page, panel=page["panel"], power=None)


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
    return presentation.no_store(redirect(minted.console.url, code=303), 303)
