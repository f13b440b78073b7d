"""Watching a relayed console (broker.relay.watch, broker.relay.console's watchers): more browsers on one upstream.

Each scenario runs the relay with the broker's own tickets (real watch tickets, issued for a second
person) and fake mints and records (tests.relay.services) against a fake console proxy that notes
what it received. No sleeps: what must not happen is checked after a later message of the same
websocket has been seen to take effect (the relay handles one websocket's messages in order).
"""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from websockets.exceptions import ConnectionClosed

from broker.cloud.types import ServerInfo
from broker.extensions import db
from broker.models import User
from broker.relay import rfb
from broker.relay import watch
from broker.relay.console import Console
from broker.relay.rfb import RfbError
from broker.relay.server import Relay
from broker.relay.watch import Watcher
from broker.services import relay as live
from tests.relay import FORMAT_32
from tests.relay import Browser
from tests.relay import FakeProxy
from tests.relay import eventually
from tests.relay import raw_update
from tests.relay import run
from tests.relay import typed
from tests.relay.services import ORIGIN
from tests.relay.services import SERVER
from tests.relay.services import FakeServices
from tests.relay.services import relay_app
from tests.relay.services import reported
from tests.relay.services import running
from tests.relay.services import sent_keys
from tests.relay.services import session_cookie
from tests.relay.services import signed_in
from tests.support import ADMIN
from tests.support import AGENT

# The opener's live row as the fake records give it (the first console opened in a scenario), and the
# watchers' after it.
OPENER_ROW = 41
COLLEAGUE = "colleague"
FULL_SCREEN = rfb.framebuffer_update_request(False, 0, 0, 32, 24)
# What a watcher may have waiting in the tests that let one go: small enough to reach quickly, large enough
# for every burst the fake proxy sends between two of the flood's pauses (the relay fans out a burst before
# a watcher's task runs again).
SMALL_PENDING = 256 << 10


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return relay_app(tmp_path_factory)


class Page(Browser):
    """A viewer page as static/js/viewer.js is one: RFB, and the relay's text messages (people, asks, status)."""

    def __init__(self, websocket) -> None:
        super().__init__(websocket)
        self.texts: list[dict] = []

    async def _read(self) -> None:
        try:
            async for data in self.websocket:
                if isinstance(data, str):
                    self.texts.append(json.loads(data))
                else:
                    self._take(data)
        except ConnectionClosed:
            pass
        except RfbError as exc:
            self.error = exc

    def said(self, key: str) -> list:
        """Every text message's ``key``, in order, of those that have it."""
        return [text[key] for text in self.texts if key in text]

    @property
    def people(self) -> dict:
        """The last people message (who is on the console, who drives)."""
        return [text for text in self.texts if "people" in text][-1]

    def drives(self) -> str | None:
        """The pid of the driver, as this page was last told."""
        if not self.said("people"):
            return None
        return next(p["id"] for p in self.people["people"] if p["drives"])

    def on_console(self) -> list[str]:
        """The pids of everyone on the console, as this page was last told."""
        return [p["id"] for p in self.people["people"]] if self.said("people") else []

    async def say(self, **message) -> None:
        await self.websocket.send(json.dumps(message))

    async def type(self, text: str) -> None:
        for message in typed(text):
            await self.websocket.send(message)

    def stop_reading(self) -> None:
        """A frozen tab: nothing more is read from the websocket (what arrives waits in buffers)."""
        self._reader.cancel()

    def read_again(self) -> None:
        self._reader = asyncio.create_task(self._read())


def url(relay: Relay) -> str:
    return f"ws://127.0.0.1:{relay.port}/relay"


async def opened(fakes: FakeServices, relay: Relay) -> Page:
    """The person who opens the console (the fakes' signed-in agent), showing the first screen."""
    fakes.issue()
    page = await Page.connect(url(relay), ticket=fakes.tokens[-1], cookie=fakes.cookie, origin=ORIGIN)
    await page.handshake()
    await page.start()
    await eventually(lambda: page.screens() == [1])
    return page


def watch_ticket(fakes: FakeServices, name: str, row_id: int, role: str, server: ServerInfo) -> tuple[str, str]:
    """A real watch ticket for ``name`` (signed in afresh) on the live row ``row_id``, and that person's cookie."""
    user, sid = signed_in(fakes.app, name)
    with fakes.app.app_context():
        token = live.issue(db.session.get(User, user.id), sid, server, ORIGIN, limit=10, watching=(row_id, role))
        db.session.commit()
    return token, session_cookie(fakes.app, {"sid": sid, "_user_id": user.get_id()})


