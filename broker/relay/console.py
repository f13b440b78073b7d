"""One relayed console: the browser's RFB handshake, both directions of the stream, and resuming the cloud's side.

The browser sees one RFB session for as long as it stays connected. The cloud's side may
close at any moment (token expiry under ``enforce_session_timeout``, a proxy restart, the
network): the server's message under way is finished with filler, a fresh console URL is
minted, the new proxy is brought to the state the viewer expects (pixel format, encodings,
a full screen), and what the viewer sent meanwhile follows in order, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass
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
from broker.relay import rfb
from broker.relay.budget import Budget
from broker.relay.party import Party
from broker.relay.rfb import ClientFramer
from broker.relay.rfb import RfbError
from broker.relay.rfb import ServerFramer
from broker.relay.rfb import ServerInit
from broker.relay.upstream import ByteReader
from broker.relay.upstream import SecurityRefused
from broker.relay.upstream import Upstream
from broker.relay.upstream import UpstreamError
from broker.services.consoles import Minted
from broker.services.relay import DatabaseUnavailable
from broker.services.relay import LiveReport
from broker.services.relay import SessionOver
from broker.services.relay import Ticket

if TYPE_CHECKING:
    from broker.relay.serial import Viewer
    from broker.relay.server import Admission
    from broker.relay.watch import Watcher

log = logging.getLogger(__name__)

# Close codes the viewer acts on (static/js/viewer.js).
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
ABNORMAL = 1006
INTERNAL_ERROR = 1011
SIGNED_OUT = 4401
NOT_ALLOWED = 4403
NOT_RUNNING = 4409
ENDED_BY_ADMIN = 4410
# The console a watcher watched is over (or was never open on this relay): final for the watcher's page.
CONSOLE_ENDED = 4404
# The cloud has no console of this type for the server (Nova's 400 "VNC disabled"): the page offers another.
NO_CONSOLE = 4501
UNREACHABLE = 4502
DATABASE_UNAVAILABLE = 4503
# The reason sent with each code, which the viewer may show.
REASONS = {
    GOING_AWAY: "The relay is restarting",
    SIGNED_OUT: "Sign in again",
    NOT_ALLOWED: "No server with this ID that you may open",
    ENDED_BY_ADMIN: "Ended by an administrator",
    CONSOLE_ENDED: "The console ended",
    NO_CONSOLE: "The cloud has no graphical console for this server",
    UNREACHABLE: "The cloud's console is unreachable",
    DATABASE_UNAVAILABLE: "The broker's database is unavailable",
}
# Why a console ended from outside, for the audit.
AUDIT_REASONS = {
    GOING_AWAY: "the relay shut down",
    SIGNED_OUT: "the sign-in session ended",
    NOT_ALLOWED: "the user may no longer open this server",
    ENDED_BY_ADMIN: "ended by an administrator",
    DATABASE_UNAVAILABLE: "the broker's database could not be reached",
}
# Failures another try cannot mend: the console ends at once rather than at the end of the budget.
PERMANENT = (SecurityRefused, errors.ConsoleUnavailable, errors.CloudRefused, errors.CloudBadResponse)
# What the viewer may send while the cloud's side is away: a person typing through the whole
# retry budget sends a few kilobytes (pointer moves are merged).
MAX_BACKLOG = 1 << 20
# Keysyms a recording's index needs to name Ctrl-Alt-Del (X11 keysymdef.h).
CONTROL = frozenset({0xFFE3, 0xFFE4})
ALT = frozenset({0xFFE9, 0xFFEA, 0xFE03})
MODIFIERS = CONTROL | ALT
DELETE = frozenset({0xFFFF, 0xFF9F})
# The cloud's side is replaced this long before its token expires (at most a quarter of the
# token's life), while it still works: a proxy that cuts consoles at expiry (Nova's
# enforce_session_timeout) drops what is in flight when it does, so the relay leaves first.
ROTATE_BEFORE = 5.0
SWITCH_CLOSE_TIMEOUT = 1.0
# The viewer hears of the cloud's side in text messages, which noVNC's RFB ignores (a JSON object
# is no length): "away" when what it sends can no longer reach the server, "back" when it does.
AWAY = "away"
BACK = "back"


@dataclass(frozen=True)
class Retry:
    """How hard the relay tries to (re)open the cloud's side: quick tries first, all within a total budget."""

    delays: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0, 2.0, 4.0)
    budget: float = 20.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1-based; the last delay repeats)."""
        return self.delays[min(failures, len(self.delays)) - 1]


@dataclass(frozen=True)
class Carrier:
    """What a console may ask of the relay that carries it, and nothing more; each call is made for its browser."""

    retry: Retry
    handshake_timeout: float
    # True once the relay is shutting down (a browser closed then was closed by the relay).
    stopping: Callable[[], bool]
    # The cloud's console proxy behind a console URL, past its RFB handshake.
    connect: Callable[[str], Awaitable[Upstream]]
    # The websocket behind a serial console URL (no handshake).
    connect_serial: Callable[[str], Awaitable[Upstream]]
    # A fresh console URL for the ticket's server (authorized as any mint), given the server as last confirmed.
    mint: Callable[[Ticket, ServerInfo | None], Awaitable[Minted]]
    # The console is open, showing the named server: its live row's ID (its record of success).
    opened: Callable[[Ticket, str], Awaitable[int]]
    # Its record once it ended (row, reason, bytes to the cloud, to the browser), or once it failed to open
    # (ticket, reason): True when written now, False when kept back until the database can be reached.
    closed: Callable[[int, str, int, int], Awaitable[bool]]
    failed: Callable[[Ticket, str], Awaitable[bool]]
    # Something that happened in the live console (row, detail, reason): a hand-over, an ask for control.
    noted: Callable[[int, str, str], Awaitable[bool]]
    # What records a console's screen (BROKER_RECORDING=all), and the relay's host:pid for its metadata.
    recorders: Callable[[recording.Start], recording.Recorder] | None = None
    instance: str = ""


class Ended(Exception):
    """The console ends: the browser is closed with ``code`` and ``reason``; ``audit`` is why, for the record."""

    def __init__(self, code: int, reason: str, audit: str):
        super().__init__(audit)
        self.code = code
        self.reason = reason[:120]  # a close frame holds at most 123 bytes of reason
        self.audit = audit


def ended(code: int, audit: str | None = None) -> Ended:
    """An ending with the viewer's reason for ``code``."""
    return Ended(code, REASONS.get(code, ""), audit or AUDIT_REASONS.get(code, f"closed with code {code}"))


