"""Who is on one relayed console and who drives it: the person who opened it, and those watching.

One driver at a time: the opener, until they give control to a watcher (or a watcher they gave it
to passes it on); the opener can always take it back, and it returns to them when its holder leaves.
Every page hears who is there and who drives whenever that changes, as a text message (RFB never
uses text frames), and can ask for control, give it, or give it back with one of its own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any
from typing import Protocol

# A control message is a small JSON object; anything bigger is not from the page.
MAX_CONTROL = 256
# A watcher asks for control at most this often (seconds): every page hears each ask.
ASK_EVERY = 5.0


class Member(Protocol):
    """Someone on a console: the person who opened it (the Console) or a watcher."""

    pid: str
    name: str
    role: str

    async def tell(self, text: str) -> None:
        """A text message to this member's page."""


class Party:
    """Who is on one console and who drives it: one driver at a time, the opener when nobody else is given it."""

    def __init__(self, host: Member, noted: Callable[[str, str], Awaitable[None]]) -> None:
        self.host = host
        self.members: list[Member] = [host]
        self.driver: Member = host
        # (detail, reason) for the audit, written by the console's relay.
        self.noted = noted
        self._next = 0
        self._asked: dict[str, float] = {}

    def new_pid(self) -> str:
        """A member's ID on this console (pages name each other by it)."""
        self._next += 1
        return f"w{self._next}"

    def drives(self, member: Member) -> bool:
        """True when ``member``'s keys and pointer reach the server."""
        return member is self.driver

    @property
    def watchers(self) -> list[Any]:
        """Everyone but the opener."""
        return [member for member in self.members if member is not self.host]

    async def join(self, watcher: Member) -> None:
        self.members.append(watcher)
        await self.announce()

    async def leave(self, watcher: Member) -> None:
        if watcher not in self.members:
            return
        self.members.remove(watcher)
        self._asked.pop(watcher.pid, None)
        if self.driver is watcher:
            self.driver = self.host
            await self.noted("hand-over", f"control went back to {self.host.name}: {watcher.name} left")
        await self.announce()

    async def announce(self) -> None:
        """Every page hears who is on the console now and who drives."""
        for member in list(self.members):
            await member.tell(self.people(member))

    def people(self, member: Member) -> str:
        """The people message for ``member``'s page."""
        everyone = [{"id": m.pid, "name": m.name, "role": m.role, "drives": m is self.driver} for m in self.members]
        return json.dumps({"people": everyone, "you": member.pid, "console": getattr(self.host, "row_id", None)})

    async def told(self, member: Member, text: str) -> tuple[str, str] | None:
        """A page's control message (give, take, ask, release); what Type text announces, for a recording's index."""
        if len(text) > MAX_CONTROL:
            raise ValueError("a control message is a small JSON object")
        try:
            said = json.loads(text)
        except ValueError:
            raise ValueError("a text message must be JSON") from None
        if not isinstance(said, dict):
            raise ValueError("a text message must be a JSON object")
        if "type-text" in said and isinstance(said["type-text"], int) and self.drives(member):
            return ("type-text", str(said["type-text"]))
        action = said.get("control")
        if action == "give":
            await self._give(member, said.get("to"))
        elif action == "take" and member is self.host:
            await self._hand(self.host, f"{self.host.name} took control back from {self.driver.name}")
        elif action == "release" and self.drives(member) and member is not self.host:
            await self._hand(self.host, f"{member.name} gave control back to {self.host.name}")
        elif action == "ask" and not self.drives(member):
            await self._ask(member)
        return None

    async def _give(self, member: Member, to: Any) -> None:
        """The driver (or the opener) hands control to another member."""
        if not (self.drives(member) or member is self.host):
            return
        target = next((m for m in self.members if m.pid == to), None)
        if target is None or target is self.driver:
            return
        await self._hand(target, f"{member.name} gave control to {target.name}")

    async def _hand(self, target: Member, reason: str) -> None:
        if target is self.driver:
            return
        self.driver = target
        self._asked.pop(target.pid, None)
        await self.noted("hand-over", reason)
        await self.announce()

    async def _ask(self, member: Member) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._asked.get(member.pid, -ASK_EVERY) < ASK_EVERY:
            return
        self._asked[member.pid] = loop.time()
        await self.noted("ask", f"{member.name} asked {self.driver.name} for control")
        asked = json.dumps({"asks": {"id": member.pid, "name": member.name}})
        for other in list(self.members):
            if other is not member:
                await other.tell(asked)

    def end_all(self, code: int, reason: str) -> None:
        """The console is over: so is every watcher's view of it (each closes on its own, never holding this up)."""
        for watcher in self.watchers:
            watcher.end_with(code, reason)
