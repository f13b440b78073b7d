"""Sign-in sessions: one server-side record each, an absolute lifetime, an idle timeout, Secure cookies.

The session cookie is signed, not stored, so a copy of it stays valid until it says
otherwise. Each sign-in therefore also gets a row here, named in the cookie; sign-out
and the limits end that row, and a cookie whose row has ended is refused everywhere,
while the same user's other sessions go on.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC
from datetime import datetime
from datetime import timedelta

from flask import Flask
from flask import has_request_context
from flask import request
from flask import session
from flask.sessions import SecureCookieSessionInterface
from flask_login import current_user
from flask_login import login_user
from flask_login import logout_user
from sqlalchemy import delete
from sqlalchemy import select
from sqlalchemy import update

from broker.extensions import db
from broker.extensions import hand_back_connection
from broker.models import User
from broker.models import UserSession
from broker.services import audit


def clock() -> float:
    """Wall-clock seconds (a function so that tests can move time)."""
    return time.time()


# Writing the last-seen time on every request would re-send the cookie each time.
SEEN_RESOLUTION = 30
# Endpoints that never read the sign-in session: static files, and the probes, which answer the same
# whatever cookie a browser or a monitor sends (and /healthz whether or not the database answers).
SESSIONLESS = frozenset({"static", "healthz", "observability.readyz", "observability.prometheus_metrics"})


class BrokerSessionInterface(SecureCookieSessionInterface):
    """``Secure`` when configured, and always when the request came over HTTPS; no session for probes and static files.

    Flask opens the session before it matches the URL, so the sessionless endpoints are known here
    by their paths: their requests get an empty session instead of verifying the cookie's
    signature and decoding it, which they would never read (an empty, unchanged session sets no cookie).
    """

    def __init__(self) -> None:
        self._sessionless: tuple[frozenset[str], str] | None = None

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or (has_request_context() and request.is_secure))

    def open_session(self, app: Flask, request):  # noqa: ANN001, ANN201 - Flask's signature
        paths, static = self._sessionless or self._learn(app)
        if request.path in paths or (static and request.path.startswith(static)):
            return self.session_class()
        return super().open_session(app, request)

    def _learn(self, app: Flask) -> tuple[frozenset[str], str]:
        """The fixed paths of the sessionless endpoints and the static files' prefix, read once from the URL map."""
        rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint in SESSIONLESS]
        paths = frozenset(rule.rule for rule in rules if not rule.arguments)
        static = f"{app.static_url_path}/" if app.has_static_folder else ""
        self._sessionless = (paths, static)
        return self._sessionless


def load_user(user_id: str) -> User | None:
    """flask-login's loader: the user, if the cookie's session is live and its token current."""
    raw_id, _, token = (user_id or "").partition(":")
    sid = session.get("sid")
    if not raw_id.isdigit() or not isinstance(sid, str):
        return None
    user = db.session.scalar(
        select(User)
        .join(UserSession, UserSession.user_id == User.id)
        .where(User.id == int(raw_id), UserSession.id == sid, UserSession.ended_at.is_(None))
    )
    valid = user is not None and secrets.compare_digest(user.session_token, token)
    # Hand the pooled connection back now: the request may next wait seconds on a
    # cloud, and a connection held through that starves every other request.
    # The user stays usable (its columns are loaded), detached from the session.
    hand_back_connection()
    return user if valid else None


def start(user: User, lifetime: int, method: str = "local", external_sid: str | None = None) -> None:
    """A new session for ``user``: nothing of the signed-out one is kept (CSRF token included)."""
    session.clear()
    sid = secrets.token_urlsafe(32)
    cutoff = datetime.now(UTC) - timedelta(seconds=lifetime)
    db.session.execute(delete(UserSession).where(UserSession.started_at < cutoff))
    # Committed with the sign-in's audit record.
    db.session.add(UserSession(id=sid, user_id=user.id, method=method, external_sid=external_sid))
    login_user(user)
    now = int(clock())
    session.update(sid=sid, signed_in_at=now, seen_at=now, method=method)


def current_id() -> str:
    """The current sign-in session's ID (its row in user_sessions)."""
    return session["sid"]


def method() -> str:
    """How the current session was signed in to."""
    return session.get("method") or "local"


def end_external(source: str, subject: str | None, external_sid: str | None) -> list[str]:
    """End the live sessions a provider's logout names (by its session ID, else all of the account's); staged.

    Returns the names of the users whose sessions ended.
    """
    query = select(UserSession, User).join(User, User.id == UserSession.user_id)
    query = query.where(UserSession.ended_at.is_(None), User.source == source)
    if external_sid:
        query = query.where(UserSession.external_sid == external_sid)
    if subject:
        query = query.where(User.external_id == subject)
    ended = []
    for row, user in db.session.execute(query).all():
        row.ended_at = datetime.now(UTC)
        ended.append(user.username)
    db.session.flush()
    return ended


def end(reason: str) -> None:
    """End the current session here and on the server, with an audit record."""
    sid = session.get("sid")
    if isinstance(sid, str):
        db.session.execute(update(UserSession).where(UserSession.id == sid).values(ended_at=datetime.now(UTC)))
    # The session's end and its record are one unit of work, which the request commits.
    if current_user.is_authenticated:
        audit.stage("sign_out", "ok", username=current_user.username, detail=method(), reason=reason)
    logout_user()
    session.clear()


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
        if request.endpoint in SESSIONLESS or not current_user.is_authenticated:
            return
        reason = expired_reason(lifetime, idle)
        if reason:
            end(reason)
        elif clock() - session.get("seen_at", 0) > SEEN_RESOLUTION:
            session["seen_at"] = int(clock())
            mark_seen(session.get("sid"))


def mark_seen(sid: object) -> None:
    """The session's row says it was used now: the relay, which never sees the cookie again, judges idleness by it."""
    if not isinstance(sid, str):
        return
    db.session.execute(update(UserSession).where(UserSession.id == sid).values(seen_at=datetime.now(UTC)))
    # Its own unit of work, committed before the route runs: the route may wait seconds on a cloud,
    # and SQLite would hold every other writer back for as long as this row's write stayed open.
    db.session.commit()
