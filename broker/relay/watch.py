"""Watching a graphical console: more browsers on one relayed console, read-only unless given the keyboard.

A watcher's browser gets an RFB handshake of its own and the console's ServerInit at the screen's size
now, then the server's stream from the next message boundary on, and the relay asks the server for a
full screen for it. What a watcher sends goes nowhere unless it has been given control, and then only
its keys, pointer and clipboard: the viewer of the person who opened the console keeps setting the
stream's format, encodings and pace. Who drives is broker/relay/party.py's.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import UTC
from datetime import datetime
from typing import TYPE_CHECKING
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from broker.aio import first_to_finish
from broker.relay import rfb
from broker.relay.budget import Budget
from broker.relay.console import CONSOLE_ENDED
from broker.relay.console import DATABASE_UNAVAILABLE
from broker.relay.console import INTERNAL_ERROR
from broker.relay.console import PROTOCOL_ERROR
from broker.relay.console import Carrier
from broker.relay.console import Console
from broker.relay.console import Ended
from broker.relay.console import admitted
from broker.relay.console import browser_closed
from broker.relay.console import ended
from broker.relay.console import greet
from broker.relay.console import live_report
from broker.relay.rfb import ClientFramer
from broker.services.relay import DatabaseUnavailable
from broker.services.relay import LiveReport

if TYPE_CHECKING:
    from broker.relay.server import Admission

log = logging.getLogger(__name__)

# What one watcher may have waiting for it before it is let go (1013): a page that stopped reading
# (a frozen tab, a dead link) must not grow the relay's memory with the screen's every change.
MAX_PENDING = 8 << 20
TRY_AGAIN_LATER = 1013


class Watcher:
    """One browser watching a console through the relay; ``run`` returns when it is over and its record is written."""

    def __init__(self, carrier: Carrier, browser: ServerConnection, admission: Admission, console: Console | None):
        self.carrier = carrier
        self.browser = browser
        self.admission = admission
        self.ticket = admission.ticket
        self.console = console
        self.name = admission.ticket.username
        self.role = admission.ticket.role
        self.pid = console.party.new_pid() if console is not None else ""
        self.row_id: int | None = None
        self.to_cloud = 0
        self.to_browser = 0
        self.started_at = datetime.now(UTC)
        self.used_at: datetime | None = None
        # What waits to go to the browser, in order (ServerInit, the stream, people messages), and its size.
        self.pending: deque[bytes | str] = deque()
        self.pending_size = 0
        self.wake = asyncio.Event()
        # False until the stream reaches a message boundary after joining: only then does it start here.
        self.in_step = False
        self.client = ClientFramer()
        self.ending: Ended | None = None
        # The close handshake the console's end started (kept: a task nobody holds may be collected).
        self.closing: asyncio.Future | None = None

    def report(self, instance: str) -> LiveReport:
        """What the relay's poll tells the broker of this watcher (judged by its own rights)."""
        return live_report(self, self.console.confirmed if self.console else None, instance)

    def describe(self) -> str:
        return f"{self.ticket.server_id} ({self.ticket.cloud}) watched by {self.ticket.username}"

    async def run(self) -> None:
        """Greet the browser, join the console, and carry its stream until either ends."""
        try:
            await self._watch()
        except Ended as end:
            self.ending = self.ending or end
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("watcher %s failed", self.describe(), **self._log())
            self.ending = self.ending or ended(INTERNAL_ERROR, "the relay failed")
        finally:
            await self._finish()

    async def _watch(self) -> None:
        console = self.console
        if console is None or not console.started.is_set() or console.ending is not None:
            raise ended(CONSOLE_ENDED, "the console to watch is not open on this relay")
        rest = await greet(self.browser, self.carrier.handshake_timeout)
        try:
            self.row_id = await self.carrier.opened(self.ticket, console.server_name)
        except DatabaseUnavailable:
            raise ended(DATABASE_UNAVAILABLE) from None
        if console.ending is not None:
            raise ended(CONSOLE_ENDED)
        log.info("watcher %s joined console %s", self.describe(), console.row_id, **self._log())
        await console.add_watcher(self)
        await first_to_finish(self._from_browser(rest), self._to_browser())

    # -- what the browser sends: nothing reaches the server unless it drives --------------------------

    async def _from_browser(self, rest: bytes) -> None:
        budget = Budget()
        await self._take(rest, budget)
        async for message in self.browser:
            if isinstance(message, str):
                await self._told(message)
            else:
                await self._take(message, budget)
        self.ending = self.ending or self._closed()

    async def _told(self, text: str) -> None:
        try:
            note = await self.console.party.told(self, text)
        except ValueError as exc:
            raise Ended(PROTOCOL_ERROR, "Not a control message", f"the watcher sent what it may not: {exc}") from None
        if note:
            self.console.record_event(*note)

    async def _take(self, data: bytes, budget: Budget) -> None:
        """Whole messages from the watcher's viewer: its input goes to the server while it drives; the rest never."""
        async for messages in admitted(self.client, data, budget, "the watcher"):
            if not self.console.party.drives(self):
                continue
            messages = [message for message in messages if rfb.is_input(message)]
            if messages:
                self.used_at = datetime.now(UTC)
                self.to_cloud += await self.console.deliver(messages)

    def _closed(self) -> Ended:
        return browser_closed(self.carrier, self.browser)

    # -- what the browser is sent: the console's stream, from a message boundary --------------------------

    def send(self, data: bytes | str) -> None:
        """Queue ``data`` for the browser (never waits: the console's stream does not wait for a watcher)."""
        if not data or self.ending is not None:
            return
        self.pending.append(data)
        self.pending_size += len(data)
        self.wake.set()
        if self.pending_size > MAX_PENDING:
            self._let_go()

    async def tell(self, text: str) -> None:
        self.send(text)

    def _let_go(self) -> None:
        self.ending = Ended(TRY_AGAIN_LATER, "Too slow to keep up", "the watcher's browser did not keep up")
        self.pending.clear()
        self.pending_size = 0
        self.wake.set()

    async def _to_browser(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.ending is not None:
                return
            while self.pending:
                data = self.pending.popleft()
                self.pending_size -= len(data)
                await self.browser.send(data)
                if isinstance(data, bytes):
                    self.to_browser += len(data)

    async def end(self, code: int) -> None:
        """End this watcher from outside (its rights, its session, an admin): only its own view ends."""
        self.ending = self.ending or ended(code)
        self.wake.set()
        await self.browser.close(self.ending.code, self.ending.reason)

    def end_with(self, code: int, reason: str) -> None:
        """The console it watches is over: this watcher's own task closes its browser and writes its record, so
        that a watcher whose browser stopped reading never holds up the console's end."""
        self.ending = self.ending or Ended(code, "The console ended", f"the console ended: {reason}")
        self.wake.set()
        self.closing = asyncio.ensure_future(self.browser.close(self.ending.code, self.ending.reason))

    async def _finish(self) -> None:
        ending = self.ending or ended(INTERNAL_ERROR, "the relay failed")
        if self.console is not None:
            await self.console.remove_watcher(self)
        await self.browser.close(ending.code, ending.reason)
        log.info("watcher %s left: %s", self.describe(), ending.audit, **self._log())
        if self.row_id is None:
            return
        row_id, self.row_id = self.row_id, None
        try:
            await self.carrier.closed(row_id, ending.audit, self.to_cloud, self.to_browser)
        except Exception:
            log.exception("watcher %s: its record could not be written", self.describe(), **self._log())

    def _log(self) -> dict[str, Any]:
        return {"extra": {"request_id": self.admission.caller.request_id}}
