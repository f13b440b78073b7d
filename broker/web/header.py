"""Sign-in by a trusted proxy header: an authenticating proxy in front names the person, the broker believes it.

The header is believed only on connections whose TCP peer is one of the proxy's addresses
(``BROKER_AUTH_HEADER_FROM``). That peer is the socket's own address, never one read from
``X-Forwarded-For`` (which ProxyFix copies into ``REMOTE_ADDR``): anyone can send that
header, and anyone could send the identity header too. From any other peer the header is
ignored (the person gets the normal sign-in) and the attempt audited.

The proxy is the authority for as long as the person uses the broker: each request from
it names the user, so a session follows that name. Another name ends the session and
starts one for the new user; no name ends a header session (the proxy's user signed out).
Nothing redirects: the request that brought the header goes on, signed in.
"""

from __future__ import annotations

import logging

from flask import Flask
from flask import flash
from flask import request
from flask_login import current_user

from broker import state
from broker.config import HeaderSettings
from broker.extensions import db
from broker.services import audit
from broker.services import identity
from broker.services import users
from broker.web import sessions
from broker.web import signin
from broker.web.errors import wants_json
from broker.web.observability import address_allowed

log = logging.getLogger(__name__)


def peer_address() -> str:
    """The connection's own peer: ``REMOTE_ADDR`` as the server set it, before ProxyFix replaced it."""
    original = request.environ.get("werkzeug.proxy_fix.orig") or {}
    return original.get("REMOTE_ADDR") or request.environ.get("REMOTE_ADDR") or ""


def groups_from(settings: HeaderSettings) -> tuple[str, ...]:
    """The groups header: comma-separated, trimmed; anything that is not a group name is dropped."""
    if not settings.groups_header:
        return ()
    raw = request.headers.get(settings.groups_header, "")
    return tuple(name for name in (part.strip() for part in raw.split(",")) if users.NAME.match(name))


def identity_from(settings: HeaderSettings, value: str) -> identity.ExternalIdentity:
    name = value.strip()
    return identity.ExternalIdentity(source="header", subject=name.lower(), username=name, groups=groups_from(settings))


def signed_in_as(found: identity.ExternalIdentity) -> bool:
    """True when the session is already the header session of ``found``'s account."""
    if not current_user.is_authenticated or sessions.method() != "header":
        return False
    return (current_user.source, current_user.external_id) == (found.source, found.subject)


def refuse_untrusted(settings: HeaderSettings, peer: str) -> None:
    reason = f"identity header from an untrusted address {peer}; only BROKER_AUTH_HEADER_FROM may send it"
    log.warning("ignored %s from %s: not in BROKER_AUTH_HEADER_FROM", settings.header, peer)
    audit.stage_anonymous(state.throttle(), "sign_in", "refused", detail="header", reason=reason)


def sign_in(found: identity.ExternalIdentity) -> None:
    """Start a header session for ``found`` and let the request go on; a refusal is audited, nobody signed in."""
    try:
        synced = signin.begin_external(found)
    except identity.IdentityRefused as exc:
        # The proxy repeats the name on every request: stored once a minute per address, like other strangers.
        audit.stage_anonymous(
            state.throttle(), "sign_in", "refused", username=found.username[:64], detail="header", reason=exc.reason
        )
        if not wants_json():
            flash(exc.message, "error")
        return
    # The sign-in is its own unit of work, committed before the view runs; then, as a loaded session user is,
    # its columns read and its pooled connection handed back.
    db.session.commit()
    db.session.refresh(synced.user)
    db.session.close()


def follow_proxy(settings: HeaderSettings) -> None:
    """Make the session match the user the trusted proxy names (or names no longer)."""
    value = request.headers.get(settings.header)
    if value is None:
        if current_user.is_authenticated and sessions.method() == "header":
            sessions.end("the authenticating proxy no longer names a user")
        return
    found = identity_from(settings, value)
    if signed_in_as(found):
        return
    if current_user.is_authenticated:
        sessions.end(f"the authenticating proxy names another user ({found.username[:64]})")
    sign_in(found)


def register_header_sign_in(app: Flask, settings: HeaderSettings) -> None:
    """Before each request, sign in (or out) whom the authenticating proxy names; ignore everyone else's header."""

    @app.before_request
    def trusted_header():
        if request.endpoint in sessions.SESSIONLESS:
            return  # static files and the probes: nobody is signed in by them, and /healthz touches nothing
        peer = peer_address()
        if address_allowed(peer, settings.trusted):
            follow_proxy(settings)
        elif settings.header in request.headers:
            refuse_untrusted(settings, peer)
