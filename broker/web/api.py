"""The JSON API: mint a console URL, list servers."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from flask import Blueprint
from flask import abort
from flask import jsonify
from flask import request
from flask_login import current_user
from flask_login import login_required

from broker import state
from broker.services import relay
from broker.services.consoles import MINT_DETAILS
from broker.services.consoles import ConsoleService
from broker.web import sessions
from broker.web.security import page_host
from broker.web.views import console_links
from broker.web.views import notices

bp = Blueprint("api", __name__, url_prefix="/api")


def service() -> ConsoleService:
    return state.consoles()


# A mint's body is at most {"reason": "..."}; anything bigger is not from our page.
MAX_MINT_BODY = 256


def mint_reason() -> str:
    """The optional ``{"reason": ...}`` body of a mint; anything else is a 400, never a traceback."""
    raw = request.get_data(cache=False)
    if not raw.strip():
        return "load"
    if len(raw) > MAX_MINT_BODY:
        abort(400, description=f"The request body must be a small JSON object (at most {MAX_MINT_BODY} bytes).")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        abort(400, description="The request body is not valid JSON.")
    if not isinstance(body, dict) or set(body) - {"reason"} or body.get("reason", "load") not in MINT_DETAILS:
        abort(400, description=f'The request body must be {{"reason": one of {", ".join(MINT_DETAILS)}}}.')
    return body.get("reason", "load")


@bp.post("/consoles/<path:server_id>")
@login_required
def mint(server_id: str):
    minted = service().mint(current_user, server_id, request.args.get("cloud") or None, mint_reason())
    response = jsonify(minted.to_json())
    response.headers["Cache-Control"] = "no-store"
    return response


def page_origin() -> str:
    """This page's scheme://host[:port] as the browser sees it (behind trusted proxies, as they say)."""
    parts = urlsplit(request.host_url)
    return f"{parts.scheme}://{parts.netloc}"


def relay_url() -> str:
    """Where the viewer opens its websocket: BROKER_RELAY_URL, else the relay path on this origin."""
    settings = state.settings()
    if settings.relay_url:
        return settings.relay_url.replace("{host}", page_host())
    parts = urlsplit(request.host_url)
    return f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}{settings.relay_path}"


@bp.post("/relay-tickets/<path:server_id>")
@login_required
def relay_ticket(server_id: str):
    """A single-use ticket for the relay's websocket, after the same authorization as a mint."""
    server = service().permitted(current_user, server_id, request.args.get("cloud") or None)
    if service().mode(server) != "relay":
        abort(400, description=f"Consoles of cloud {server.cloud} open in the cloud's own page, not through the relay.")
    ticket = relay.issue(current_user, sessions.current_id(), server, page_origin())
    response = jsonify(
        {"ticket": ticket, "url": relay_url(), "expires_in": relay.TICKET_TTL, "server": server.to_json()}
    )
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/session/keepalive")
@login_required
def keepalive():
    """Someone is using a relay console (which makes no requests of its own): the session is not idle."""
    return "", 204


@bp.get("/servers")
@login_required
def servers():
    """The list page's rows as JSON; ``console_page``, ``cloud`` and ``notices`` give what the page shows."""
    args = request.args
    cloud = args.get("cloud") or None
    overview = service().overview(current_user, args.get("q", "")[:200], cloud)
    limit = args.get("limit", type=int)
    shown = overview.servers[:limit] if limit and limit > 0 else overview.servers
    links = console_links(shown)
    return jsonify(
        {
            "servers": [{**s.to_json(), "console_page": link} for s, link in zip(shown, links, strict=True)],
            "total": len(overview.servers),
            "cloud": cloud,
            "unavailable": [{"cloud": name, "message": msg} for name, msg in overview.failures.items()],
            "stale": [
                {"cloud": name, "age_seconds": round(s.age), "message": s.message} for name, s in overview.stale.items()
            ],
            "notices": notices(overview),
        }
    )