class Console:
    """One browser's console through the relay; ``run`` returns when it is over and its record is written."""

    def __init__(self, carrier: Carrier, browser: ServerConnection, admission: Admission) -> None:
        self.carrier = carrier
        self.browser = browser
        self.admission = admission
        self.ticket = admission.ticket
        self.server_name = admission.ticket.server_name
        self.row_id: int | None = None
        # RFB bytes each way after the handshakes (replays and filler included).
        self.to_cloud = 0
        self.to_browser = 0
        self.upstream: Upstream | None = None
        # What the viewer sent while the cloud's side was away, in order, to send once it is back.
        self.backlog: list[bytes] = []
        self.backlog_size = 0
        self.client = ClientFramer()
        self.server: ServerFramer | None = None
        # The ServerInit the browser was given: every later upstream is made to talk in its format.
        self.init: ServerInit | None = None
        self.ending: Ended | None = None
        self.greeted = asyncio.Event()
        self.started = asyncio.Event()
        # When (event-loop time) to replace the cloud's side before its token expires; None: not now.
        self.rotate_at: float | None = None
        # When (event-loop time) the token of the cloud's side in use expires.
        self.expires_at = 0.0
        # The server as the last mint found it: the rights it was granted on (judged again each poll).
        self.confirmed: ServerInfo | None = None
        # Console URLs minted for it, and tries at one: counted in its record, not recorded one by one.
        self.mints = 0
        self.tries = 0
        self.started_at = datetime.now(UTC)
        # The person's last key or pointer event: use of the sign-in session, as a request is.
        self.used_at: datetime | None = None
        # Who else is on it (watchers, broker/relay/watch.py) and who drives; the opener is a member too.
        self.pid = "o"
        self.name = admission.ticket.username
        self.role = admission.ticket.role
        self.party = Party(self, self._noted)
        self.recorder: recording.Recorder | None = None
        # Modifier keys held down by whoever drives: Ctrl-Alt-Del is named in a recording's index.
        self.held: set[int] = set()

    def report(self, instance: str) -> LiveReport:
        """What the relay's poll tells the broker of this console."""
        return live_report(self, self.confirmed, instance)

    def describe(self) -> str:
        """The console in a log line: server, cloud and user (never a URL)."""
        return f"{self.ticket.server_id} ({self.ticket.cloud}) for {self.ticket.username}"

    async def run(self) -> None:
        """Connect both sides and carry the stream until one of them ends it for good."""
        try:
            await self._carry()
        except Ended as end:
            self.ending = self.ending or end
        except Exception:
            log.exception("console %s failed", self.describe(), **self._log())
            self.ending = self.ending or ended(INTERNAL_ERROR, "the relay failed")
        finally:
            await self._finish()

    async def end(self, code: int) -> None:
        """End the console from outside (an admin, a sign-out): the browser is closed with ``code``."""
        self.ending = self.ending or ended(code)
        await self.browser.close(self.ending.code, self.ending.reason)

    async def _carry(self) -> None:
        """The browser's side in one task and the cloud's in another; the first to finish ends the console."""
        await first_to_finish(self._from_browser(), self._from_cloud())

    # -- the browser's side ----------------------------------------------------------------------------

    async def _from_browser(self) -> None:
        """The browser's handshake, then its messages to the cloud (or to the backlog while the cloud is away)."""
        try:
            rest = await self._greet()
            self.greeted.set()
            await self.started.wait()
            budget = Budget()
            await self._forward(rest, budget)
            async for message in self.browser:
                if isinstance(message, str):
                    await self._told(message)
                else:
                    await self._forward(message, budget)
        except ConnectionClosed:
            pass
        self.ending = self.ending or self._browser_closed()

    async def _greet(self) -> bytes:
        return await greet(self.browser, self.carrier.handshake_timeout)

    async def _forward(self, data: bytes, budget: Budget) -> None:
        """The whole client messages ``data`` completes, to the cloud, or to the backlog while it is away.

        They go a slice at a time, as the browser's budget allows: a console that floods the relay
        waits for its own budget, and every other console runs between its slices.
        """
        async for messages in admitted(self.client, data, budget, "the browser"):
            if budget.waited and self.browser.close_code is not None:
                # The browser left while its flood waited for the budget: nobody is there for the rest.
                raise self._browser_closed()
            if not self.party.drives(self):
                # Someone else has the keyboard: the opener's viewer still sets the stream's format and pace.
                messages = [message for message in messages if not rfb.is_input(message)]
            elif any(map(rfb.is_input, messages)):
                self.used_at = datetime.now(UTC)
            for message in messages:
                self.server.follow(message)
                if message[0] == rfb.SET_PIXEL_FORMAT and self.recorder:
                    self.recorder.pixel_format(message[4:20])
            self.to_cloud += await self.deliver(messages)

    async def deliver(self, messages: list[bytes]) -> int:
        """Whole client messages to the cloud, or to the backlog while it is away; the bytes sent now."""
        if not messages:
            return 0
        if self.recorder:
            self._record_keys(messages)
        batch = b"".join(messages)
        if self.upstream is not None and await self.upstream.send(batch):
            return len(batch)
        for message in messages:
            self._queue(message)
        return 0

    async def _told(self, text: str) -> None:
        """A text message from the opener's page: a control message (give, take) or what Type text is about to do."""
        try:
            note = await self.party.told(self, text)
        except ValueError as exc:
            raise Ended(PROTOCOL_ERROR, "RFB is binary", f"the browser sent text that is not RFB: {exc}") from None
        if note:
            self.record_event(*note)

    async def tell(self, text: str) -> None:
        """A text message to the opener's page (who is on the console, who asks for control)."""
        with contextlib.suppress(ConnectionClosed):
            await self.browser.send(text)

    async def _noted(self, detail: str, reason: str) -> None:
        """A hand-over or an ask for control, for the audit (linked to this console's record)."""
        log.info("console %s: %s", self.describe(), reason, **self._log())
        self.record_event(detail, reason[:64])
        if self.row_id is None:
            return
        try:
            await self.carrier.noted(self.row_id, detail, reason)
        except Exception:
            log.exception("console %s: a hand-over could not be recorded", self.describe(), **self._log())

    def record_event(self, kind: str, detail: str = "") -> None:
        """Something for a recording's index, by kind (never what was typed)."""
        if self.recorder and kind in recording.EVENT_KINDS:
            self.recorder.event(kind, detail)

    def _record_keys(self, messages: list[bytes]) -> None:
        """Key presses as kinds for the recording's index: typing, or Ctrl-Alt-Del (never which keys)."""
        for message in messages:
            key = rfb.key_of(message)
            if key is None:
                continue
            keysym, down = key
            if keysym in MODIFIERS:
                (self.held.add if down else self.held.discard)(keysym)
            elif down and keysym in DELETE and self.held & CONTROL and self.held & ALT:
                self.record_event("ctrl-alt-del")
            elif down:
                self.record_event("typing")

    def _start_recording(self) -> None:
        """Once the browser has its ServerInit: record what follows, if recording is on."""
        if self.carrier.recorders is None:
            return
        ticket = self.ticket
        start = recording.Start(
            self.row_id,
            ticket.username,
            ticket.server_id,
            self.server_name,
            ticket.cloud,
            ticket.kind,
            self.carrier.instance,
            self.admission.caller.client,
            self.init.to_bytes(),
            self.init.pixel_format.raw,
        )
        try:
            self.recorder = self.carrier.recorders(start)
        except OSError as exc:
            log.error("console %s: its recording could not start: %s", self.describe(), exc, **self._log())

    # -- watchers --------------------------------------------------------------------------------------

    async def add_watcher(self, watcher: Watcher) -> None:
        """A watcher joins: the screen as it is now, the stream from the next message boundary, a full screen."""
        size = (self.server.width, self.server.height)
        init = rfb.ServerInit(*size, self.client.pixel_format or self.init.pixel_format, self.init.name)
        watcher.send(init.to_bytes())
        self.record_event("observe" if watcher.role == "observe" else "join", watcher.name)
        await self.party.join(watcher)
        if self.upstream is not None and await self.upstream.send(rfb.framebuffer_update_request(False, 0, 0, *size)):
            self.to_cloud += 10

    async def remove_watcher(self, watcher: Watcher) -> None:
        if watcher in self.party.members:
            self.record_event("leave", watcher.name)
        await self.party.leave(watcher)

    async def _keyframe(self) -> None:
        """A seek point for the recording: at a message boundary, then a full screen asked of the server."""
        size = (self.server.width, self.server.height)
        self.recorder.keyframe(*size)
        if self.upstream is not None and await self.upstream.send(rfb.framebuffer_update_request(False, 0, 0, *size)):
            self.to_cloud += 10

    def _fan_out(self, data: bytes, boundary: int | None) -> None:
        """``data`` to every watcher in step; one waiting for a boundary starts at ``boundary`` (None: not here)."""
        for watcher in self.party.watchers:
            if watcher.in_step:
                watcher.send(data)
            elif boundary is not None:
                watcher.in_step = True
                watcher.send(data[boundary:])

    def _queue(self, message: bytes) -> None:
        if self.backlog and rfb.supersedes(message, self.backlog[-1]):
            self.backlog_size -= len(self.backlog.pop())
        self.backlog.append(message)
        self.backlog_size += len(message)
        if self.backlog_size > MAX_BACKLOG:
            raise ended(UNREACHABLE, "the viewer sent more than the relay keeps while the cloud's side is away")

    def _browser_closed(self) -> Ended:
        return browser_closed(self.carrier, self.browser)

    async def _to_browser(self, data: bytes, boundary: int | None = None) -> None:
        """``data`` to the browser, its recording and every watcher in step (``boundary``: where a joining one may
        start)."""
        if self.recorder:
            self.recorder.server(data)
        self._fan_out(data, boundary)
        await self.browser.send(data)
        self.to_browser += len(data)

    # -- the cloud's side ----------------------------------------------------------------------------

    async def _from_cloud(self) -> None:
        """Open the cloud's side, start the browser's stream, then carry the cloud's messages, resuming as needed."""
        try:
            await self._open_first()
            await self._carry_cloud()
        except ConnectionClosed:
            # Only the browser's connection raises this here: the cloud's closing is handled where it is read.
            self.ending = self.ending or self._browser_closed()

    async def _open_first(self) -> None:
        # Nothing is asked of the cloud for a websocket that never speaks RFB.
        await self.greeted.wait()
        upstream = await self._retrying(self._open)
        try:
            await self._start(upstream)
        except BaseException:
            upstream.abort()
            raise

    async def _start(self, upstream: Upstream) -> None:
        """Once the browser is greeted: record the console, hand the browser the server's ServerInit, start piping."""
        try:
            self.row_id = await self.carrier.opened(self.ticket, self.server_name)
        except DatabaseUnavailable:
            raise ended(DATABASE_UNAVAILABLE) from None
        self.init = upstream.init
        self.server = ServerFramer(upstream.init)
        await self.browser.send(upstream.init.to_bytes())
        self.upstream = upstream
        self._start_recording()
        self.started.set()
        # The page learns its console's ID (for invites) and that its person drives.
        await self.tell(self.party.people(self))
        log.info("console %s open", self.describe(), **self._log())

    async def _carry_cloud(self) -> None:
        """The cloud's bytes to the browser, as they come; a closed upstream is resumed."""
        while True:
            try:
                async with asyncio.timeout_at(self.rotate_at):
                    data = await self.upstream.recv()  # cancelling it loses nothing
            except TimeoutError:
                await self._rotate()
                continue
            except (ConnectionClosed, UpstreamError) as exc:
                await self._resume(exc)
                continue
            at_boundary = self.server.at_boundary
            try:
                ends = self.server.feed(data)
            except RfbError as exc:
                raise ended(UNREACHABLE, f"the cloud's console sent what the relay cannot frame: {exc}") from None
            await self._to_browser(data, 0 if at_boundary else (ends[0] if ends else None))
            if self.recorder and self.server.at_boundary and self.recorder.keyframe_due():
                await self._keyframe()

    async def _retrying(self, attempt: Callable[[], Awaitable[Upstream]], budget: float | None = None) -> Upstream:
        """``attempt`` until it gives an upstream (see ``retrying``); each try counted in the console's record."""
        return await retrying(attempt, self.carrier.retry, budget, self._tried, REASONS[NO_CONSOLE])

    def _tried(self, failure: str | None, failures: int) -> None:
        self.tries += 1
        if failure is not None:
            log.warning(
                "console %s: the cloud's console could not be opened (try %d): %s",
                self.describe(),
                failures,
                failure,
                **self._log(),
            )

    async def _open(self) -> Upstream:
        """Mint a console URL (authorized and audited as any mint) and open its proxy's websocket."""
        return await self.carrier.connect(await self._mint())

    async def _mint(self) -> str:
        """A fresh console URL: the server's state, the session or the user's rights may have changed since the last."""
        try:
            minted = await self.carrier.mint(self.ticket, self.confirmed)
        except SessionOver as over:
            raise ended(SIGNED_OUT, f"the sign-in session ended: {over}") from None
        except DatabaseUnavailable:
            raise ended(DATABASE_UNAVAILABLE) from None
        except errors.ServerNotReady as exc:
            status = getattr(exc, "server_status", "") or "not running"
            raise Ended(NOT_RUNNING, f"Server not running ({status})", f"the server is {status}") from None
        except errors.ServerNotFound:
            raise ended(NOT_ALLOWED, "the mint was refused: no server with this ID that the user may open") from None
        self.server_name = minted.server.name
        self.confirmed = minted.server
        self.mints += 1
        lifetime = minted.expires_in
        self.expires_at = asyncio.get_running_loop().time() + lifetime
        self.rotate_at = self.expires_at - min(ROTATE_BEFORE, lifetime / 4)
        return minted.console.url

    async def _rotate(self) -> None:
        """Before the token expires: open the next side while this one works, then switch to it.

        What the viewer sent until the switch went down the old side, which delivers it before
        its close; what it sends during the switch waits in the backlog for the new side.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Tries end before the token does: past it, a proxy that cuts consoles at expiry has cut this one.
        expiry = self.expires_at
        self.rotate_at = None  # the mint below sets the next one
        try:
            upstream = await self._retrying(self._open, budget=max(0.0, expiry - loop.time()))
        except Ended as end:
            if end.code not in (UNREACHABLE, NO_CONSOLE, DATABASE_UNAVAILABLE):
                raise  # the server stopped, the session ended, or the user may no longer open it
            # The cloud cannot give a new side now: keep the one that works; a cut is resumed as any other.
            log.info(
                "console %s: no new side before expiry (%s); keeping this one",
                self.describe(),
                end.audit,
                **self._log(),
            )
            return
        old, self.upstream = self.upstream, None
        try:
            async with asyncio.timeout(SWITCH_CLOSE_TIMEOUT):
                await old.close()  # after what was sent on it, never instead of it
        except TimeoutError:
            old.abort()
        await self._finish_cut_message()
        try:
            replay = self.client.replay(self.init.pixel_format, upstream.init.width, upstream.init.height)
            await self._catch_up(upstream, replay)
        except UpstreamError as exc:
            upstream.abort()
            log.info("console %s: the new side closed at once (%s); resuming", self.describe(), exc, **self._log())
            await self._reconnect(started)
            return
        await self._resized(upstream)
        elapsed = asyncio.get_running_loop().time() - started
        log.info(
            "console %s: replaced the cloud's side before expiry in %.2f s", self.describe(), elapsed, **self._log()
        )

    async def _resume(self, cause: BaseException) -> None:
        """The cloud's side is gone: finish the message it left under way, open a new one, catch it up."""
        started = asyncio.get_running_loop().time()
        self.upstream.abort()
        self.upstream = None
        log.info("console %s: the cloud's side closed (%s); resuming", self.describe(), why(cause), **self._log())
        await self._finish_cut_message()
        self.record_event("resume")
        await self._tell(AWAY)
        await self._reconnect(started)
        await self._tell(BACK)

    async def _tell(self, status: str) -> None:
        """A status message to the viewer and every watcher (a text frame, which RFB never uses), for the page."""
        text = json.dumps({"relay": status})
        for watcher in self.party.watchers:
            watcher.send(text)
        await self.browser.send(text)

    async def _finish_cut_message(self) -> None:
        """The server's message under way when its side went, finished with filler so the viewer stays in step."""
        try:
            filler = self.server.complete()
        except RfbError as exc:
            raise ended(UNREACHABLE, f"the message the cloud cut could not be finished: {exc}") from None
        if filler:
            await self._to_browser(filler)

    async def _reconnect(self, started: float) -> None:
        upstream = await self._retrying(self._reopen)
        await self._resized(upstream)
        elapsed = asyncio.get_running_loop().time() - started
        log.info("console %s resumed in %.2f s", self.describe(), elapsed, **self._log())

    async def _resized(self, upstream: Upstream) -> None:
        """Tell the viewer when the new side's screen has another size."""
        resize = self.server.resize(upstream.init.width, upstream.init.height)
        if resize:
            await self._to_browser(resize)

    async def _reopen(self) -> Upstream:
        """One try at a new upstream, caught up: the viewer's format and encodings, a full screen, the backlog."""
        upstream = await self._open()
        try:
            replay = self.client.replay(self.init.pixel_format, upstream.init.width, upstream.init.height)
            await self._catch_up(upstream, replay)
        except BaseException:
            upstream.abort()
            raise
        return upstream

    async def _catch_up(self, upstream: Upstream, first: bytes) -> None:
        """Send ``first`` and then the backlog until it stays empty; then ``upstream`` is the one."""
        while first or self.backlog:
            pending, self.backlog, self.backlog_size = self.backlog, [], 0
            data = first + b"".join(pending)
            if not await upstream.send(data):
                self.backlog = pending + self.backlog
                self.backlog_size = sum(map(len, self.backlog))
                raise UpstreamError("the new console proxy closed before it was caught up")
            self.to_cloud += len(data)
            first = b""
        # No await since the backlog was last found empty: nothing the browser sends can slip in between.
        self.upstream = upstream

    # -- the end ---------------------------------------------------------------------------------------

    async def _finish(self) -> None:
        """Close both sides; write the console's record: how it ended (time, bytes, mints) or why it never opened."""
        ending = self._undelivered(self.ending or ended(INTERNAL_ERROR, "the relay failed"))
        self.ending = ending
        if self.recorder:
            self.recorder.close(ending.audit)
        self.party.end_all(CONSOLE_ENDED, ending.audit)
        await self.browser.close(ending.code, ending.reason)
        if self.upstream is not None:
            # A close handshake, so that the proxy logs a client that left rather than a lost connection.
            await self.upstream.close()
        log.info(
            "console %s closed: %s; %d bytes to the cloud, %d to the browser",
            self.describe(),
            ending.audit,
            self.to_cloud,
            self.to_browser,
            **self._log(),
        )
        try:
            written = await self._record(ending)
        except Exception:
            log.exception("console %s: its record could not be written", self.describe(), **self._log())
            return
        if not written:
            log.warning("console %s: its record waits for the database", self.describe(), **self._log())

    async def _record(self, ending: Ended) -> bool:
        """The console's record: its disconnect, or its failure to open (none when it asked the cloud nothing,
        or when the mint's refusal is on record already); False when it waits for the database."""
        if self.row_id is not None:
            # No longer reported by the relay's polls: its row goes with this record.
            row_id, self.row_id = self.row_id, None
            minted = f"{self.mints} console URL{'s' if self.mints != 1 else ''} minted"
            return await self.carrier.closed(row_id, f"{ending.audit}; {minted}", self.to_cloud, self.to_browser)
        if (self.mints or self.tries) and ending.code != NOT_ALLOWED:
            return await self.carrier.failed(self.ticket, f"{ending.audit} ({self.tries} failed tries)")
        return True

    def _undelivered(self, ending: Ended) -> Ended:
        """``ending``, its reason saying how many keys the person typed that never reached the server."""
        keys = sum(1 for message in self.backlog if rfb.is_key_press(message))
        if not keys:
            return ending
        note = f"{keys} key{'s' if keys != 1 else ''} typed did not reach the server"
        reason = f"{ending.reason}: {note}" if ending.reason else note.capitalize()
        return Ended(ending.code, reason, f"{ending.audit}; {note}")

    def _log(self) -> dict[str, Any]:
        """Keyword arguments that give a log line this console's request ID."""
        return {"extra": {"request_id": self.admission.caller.request_id}}


