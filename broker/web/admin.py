"""Admin pages: users, groups and access rules, the audit trail with CSV export, live consoles, instances and
console recordings (list, playback)."""

from __future__ import annotations

import functools
from datetime import UTC
from datetime import datetime

from flask import Blueprint
from flask import Response
from flask import abort
from flask import flash
from flask import jsonify
from flask import redirect
from flask import render_template
from flask import request
from flask import stream_with_context
from flask import url_for
from flask_login import current_user
from flask_login import login_required

from broker import state
from broker.extensions import db
from broker.services import audit
from broker.services import instances
from broker.services import management
from broker.services import policy
from broker.services import recordings
from broker.services import relay
from broker.services import users
from broker.web import forms
from broker.web import security

bp = Blueprint("admin", __name__, url_prefix="/admin")


def admin_required(view):
    """Signed in and an admin; anyone else gets 403 and an audit record."""

    @functools.wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if not current_user.is_admin:
            audit.stage(
                "admin",
                "refused",
                username=current_user.username,
                detail="page",
                reason=f"not an admin: {request.method} {request.path}",
            )
            abort(403, description="Only admins may do this.")
        return view(*args, **kwargs)

    return wrapped


def back():
    return redirect(url_for("admin.index"))


def change(action, *args, **kwargs):
    """Apply one admin change from a form and come back to the admin page."""
    try:
        flash(action(current_user.username, *args, **kwargs), "info")
    except management.ChangeError as exc:
        flash(str(exc), "error")
    return back()


@bp.get("/")
@admin_required
def index():
    inventory = state.consoles().inventory
    clouds = inventory.names()
    return render_template(
        "admin/index.html",
        users=users.all_users(),
        groups=policy.all_groups(),
        rules=policy.all_rules(),
        orphans={rule.id for rule in policy.rules_on_unknown_clouds(clouds)},
        health=management.cloud_health(inventory),
        clouds=clouds,
        min_password=users.MIN_PASSWORD,
        roles=users.ROLES,
    )


# Forms name users and groups by their numbers, so that no name (whatever a URL path
# would make of it) can make a row impossible to reach.
@bp.app_template_filter("utc")
def utc(epoch: float | None) -> str:
    """Epoch seconds as a UTC time for the admin page; never seen: a dash."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if epoch else "\u2014"


@bp.app_template_filter("when")
def when(moment: datetime | None) -> str:
    """A stored UTC time for the admin page; never: a dash."""
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "\u2014"


@bp.app_template_filter("duration")
def duration(seconds: float) -> str:
    """Seconds as h:mm:ss (or m:ss under an hour)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def user_named(user_id: int) -> str:
    user = db.session.get(users.User, user_id)
    if user is None:
        abort(404, description="No such user.")
    return user.username


def group_named(group_id: int) -> str:
    group = db.session.get(policy.Group, group_id)
    if group is None:
        abort(404, description="No such group.")
    return group.name


@bp.post("/users")
@admin_required
def add_user():
    form = forms.AddUserForm()
    if not forms.valid(form):
        return back()
    return change(management.add_user, form.username.data or "", form.password.data or "", form.role.data)


@bp.post("/users/<int:user_id>/role")
@admin_required
def set_role(user_id: int):
    name, form = user_named(user_id), forms.RoleForm()
    if not forms.valid(form):
        return back()
    return change(management.set_role, name, form.role.data)


@bp.post("/users/<int:user_id>/password")
@admin_required
def set_password(user_id: int):
    name, form = user_named(user_id), forms.PasswordForm()
    if not forms.valid(form):
        return back()
    return change(management.set_password, name, form.password.data or "")


def confirm(question: str, consequence: str):
    """The page that asks before anything is removed; its button posts to this same URL."""
    return render_template("admin/confirm.html", question=question, consequence=consequence)


@bp.route("/users/<int:user_id>/remove", methods=["GET", "POST"])
@admin_required
def remove_user(user_id: int):
    name = user_named(user_id)
    if request.method == "GET":
        return confirm(f"Remove user {name}?", "Their sessions end, and their rules and memberships go with them.")
    return change(management.remove_user, name)


@bp.post("/groups")
@admin_required
def add_group():
    form = forms.GroupForm()
    if not forms.valid(form):
        return back()
    return change(management.add_group, form.name.data or "")


@bp.route("/groups/<int:group_id>/remove", methods=["GET", "POST"])
@admin_required
def remove_group(group_id: int):
    name = group_named(group_id)
    if request.method == "GET":
        return confirm(f"Remove group {name}?", "Its rules go with it; its members lose what those rules granted.")
    return change(management.remove_group, name)


@bp.post("/groups/<int:group_id>/members")
@admin_required
def add_member(group_id: int):
    group, form = group_named(group_id), forms.MemberForm()
    if not forms.valid(form):
        return back()
    return change(management.add_member, group, form.username.data or "")


@bp.route("/groups/<int:group_id>/members/<int:user_id>/remove", methods=["GET", "POST"])
@admin_required
def remove_member(group_id: int, user_id: int):
    group, name = group_named(group_id), user_named(user_id)
    if request.method == "GET":
        return confirm(f"Take {name} out of group {group}?", "They lose what the group's rules granted them.")
    return change(management.remove_member, group, name)


@bp.post("/rules")
@admin_required
def add_rule():
    form = forms.RuleForm()
    if not forms.valid(form):
        return back()
    return change(management.add_rule, state.consoles().inventory.names(), **form.grant())


