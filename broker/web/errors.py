"""Error responses: JSON ``{"error": {code, message}}`` for the API, one HTML page otherwise."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable

from flask import Flask
from flask import current_app
from flask import jsonify
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_limiter import RateLimitExceeded
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from broker import schema
from broker import state
from broker.cloud import errors
from broker.cloud.errors import CloudError
from broker.extensions import db
from broker.schema import is_unreachable
from broker.services import audit
from broker.services.consoles import ViewerOnly
from broker.services.power import PowerRefused
from broker.services.relay import TooManyConsoles
from broker.services.shortcuts import PinError
from broker.services.watching import NotLive
from broker.services.watching import WatchRefused
from broker.web.observability import request_id

log = logging.getLogger(__name__)

SLUGS = {
    400: "bad_request",
    401: "not_signed_in",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    429: "too_many_requests",
    500: "internal_error",
}


# How each kind of cloud trouble answers: HTTP status and the API's error slug. A subclass
# answers as its nearest listed ancestor (CircuitOpen as CloudUnreachable).
CLOUD_ANSWERS: dict[type[CloudError], tuple[int, str]] = {
    errors.ServerNotFound: (404, "server_not_found"),
    errors.ServerNotReady: (409, "server_not_running"),
    errors.ConsoleUnavailable: (502, "console_unavailable"),
    # The cloud's policy forbids the broker's account a server action: nothing for the person to retry.
    errors.ActionForbidden: (403, "cloud_policy"),
    errors.CloudRefused: (502, "cloud_refused"),
    errors.CloudUnreachable: (503, "cloud_unreachable"),
    errors.CloudTimeout: (504, "cloud_timeout"),
    errors.CloudBusy: (503, "cloud_busy"),
    errors.CloudBadResponse: (502, "cloud_bad_response"),
    errors.CloudPending: (504, "cloud_pending"),
    errors.ServerUnconfirmed: (503, "server_unconfirmed"),
    CloudError: (502, "cloud_error"),
}


def cloud_answer(exc: CloudError) -> tuple[int, str]:
    """The HTTP status and error slug for ``exc``."""
    return next(CLOUD_ANSWERS[kind] for kind in type(exc).__mro__ if kind in CLOUD_ANSWERS)


def wants_json() -> bool:
    return request.path.startswith("/api/")


def error_response(status: int, code: str, message: str, **extra):
    """The one way any error leaves the broker."""
    reference = request_id()
    if wants_json():
        response = jsonify({"error": {"code": code, "message": message, **extra, "request_id": reference}})
        response.status_code = status
    else:
        page = render_template("error.html", status=status, code=code, message=message, reference=reference)
        response = page, status
    return response


def unauthorized():
    """Pages redirect to the sign-in with ``next``; the API answers 401 JSON, never a redirect."""
    if wants_json():
        return error_response(401, "not_signed_in", "Sign in to continue.")
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def handle_http(exc: HTTPException):
    status = exc.code or 500
    # What a handler of another error raised (say, reading the user for a CSRF record) ends here.
    original = getattr(exc, "original_exception", None)
    if status == 500 and original is not None and is_unreachable(original):
        return database_unavailable(original)
    return error_response(status, SLUGS.get(status, "error"), exc.description or exc.name)


def handle_csrf(exc: CSRFError):
    # A refresh after the session ended must say "sign in", not "bad CSRF token",
    # or the console page cannot tell the person what to do.
    if wants_json() and not current_user.is_authenticated:
        return error_response(401, "not_signed_in", "Your session has ended. Sign in again.")
    # The route's rule, not its path: a stranger varying the path must not vary the record.
    where = request.url_rule.rule if request.url_rule else request.path
    reason = f"CSRF check failed: {request.method} {where}"
    if current_user.is_authenticated:
        audit.stage("request", "refused", username=current_user.username, reason=reason)
    else:
        audit.stage_anonymous(state.throttle(), "request", "refused", reason=reason)
    return error_response(400, "csrf_failed", "The form was stale or forged. Reload the page and try again.")


def handle_throttled(exc: RateLimitExceeded):
    """A flood of requests: 429 with Retry-After (added by Flask-Limiter), and a (rate-limited) record."""
    if request.endpoint == "auth.login":
        audit.stage_anonymous(
            state.throttle(), "sign_in", "refused", reason="too many sign-in requests from this address"
        )
        response = error_response(429, "too_many_requests", "Too many sign-in requests. Wait a minute and try again.")
    else:
        response = error_response(429, "too_many_requests", "Too many requests. Wait a moment and try again.")
    response = current_app.make_response(response)
    response.headers["Retry-After"] = str(exc.limit.limit.get_expiry())
    return response


def handle_cloud(exc: CloudError):
    extra = {}
    if getattr(exc, "server_status", None):
        extra["server_status"] = exc.server_status
    if exc.retry_after is not None:
        extra["retry_after"] = exc.retry_after
    status, code = cloud_answer(exc)
    return error_response(status, code, exc.message, **extra)


def handle_viewer_only(exc: ViewerOnly):
    return error_response(403, "viewer_only", str(exc))


# Why the broker will not send a power action: a missing permission or confirmation (403), a status
# that does not fit the action (409).
POWER_STATUSES = {"power_not_allowed": 403, "confirmation_invalid": 403, "wrong_state": 409}


def handle_power_refused(exc: PowerRefused):
    return error_response(POWER_STATUSES.get(exc.code, 403), exc.code, exc.message)


def handle_pin_error(exc: PinError):
    return error_response(400, "too_many_pins", str(exc))


def handle_watch_refused(exc: WatchRefused):
    return error_response(exc.status, "watch_refused", exc.message)


def handle_not_live(exc: NotLive):
    return error_response(404, "console_ended", NotLive.message)


def handle_too_many_consoles(exc: TooManyConsoles):
    return error_response(429, "too_many_consoles", str(exc))


# While the database is unreachable every request that needs it fails alike: one line per this
# many seconds (per process) says so, with the count since the last, instead of a traceback each.
OUTAGE_LOG_EVERY = 5.0
OUTAGE_LOG = "database_outage_log"


class OutageLog:
    """Says at most once per OUTAGE_LOG_EVERY seconds that requests found the database unreachable."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.last: float | None = None
        self.refused = 0

    def refused_one(self, exc: BaseException) -> None:
        """Count one refused request; log when the last line is old enough."""
        with self.lock:
            self.refused += 1
            now = self.clock()
            if self.last is not None and now - self.last < OUTAGE_LOG_EVERY:
                return
            self.last, refused, self.refused = now, self.refused, 0
        log.error(
            "database unreachable: %s; pages and the API answer 503 until it is back (%d refused since the last line)",
            schema.unreachable(exc, db.engine.url).cause,
            refused,
        )