def browser_closed(carrier: Carrier, browser: ServerConnection) -> Ended:
    """How a browser's leaving ends its console: the relay shutting down, or the browser's own close."""
    if carrier.stopping():
        return ended(GOING_AWAY)
    code = browser.close_code
    return Ended(code or ABNORMAL, "", f"the browser closed the connection ({code or 'no close code'})")


async def admitted(client: ClientFramer, data: bytes, budget: Budget, sender: str) -> AsyncIterator[list[bytes]]:
    """The whole client messages ``data`` completes, cut by ``client`` a slice at a time as ``budget`` allows: a
    browser that floods the relay waits for its own budget, and every other console runs between its slices."""
    client.push(data)
    while True:
        try:
            taken = client.take(budget.slice)
        except RfbError as exc:
            raise Ended(PROTOCOL_ERROR, "Unsupported RFB message", f"{sender} sent what it may not: {exc}") from None
        if not taken:
            return
        yield await budget.admit(taken)


async def greet(browser: ServerConnection, timeout: float) -> bytes:
    """RFB's server side toward a browser, within ``timeout``; what the browser sent after it."""
    try:
        async with asyncio.timeout(timeout):
            return await _handshake(browser, ByteReader(browser))
    except TimeoutError:
        raise Ended(PROTOCOL_ERROR, "Handshake timed out", "the browser did not finish the RFB handshake") from None
    except RfbError as exc:
        raise Ended(PROTOCOL_ERROR, "Not RFB", f"the browser does not speak RFB: {exc}") from None


