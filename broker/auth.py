"""Sign-in and sign-out pages, and the check that keeps ``next`` on this site."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint
from flask import current_app
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_login import current_user
from flask_login import login_user
from flask_login import logout_user
from flask_wtf import FlaskForm
from wtforms import HiddenField
from wtforms import PasswordField
from wtforms import StringField
from wtforms.validators import DataRequired
from wtforms.validators import Length

from broker import audit
from broker import sessions
from broker import users
from broker.extensions import limiter

bp = Blueprint("auth", __name__)


def login_limit() -> str:
    return current_app.extensions["settings"].login_limit


def failed_sign_in(response) -> bool:
    """Only failures count towards the limit, so a busy helpdesk is never locked out."""
    return response.status_code == 401


def account_key() -> str:
    return "account:" + request.form.get("username", "").strip().lower()[:64]


class LoginForm(FlaskForm):
    username = StringField("User name", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    next = HiddenField()


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


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(login_limit, methods=["POST"], deduct_when=failed_sign_in, scope="login-address")
@limiter.limit(login_limit, methods=["POST"], deduct_when=failed_sign_in, key_func=account_key, scope="login-account")
def login():
    form = LoginForm()
    wanted = safe_next(request.values.get("next"))
    target = wanted or url_for("views.index")
    if current_user.is_authenticated and request.method == "GET":
        return redirect(target)
    if form.validate_on_submit():
        user = users.authenticate(form.username.data, form.password.data)
        if user is not None:
            login_user(user)
            sessions.started()
            audit.record("sign_in", "ok", username=user.username)
            return redirect(target)
        audit.record("sign_in", "failed", username=form.username.data, reason="wrong user name or password")
        flash("Wrong user name or password.", "error")
    elif request.method == "POST":
        audit.record(
            "sign_in", "failed", username=request.form.get("username", "")[:64], reason="incomplete or oversized form"
        )
        flash("Wrong user name or password.", "error")
    form.next.data = wanted or ""
    status = 401 if request.method == "POST" else 200
    return render_template("auth/login.html", form=form), status


@bp.post("/logout")
def logout():
    if current_user.is_authenticated:
        audit.record("sign_out", "ok", username=current_user.username)
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
