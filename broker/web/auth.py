"""Sign-in and sign-out: the throttle that counts before it checks, and the check that keeps ``next`` on this site.

Every attempt takes a slot under its account and its address before the password is
checked, so parallel guesses cannot slip past the limit. A browser that has signed in
to an account before, with any method that takes the password here (local or LDAP),
carries a signed device cookie for it; its attempts count against that device instead,
so strangers guessing an account's password cannot lock its owner out (OWASP's "device
cookies"). It has its own flood budget too: with everyone behind one address (a proxy the
broker does not believe), nobody else's failures block it. Password checks are memory-hungry
on purpose, so only a few run at once; the rest are told to retry.

The password form is checked against each password method in ``BROKER_AUTH``'s order
(``local``, ``ldap``); the first that accepts wins, so with ``local,ldap`` a break-glass
admin's right password never leaves the broker. A directory that cannot answer is no
"wrong password": its sign-in fails with "directory unreachable" (503), and the local
accounts, checked anyway, keep working.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import threading
from datetime import UTC
from datetime import datetime

from flask import Blueprint
from flask import Response
from flask import abort
from flask import current_app
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_limiter.util import get_remote_address
from flask_login import current_user
from flask_wtf import FlaskForm
from itsdangerous import BadSignature
from itsdangerous import URLSafeTimedSerializer
from wtforms import HiddenField
from wtforms import PasswordField
from wtforms import StringField
from wtforms.validators import DataRequired
from wtforms.validators import Length

from broker import state
from broker.config import LdapSettings
from broker.directory import Directory
from broker.directory import DirectoryUnreachable
from broker.directory import DirectoryUser
from broker.extensions import limiter
from broker.services import audit
from broker.services import identity
from broker.services import users
from broker.throttle import Ticket
from broker.web import sessions
from broker.web import signin

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)

DEVICE_COOKIE = "broker_device"
DEVICE_DAYS = 30
# Password checks (scrypt, ~32 MiB and ~150 ms each) allowed at once per process, and
# how long an attempt may wait for one before it is told to retry.
PASSWORD_CHECKS = 4
PASSWORD_WAIT = 0.5
_password_slots = threading.BoundedSemaphore(PASSWORD_CHECKS)
# LDAP binds wait on the network, not on memory: they have slots of their own, so a
# directory that hangs (up to its timeouts) never takes the break-glass checks' slots.
DIRECTORY_CHECKS = 8
_directory_slots = threading.BoundedSemaphore(DIRECTORY_CHECKS)
# Requests of any kind to POST /login per address, counted before anything else runs:
# a flood guard well above what a helpdesk behind one NAT needs.
FLOOD_LIMIT = "60 per minute"


class LoginForm(FlaskForm):
    username = StringField("User name", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    next = HiddenField()


def audit_name(typed: str) -> str:
    """What the audit keeps of a typed user name: the account's name, or a marker.

    People type passwords into the user-name field; a name that is no account is kept
    only as a keyed hash, enough to see the same one again, not to read it.
    """
    user = users.find(typed) if users.NAME.match(typed or "") else None
    if user is not None:
        return user.username
    key = current_app.config["SECRET_KEY"].encode()
    digest = hmac.new(key, (typed or "").lower().encode(), hashlib.sha256).hexdigest()
    return f"?{digest[:12]}"


# -- counting attempts --------------------------------------------------------------


def device_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="sign-in-device")


def device_cookie() -> dict | None:
    """This browser's device cookie (``u``: the account, ``d``: the device id), if it is genuine and recent."""
    raw = request.cookies.get(DEVICE_COOKIE)
    if not raw:
        return None
    try:
        data = device_serializer().loads(raw, max_age=DEVICE_DAYS * 86400)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("u"), str) or not isinstance(data.get("d"), str):
        return None
    return data


def device_for(name: str) -> str | None:
    """This browser's device id for account ``name``, if its cookie is genuine, recent and for that account."""
    data = device_cookie()
    return data["d"] if data is not None and data["u"] == name.lower() else None