async def _handshake(browser: ServerConnection, reader: ByteReader) -> bytes:
    """RFB 3.8, security None, ClientInit (the cloud's side is always opened shared, whatever it says)."""
    await browser.send(rfb.VERSION_3_8)
    if rfb.parse_version(await reader.read(12)) != (3, 8):
        raise Ended(PROTOCOL_ERROR, "RFB 3.8 only", "the browser does not speak RFB 3.8")
    await browser.send(rfb.security_types(rfb.SECURITY_NONE))
    if await reader.read(1) != bytes([rfb.SECURITY_NONE]):
        raise Ended(PROTOCOL_ERROR, "Security type None only", "the browser chose another security type")
    await browser.send(rfb.SECURITY_OK)
    await reader.read(1)
    return reader.rest()


async def retrying(
    attempt: Callable[[], Awaitable[Upstream]],
    retry: Retry,
    budget: float | None,
    tried: Callable[[str | None, int], None],
    no_console: str,
) -> Upstream:
    """``attempt`` until it gives an upstream: quick tries, then backing off, all within the retry budget.

    ``tried(failure, failures)`` hears of each failed try (``failure`` None for one that ends the
    tries at once). A cloud that has no console of this type for the server ends with NO_CONSOLE and
    ``no_console`` for the page (Nova's 400 "VNC disabled": the page offers another type instead);
    another failure no retry can mend, with UNREACHABLE.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(retry.budget, budget if budget is not None else retry.budget)
    failures = 0
    failure = "timed out"
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                return await attempt()
        except errors.ConsoleUnavailable as exc:
            tried(None, failures)
            raise Ended(NO_CONSOLE, no_console, exc.message) from None
        except PERMANENT as exc:
            tried(None, failures)
            raise ended(UNREACHABLE, getattr(exc, "message", None) or str(exc)) from None
        except (errors.CloudError, UpstreamError) as exc:
            failure = getattr(exc, "message", None) or str(exc)
        except TimeoutError:
            pass  # the budget ran out during a try: the failure before it says more
        failures += 1
        tried(failure, failures)
        delay = retry.delay(failures)
        if loop.time() + delay >= deadline:
            raise ended(UNREACHABLE, f"the cloud's console could not be reached ({failures} tries): {failure}")
        await asyncio.sleep(delay)


def live_report(console: Console | Viewer | Watcher, server: ServerInfo | None, instance: str) -> LiveReport:
    """What the relay's poll tells the broker of a browser's console (a graphical one, or a browser on a
    serial one): ``server`` as its last mint found it."""
    ticket = console.ticket
    server = server or ServerInfo(ticket.server_id, ticket.server_name, "", ticket.cloud)
    return LiveReport(
        console.row_id,
        ticket,
        server,
        console.admission.caller.client,
        instance,
        console.started_at,
        console.to_cloud,
        console.to_browser,
        console.used_at,
    )


def why(cause: BaseException) -> str:
    """How the cloud's side ended, for a log line (its close code; never the proxy's URL)."""
    if isinstance(cause, ConnectionClosed):
        code = cause.rcvd.code if cause.rcvd else None
        return f"close code {code}" if code else "connection lost"
    return str(cause)
