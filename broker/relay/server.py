"""The relay's websocket server: who may connect (checked before the upgrade), live consoles, and shutdown.

One asyncio process carries every console: a connection costs two websockets, two small
tasks and a few framing bytes, never a thread. The relay knows the broker only through
``Services`` (as websockify knows its tokens only through a plugin): who a cookie signs in,
tickets, mints, live-console rows and audit. Each is synchronous and runs in a worker thread,
one unit of work for a ``Caller``; ``broker.relayhost`` gives the broker's own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import uuid
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from typing import TypeVar
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

from websockets.asyncio.server import Server
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.http11 import Response
from websockets.typing import Subprotocol

from broker.cloud.types import ServerInfo
from broker.config import Settings
from broker.relay import recording
from broker.relay import upstream
from broker.relay.console import GOING_AWAY
from broker.relay.console import REASONS
from broker.relay.console import Carrier
from broker.relay.console import Console
from broker.relay.console import Retry
from broker.relay.serial import Key
from broker.relay.serial import Serial
from broker.relay.serial import Viewer
from broker.relay.upstream import Upstream
from broker.relay.watch import Watcher
from broker.services.consoles import Minted
from broker.services.relay import DatabaseUnavailable
from broker.services.relay import LiveReport
from broker.services.relay import Ticket
from broker.services.relay import TicketRefused

log = logging.getLogger(__name__)

T = TypeVar("T")
# A websocket service served beside the relay on a path of its own, checking its clients itself
# (the demo cloud's console proxy).
Mount = Callable[[ServerConnection], Awaitable[None]]
# A browser's messages are small; a pasted clipboard is the largest (rfb.MAX_CUT_TEXT).
MAX_BROWSER_MESSAGE = (1 << 20) + 64
POLL_INTERVAL = 2.0
HANDSHAKE_TIMEOUT = 10.0
# The answer to a plain GET on the relay's path: proof that an address reaches the relay, not the web app.
PROBE_ANSWER = "console-broker relay\n"
# A viewer offers its ticket as one of its websocket subprotocols, "ticket.<token>" (static/js/viewer.js).
TICKET_PREFIX = "ticket."


@dataclass(frozen=True)
class Caller:
    """Who is on the other end of a websocket, as the audit records it."""

    client: str
    user_agent: str
    # One ID for everything done for one websocket (its ticket, mints, connect and disconnect
    # records); None gives each call a fresh one.
    request_id: str | None


# The relay's own calls (the live-console poll), made for no browser in particular.
RELAY_CALLER = Caller("", "console-broker relay", None)


@dataclass(frozen=True)
class SignIn:
    """Whom a browser's session cookie names: the user and the sign-in session (not yet checked to be live)."""

    user_id: int
    session_id: str


@dataclass(frozen=True)
class Services:
    """What the relay asks of the broker.

    ``identify`` reads the Cookie header (cheap, no database: it runs on the event loop). Every
    other is synchronous, is called in a worker thread with the ``Caller`` it is done for first,
    and is one unit of work; each may raise DatabaseUnavailable, which the relay rides out
    (consoles open go on, records wait).
    """

    identify: Callable[[str], SignIn | None]
    # (caller, token, *, session_id, user_id, origin): every binding of the ticket is checked and audited.
    redeem: Callable[..., Ticket]
    # The ticket, and the server as the console's last mint found it (None before the first).
    mint: Callable[[Caller, Ticket, ServerInfo | None], Minted]
    # (caller, ticket, *, client, instance, server_name): the console's live row, its ID.
    opened: Callable[..., int]
    # (caller, ticket, *, reason): a console that never connected.
    failed: Callable[..., None]
    report: Callable[[Caller, list[LiveReport]], dict[int, int]]
    # (caller, row_id, *, reason, to_cloud, to_browser): a console that ended.
    closed: Callable[..., None]
    # (caller, row_id, *, detail, reason): something that happened in a live console (a hand-over).
    noted: Callable[..., None]


@dataclass(frozen=True)
class Admission:
    """A websocket let in: its redeemed ticket and who holds it."""

    ticket: Ticket
    caller: Caller


