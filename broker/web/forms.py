"""The admin page's forms: each field bounded and typed before a service sees it (CSRF included)."""

from __future__ import annotations

from flask import flash
from flask_wtf import FlaskForm
from wtforms import BooleanField
from wtforms import PasswordField
from wtforms import SelectField
from wtforms import StringField
from wtforms.validators import Length
from wtforms.validators import Regexp

from broker.models import ROLES

# The services say what a name, password or rule may be; the forms only bound and type the input.
NAME = Length(max=64)
SUBJECT = Regexp(r"^(user|group):.{1,64}$", message="choose a user or a group")


class AddUserForm(FlaskForm):
    username = StringField("User name", validators=[NAME])
    password = PasswordField("Password", validators=[Length(max=1024)])
    role = SelectField("Role", choices=ROLES, default="agent")


class RoleForm(FlaskForm):
    role = SelectField("Role", choices=ROLES)


class PasswordForm(FlaskForm):
    password = PasswordField("New password", validators=[Length(max=1024)])


class GroupForm(FlaskForm):
    name = StringField("Group name", validators=[NAME])


class MemberForm(FlaskForm):
    username = StringField("User", validators=[NAME])


class RuleForm(FlaskForm):
    subject = StringField("Who", validators=[SUBJECT])
    cloud = StringField("Cloud", validators=[Length(max=64)])
    name_pattern = StringField("Server name pattern", validators=[Length(max=255)])
    metadata = StringField("Metadata", validators=[Length(max=255)])
    power = BooleanField("May also start and reboot")

    def grant(self) -> dict:
        """The rule's fields as the policy service takes them."""
        kind, _, name = self.subject.data.partition(":")
        return {
            "user": name if kind == "user" else None,
            "group": name if kind == "group" else None,
            "cloud": (self.cloud.data or "").strip(),
            "name_pattern": (self.name_pattern.data or "").strip() or "*",
            "metadata": (self.metadata.data or "").strip(),
            "power": bool(self.power.data),
        }


def valid(form: FlaskForm) -> bool:
    """True when the form validates; else its errors are flashed for the admin page."""
    if form.validate_on_submit():
        return True
    for name, errors in form.errors.items():
        label = form[name].label.text if name in form else name
        flash(f"{label}: {'; '.join(errors)}", "error")
    return False