async def knocks(
    fakes: FakeServices, relay: Relay, name: str = COLLEAGUE, *, row_id=OPENER_ROW, role="watch", server=SERVER
) -> Page:
    """A watcher's page, its websocket open (nothing read yet)."""
    token, cookie = watch_ticket(fakes, name, row_id, role, server)
    return await Page.connect(url(relay), ticket=token, cookie=cookie, origin=ORIGIN)


async def joins(fakes: FakeServices, relay: Relay, name: str = COLLEAGUE, role: str = "watch") -> Page:
    """A watcher past its handshake, its viewer started as noVNC starts, showing the screen."""
    page = await knocks(fakes, relay, name, role=role)
    await page.handshake()
    await page.start()
    await eventually(lambda: page.screens()[:1] == [1])
    return page


def watchers(relay: Relay) -> list[Watcher]:
    return [console for console in relay.consoles if isinstance(console, Watcher)]


def opener_of(relay: Relay) -> Console:
    [console] = [console for console in relay.consoles if isinstance(console, Console)]
    return console


def pointer(x: int) -> bytes:
    return struct.pack(">BBHH", rfb.POINTER_EVENT, 1, x, 5)


def cut_text(text: bytes) -> bytes:
    return struct.pack(">BxxxI", rfb.CLIENT_CUT_TEXT, len(text)) + text


def kinds(proxy: FakeProxy, kind: int) -> list[bytes]:
    return proxy.sessions[0].of_type(kind)


# -- joining ----------------------------------------------------------------------------------------


