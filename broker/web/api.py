"""The JSON API: mint a console URL, list servers."""

from __future__ import annotations

import json

from flask import Blueprint
from flask import abort
from flask import jsonify
from flask import request
from flask_login import current_user
from flask_login import login_required

from broker import state
from broker.services.consoles import MINT_DETAILS
from broker.services.consoles import ConsoleService
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
