"""Power actions: start a stopped server, soft or hard reboot a running one.

Only where a rule with the ``power`` permission grants the server (admins everywhere), and
only in two steps: opening the confirmation dialog issues a single-use confirmation bound
to the sign-in session, the user, the server, the cloud and the action; sending the action
uses it up. A forged request (no confirmation) and a replayed one (a used confirmation)
are refused, and every attempt, whatever its outcome, is an audit record (action ``power``,
detail the action's name).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from broker.cloud import errors
from broker.cloud.types import ServerInfo
from broker.models import User
from broker.services import audit
from broker.services import tokens
from broker.services.consoles import ConsoleService
from broker.services.policy import access_for

# Time to read the question and decide; short, so a confirmation left in a page is worthless.
CONFIRMATION_TTL = 120
# A confirmation is a single-use token of this purpose (broker/services/tokens.py), its action the scope.
PURPOSE = "power"
# Each action, the statuses it fits (Nova refuses the others with 409), and the question asked.
ACTIONS = {
    "start": (("SHUTOFF",), "Start server {name}?"),
    "reboot-soft": (("ACTIVE",), "Reboot server {name}? The guest is asked to restart cleanly."),
    "reboot-hard": (
        ("ACTIVE", "SHUTOFF", "ERROR"),
        "Hard reboot server {name}? It is reset at once, like pulling the plug: unsaved work in the guest is lost.",
    ),
}


class PowerRefused(Exception):
    """A power action the broker will not send; ``code`` is the API's error slug."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Confirmation:
    """What the confirmation dialog needs: the one-time value to send back, and the question."""

    token: str
    action: str
    server: ServerInfo
    question: str


def _bindings(user: User, session_id: str, server: ServerInfo, action: str) -> dict[str, str | int]:
    """All a confirmation is bound to: the user and sign-in session, the server and its cloud, and the action."""
    return {
        "user_id": user.id,
        "session_id": session_id,
        "server_id": server.id,
        "cloud": server.cloud,
        "scope": action,
    }


def actions_for(status: str) -> list[str]:
    """The power actions that fit a server in ``status`` (the console toolbar offers these)."""
    return [name for name, (statuses, _) in ACTIONS.items() if status in statuses]


class PowerService:
    """Confirms, sends and audits power actions; authorization comes from the console service."""

    def __init__(self, consoles: ConsoleService):
        self.consoles = consoles

    def may_power(self, user: User, server: ServerInfo) -> bool:
        return access_for(user).may_power(server)

    def confirm(self, user: User, session_id: str, server_id: str, cloud: str | None, action: str) -> Confirmation:
        """A single-use confirmation for ``action`` on a server the user may power, if its status fits."""
        server = self._powerable(user, server_id, cloud, action)
        statuses, question = ACTIONS[action]
        if server.status not in statuses:
            raise PowerRefused(
                "wrong_state",
                f"Server {server.name} is {server.status}: {action.replace('-', ' ')} needs it "
                f"{' or '.join(statuses)}.",
            )
        bindings = _bindings(user, session_id, server, action)
        token = tokens.issue(PURPOSE, CONFIRMATION_TTL, **bindings, server_name=server.name)
        return Confirmation(token, action, server, question.format(name=server.name))

    def claim(
        self, user: User, session_id: str, server_id: str, cloud: str | None, action: str, token: str
    ) -> ServerInfo:
        """Use up the confirmation of ``action`` on a server the user may power (staged); the server.

        The caller commits before it sends the action, so that a second request with the same
        confirmation, however soon, finds it spent, and a failed action is never sent again with it.
        """
        server = self._powerable(user, server_id, cloud, action)
        if not tokens.claim(PURPOSE, token, **_bindings(user, session_id, server, action)).granted:
            reason = "no valid confirmation (missing, used, expired, or issued for another request)"
            audit.stage("power", "refused", reason=reason, **self._note(user, server, action))
            raise PowerRefused(
                "confirmation_invalid",
                "This action was not confirmed, or its confirmation was already used or has expired. "
                "Ask again and confirm.",
            )
        return server

    def send(self, user: User, server: ServerInfo, action: str) -> ServerInfo:
        """Send a claimed action to the cloud, audited; the server as the cloud has it afterwards."""
        note = self._note(user, server, action)
        try:
            self.consoles.inventory.cloud(server.cloud).client.server_action(server.id, action)
        except errors.ActionForbidden as exc:
            audit.stage("power", "refused", reason=f"the cloud's policy: {exc.message}", **note)
            raise
        except errors.CloudError as exc:
            audit.stage("power", "failed", reason=exc.message, **note)
            raise
        audit.stage("power", "ok", **note)
        return self._current(server)

    def _powerable(self, user: User, server_id: str, cloud: str | None, action: str) -> ServerInfo:
        """The server, if the user may open it and a rule lets them power it; refusals audited."""
        server = self.consoles.permitted(user, server_id, cloud, detail=action, action="power")
        if not self.may_power(user, server):
            reason = "no access rule grants power actions on this server"
            audit.stage("power", "refused", reason=reason, **self._note(user, server, action))
            raise PowerRefused(
                "power_not_allowed",
                f"You may open the console of {server.name} but not start or reboot it: ask an admin "
                "for a rule with the power permission.",
            )
        return server

    @staticmethod
    def _note(user: User, server: ServerInfo, action: str) -> dict:
        return {
            "username": user.username,
            "cloud": server.cloud,
            "server_id": server.id,
            "server_name": server.name,
            "detail": action,
        }

    def _current(self, server: ServerInfo) -> ServerInfo:
        """The server re-read after the action (the list's copy is out of date now); as it was if that fails."""
        with contextlib.suppress(errors.CloudError):
            return self.consoles.inventory.current(server)
        return server