def test_a_watcher_gets_the_screen_at_its_size_now_then_the_stream_and_the_server_is_asked_for_a_full_screen(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            watcher = await joins(fakes, relay)
            await proxy.sessions[0].send(raw_update(32, 24, 7))
            await eventually(lambda: watcher.screens()[-1:] == [7] and opener.screens()[-1:] == [7])
            return opener, watcher, proxy

    opener, watcher, proxy = run(scenario())
    assert (watcher.init.width, watcher.init.height, watcher.init.name) == (32, 24, b"guest")
    assert watcher.init.pixel_format == FORMAT_32  # the format the opener's viewer set: the stream is in it
    # The screen as the server drew it for the watcher, then what changed, whole messages from the first.
    assert watcher.screens() == [1, 7] and watcher.framer.at_boundary
    assert opener.screens() == [1, 1, 7]
    # One full-screen request for the opener's viewer, one the relay sent for the watcher; the watcher's own
    # SetPixelFormat, SetEncodings and request never reached the server.
    assert kinds(proxy, rfb.FRAMEBUFFER_UPDATE_REQUEST) == [FULL_SCREEN, FULL_SCREEN]
    assert len(kinds(proxy, rfb.SET_PIXEL_FORMAT)) == len(kinds(proxy, rfb.SET_ENCODINGS)) == 1
    # One upstream: watching never mints.
    assert len(proxy.sessions) == 1 and len(fakes.mints) == 1
    [_, joined] = fakes.opened
    assert (joined["ticket"].username, joined["ticket"].watching, joined["ticket"].role) == (COLLEAGUE, 41, "watch")


@pytest.mark.parametrize(
    "row_id, server",
    [(999, SERVER), (OPENER_ROW, ServerInfo("00000000-0000-4000-8000-000000000002", "web-02", "ACTIVE", "lab"))],
    ids=["another-console", "another-server"],
)
def test_a_watch_ticket_for_a_console_this_relay_does_not_carry_is_closed_with_4404(app, row_id, server):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            await opened(fakes, relay)
            page = await knocks(fakes, relay, row_id=row_id, server=server)
            return await page.closed(), list(fakes.closed), proxy

    (code, reason), closed, proxy = run(scenario())
    assert (code, reason) == (4404, "The console ended")
    # Nothing recorded as watching, nothing asked of the cloud for it.
    assert len(fakes.opened) == 1 and closed == []
    assert kinds(proxy, rfb.FRAMEBUFFER_UPDATE_REQUEST) == [FULL_SCREEN]


# -- read-only, until given control -------------------------------------------------------------------


def test_a_watchers_keys_pointer_and_paste_go_nowhere_while_the_openers_keys_reach_the_server(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            watcher = await joins(fakes, relay)
            await watcher.type("rm -rf /")
            await watcher.websocket.send(pointer(3) + cut_text(b"shutdown now"))
            await watcher.say(control="ask")  # handled after all it sent before
            await eventually(lambda: opener.said("asks"))
            await opener.type("ok")
            await eventually(lambda: len(sent_keys(proxy)) == 4)
            return proxy

    proxy = run(scenario())
    assert sent_keys(proxy) == typed("ok")
    assert kinds(proxy, rfb.POINTER_EVENT) == [] and kinds(proxy, rfb.CLIENT_CUT_TEXT) == []


def test_control_given_to_a_watcher_moves_the_keyboard_and_take_gives_it_back(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            watcher = await joins(fakes, relay)
            await eventually(lambda: watcher.drives() == "o")
            await opener.say(control="give", to="w1")
            await eventually(lambda: opener.drives() == "w1" and watcher.drives() == "w1")
            await watcher.type("ls")
            await watcher.websocket.send(pointer(9))
            await eventually(lambda: len(sent_keys(proxy)) == 4 and kinds(proxy, rfb.POINTER_EVENT))
            await opener.type("xx")  # not the driver now: dropped
            await opener.say(control="take")
            await eventually(lambda: watcher.drives() == "o")
            await watcher.type("zz")  # not the driver any more: dropped
            await watcher.say(control="ask")
            await eventually(lambda: opener.said("asks"))
            await opener.type("ok")
            await eventually(lambda: len(sent_keys(proxy)) == 8)
            return proxy

    proxy = run(scenario())
    assert sent_keys(proxy) == typed("ls") + typed("ok")
    assert kinds(proxy, rfb.POINTER_EVENT) == [pointer(9)]
    assert [(n["row"], n["detail"], n["reason"]) for n in fakes.noted] == [
        (41, "hand-over", f"{AGENT[0]} gave control to {COLLEAGUE}"),
        (41, "hand-over", f"{AGENT[0]} took control back from {COLLEAGUE}"),
        (41, "ask", f"{COLLEAGUE} asked {AGENT[0]} for control"),
    ]


def test_a_driving_watcher_may_pass_control_on_or_give_it_back_and_others_may_not_give_it(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            first = await joins(fakes, relay)
            second = await joins(fakes, relay, "second-colleague")
            await eventually(lambda: opener.on_console() == ["o", "w1", "w2"])
            # A watcher who does not drive gives nothing; the opener takes nothing it has.
            await second.say(control="give", to="w2")
            await opener.say(control="take")
            await opener.say(control="give", to="w1")
            await eventually(lambda: second.drives() == "w1")
            await first.say(control="give", to="w2")
            await eventually(lambda: opener.drives() == "w2")
            await second.say(control="release")
            await eventually(lambda: first.drives() == "o")
            return proxy

    run(scenario())
    assert [n["reason"] for n in fakes.noted] == [
        f"{AGENT[0]} gave control to {COLLEAGUE}",
        f"{COLLEAGUE} gave control to second-colleague",
        f"second-colleague gave control back to {AGENT[0]}",
    ]


def test_a_watchers_ask_reaches_the_other_pages_once_in_a_while_and_is_recorded(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            watcher = await joins(fakes, relay)
            admin = await joins(fakes, relay, ADMIN[0], role="observe")
            await eventually(lambda: watcher.on_console() == ["o", "w1", "w2"])
            await watcher.say(control="ask")
            await watcher.say(control="ask")  # again at once: every page would hear it again
            await watcher.websocket.close()
            await eventually(lambda: opener.on_console() == ["o", "w2"] and admin.on_console() == ["o", "w2"])
            return opener, watcher, admin

    opener, watcher, admin = run(scenario())
    assert opener.said("asks") == admin.said("asks") == [{"id": "w1", "name": COLLEAGUE}]
    assert watcher.said("asks") == []
    assert [(n["detail"], n["reason"]) for n in fakes.noted] == [("ask", f"{COLLEAGUE} asked {AGENT[0]} for control")]


# -- who is there --------------------------------------------------------------------------------------


def test_every_page_hears_who_is_on_the_console_and_who_drives_with_an_observing_admin_named(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            watcher = await joins(fakes, relay)
            admin = await joins(fakes, relay, ADMIN[0], role="observe")
            pages = (opener, watcher, admin)
            await eventually(lambda: all(page.on_console() == ["o", "w1", "w2"] for page in pages))
            await opener.say(control="give", to="w1")
            await eventually(lambda: all(page.drives() == "w1" for page in pages))
            return pages

    pages = run(scenario())
    everyone = [
        {"id": "o", "name": AGENT[0], "role": "open", "drives": False},
        {"id": "w1", "name": COLLEAGUE, "role": "watch", "drives": True},
        {"id": "w2", "name": ADMIN[0], "role": "observe", "drives": False},
    ]
    for page, you in zip(pages, ["o", "w1", "w2"], strict=True):
        assert page.people == {"people": everyone, "you": you, "console": OPENER_ROW}
        assert page.framer.at_boundary  # text messages never cut into the RFB stream


# -- leaving and ending --------------------------------------------------------------------------------


def test_a_watcher_leaving_ends_nothing_and_control_returns_to_the_opener(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            watcher = await joins(fakes, relay)
            await opener.say(control="give", to="w1")
            await eventually(lambda: watcher.drives() == "w1")
            await watcher.websocket.close()
            await eventually(lambda: opener.on_console() == ["o"] and opener.drives() == "o")
            await opener.type("ok")
            await eventually(lambda: len(sent_keys(proxy)) == 4)
            await eventually(lambda: len(fakes.closed) == 1)
            return opener.websocket.close_code, list(fakes.closed), proxy

    still_open, records, proxy = run(scenario())
    assert still_open is None
    assert sent_keys(proxy) == typed("ok")
    assert fakes.noted[-1]["reason"] == f"control went back to {AGENT[0]}: {COLLEAGUE} left"
    [closed] = records
    assert (closed["row"], closed["reason"]) == (42, "the browser closed the connection (1000)")


def test_the_opener_leaving_ends_every_watcher_with_4404_and_each_is_recorded(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            first = await joins(fakes, relay)
            second = await joins(fakes, relay, ADMIN[0], role="observe")
            await opener.websocket.close()
            return await first.closed(), await second.closed(), relay

    first, second, relay = run(scenario())
    assert first == second == (4404, "The console ended")
    by_row = {closed["row"]: closed["reason"] for closed in fakes.closed}
    assert by_row == {
        41: "the browser closed the connection (1000); 1 console URL minted",
        42: "the console ended: the browser closed the connection (1000)",
        43: "the console ended: the browser closed the connection (1000)",
    }


async def flood(proxy: FakeProxy, relay: Relay, *pages: Page) -> int:
    """Screens from the server until the relay lets a watcher go; how many were sent. Every 16 it waits for
    ``pages`` to have them all, so that only a page that stopped reading falls behind."""
    session = proxy.sessions[0]
    base = {page: len(page.screens()) for page in pages}
    for sent in range(1, 20_000):
        await session.send(raw_update(32, 24, sent))
        if sent % 16 == 0:
            await eventually(lambda: all(len(page.screens()) == base[page] + sent for page in pages))
        if any(watcher.ending is not None for watcher in watchers(relay)):
            return sent
    raise AssertionError("no watcher was let go")


def test_a_watcher_that_stops_reading_is_let_go_with_1013_while_the_opener_and_other_watchers_go_on(app, monkeypatch):
    monkeypatch.setattr(watch, "MAX_PENDING", SMALL_PENDING)
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            frozen = await joins(fakes, relay)
            reading = await joins(fakes, relay, "second-colleague")
            frozen.stop_reading()
            sent = await flood(proxy, relay, opener, reading)
            let_go = {watcher.name: watcher for watcher in watchers(relay) if watcher.ending is not None}
            # What waited for it is dropped at once: a frozen tab costs the relay no more memory.
            assert [(name, w.ending.code, w.pending_size) for name, w in let_go.items()] == [(COLLEAGUE, 1013, 0)]
            await eventually(lambda: reading.screens()[-1:] == opener.screens()[-1:] == [sent % 256])
            await opener.type("ok")
            await eventually(lambda: len(sent_keys(proxy)) == 4)
            frozen.read_again()  # the page wakes up: it hears why it was let go
            closed = await frozen.closed()
            await eventually(lambda: fakes.closed)
            still_open = (opener.websocket.close_code, reading.websocket.close_code)
            return closed, still_open, list(fakes.closed)

    closed, still_open, records = run(scenario())
    assert closed == (1013, "Too slow to keep up")
    assert still_open == (None, None)
    [record] = records
    assert (record["row"], record["reason"]) == (42, "the watcher's browser did not keep up")


def test_the_opener_leaving_is_recorded_at_once_though_a_watcher_stopped_reading(app, monkeypatch):
    monkeypatch.setattr(watch, "MAX_PENDING", SMALL_PENDING)
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            frozen = await joins(fakes, relay)
            frozen.stop_reading()
            await flood(proxy, relay, opener)
            await opener.websocket.close()
            try:
                await eventually(lambda: any(closed["row"] == 41 for closed in fakes.closed), timeout=2)
            finally:
                frozen.read_again()  # else the relay's shutdown waits for it too

    run(scenario())


@pytest.mark.parametrize(
    "text",
    ["hello", "[1, 2]", '"give"', json.dumps({"control": "ask", "pad": "x" * 300})],
    ids=["not-json", "array", "string", "too-long"],
)
def test_a_watcher_sending_text_that_is_not_a_control_message_is_closed_with_1002_alone(app, text):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            watcher = await joins(fakes, relay)
            await watcher.websocket.send(text)
            closed = await watcher.closed()
            await opener.type("ok")
            await eventually(lambda: len(sent_keys(proxy)) == 4 and fakes.closed)
            return closed, opener.websocket.close_code, list(fakes.closed)

    closed, still_open, records = run(scenario())
    assert closed == (1002, "Not a control message")
    assert still_open is None
    [record] = records
    assert record["row"] == 42 and record["reason"].startswith("the watcher sent what it may not: ")


def test_a_watcher_sending_what_rfb_does_not_have_is_closed_with_1002_alone(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            watcher = await joins(fakes, relay)
            await watcher.websocket.send(b"\x07\x00")
            closed = await watcher.closed()
            await opener.type("ok")
            await eventually(lambda: len(sent_keys(proxy)) == 4)
            return closed, opener.websocket.close_code

    closed, still_open = run(scenario())
    assert closed == (1002, "Unsupported RFB message")
    assert still_open is None


# -- the relay's poll -----------------------------------------------------------------------------------


def test_watchers_are_reported_with_their_own_rows_and_one_whose_rights_went_ends_alone(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            watcher = await joins(fakes, relay)
            await eventually(lambda: set(reported(fakes)) == {41, 42})
            report = reported(fakes)[42]
            fakes.ending[42] = 4403
            closed = await watcher.closed()
            await eventually(lambda: opener.on_console() == ["o"])
            await opener.type("ok")
            await eventually(lambda: len(sent_keys(proxy)) == 4)
            await eventually(lambda: set(reported(fakes)) == {41} and fakes.closed)
            return report, closed, opener.websocket.close_code, list(fakes.closed)

    report, closed, still_open, records = run(scenario())
    assert (report.ticket.username, report.ticket.watching, report.ticket.role) == (COLLEAGUE, 41, "watch")
    assert report.server.id == SERVER.id
    assert closed == (4403, "No server with this ID that you may open")
    assert still_open is None
    [record] = records
    assert (record["row"], record["reason"]) == (42, "the user may no longer open this server")


def test_a_watcher_at_the_keyboard_counts_as_use_of_its_own_session(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            watcher = await joins(fakes, relay)
            await opener.say(control="give", to="w1")
            await eventually(lambda: watcher.drives() == "w1")
            await watcher.type("a")
            await eventually(lambda: len(sent_keys(proxy)) == 2)
            [joined] = watchers(relay)
            return joined.used_at, opener_of(relay).used_at

    watcher_used, opener_used = run(scenario())
    assert watcher_used is not None
    assert opener_used is None  # the opener's viewer sent no keys of its own


async def frozen_behind(proxy: FakeProxy, relay: Relay, opener: Page) -> None:
    """Screens from the server until the one watcher's websocket takes no more (its page stopped reading)."""
    [watcher] = watchers(relay)
    base = len(opener.screens())
    for sent in range(1, 20_000):
        await proxy.sessions[0].send(raw_update(32, 24, sent))
        if sent % 16 == 0:
            await eventually(lambda: len(opener.screens()) == base + sent)
            if watcher.browser.paused:
                return
    raise AssertionError("the watcher's websocket never filled up")


def test_the_poll_goes_on_while_a_watcher_it_ended_has_stopped_reading(app):
    fakes = FakeServices(app)

    async def scenario():
        async with running(fakes) as (relay, proxy):
            opener = await opened(fakes, relay)
            frozen = await joins(fakes, relay)
            frozen.stop_reading()
            await frozen_behind(proxy, relay, opener)
            polls = len(fakes.reports)
            fakes.ending[42] = 4403
            try:
                # Later polls still report (and judge) the opener's console.
                await eventually(lambda: len(fakes.reports) >= polls + 3, timeout=2)
            finally:
                frozen.read_again()

    run(scenario())
