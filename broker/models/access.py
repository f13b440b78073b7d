"""Groups, their members, and access rules."""

from __future__ import annotations

from sqlalchemy import Boolean
from sqlalchemy import Column
from sqlalchemy import ForeignKey
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import false
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship

from broker.extensions import db
from broker.models.user import User

memberships = Table(
    "group_members",
    db.Model.metadata,
    Column("group_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
)


class Group(db.Model):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    members: Mapped[list[User]] = relationship(secondary=memberships, order_by=User.username)


class AccessRule(db.Model):
    __tablename__ = "access_rules"
    # Rule numbers are never reused after a delete: the audit trail names rules by number.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    cloud: Mapped[str] = mapped_column(String(64))
    name_pattern: Mapped[str] = mapped_column(String(255), default="*")
    meta_key: Mapped[str] = mapped_column(String(255), default="")
    meta_value: Mapped[str] = mapped_column(String(255), default="")
    # Also start and reboot the servers it grants (off unless an admin says so).
    power: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    user: Mapped[User | None] = relationship()
    group: Mapped[Group | None] = relationship()

    @property
    def subject(self) -> str:
        return f"user {self.user.username}" if self.user else f"group {self.group.name}"

    def describe(self) -> str:
        verb = "may open and power" if self.power else "may open"
        text = f"{self.subject} {verb} {self.name_pattern} on cloud {self.cloud}"
        if self.meta_key:
            text += f" with {self.meta_key}={self.meta_value}"
        return text
