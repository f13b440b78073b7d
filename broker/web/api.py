"""The JSON API: mint a console URL, list servers, a server's panel, power actions, pins."""

from __future__ import annotations

from urllib.parse import urlencode
from urllib.parse import urlsplit

from flask import Blueprint
from flask import abort
from flask import current_app
from flask import jsonify
from flask import request
from flask import url_for
from flask_login import current_user
from flask_login import login_required

from broker import state
from broker.cloud import errors
from broker.extensions import db
from broker.services import relay
from broker.services import shortcuts
from broker.services import watching
from broker.services.consoles import MINT_DETAILS
from broker.services.consoles import ConsoleService
from broker.services.power import ACTIONS as POWER_ACTIONS
from broker.services.power import CONFIRMATION_TTL
from broker.throttle import parse_limit
from broker.web import sessions
from broker.web.errors import error_response
from broker.web.params import cloud_arg
from broker.web.params import console_type_arg
from broker.web.params import json_object
from broker.web.presentation import no_store
from broker.web.presentation import panel
from broker.web.presentation import server_list
from broker.web.security import page_host

bp = Blueprint("api", __name__, url_prefix="/api")


def service() -> ConsoleService:
    return state.consoles()


# A mint's body is at most {"reason": "..."}; anything bigger is not from our page.
MAX_MINT_BODY = 256


def mint_reason() -> str:
    """The optional ``{"reason": ...}`` body of a mint; anything else is a 400, never a traceback."""
    shape = f'{{"reason": one of {", ".join(MINT_DETAILS)}}}'
    reason = json_object(MAX_MINT_BODY, {"reason"}, shape).get("reason", "load")
    if reason not in MINT_DETAILS:
        abort(400, description=f"The request body must be {shape}.")
    return reason


@bp.post("/consoles/<path:server_id>")
@login_required
def mint(server_id: str):
    minted = service().mint(current_user, server_id, cloud_arg(), mint_reason())
    return no_store(jsonify(minted.to_json()))


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
    """A single-use ticket for the relay's websocket to a console of ``?type=`` (novnc or serial), after the same
    authorization as a mint. Serial consoles always run through the relay; graphical ones in relay mode only."""
    kind = console_type_arg()
    server = service().permitted(current_user, server_id, cloud_arg(), detail=relay.DETAILS[kind])
    if not service().offers(server, kind):
        abort(404, description=f"Cloud {server.cloud} offers no {kind} consoles.")
    if kind == "novnc" and service().mode(server) != "relay":
        abort(400, description=f"Consoles of cloud {server.cloud} open in the cloud's own page, not through the relay.")
    limit = state.settings().max_consoles_per_user
    ticket = relay.issue(current_user, sessions.current_id(), server, page_origin(), limit, kind)
    # Names the console for a load balancer in front of several relays, which must send every browser on
    # one server's serial console, and every watcher of a graphical one, to the relay that carries it
    # (docs/deploy.md, "The relay").
    url = relay_url() + "?" + urlencode({"serial" if kind == "serial" else "console": f"{server.cloud}/{server.id}"})
    body = {"ticket": ticket, "url": url, "expires_in": relay.TICKET_TTL, "server": server.to_json()}
    return no_store(jsonify(body), 201)


# An invite's or a watch ticket's body is at most {"user": name} or {"invite": token}.
MAX_WATCH_BODY = 256


@bp.post("/consoles/live/<path:rest>")
@login_required
def no_such_live_console(rest: str):
    """A live console's ID is a number: anything else names none (and is no server ID for a mint either)."""
    abort(404, description=watching.NotLive.message)


@bp.post("/consoles/live/<int:console_id>/invites")
@login_required
def invite(console_id: int):
    """An invite to watch the live console ``console_id`` (its opener only): ``{"user": name}``, or ``{}`` for a
    link anyone who may open the server can use once, within a few minutes."""
    body = json_object(MAX_WATCH_BODY, {"user"}, '{"user": a user name} or {} for a link')
    made = watching.invite(service(), current_user, sessions.current_id(), console_id, body.get("user"))
    url = url_for("views.watch", console_id=console_id, invite=made.token, _external=True)
    return no_store(jsonify({"url": url, "expires_in": made.expires_in, "user": made.invitee}), 201)


