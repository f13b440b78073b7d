"""Tables only: users, groups and access rules, sign-in sessions, the audit trail, single-use tokens (relay
tickets and power confirmations), live consoles, pins, and the running instances."""

from broker.models.access import AccessRule
from broker.models.access import Group
from broker.models.access import memberships
from broker.models.agent import Pin
from broker.models.audit import AuditRecord
from broker.models.instance import Instance
from broker.models.relay import LiveConsole
from broker.models.session import UserSession
from broker.models.token import SingleUseToken
from broker.models.user import NO_PASSWORD
from broker.models.user import ROLES
from broker.models.user import SOURCES
from broker.models.user import User

__all__ = [
    "NO_PASSWORD",
    "ROLES",
    "SOURCES",
    "AccessRule",
    "AuditRecord",
    "Group",
    "Instance",
    "LiveConsole",
    "Pin",
    "SingleUseToken",
    "User",
    "UserSession",
    "memberships",
]