def flood_key() -> str:
    """Whom the flood guard counts: a browser that signed in here before by itself, anyone else by address.

    Behind a proxy the broker does not believe (BROKER_TRUSTED_PROXIES too low) everyone has the
    proxy's address, and one stranger's flood would shut out every person; a known browser keeps
    its own budget, as it does for guesses (take_attempt).
    """
    data = device_cookie()
    return f"device:{data['d']}" if data is not None else get_remote_address()


def remember_device(response: Response, name: str) -> None:
    value = device_serializer().dumps({"u": name.lower(), "d": secrets.token_urlsafe(12)})
    response.set_cookie(
        DEVICE_COOKIE,
        value,
        max_age=DEVICE_DAYS * 86400,
        httponly=True,
        samesite="Lax",
        secure=current_app.session_interface.get_cookie_secure(current_app),
    )


def take_attempt(name: str) -> Ticket:
    """One slot for this attempt: from this browser's device budget, else from the account's and the address's."""
    throttle = state.throttle()
    limit = state.of().login_limit
    device = device_for(name)
    if device:
        return throttle.take(limit, f"login-device:{device}")
    return throttle.take(limit, f"login-account:{name.lower()}", f"login-address:{request.remote_addr}")


class SignInBusy(Exception):
    """Every password-check slot stayed busy for PASSWORD_WAIT seconds."""


def check_password(name: str, password: str) -> users.User | None:
    """The user, or None for a wrong password; SignInBusy when no slot frees up in time."""
    if not _password_slots.acquire(timeout=PASSWORD_WAIT):
        raise SignInBusy
    try:
        return users.authenticate(name, password)
    finally:
        _password_slots.release()


@functools.cache
def directory_for(settings: LdapSettings) -> Directory:
    """One client per LDAP configuration (it keeps no connection; BROKER_LDAP_VERIFY=false is logged once)."""
    return Directory(settings)


def check_directory(name: str, password: str) -> DirectoryUser | None:
    """The directory's user, or None; SignInBusy when no slot frees up, DirectoryUnreachable when it cannot answer."""
    if not _directory_slots.acquire(timeout=PASSWORD_WAIT):
        raise SignInBusy
    try:
        return directory_for(state.settings().ldap).authenticate(name, password)
    finally:
        _directory_slots.release()


def check_methods(name: str, password: str) -> tuple[users.User | DirectoryUser | None, DirectoryUnreachable | None]:
    """Each password method in BROKER_AUTH's order until one accepts; and the directory's failure, if it had one."""
    down = None
    for method in state.settings().auth_methods:
        if method == "local":
            found = check_password(name, password)
        elif method == "ldap":
            try:
                found = check_directory(name, password)
            except DirectoryUnreachable as exc:
                log.warning("sign-in: the LDAP directory is unreachable: %s", exc)
                down, found = exc, None
        else:
            continue
        if found is not None:
            return found, None
    return None, down


# -- pages -----------------------------------------------------------------------


# Methods that sign in with the page's user name and password form.
PASSWORD_METHODS = ("local", "ldap")


def form_page(form: LoginForm, wanted: str | None, status: int, retry_after: int | None = None):
    form.next.data = wanted or ""
    settings = state.settings()
    methods = settings.auth_methods
    # One form serves every password method, shown where the first of them is listed.
    password_at = next((n for n, method in enumerate(methods) if method in PASSWORD_METHODS), None)
    page = render_template(
        "auth/login.html",
        form=form,
        methods=methods,
        password_at=password_at,
        oidc_name=settings.oidc.name if settings.oidc else "",
    )
    response = current_app.make_response((page, status))
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response


def refused(form: LoginForm, wanted: str | None, name: str, status: int, retry_after: int, why: str, message: str):
    audit.stage_anonymous(state.throttle(), "sign_in", "refused", username=audit_name(name), reason=why)
    flash(message, "error")
    return form_page(form, wanted, status, retry_after)