def client_address(peer: str, forwarded_for: str, trusted_proxies: int) -> str:
    """The browser's address as the web app's ProxyFix reads it: X-Forwarded-For only from trusted proxies.

    The address the nearest trusted proxy saw is the ``trusted_proxies``-th from the right;
    whatever stands left of it was written by the client and proves nothing.
    """
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    if trusted_proxies and len(hops) >= trusted_proxies:
        return hops[-trusted_proxies]
    return peer


def relay_path(settings: Settings) -> str:
    """The path browsers open: BROKER_RELAY_URL's when set (the relay on a port of its own), else BROKER_RELAY_PATH."""
    if settings.relay_url:
        # "{host}" stands for whatever host the page was opened with; only the path matters here.
        return urlsplit(settings.relay_url.replace("{host}", "relay")).path or "/"
    return settings.relay_path


def select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """``binary`` when offered; a client offering none is still let in (as websockify does) and must send binary.

    The ticket's own offer is never chosen: the answer would echo the ticket back.
    """
    return Subprotocol("binary") if "binary" in offered else None


def offered_ticket(headers: Headers) -> str:
    """The ticket a viewer offers as the subprotocol ``ticket.<token>``, or "" when it offers none or several.

    A header, not the URL: proxies and servers log request lines (nginx's error log does),
    and none logs Sec-WebSocket-Protocol unless told to.
    """
    offers = [
        offer.strip()
        for value in headers.get_all("Sec-WebSocket-Protocol")
        for offer in value.split(",")
        if offer.strip().startswith(TICKET_PREFIX)
    ]
    return offers[0][len(TICKET_PREFIX) :] if len(offers) == 1 else ""


def one_header(headers: Headers, name: str) -> str | None:
    """A header's value when it is sent exactly once (twice is not something a browser does)."""
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else None


