"""What every sign-in method shares: the safe ``next``, starting a directory user's session, the way back to
the login page, and the provider's own sign-out.

Password sign-in (``auth``, local and LDAP), OpenID Connect (``oidc``) and the trusted header
(``header``) each import this module and none imports another, so there is no circle.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Flask
from flask import current_app
from flask import flash
from flask import redirect
from flask import url_for

from broker import state
from broker.services import audit
from broker.services import identity
from broker.web import sessions

# Where a method that signs in at a provider keeps the function that gives the provider's sign-out URL.
PROVIDER_LOGOUT = "broker.provider_logout"


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None (no scheme, host, ``//`` or ``\\``)."""
    if not target or len(target) > 2048 or not target.startswith("/"):
        return None
    if target.startswith("//") or "\\" in target or any(ord(c) < 32 or ord(c) == 127 for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def begin_external(found: identity.ExternalIdentity) -> identity.Synced:
    """Provision ``found`` and start its session, audited with the method; IdentityRefused when its name is taken."""
    # A refusal comes before anything is staged; what the request staged before (an ended session) stays.
    synced = identity.sign_in(found, state.settings().admin_groups)
    sessions.start(synced.user, state.settings().session_lifetime, method=found.source, external_sid=found.sid)
    audit.stage("sign_in", "ok", username=synced.user.username, detail=found.source, reason=synced.describe())
    return synced


def external_sign_in(found: identity.ExternalIdentity, target: str):
    """Sign in someone a directory vouched for and go on to ``target``; a refusal is audited and shown."""
    try:
        begin_external(found)
    except identity.IdentityRefused as exc:
        return external_refused(found, exc)
    return redirect(target)


def external_refused(found: identity.ExternalIdentity, exc: identity.IdentityRefused):
    """A directory user who cannot have an account here: audited, and told why on the login page."""
    audit.stage("sign_in", "refused", username=found.username[:64], detail=found.source, reason=exc.reason)
    return back_to_login(exc.message)


def back_to_login(message: str):
    """Say ``message`` on the login page, which stays put (no single-sign-on redirect) so it can be read."""
    flash(message, "error")
    return redirect(url_for("auth.login", stay=1))


def register_provider_logout(app: Flask, logout_url: Callable[[], str | None]) -> None:
    """Let sign-out also end the session at a provider: ``logout_url`` gives where, or None."""
    app.extensions[PROVIDER_LOGOUT] = logout_url


def provider_logout_url() -> str | None:
    """Where the provider of this session ends its own session too, if it does; read before the session ends."""
    logout_url = current_app.extensions.get(PROVIDER_LOGOUT)
    return logout_url() if logout_url is not None else None