def attempt(form: LoginForm, wanted: str | None, target: str):
    """Count, check, and either start a session or say no."""
    name = form.username.data.strip()
    ticket = take_attempt(name)
    if not ticket.granted:
        minutes = max(1, round(ticket.retry_after / 60))
        message = f"Too many failed sign-ins. Try again in about {minutes} minute{'s' if minutes > 1 else ''}."
        return refused(form, wanted, name, 429, ticket.retry_after, "too many failed sign-ins", message)
    try:
        account, down = check_methods(name, form.password.data)
    except SignInBusy:
        state.throttle().refund(ticket)
        return refused(form, wanted, name, 503, 1, "sign-in busy", "Sign-in is busy. Try again in a moment.")
    if account is None and down is not None:
        return directory_down(form, wanted, name, ticket, down)
    if account is None:
        audit.stage("sign_in", "failed", username=audit_name(name), reason="wrong user name or password")
        flash("Wrong user name or password.", "error")
        return form_page(form, wanted, 401)
    # A good password used no guess: hand back only this attempt's own slot.
    state.throttle().refund(ticket)
    return password_sign_in(account, name, target)


def password_sign_in(account: users.User | DirectoryUser, name: str, target: str):
    """Start the session of whoever a password method accepted, and mark this browser as theirs.

    The device cookie is for the name as typed, which is what the attempts are counted under,
    whichever method accepted the password: a directory user's own browser keeps working
    while strangers guessing their password are throttled, as a local user's does.
    """
    if isinstance(account, DirectoryUser):
        found = identity.ExternalIdentity(
            source="ldap", subject=account.dn, username=account.username, groups=account.groups
        )
        try:
            signin.begin_external(found)
        except identity.IdentityRefused as exc:
            return signin.external_refused(found, exc)
    else:
        account.last_sign_in_at = datetime.now(UTC)
        sessions.start(account, state.settings().session_lifetime)
        audit.stage("sign_in", "ok", username=account.username, detail="local")
    response = redirect(target)
    remember_device(response, name)
    return response


def directory_down(form: LoginForm, wanted: str | None, name: str, ticket: Ticket, down: DirectoryUnreachable):
    """The directory could not say yes or no: a 503 that says so, not a wrong password."""
    local = "local" in state.settings().auth_methods
    account = users.find(name) if local and users.NAME.match(name) else None
    if account is None or account.is_external:
        # No password was checked here, so none was guessed: an outage must not lock people out.
        state.throttle().refund(ticket)
    audit.stage_anonymous(
        state.throttle(),
        "sign_in",
        "failed",
        username=audit_name(name),
        detail="ldap",
        reason=f"directory unreachable: {down}",
    )
    message = "The directory is unreachable; local accounts can still sign in."
    flash(message if local else "The directory is unreachable. Try again in a few minutes.", "error")
    return form_page(form, wanted, 503, 30)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(FLOOD_LIMIT, methods=["POST"], scope="login-flood", key_func=flood_key)
def login():
    form = LoginForm()
    wanted = signin.safe_next(request.values.get("next"))
    target = wanted or url_for("views.index")
    methods = state.settings().auth_methods
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(target)
        if methods == ("oidc",) and not request.args.get("stay"):
            # Single sign-on only: a bookmark opened while signed out goes straight to the provider.
            return redirect(url_for("oidc.login", next=wanted))
        return form_page(form, wanted, 200)
    if not set(methods) & set(PASSWORD_METHODS):
        abort(404)
    if form.validate_on_submit():
        return attempt(form, wanted, target)
    audit.stage_anonymous(
        state.throttle(),
        "sign_in",
        "failed",
        username=audit_name(request.form.get("username", "")[:64]),
        reason="incomplete form",
    )
    flash("Wrong user name or password.", "error")
    return form_page(form, wanted, 401)


@bp.post("/logout")
def logout():
    # Signed in at the provider too: sign out there as well (RP-initiated logout), when it offers it.
    provider_logout = signin.provider_logout_url()
    sessions.end("signed out")
    flash("You are signed out.", "info")
    return redirect(provider_logout or url_for("auth.login"))