class Relay:
    """The websocket server that lets ticket holders in and carries their consoles."""

    def __init__(
        self,
        settings: Settings,
        services: Services,
        *,
        retry: Retry | None = None,
        poll_interval: float = POLL_INTERVAL,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        mounts: Mapping[str, Mount] | None = None,
    ) -> None:
        self.settings = settings
        self.services = services
        self.retry = retry or Retry()
        self.poll_interval = poll_interval
        self.handshake_timeout = handshake_timeout
        self.path = relay_path(settings)
        self.mounts = dict(mounts or {})
        # Which relay carries a console, on the admin page.
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        # What records each graphical console (BROKER_RECORDING=all), or None.
        self.recorders = recording.recorders(settings)
        # Every browser connected: consoles, browsers on serial consoles, watchers.
        self.consoles: set[Console | Viewer | Watcher] = set()
        # Serial consoles open now, one per server, each shared by the browsers on it.
        self.serials: dict[Key, Serial] = {}
        self.stopping = False
        self.server: Server | None = None
        self._admitted: WeakKeyDictionary[ServerConnection, Admission] = WeakKeyDictionary()
        self._poller: asyncio.Task | None = None
        # Records of consoles that ended while the database could not be reached, written once it can.
        self.deferred: list[tuple[Caller, Callable[[], Any]]] = []
        self.database_down = False
        # The poll's report and a console's last record never overlap: a report taken while a console was
        # still open would otherwise write its row back after its close removed it (a console listed, and
        # counted against its user, for STALE_AFTER seconds after it ended).
        self.writing = asyncio.Lock()
        # Consoles the last polls are ending (kept: a task nobody holds may be collected).
        self.endings: set[asyncio.Task] = set()

    # -- serving -----------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> Server:
        """Listen on ``host``:``port`` (0 picks a free port) and start watching live consoles."""
        self.server = await serve(
            self._handle,
            host,
            port,
            process_request=self._admit,
            select_subprotocol=select_subprotocol,
            # permessage-deflate would keep a zlib context per connection: memory, for little gain on RFB.
            compression=None,
            max_size=MAX_BROWSER_MESSAGE,
            server_header=None,
        )
        self._poller = asyncio.create_task(self._poll())
        return self.server

    @property
    def port(self) -> int:
        """The port listened on (the one picked, when started on port 0)."""
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every browser with 1001 (the viewer reconnects with a new ticket) and wait for their records."""
        self.stopping = True
        if self.server is None:
            return
        self.server.close(close_connections=True, code=GOING_AWAY, reason=REASONS[GOING_AWAY])
        await self.server.wait_closed()
        if self._poller is not None:
            self._poller.cancel()

    async def call(self, service: Callable[..., T], caller: Caller, *args: Any, **kwargs: Any) -> T:
        """One of the services, for ``caller``, in a worker thread: the loop never waits on it."""
        return await asyncio.to_thread(service, caller, *args, **kwargs)

    async def open_upstream(self, console_url: str) -> Upstream:
        """The console proxy's websocket behind ``console_url``, past its RFB handshake."""
        return await upstream.open_console(
            console_url, open_timeout=self.settings.connect_timeout, handshake_timeout=self.handshake_timeout
        )

    async def open_serial(self, console_url: str) -> Upstream:
        """The serial proxy's websocket behind ``console_url``."""
        return await upstream.open_serial(console_url, open_timeout=self.settings.connect_timeout)

    # -- who may connect ---------------------------------------------------------------------------

    async def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """``process_request``: a refusal is an HTTP answer, so nothing upgrades without a valid ticket."""
        path = request.path.partition("?")[0]
        if path in self.mounts:
            return None
        if path != self.path:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        headers = request.headers
        if "websocket" not in (one_header(headers, "Upgrade") or "").lower():
            # A plain GET is someone checking that this address reaches the relay (flask check, /readyz).
            return connection.respond(HTTPStatus.OK, PROBE_ANSWER)
        caller = self._caller(connection, headers)
        signed_in = self.services.identify("; ".join(headers.get_all("Cookie")))
        token = offered_ticket(headers)
        origin = one_header(headers, "Origin")
        try:
            # Every binding (session, user, origin, lifetime, single use) is redeem's to check and audit.
            ticket = await self.call(
                self.services.redeem,
                caller,
                token,
                session_id=signed_in.session_id if signed_in else None,
                user_id=signed_in.user_id if signed_in else None,
                origin=origin,
            )
        except TicketRefused as refused:
            return connection.respond(refused.status, f"{HTTPStatus(refused.status).phrase}\n")
        except DatabaseUnavailable:
            log.warning("a relay ticket could not be checked: the database cannot be reached")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable: database unavailable\n")
        except Exception:
            log.exception("a relay ticket could not be checked", extra={"request_id": caller.request_id})
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        self._admitted[connection] = Admission(ticket, caller)
        return None

    def _caller(self, connection: ServerConnection, headers: Headers) -> Caller:
        """Who is connecting: the browser's address (through trusted proxies), its agent, a fresh request ID."""
        peer = connection.remote_address[0] if connection.remote_address else ""
        forwarded = ",".join(headers.get_all("X-Forwarded-For"))
        client = client_address(peer, forwarded, self.settings.trusted_proxies)
        return Caller(client, one_header(headers, "User-Agent") or "", uuid.uuid4().hex)

    # -- consoles ----------------------------------------------------------------------------------

    async def _handle(self, browser: ServerConnection) -> None:
        """A websocket that passed ``_admit``: its console, from handshake to record."""
        admission = self._admitted.pop(browser, None)
        if admission is None:
            await self.mounts[browser.request.path.partition("?")[0]](browser)
            return
        carrier = self.carrier(admission.caller)
        ticket = admission.ticket
        if ticket.watching is not None:
            console: Console | Viewer | Watcher = Watcher(carrier, browser, admission, self._watched(ticket))
        elif ticket.kind == "serial":
            console = Viewer(carrier, browser, admission, self._serial(ticket))
        else:
            console = Console(carrier, browser, admission)
        self.consoles.add(console)
        try:
            await console.run()
        finally:
            self.consoles.discard(console)

    def _watched(self, ticket: Ticket) -> Console | None:
        """The graphical console a watch ticket is for, if this relay carries it (a load balancer sends a
        watcher to its relay by the URL's ``?watch=``)."""
        for console in self.consoles:
            if (
                isinstance(console, Console)
                and console.row_id == ticket.watching
                and (console.ticket.cloud, console.ticket.server_id) == (ticket.cloud, ticket.server_id)
            ):
                return console
        return None

    def _serial(self, ticket: Ticket) -> Serial:
        """The server's serial console, shared by every browser on it; the first browser's opens it."""
        key = (ticket.cloud, ticket.server_id)
        if key not in self.serials:
            self.serials[key] = Serial(key, self.retry, self._forget_serial)
        return self.serials[key]

    def _forget_serial(self, serial: Serial) -> None:
        """A serial console nobody is on any more, or that could not be opened: the next browser starts afresh."""
        if self.serials.get(serial.key) is serial:
            del self.serials[serial.key]

    def carrier(self, caller: Caller) -> Carrier:
        """What a console may ask of this relay, each service call made for ``caller``."""
        services = self.services

        async def opened(ticket: Ticket, server_name: str) -> int:
            return await self.call(
                services.opened, caller, ticket, client=caller.client, instance=self.instance, server_name=server_name
            )

        async def closed(row_id: int, reason: str, to_cloud: int, to_browser: int) -> bool:
            record = functools.partial(
                services.closed, caller, row_id, reason=reason, to_cloud=to_cloud, to_browser=to_browser
            )
            return await self._record(caller, record)

        async def failed(ticket: Ticket, reason: str) -> bool:
            return await self._record(caller, functools.partial(services.failed, caller, ticket, reason=reason))

        async def noted(row_id: int, detail: str, reason: str) -> bool:
            record = functools.partial(services.noted, caller, row_id, detail=detail, reason=reason)
            return await self._record(caller, record)

        return Carrier(
            retry=self.retry,
            handshake_timeout=self.handshake_timeout,
            stopping=lambda: self.stopping,
            connect=self.open_upstream,
            connect_serial=self.open_serial,
            mint=lambda ticket, confirmed: self.call(services.mint, caller, ticket, confirmed),
            opened=opened,
            closed=closed,
            failed=failed,
            noted=noted,
            recorders=self.recorders,
            instance=self.instance,
        )

    async def _record(self, caller: Caller, record: Callable[[], Any]) -> bool:
        """Write a console's record now (True), or keep it back while the database cannot be reached (False)."""
        try:
            async with self.writing:
                await asyncio.to_thread(record)
        except DatabaseUnavailable:
            self.defer(caller, record)
            return False
        return True

    async def _poll(self) -> None:
        """Every few seconds: report bytes (a heartbeat too), and close the consoles that must end now."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll_once()
            except Exception:
                log.exception("live consoles could not be reported")

    async def poll_once(self) -> None:
        """One round of ``_poll``: records kept back are written, consoles reported, those that must end closed.

        While the database cannot be reached, consoles go on with the rights last confirmed; the
        first poll after it is back judges them by the rules as they are then.
        """
        try:
            async with self.writing:
                consoles = {console.row_id: console for console in self.consoles if console.row_id is not None}
                reports = [console.report(self.instance) for console in consoles.values()]
                await self._write_deferred()
                ending = await self.call(self.services.report, RELAY_CALLER, reports)
        except DatabaseUnavailable:
            if not self.database_down:
                log.warning(
                    "the database cannot be reached: %d consoles go on with their rights as last confirmed",
                    len(consoles),
                )
            self.database_down = True
            return
        if self.database_down:
            log.warning("the database is back: consoles are judged by the rules again")
        self.database_down = False
        # Each ending closes its browser in a task of its own: a page that stopped reading never lets its close
        # handshake finish, and must not hold up the next poll (every other console's heartbeat and verdicts).
        for row_id, code in ending.items():
            if row_id in consoles:
                task = asyncio.create_task(consoles[row_id].end(code))
                self.endings.add(task)
                task.add_done_callback(self.endings.discard)

    def defer(self, caller: Caller, record: Callable[[], Any]) -> None:
        """A console's record to write once the database can be reached again (in order, none lost)."""
        self.deferred.append((caller, record))

    async def _write_deferred(self) -> None:
        """The records kept back, oldest first; DatabaseUnavailable leaves the rest for the next poll."""
        while self.deferred:
            caller, record = self.deferred[0]
            try:
                await asyncio.to_thread(record)
            except DatabaseUnavailable:
                raise
            except Exception:
                # Never a record that blocks every later one (and the poll) for ever: logged, and dropped.
                log.exception(
                    "a console's record kept back could not be written", extra={"request_id": caller.request_id}
                )
            self.deferred.pop(0)
