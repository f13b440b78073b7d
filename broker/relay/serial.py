"""Serial consoles through the relay: one connection to the server's serial port, shared by everyone on it.

nova-serialproxy lets one client at a time reach a serial port, so the relay opens one upstream
per server and fans it out: every browser on that server's serial console sees what the server
prints, and any of them may type. What the server printed while someone was connected is kept
(the last HISTORY bytes, in memory only, never audited) and shown first to whoever joins. As
for a graphical console, the relay replaces its side before the token expires and resumes a cut
one, and each browser keeps a record of its own (connected, disconnected, why).

With BROKER_RECORDING=all the console is recorded once, however many browsers are on it: what the
server printed (the history first, then everything after it) with its timing, and in the index who
joined and left, when someone typed (never what) and when the cloud's side was resumed. It starts with
the first browser admitted and closes when the last one leaves or the console ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from collections.abc import Callable
from datetime import UTC
from datetime import datetime
from typing import TYPE_CHECKING
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from broker.aio import first_to_finish
from broker.cloud import errors
from broker.cloud.types import ServerInfo
from broker.relay import recording
from broker.relay.console import AWAY
from broker.relay.console import BACK
from broker.relay.console import DATABASE_UNAVAILABLE
from broker.relay.console import GOING_AWAY
from broker.relay.console import INTERNAL_ERROR
from broker.relay.console import NO_CONSOLE
from broker.relay.console import NOT_ALLOWED
from broker.relay.console import NOT_RUNNING
from broker.relay.console import PROTOCOL_ERROR
from broker.relay.console import ROTATE_BEFORE
from broker.relay.console import SIGNED_OUT
from broker.relay.console import SWITCH_CLOSE_TIMEOUT
from broker.relay.console import UNREACHABLE
from broker.relay.console import Carrier
from broker.relay.console import Ended
from broker.relay.console import Retry
from broker.relay.console import browser_closed
from broker.relay.console import ended
from broker.relay.console import live_report
from broker.relay.console import retrying
from broker.relay.console import why
from broker.relay.upstream import Upstream
from broker.relay.upstream import UpstreamError
from broker.services.relay import DatabaseUnavailable
from broker.services.relay import LiveReport
from broker.services.relay import SessionOver
from broker.services.relay import Ticket

if TYPE_CHECKING:
    from broker.relay.server import Admission

log = logging.getLogger(__name__)

# What the server printed, kept per console while anyone is on it: screens of a boot log or a panic.
HISTORY = 256 * 1024
# One message from a browser: a paste (the page bounds it too, and says so).
MAX_INPUT = 64 * 1024
# What typing may queue while the cloud's side is away; more is someone pasting into a dead line.
MAX_BACKLOG = 64 * 1024
# Output waiting for one browser: past this, that browser cannot keep up and is let go (it reconnects).
MAX_PENDING = 1 << 20
# Close code for a browser let go for falling behind (RFC 6455 "try again later").
TRY_AGAIN = 1013
# How a list of who is connected starts, as json.dumps writes it.
PEOPLE = '{"people": '
# What the page is told when the cloud has no serial console for the server (Nova's 400).
NO_SERIAL_CONSOLE = "The cloud has no serial console for this server"
# A serial console is one per server: (cloud, server ID).
Key = tuple[str, str]


class Serial:
    """One server's serial console: the cloud's side, what it printed, and the browsers on it."""

    def __init__(self, key: Key, retry: Retry, forget: Callable[[Serial], None]) -> None:
        self.key = key
        self.retry = retry
        self._forget = forget
        # Every browser that joined and has not left, in order: the first still here mints the next URL.
        self.viewers: list[Viewer] = []
        self.history = bytearray()
        self.upstream: Upstream | None = None
        self.backlog: list[bytes] = []
        self.backlog_size = 0
        self.opened = asyncio.Event()
        self.failure: Ended | None = None
        self.confirmed: ServerInfo | None = None
        self.expires_at = 0.0
        self.rotate_at: float | None = None
        self.task: asyncio.Task | None = None
        # What records it (BROKER_RECORDING=all), from the first browser admitted to the last one's leaving.
        self.recorder: recording.Recorder | None = None

    def describe(self) -> str:
        """The console in a log line: server and cloud (never a URL)."""
        return f"serial {self.key[1]} ({self.key[0]})"

    # -- who is on it ----------------------------------------------------------------------------

    async def join(self, viewer: Viewer) -> None:
        """Wait until the cloud's side is open (Ended when it cannot be); the first browser opens it."""
        self.viewers.append(viewer)
        if self.task is None:
            self.task = asyncio.create_task(self._run())
        await first_to_finish(self.opened.wait(), viewer.stopped.wait())
        if viewer.ending is not None:
            raise viewer.ending
        if self.failure is not None:
            raise self.failure

    def admit(self, viewer: Viewer) -> None:
        """``viewer`` gets what the server printed so far, then everything it prints; everyone hears of it.

        No await between the history and the viewer's place in the fan-out: nothing printed in
        between is lost or shown twice.
        """
        viewer.deliver(bytes(self.history))
        viewer.admitted = True
        if self.recorder is None:
            self._start_recording(viewer)
        else:
            self._record("join", viewer.ticket.username)
        self._tell_people()

    def leave(self, viewer: Viewer) -> None:
        """``viewer`` has gone; the last to go closes the cloud's side and the history goes with it."""
        if viewer in self.viewers:
            self.viewers.remove(viewer)
            if viewer.admitted:
                self._record("leave", viewer.ticket.username)
        if self.viewers:
            self._tell_people()
            return
        self._forget(self)
        self._stop_recording(viewer.ending or ended(GOING_AWAY, "nobody is left on the console"))
        self.history.clear()
        if self.task is not None:
            self.task.cancel()

    def _tell_people(self) -> None:
        """Who is connected, to every browser on the console (a text message; the terminal never shows it)."""
        people = [viewer.ticket.username for viewer in self.viewers if viewer.admitted]
        for viewer in self.viewers:
            if viewer.admitted:
                viewer.tell({"people": people})

    # -- recording -------------------------------------------------------------------------------

    def _start_recording(self, first: Viewer) -> None:
        """With the first browser admitted: record the console (its row is that browser's), history first.

        A recorder that cannot start leaves the console unrecorded, never ended (as a graphical one).
        """
        if first.carrier.recorders is None:
            return
        ticket = first.ticket
        start = recording.Start(
            first.row_id,
            ticket.username,
            ticket.server_id,
            self.confirmed.name,
            ticket.cloud,
            "serial",
            first.carrier.instance,
            first.admission.caller.client,
            init=b"",
            pixel_format=b"",
        )
        try:
            self.recorder = first.carrier.recorders(start)
        except Exception as exc:
            log.error("%s: its recording could not start: %s", self.describe(), exc)
            return
        self.recorder.server(bytes(self.history))

    def _record(self, kind: str, detail: str = "") -> None:
        """Something for the recording's index, by kind (typing is never more than that it happened)."""
        if self.recorder is not None:
            self.recorder.event(kind, detail)

    def _stop_recording(self, end: Ended) -> None:
        """The console is over for everyone: its recording is finished (the writer thread closes the files)."""
        if self.recorder is not None:
            self.recorder.close(end.audit)

    # -- typing ----------------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Input from any browser, to the server; held (in order) while the cloud's side is away."""
        self._record("typing")
        if self.upstream is not None and await self.upstream.send(data):
            return
        self.backlog.append(data)
        self.backlog_size += len(data)
        if self.backlog_size > MAX_BACKLOG:
            raise ended(UNREACHABLE, "more was typed than the relay keeps while the cloud's side is away")

    async def _catch_up(self, upstream: Upstream) -> None:
        """What was typed while the side was away goes first; then ``upstream`` is the one in use."""
        while self.backlog:
            pending, self.backlog, self.backlog_size = self.backlog, [], 0
            if not await upstream.send(b"".join(pending)):
                self.backlog = pending + self.backlog
                self.backlog_size = sum(map(len, self.backlog))
                raise UpstreamError("the new console proxy closed before it was caught up")
        self.upstream = upstream

    # -- the cloud's side ------------------------------------------------------------------------

    async def _run(self) -> None:
        """Open the cloud's side for the first browser, then carry what the server prints to all of them."""
        try:
            await self._catch_up(await self._retrying(self._open))
        except Ended as end:
            self._fail(end)
            return
        except Exception:
            log.exception("%s could not be opened", self.describe())
            self._fail(ended(INTERNAL_ERROR, "the relay failed"))
            return
        self.opened.set()
        try:
            await self._carry()
        except Ended as end:
            self._end_all(end)
        except Exception:
            log.exception("%s failed", self.describe())
            self._end_all(ended(INTERNAL_ERROR, "the relay failed"))
        finally:
            await self._close_upstream()

    def _fail(self, end: Ended) -> None:
        """The cloud's side could not be opened: every browser waiting is told why; the next one starts afresh."""
        self.failure = end
        self._forget(self)
        self.opened.set()

    def _end_all(self, end: Ended) -> None:
        """End every browser on the console (the server stopped, the cloud's side is lost for good)."""
        self._forget(self)
        self._stop_recording(end)
        for viewer in list(self.viewers):
            viewer.stop(end)

    async def _hand_over(self) -> None:
        """Close the side in use, and pass on what the server printed on it until its close (nothing is lost
        between the old side and the new); typing meanwhile waits in the backlog."""
        old, self.upstream = self.upstream, None
        try:
            async with asyncio.timeout(SWITCH_CLOSE_TIMEOUT):
                await old.close()
                while True:
                    self._print(await old.recv())
        except (TimeoutError, ConnectionClosed, UpstreamError):
            pass
        old.abort()

    async def _close_upstream(self) -> None:
        if self.upstream is not None:
            await self._hand_over()

    async def _carry(self) -> None:
        """The server's bytes to every browser and into the history; the side replaced before expiry, resumed
        when cut."""
        while True:
            try:
                async with asyncio.timeout_at(self.rotate_at):
                    data = await self.upstream.recv()
            except TimeoutError:
                await self._rotate()
                continue
            except (ConnectionClosed, UpstreamError) as exc:
                await self._resume(exc)
                continue
            self._print(data)

    def _print(self, data: bytes) -> None:
        """What the server printed: into the history, its recording, and to every browser on the console."""
        self._remember(data)
        if self.recorder is not None:
            self.recorder.server(data)
        for viewer in self.viewers:
            if viewer.admitted:
                viewer.deliver(data)

    def _remember(self, data: bytes) -> None:
        self.history += data
        if len(self.history) > HISTORY:
            del self.history[: len(self.history) - HISTORY]

    async def _open(self) -> Upstream:
        """Mint a serial console URL (for the first browser still on it) and open its websocket."""
        url, carrier = await self._mint()
        return await carrier.connect_serial(url)

    async def _mint(self) -> tuple[str, Carrier]:
        """A fresh URL, minted with the rights of the earliest browser on the console whose rights still hold.

        A browser whose session ended or who may no longer open the server is ended, and the next one's
        rights are asked; the server not running, or the database unreachable, ends the try for all.
        """
        while self.viewers:
            viewer = self.viewers[0]
            try:
                minted = await viewer.carrier.mint(viewer.ticket, self.confirmed)
            except SessionOver as over:
                viewer.stop(ended(SIGNED_OUT, f"the sign-in session ended: {over}"))
            except errors.ServerNotFound:
                viewer.stop(ended(NOT_ALLOWED, "the mint was refused: no server with this ID that the user may open"))
            except DatabaseUnavailable:
                raise ended(DATABASE_UNAVAILABLE) from None
            except errors.ServerNotReady as exc:
                status = getattr(exc, "server_status", "") or "not running"
                raise Ended(NOT_RUNNING, f"Server not running ({status})", f"the server is {status}") from None
            else:
                viewer.mints += 1
                self.confirmed = minted.server
                loop = asyncio.get_running_loop()
                self.expires_at = loop.time() + minted.expires_in
                self.rotate_at = self.expires_at - min(ROTATE_BEFORE, minted.expires_in / 4)
                return minted.console.url, viewer.carrier
            if viewer in self.viewers:
                self.viewers.remove(viewer)
        raise ended(GOING_AWAY, "nobody is left on the console")

    async def _retrying(self, attempt: Callable[[], Awaitable[Upstream]], budget: float | None = None) -> Upstream:
        """``attempt`` until it gives an upstream, as a graphical console retries (quick, then backing off)."""
        return await retrying(attempt, self.retry, budget, self._tried, NO_SERIAL_CONSOLE)

    def _tried(self, failure: str | None, failures: int) -> None:
        if failure is not None:
            log.warning("%s: the cloud's side could not be opened (try %d): %s", self.describe(), failures, failure)

    async def _rotate(self) -> None:
        """Before the token expires: open the next side, then close this one, so the terminal never shows a cut.

        The proxy lets one client at a time through: the new side waits, silent, until the old one
        closes; what is typed meanwhile waits in the backlog.
        """
        loop = asyncio.get_running_loop()
        expiry, self.rotate_at = self.expires_at, None
        try:
            upstream = await self._retrying(self._open, budget=max(0.0, expiry - loop.time()))
        except Ended as end:
            if end.code not in (UNREACHABLE, NO_CONSOLE, DATABASE_UNAVAILABLE):
                raise
            log.info("%s: no new side before expiry (%s); keeping this one", self.describe(), end.audit)
            return
        await self._hand_over()
        try:
            await self._catch_up(upstream)
        except UpstreamError:
            upstream.abort()
            await self._resume(UpstreamError("the new side closed at once"))
            return
        log.info("%s: replaced the cloud's side before expiry", self.describe())

    async def _resume(self, cause: BaseException) -> None:
        """The cloud's side is gone: tell the browsers, open a new one, tell them it is back."""
        log.info("%s: the cloud's side closed (%s); resuming", self.describe(), why(cause))
        if self.upstream is not None:
            self.upstream.abort()
        self.upstream = None
        self._record("resume")
        self._tell_all(AWAY)
        await self._catch_up(await self._retrying(self._open))
        self._tell_all(BACK)

    def _tell_all(self, status: str) -> None:
        for viewer in self.viewers:
            if viewer.admitted:
                viewer.tell({"relay": status})


