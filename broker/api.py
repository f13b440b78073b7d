"""The JSON API: mint a console URL, list servers."""

from __future__ import annotations

from flask import Blueprint
from flask import current_app
from flask import jsonify
from flask import request
from flask_login import current_user
from flask_login import login_required

from broker.consoles import ConsoleService

bp = Blueprint("api", __name__, url_prefix="/api")


def service() -> ConsoleService:
    return current_app.extensions["consoles"]


@bp.post("/consoles/<path:server_id>")
@login_required
def mint(server_id: str):
    body = request.get_json(silent=True) or {}
    detail = str(body.get("reason", "load")) if isinstance(body, dict) else "load"
    minted = service().mint(current_user, server_id, request.args.get("cloud") or None, detail)
    response = jsonify(minted.to_json())
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/servers")
@login_required
def servers():
    args = request.args
    overview = service().overview(current_user, args.get("q", "")[:200], args.get("cloud") or None)
    limit = args.get("limit", type=int)
    shown = overview.servers[:limit] if limit and limit > 0 else overview.servers
    return jsonify(
        {
            "servers": [s.to_json() for s in shown],
            "total": len(overview.servers),
            "unavailable": [{"cloud": name, "message": msg} for name, msg in overview.failures.items()],
            "stale": [
                {"cloud": name, "age_seconds": round(s.age), "message": s.message} for name, s in overview.stale.items()
            ],
        }
    )
