"""Session limits: an absolute lifetime and an idle timeout, and cookies marked Secure over HTTPS."""

from __future__ import annotations

import time

from flask import Flask
from flask import has_request_context
from flask import request
from flask import session
from flask.sessions import SecureCookieSessionInterface
from flask_login import current_user
from flask_login import logout_user

from broker import audit


def clock() -> float:
    """Wall-clock seconds (a function so that tests can move time)."""
    return time.time()


# Writing the last-seen time on every request would re-send the cookie each time.
SEEN_RESOLUTION = 30


class BrokerSessionInterface(SecureCookieSessionInterface):
    """``Secure`` when configured, and always when the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or (has_request_context() and request.is_secure))


def started() -> None:
    """Mark the moment of sign-in (call right after ``login_user``)."""
    now = int(clock())
    session["signed_in_at"] = now
    session["seen_at"] = now


def expired_reason(lifetime: int, idle: int) -> str | None:
    now = clock()
    signed_in_at = session.get("signed_in_at")
    if not isinstance(signed_in_at, int) or now - signed_in_at > lifetime:
        return "session reached its maximum age"
    if now - session.get("seen_at", 0) > idle:
        return "session was idle too long"
    return None


def register_session_limits(app: Flask, lifetime: int, idle: int) -> None:
    """Before each request, end a session that is too old or was idle too long.

    An open console page refreshes its URL with a POST well within the idle limit,
    so it keeps the session alive for as long as it is refreshing.
    """
    app.session_interface = BrokerSessionInterface()

    @app.before_request
    def enforce_limits():
        if request.endpoint == "static" or not current_user.is_authenticated:
            return
        reason = expired_reason(lifetime, idle)
        if reason:
            audit.record("sign_out", "ok", username=current_user.username, reason=reason)
            logout_user()
            session.clear()
        elif clock() - session.get("seen_at", 0) > SEEN_RESOLUTION:
            session["seen_at"] = int(clock())