@bp.route("/rules/<int:rule_id>/remove", methods=["GET", "POST"])
@admin_required
def remove_rule(rule_id: int):
    rule = db.session.get(policy.AccessRule, rule_id)
    if rule is None:
        abort(404, description="No such rule.")
    if request.method == "GET":
        return confirm(f"Remove rule {rule_id}?", f"It says: {rule.describe()}.")
    return change(management.remove_rule, rule_id)


# The filters /admin/audit understands; nothing else of the query string is read or echoed.
FILTER_KEYS = ("user", "server", "action", "outcome", "since", "until")
PER_PAGE = 50


@bp.get("/sessions")
@admin_required
def live_sessions():
    """Consoles connected through the relay right now, on every instance."""
    return render_template("admin/sessions.html", consoles=relay.listing(), stale_after=relay.STALE_AFTER)


@bp.get("/instances")
@admin_required
def instance_list():
    """The web and relay processes running on this database, and where they disagree."""
    return render_template("admin/instances.html", fleet=instances.fleet(), running_within=instances.RUNNING_WITHIN)


@bp.post("/sessions/<int:row_id>/end")
@admin_required
def end_session(row_id: int):
    try:
        flash(management.end_console(current_user.username, row_id), "info")
    except management.ChangeError as exc:
        flash(str(exc), "error")
    return redirect(url_for("admin.live_sessions"))


def parse_time(name: str) -> datetime | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw[:64])
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    except (ValueError, OverflowError):
        # OverflowError: a date at the edge of the calendar that a time zone pushes past it.
        abort(400, description=f"{name} must be a date or time such as 2026-11-26 or 2026-11-26T14:00")


def audit_filter() -> audit.Filter:
    args = request.args
    return audit.Filter(
        user=args.get("user", "").strip()[:64],
        server=args.get("server", "").strip()[:64],
        action=args.get("action", "") if args.get("action") in audit.ACTIONS else "",
        outcome=args.get("outcome", "") if args.get("outcome") in audit.OUTCOMES else "",
        since=parse_time("since"),
        until=parse_time("until"),
        # One console's story (its opening, invites, joins, hand-overs, its end): an ID, or nothing.
        console=request.args.get("console", type=int),
    )


def page_number(pages: int) -> int:
    """``?page=``, clamped to the pages there are (a 20-digit number is the last page)."""
    raw = request.args.get("page", "1")
    return min(max(1, int(raw) if raw.isdigit() else 1), pages)


@bp.get("/audit")
@admin_required
def audit_trail():
    where = audit_filter()
    total = audit.count(where)
    pages = max(1, -(-total // PER_PAGE))
    page = page_number(pages)
    rows = audit.page(where, page, PER_PAGE)
    args = {key: request.args[key] for key in FILTER_KEYS if request.args.get(key)}
    return render_template(
        "admin/audit.html",
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        args=args,
        actions=audit.ACTIONS,
        outcomes=audit.OUTCOMES,
    )


@bp.get("/audit.csv")
@admin_required
def audit_csv():
    where = audit_filter()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Response(
        stream_with_context(audit.export_csv(where)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.csv"'},
    )


# The filters /admin/recordings understands; nothing else of the query string is read or echoed.
RECORDING_FILTER_KEYS = ("user", "server", "cloud", "since", "until")


def recording_filter() -> recordings.Filter:
    args = request.args
    since, until = parse_time("since"), parse_time("until")
    return recordings.Filter(
        user=args.get("user", "").strip()[:64],
        server=args.get("server", "").strip()[:64],
        cloud=args.get("cloud", "").strip()[:64],
        since=since.replace(tzinfo=UTC) if since else None,
        until=until.replace(tzinfo=UTC) if until else None,
    )


def recording_named(recording_id: str) -> recordings.Recording:
    """The recording an id names; 404 for anything else (traversal included: no path is built from a non-id)."""
    try:
        return recordings.find(state.settings().recording_dir, recording_id)
    except recordings.NoSuchRecording:
        abort(404, description="No such recording.")


@bp.get("/recordings")
@admin_required
def recording_list():
    """Recorded relay consoles, newest first, narrowed by user, server, cloud and start time."""
    settings = state.settings()
    args = {key: request.args[key] for key in RECORDING_FILTER_KEYS if request.args.get(key)}
    return render_template(
        "admin/recordings.html",
        rows=recordings.listing(settings.recording_dir, recording_filter()),
        args=args,
        limit=recordings.LIST_LIMIT,
        recording=settings.recording,
        retention=settings.recording_retention_days,
    )


@bp.get("/recordings/<recording_id>")
@admin_required
def recording_play(recording_id: str):
    """The player; opening it is a playback, and audited as one."""
    recording = recording_named(recording_id)
    recordings.record_playback(current_user.username, recording)
    if recording.serial:
        security.allow_inline_styles()  # xterm.js, as on the serial console page; only for these
    return render_template("admin/recording.html", rec=recording)


@bp.get("/recordings/<recording_id>/playback.json")
@admin_required
def recording_index(recording_id: str):
    """What the player needs first: the screen's start, seek points and the index of events."""
    response = jsonify(recordings.playback(recording_named(recording_id)))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/recordings/<recording_id>/segments/<int:number>")
@admin_required
def recording_segment(recording_id: str, number: int):
    """One segment's records (milliseconds, length, the server's bytes), for the player."""
    recording = recording_named(recording_id)
    try:
        data = recordings.segment(recording, number)
    except recordings.NoSuchRecording:
        abort(404, description="No such segment.")
    return Response(data, mimetype="application/octet-stream", headers={"Cache-Control": "no-store"})