class Viewer:
    """One browser on a serial console: its input to the shared console, the console's output to it, its record."""

    def __init__(self, carrier: Carrier, browser: ServerConnection, admission: Admission, serial: Serial) -> None:
        self.carrier = carrier
        self.browser = browser
        self.admission = admission
        self.ticket: Ticket = admission.ticket
        self.serial = serial
        self.row_id: int | None = None
        self.admitted = False
        self.mints = 0
        self.to_cloud = 0
        self.to_browser = 0
        self.started_at = datetime.now(UTC)
        self.used_at: datetime | None = None
        self.ending: Ended | None = None
        # Output for this browser not yet sent: binary (the terminal's) and text (status) messages, in order.
        self._outbox: list[bytes | str] = []
        self._pending = 0
        self._wake = asyncio.Event()
        self.stopped = asyncio.Event()

    def describe(self) -> str:
        return f"{self.serial.describe()} for {self.ticket.username}"

    def report(self, instance: str) -> LiveReport:
        """What the relay's poll tells the broker of this browser's console."""
        return live_report(self, self.serial.confirmed, instance)

    async def run(self) -> None:
        """Join the server's serial console and carry this browser's side until it ends; then its record."""
        try:
            await self.serial.join(self)
            await self._open()
            await first_to_finish(self._from_browser(), self._to_browser(), self.stopped.wait())
        except Ended as end:
            self.ending = self.ending or end
        except Exception:
            log.exception("console %s failed", self.describe(), **self._log())
            self.ending = self.ending or ended(INTERNAL_ERROR, "the relay failed")
        finally:
            self.serial.leave(self)
            await self._finish()

    async def end(self, code: int) -> None:
        """End this browser's console from outside (an admin, a sign-out, rights removed)."""
        self.stop(ended(code))

    def stop(self, end: Ended) -> None:
        """End this browser's console with ``end`` (its run winds up and writes the record)."""
        self.ending = self.ending or end
        self.stopped.set()

    async def _open(self) -> None:
        try:
            self.row_id = await self.carrier.opened(self.ticket, self.serial.confirmed.name)
        except DatabaseUnavailable:
            raise ended(DATABASE_UNAVAILABLE) from None
        self.serial.admit(self)
        log.info("console %s open", self.describe(), **self._log())

    def deliver(self, data: bytes) -> None:
        """Output for this browser, sent by its own task: a browser that falls behind holds up no one else."""
        if data:
            self._queue(data)

    def tell(self, status: dict) -> None:
        """A status message (JSON text) for this browser, in order with its output.

        Only the newest list of people waits to be sent: a burst of joins sends each browser the
        list as it ends, not every list on the way, and a browser that stops reading is let go
        for these as for output.
        """
        message = json.dumps(status)
        if "people" in status:
            stale = [item for item in self._outbox if isinstance(item, str) and item.startswith(PEOPLE)]
            for item in stale:
                self._outbox.remove(item)
                self._pending -= len(item)
        self._queue(message)

    def _queue(self, item: bytes | str) -> None:
        self._outbox.append(item)
        self._pending += len(item)
        if self._pending > MAX_PENDING:
            self.stop(Ended(TRY_AGAIN, "Too slow to keep up", "the browser could not keep up with the console"))
        self._wake.set()

    async def _to_browser(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                outbox, self._outbox, self._pending = self._outbox, [], 0
                for message in coalesced(outbox):
                    await self.browser.send(message)
                    if isinstance(message, bytes):
                        self.to_browser += len(message)
        except ConnectionClosed:
            self.ending = self.ending or self._browser_closed()

    async def _from_browser(self) -> None:
        """The person's typing and pastes, to the shared console."""
        try:
            async for message in self.browser:
                if isinstance(message, str):
                    raise Ended(PROTOCOL_ERROR, "Input is binary", "the browser sent text")
                if len(message) > MAX_INPUT:
                    raise Ended(PROTOCOL_ERROR, "Paste too long", f"the browser sent {len(message)} bytes at once")
                self.used_at = datetime.now(UTC)
                await self.serial.send(message)
                self.to_cloud += len(message)
        except ConnectionClosed:
            pass
        self.ending = self.ending or self._browser_closed()

    def _browser_closed(self) -> Ended:
        return browser_closed(self.carrier, self.browser)

    async def _finish(self) -> None:
        """Close the browser; write the record: how the console ended, or why it never opened."""
        ending = self.ending or ended(INTERNAL_ERROR, "the relay failed")
        await self.browser.close(ending.code, ending.reason)
        log.info(
            "console %s closed: %s; %d bytes to the cloud, %d to the browser",
            self.describe(),
            ending.audit,
            self.to_cloud,
            self.to_browser,
            **self._log(),
        )
        try:
            if self.row_id is not None:
                row_id, self.row_id = self.row_id, None
                minted = f"{self.mints} console URL{'s' if self.mints != 1 else ''} minted"
                reason = f"serial console: {ending.audit}; {minted}"
                await self.carrier.closed(row_id, reason, self.to_cloud, self.to_browser)
            elif self.mints or self.serial.failure is not None:
                # A browser that left before the console opened asked the cloud nothing of its own.
                await self.carrier.failed(self.ticket, f"serial console: {ending.audit}")
        except Exception:
            log.exception("console %s: its record could not be written", self.describe(), **self._log())

    def _log(self) -> dict[str, Any]:
        return {"extra": {"request_id": self.admission.caller.request_id}}


def coalesced(outbox: list[bytes | str]) -> list[bytes | str]:
    """Runs of binary output joined into one message each; text (status) messages kept apart, in order."""
    messages: list[bytes | str] = []
    for item in outbox:
        if isinstance(item, bytes) and messages and isinstance(messages[-1], bytes):
            messages[-1] += item
        else:
            messages.append(item)
    return messages