def database_unavailable(exc: BaseException):
    """503 for a request that needed the database while it cannot be reached (logged once per few seconds).

    What the request staged is dropped: it can neither be stored now nor be half-stored later.
    """
    db.session.rollback()
    current_app.extensions[OUTAGE_LOG].refused_one(exc)
    # Nobody is signed in for the rest of this request: the error page must not ask the database
    # again who is (flask-login's template context would, and fail the same way).
    current_app.login_manager._update_request_context_with_user()
    return error_response(503, "database_unavailable", "The broker's database is unavailable. Try again in a minute.")


def handle_database(exc: DBAPIError):
    """The database out of reach is an outage (503), not a bug; any other database error is one."""
    if is_unreachable(exc):
        return database_unavailable(exc)
    return handle_unexpected(exc)


def recording(handler: Callable):
    """``handler``, which writes a record: the database out of reach makes its answer the outage's."""

    @functools.wraps(handler)
    def handling(exc: Exception):
        try:
            return handler(exc)
        except DBAPIError as trouble:
            if not is_unreachable(trouble):
                raise
            return database_unavailable(trouble)

    return handling


def handle_unexpected(exc: Exception):
    """500 for a bug: logged, and nothing the request staged is stored (half a change, or one without its record)."""
    db.session.rollback()
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "Something went wrong in the broker. It has been logged.")


def register_errorhandlers(app: Flask) -> None:
    app.register_error_handler(CSRFError, recording(handle_csrf))
    app.register_error_handler(RateLimitExceeded, recording(handle_throttled))
    app.register_error_handler(HTTPException, handle_http)
    app.register_error_handler(CloudError, handle_cloud)
    app.register_error_handler(ViewerOnly, handle_viewer_only)
    app.register_error_handler(PowerRefused, handle_power_refused)
    app.register_error_handler(PinError, handle_pin_error)
    app.register_error_handler(TooManyConsoles, handle_too_many_consoles)
    app.register_error_handler(WatchRefused, handle_watch_refused)
    app.register_error_handler(NotLive, handle_not_live)
    app.register_error_handler(DBAPIError, handle_database)
    app.register_error_handler(Exception, handle_unexpected)
    app.extensions[OUTAGE_LOG] = OutageLog()