@bp.post("/consoles/live/<int:console_id>/watch-tickets")
@login_required
def watch_ticket(console_id: int):
    """A single-use ticket for the relay's websocket to watch the live console ``console_id``: with an invite
    (``{"invite": token}``, used up here), or as an admin observing (``{}``)."""
    body = json_object(MAX_WATCH_BODY, {"invite"}, '{"invite": the invite from the link} or {}')
    limit = state.settings().max_consoles_per_user
    ticket, server, role = watching.admit(
        service(), current_user, sessions.current_id(), console_id, body.get("invite", ""), page_origin(), limit
    )
    # Names the console for a load balancer in front of several relays: a watcher must reach the relay that
    # carries it, which the server's key chose when the console opened (docs/deploy.md, "The relay").
    url = relay_url() + "?" + urlencode({"console": f"{server.cloud}/{server.id}", "watch": console_id})
    body = {"ticket": ticket, "url": url, "expires_in": relay.TICKET_TTL, "server": server.to_json(), "role": role}
    return no_store(jsonify(body), 201)


@bp.post("/session/keepalive")
@login_required
def keepalive():
    """Someone is using a relay console (which makes no requests of its own): the session is not idle."""
    return "", 204


@bp.get("/servers")
@login_required
def servers():
    """The list page's rows as JSON; ``console_page``, ``cloud`` and ``notices`` give what the page shows."""
    cloud = cloud_arg()
    overview = service().overview(current_user, request.args.get("q", "")[:200], cloud)
    limit = request.args.get("limit", type=int)
    shown = overview.servers[:limit] if limit and limit > 0 else overview.servers
    return jsonify(server_list(overview, shown, shortcuts.pinned_keys(current_user), cloud))


# -- the server panel, power actions and pins -----------------------------------------

# A power request's body is {"action", "confirmation"}: anything bigger is not from our page.
MAX_ACTION_BODY = 512
FRESH_READS = parse_limit("60 per minute")


def power_action(body: dict) -> str:
    action = body.get("action", "")
    if action not in POWER_ACTIONS:
        abort(400, description=f'"action" must be one of {", ".join(POWER_ACTIONS)}.')
    return action


@bp.get("/servers/<server_id>")
@login_required
def server(server_id: str):
    """The server panel: the cloud's own fields (from the cached list, or re-read with ``fresh=1``)."""
    found = service().permitted(current_user, server_id, cloud_arg(), detail="panel")
    # Each fresh read is a call upstream: a page polls every 3 s; past a few pages' worth, the cache answers.
    if request.args.get("fresh") == "1" and state.throttle().take(FRESH_READS, f"fresh:{current_user.id}").granted:
        found = service().refreshed(current_user, found)
    return no_store(jsonify(panel(found)))


@bp.post("/servers/<server_id>/power-confirmations")
@login_required
def power_confirmation(server_id: str):
    """Step one of a power action: a single-use confirmation, asked for when the dialog opens."""
    action = power_action(json_object(MAX_ACTION_BODY, {"action"}))
    confirmation = state.power().confirm(current_user, sessions.current_id(), server_id, cloud_arg(), action)
    body = {
        "confirmation": confirmation.token,
        "expires_in": CONFIRMATION_TTL,
        "action": action,
        "question": confirmation.question,
        "server": panel(confirmation.server)["server"],
    }
    return no_store(jsonify(body), 201)


@bp.post("/servers/<server_id>/power")
@login_required
def power(server_id: str):
    """Step two: send the confirmed action. 202: the cloud took it; the server's state follows."""
    body = json_object(MAX_ACTION_BODY, {"action", "confirmation"})
    action = power_action(body)
    powering = state.power()
    server = powering.claim(
        current_user, sessions.current_id(), server_id, cloud_arg(), action, body.get("confirmation", "")
    )
    # The confirmation is spent for good before the cloud hears of the action: a second request with it,
    # however soon, finds it used, and an action that fails is never sent again with it.
    db.session.commit()
    try:
        after = powering.send(current_user, server, action)
    except errors.ServerNotReady as exc:
        # Here a 409 is not "the console cannot open" but "the cloud will not do this now".
        return error_response(409, "server_busy", exc.message)
    return no_store(jsonify({"action": action, "server": panel(after)["server"]}), 202)


@bp.get("/pins")
@login_required
def pinned():
    """Where the pins live (``PUT``/``DELETE`` ``/api/pins/<id>?cloud=``); reading it lists the user's pins."""
    pins = shortcuts.pinned(current_user, service())
    return no_store(jsonify({"pins": [s.to_json() for s in pins]}))


@bp.put("/pins/<server_id>")
@login_required
def pin(server_id: str):
    found, new = shortcuts.pin(current_user, service(), server_id, cloud_arg())
    return no_store(jsonify({"pinned": True, "server": found.to_json()}), 201 if new else 200)


@bp.delete("/pins/<server_id>")
@login_required
def unpin(server_id: str):
    shortcuts.unpin(current_user, server_id, cloud_arg())
    return no_store(current_app.response_class(status=204), 204)
