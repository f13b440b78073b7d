"""Relay mode in the field, in Chromium against the lab: access that ends ends the console (idle and
absolute limits, a rule removed), faults a console rides through or reports (the cloud refusing
console URLs while its side is lost, PostgreSQL unreachable), and a relay that cannot be reached.

One lab serves the module, as test_relay.py's: relay mode, the proxy enforcing 20 s tokens, a
Linux guest whose serial log shows what was typed. Its database is PostgreSQL (a database of the
module's own, reached through a TCP forwarder the outage test cuts), or SQLite where PostgreSQL
does not answer; then only the outage test skips. Each test signs in as a user of its own.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as field_of
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import expect
from sqlalchemy import Engine
from sqlalchemy import create_engine
from sqlalchemy import make_url
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from lab import Lab
from lab import LabServer
from lab.browser import ANNOUNCEMENTS_JS
from lab.browser import DESKTOP
from lab.browser import VIEWER_STATES_JS
from lab.browser import announced
from lab.browser import key_for
from lab.browser import said_in_order
from lab.lab import CLOUD_NAME
from lab.lab import REPO
from tests.axe import assert_accessible
from tests.e2e.test_relay import BIOS
from tests.e2e.test_relay import ENDING_SECONDS
from tests.e2e.test_relay import SHELL
from tests.e2e.test_relay import SWITCH_AFTER
from tests.e2e.test_relay import TTL
from tests.e2e.test_relay import flask
from tests.e2e.test_relay import open_console
from tests.e2e.test_relay import proxy_cuts
from tests.e2e.test_relay import record_mints
from tests.e2e.test_relay import sleep_until
from tests.e2e.test_relay import type_marker
from tests.e2e.test_relay import wait_live
from tests.support import POSTGRES_URL
from tests.support import Forwarder
from tests.support import needs
from tests.support import wait_until

# What the viewer says while the relay holds back what is typed (static/js/viewer.js).
AWAY = "Your keys are not reaching the server: reconnecting to the cloud's console…"
# The relay's budget for reopening the cloud's side, in seconds (broker.relay.console.Retry).
RELAY_BUDGET = 20
# The cloud's breaker (broker.cloud.resilience) stays open 10 s once five mints in a row failed.
BREAKER_COOLDOWN = 10
PG_OPTIONS = {"options": "-c timezone=UTC"}
# Each test's own user (allowed every lab server), so that none sees another's sessions or rules.
USERS = ("idle-watcher", "lifetime-watcher", "ruled-out", "relay-down", "cloud-refuses", "cloud-gone", "db-outage")
# The relay's log line for a console's record that waits for the database (broker.relay.console).
RECORD_KEPT_BACK = "its record waits for the database"


@contextmanager
def own_postgres() -> Iterator[tuple[URL, Forwarder] | None]:
    """A database of this module's own on the test PostgreSQL and a forwarder to it; None without PostgreSQL."""
    url = make_url(POSTGRES_URL)
    admin = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 2})
    name = f"relay_field_{secrets.token_hex(4)}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except SQLAlchemyError:
        admin.dispose()
        yield None
        return
    forwarder = Forwarder((url.host or "127.0.0.1", url.port or 5432))
    try:
        yield url.set(database=name), forwarder
    finally:
        forwarder.close()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class FieldLab:
    """The module's lab, a connection to its database that never goes through the forwarder, and its mints."""

    lab: Lab
    db: Engine
    forwarder: Forwarder | None
    passwords: dict[str, str] = field_of(default_factory=dict)
    minted: list[tuple[float, str, str]] = field_of(default_factory=list)

    def mints_of(self, name: str) -> list[float]:
        return [at for at, server, _ in list(self.minted) if server == name]

    def query(self, sql: str, **params: object) -> list[dict]:
        with self.db.begin() as connection:
            return [dict(row._mapping) for row in connection.execute(text(sql), params)]

    def change(self, sql: str, **params: object) -> int:
        with self.db.begin() as connection:
            return connection.execute(text(sql), params).rowcount


# The operator's commands, all in one process: each ``flask`` command spends seconds importing the broker.
FLASK_COMMANDS = """
import json, sys
from app import app
runner = app.test_cli_runner()
for args, stdin in json.load(sys.stdin):
    done = runner.invoke(args=args, input=stdin)
    if done.exit_code:
        sys.exit(f"flask {' '.join(args)}: {done.output}")
"""


def add_users(lab: Lab, passwords: dict[str, str]) -> None:
    """``flask users add`` and ``rules add`` (every lab server) for each user, as ``Lab.add_user`` does."""
    commands = []
    for name, password in passwords.items():
        commands.append((["users", "add", name, "--password-stdin"], password + "\n"))
        commands.append((["rules", "add", "--user", name, "--cloud", CLOUD_NAME], ""))
    done = subprocess.run(
        [sys.executable, "-c", FLASK_COMMANDS],
        input=json.dumps(commands),
        env=lab.broker_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def field(linux_lab_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldLab]:
    servers = [LabServer(SHELL, guest="linux", ip="10.0.0.41"), LabServer(BIOS, ip="10.0.0.42")]
    workdir = tmp_path_factory.mktemp("relay-field-lab")
    with own_postgres() as postgres:
        direct, forwarder = postgres or (make_url(f"sqlite:///{workdir / 'broker.db'}"), None)
        through = direct.set(host="127.0.0.1", port=forwarder.port) if forwarder else direct
        with Lab(
            console_mode="relay",
            enforce_session_timeout=True,
            console_ttl=TTL,
            servers=servers,
            workdir=workdir,
            database_url=through.render_as_string(hide_password=False),
        ) as lab:
            engine = create_engine(direct, connect_args=PG_OPTIONS if forwarder else {})
            setup = FieldLab(lab, engine, forwarder, {user: secrets.token_urlsafe(12) for user in USERS})
            record_mints(lab, setup.minted)
            add_users(lab, setup.passwords)
            lab.wait_for_shell(SHELL)
            yield setup
            engine.dispose()


@pytest.fixture
def signed_in(browser: Browser, field: FieldLab) -> Iterator[Callable[[str], BrowserContext]]:
    """``signed_in(name)``: a browser context signed in once as ``name``, one of USERS."""
    contexts: list[BrowserContext] = []

    def make(name: str) -> BrowserContext:
        lab = field.lab
        password = field.passwords[name]
        context = browser.new_context(base_url=lab.broker_url, viewport=DESKTOP)
        context.add_init_script(VIEWER_STATES_JS)
        context.add_init_script(ANNOUNCEMENTS_JS)
        contexts.append(context)
        page = context.new_page()
        page.goto("/login")
        page.fill("#username", name)
        page.fill("#password", password)
        with page.expect_navigation():
            page.click("#sign-in")
        expect(page.locator("#current-user")).to_have_text(name)
        page.close()
        return context

    yield make
    for context in contexts:
        context.close()


def utc_ago(seconds: float) -> datetime:
    """A moment in the past as the broker stores times: UTC, without a zone."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).replace(tzinfo=None)


def key_presses(text_typed: str) -> int:
    """Keys ``press_keys`` puts down for ``text_typed``: Shift counts, as the relay counts it."""
    return sum(2 if key_for(char).startswith("Shift+") else 1 for char in text_typed)


def marker_line(marker: str) -> str:
    return f"echo {marker} > /dev/ttyS0\n"


# -- access that ends ends the console -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "column", "age"),
    [("idle", "seen_at", 2 * 3600), ("lifetime", "started_at", 2 * 86400)],
)
def test_a_console_that_only_watches_is_signed_out_past_the_session_limits(
    signed_in: Callable[[str], BrowserContext], field: FieldLab, limit: str, column: str, age: int
) -> None:
    """Item 1: screen updates are no use of the session; past BROKER_SESSION_IDLE (1 h) or _LIFETIME (12 h): 4401."""
    user = f"{limit}-watcher"  # one of USERS
    page = open_console(signed_in(user), BIOS)
    # Nothing is typed or clicked from here on: the console only receives the server's screen.
    changed = field.change(
        f"UPDATE user_sessions SET {column} = :past "
        "WHERE ended_at IS NULL AND user_id = (SELECT id FROM users WHERE username = :user)",
        past=utc_ago(age),
        user=user,
    )
    assert changed == 1
    expect(page.locator("#console")).to_have_attribute("data-state", "signin", timeout=ENDING_SECONDS * 1000)
    expect(page.locator("#notice-text")).to_contain_text("Your sign-in has ended")
    expect(page.locator("#notice-signin")).to_be_visible()
    assert page.get_attribute("#notice-signin", "href").startswith("/login")
    expect(page.locator("#console")).to_have_attribute("data-connects", "1")
    # The relay ended the sign-in too: the next page of this browser is the sign-in page.
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\b"))


def test_removing_the_users_rule_closes_their_open_console(
    signed_in: Callable[[str], BrowserContext], field: FieldLab
) -> None:
    """Item 2: within one relay poll, not at the next console URL (the next mint here is 15 s away)."""
    user = "ruled-out"
    page = open_console(signed_in(user), BIOS)
    rules = field.query(
        "SELECT r.id FROM access_rules r JOIN users u ON u.id = r.user_id WHERE u.username = :user", user=user
    )
    assert len(rules) == 1
    flask(field.lab, "rules", "remove", str(rules[0]["id"]))
    expect(page.locator("#console")).to_have_attribute("data-state", "refused", timeout=ENDING_SECONDS * 1000)
    expect(page.locator("#notice-text")).to_contain_text("you may open")
    expect(page.locator("#console")).to_have_attribute("data-connects", "1")
    # The relay's poll closed it, not a refused mint (which would name the mint).
    found = wait_until(lambda: disconnects(field, user), timeout=10, interval=0.1, message="the disconnect's record")
    assert found[0]["reason"].startswith("the user may no longer open this server;"), found


# -- a relay that cannot be reached ---------------------------------------------------------------------------


def test_a_relay_that_cannot_be_reached_is_said_and_tried_again(
    signed_in: Callable[[str], BrowserContext], field: FieldLab
) -> None:
    """Item 10 (viewer): websockets that never open, twice in a row, are "cannot be reached", not "Connecting…"."""
    lab = field.lab
    context = signed_in("relay-down")
    open_before = open_console(context, BIOS)
    lab.stop_relay()
    try:
        opened_after = context.new_page()
        opened_after.goto(f"/console/{BIOS}")
        for page, trying in ((open_before, "Reconnecting…"), (opened_after, "Connecting…")):
            expect(page.locator("#notice-text")).to_contain_text("The console relay cannot be reached", timeout=10000)
            expect(page.locator("#notice-next")).to_have_text(re.compile(r"Next try in \d+ s\.|Trying now…"))
            expect(page.locator("#live-status")).to_have_text(re.compile(rf"{trying} \(next try in \d+ s\)"))
            expect(page.locator("#reconnect")).to_be_enabled()
            expect(page.locator("#notice-retry")).to_be_visible()
        expect(open_before.locator("#console")).to_have_attribute("data-state", "reconnecting")
        expect(opened_after.locator("#console")).to_have_attribute("data-state", "loading")
        assert_accessible(open_before, "relay viewer, the relay cannot be reached")
    finally:
        lab.start_relay()
    # Left alone, both pages come back by themselves (the next try is at most 30 s away).
    wait_live(open_before, timeout=35)
    wait_live(opened_after, timeout=35)
    expect(open_before.locator("#notice")).to_be_hidden()
    expect(open_before.locator("#console")).to_have_attribute("data-connects", "2")
    expect(opened_after.locator("#console")).to_have_attribute("data-connects", "1")
    expect(opened_after.locator("#notice")).to_be_hidden()


# -- the cloud refusing console URLs while its side is lost ---------------------------------------------------


@contextmanager
def mints_refused(lab: Lab) -> Iterator[Callable[[], None]]:
    """The cloud answers every console request with 500 until the ``lift`` it yields is called (or the block ends)."""
    faults = lab.cloud.faults

    def lift() -> None:
        faults.fail_next.pop("console", None)

    faults.fail_next["console"] = [500] * 100_000
    try:
        yield lift
    finally:
        lift()


def test_keys_held_back_while_the_cloud_refuses_are_said_at_once_and_delivered(
    signed_in: Callable[[str], BrowserContext], field: FieldLab
) -> None:
    """Item 12: the side the relay could not replace is cut at its expiry; the page says at once that keys are not
    reaching the server (never "Connected"), and once the cloud mints again they are delivered, in order."""
    lab = field.lab
    tag = secrets.token_hex(3)
    before = len(field.mints_of(SHELL))
    page = open_console(signed_in("cloud-refuses"), SHELL)
    page.click("#screen")
    minted = wait_until(lambda: field.mints_of(SHELL)[before:], timeout=10, interval=0.1, message="the console's mint")[
        0
    ]
    cuts = proxy_cuts(lab)
    sleep_until(minted + SWITCH_AFTER - 1)
    with mints_refused(lab) as lift:
        # The relay's replacement fails; the proxy cuts the side it kept when its token expires.
        wait_until(lambda: proxy_cuts(lab) > cuts, timeout=TTL, interval=0.1, message="the proxy's cut at expiry")
        cut = time.monotonic()
        expect(page.locator("#console")).to_have_attribute("data-upstream", "away", timeout=2000)
        assert time.monotonic() - cut < 2, "the page said it late"
        expect(page.locator("#live-status")).to_have_text(AWAY)
        expect(page.locator("#notice-text")).to_have_text(AWAY)
        type_marker(page, f"A1-{tag}")
        type_marker(page, f"A2-{tag}")
        lift()
    expect(page.locator("#console")).not_to_have_attribute(
        "data-upstream", "away", timeout=(BREAKER_COOLDOWN + 8) * 1000
    )
    expect(page.locator("#live-status")).to_have_text("Connected")
    expect(page.locator("#notice")).to_be_hidden()
    type_marker(page, f"A3-{tag}")
    lab.wait_for_serial(SHELL, f"A3-{tag}", timeout=10)
    log = lab.serial_log(SHELL)
    positions = [log.find(f"A{n}-{tag}") for n in (1, 2, 3)]
    assert -1 not in positions and positions == sorted(positions), positions
    expect(page.locator("#console")).to_have_attribute("data-connects", "1")
    said = announced(page)
    assert said_in_order(said, ["Connected", AWAY]), said
    assert said[said.index(AWAY) :] == [AWAY, "Connected"], said  # nothing said it was connected meanwhile


def test_keys_the_relay_had_to_drop_are_counted_and_the_page_reconnects_by_itself(
    signed_in: Callable[[str], BrowserContext], field: FieldLab
) -> None:
    """Item 12: past the relay's budget its queue is dropped; the page says how many keys, tries again by itself
    (keys typed meanwhile wait in the page and are sent), and keeps the count in sight once connected."""
    lab = field.lab
    tag = secrets.token_hex(3)
    page = open_console(signed_in("cloud-gone"), SHELL)
    page.click("#screen")
    with mints_refused(lab) as lift:
        lab.restart_proxy()  # the cloud's side is lost now, and no new one can be had
        expect(page.locator("#console")).to_have_attribute("data-upstream", "away", timeout=5000)
        dropped = f"D-{tag}"
        type_marker(page, dropped)
        expect(page.locator("#console")).to_have_attribute(
            "data-state", "reconnecting", timeout=(RELAY_BUDGET + 5) * 1000
        )
        count = key_presses(marker_line(dropped))
        said = f"The cloud's console is unreachable. {count} keys typed did not reach the server."
        expect(page.locator("#notice-text")).to_have_text(f"{said} Reconnecting by itself.")
        expect(page.locator("#notice-next")).to_have_text(re.compile(r"Next try in \d+ s\.|Trying now…"))
        expect(page.locator("#console")).not_to_have_attribute("data-upstream", "away")
        queued = f"Q-{tag}"
        type_marker(page, queued)  # the page keeps these until it is connected again
        lift()
    wait_live(page, timeout=BREAKER_COOLDOWN + RELAY_BUDGET)
    expect(page.locator("#console")).to_have_attribute("data-connects", "2")
    lab.wait_for_serial(SHELL, queued, timeout=10)
    assert dropped not in lab.serial_log(SHELL), "keys said to be lost reached the server"
    expect(page.locator("#notice-text")).to_have_text(
        f"{count} keys you typed did not reach the server: type again what is still needed."
    )
    assert_accessible(page, "relay viewer, keys that did not reach the server")
    page.click("#notice-dismiss")
    expect(page.locator("#notice")).to_be_hidden()
    again = f"T-{tag}"
    type_marker(page, again)
    lab.wait_for_serial(SHELL, again, timeout=10)


# -- PostgreSQL unreachable -----------------------------------------------------------------------------------


def test_a_database_outage_leaves_a_working_console_alone(
    signed_in: Callable[[str], BrowserContext], field: FieldLab
) -> None:
    """Item 13: 20 s without PostgreSQL across a switch and an expiry: the console stays live, every marker
    arrives, and its record, kept back while the database was away, is written once it is back."""
    if field.forwarder is None:
        needs(f"needs PostgreSQL at {POSTGRES_URL} (BROKER_TEST_DATABASE_URL) for the lab's database")
    lab = field.lab
    user = "db-outage"
    tag = secrets.token_hex(3)
    before = len(field.mints_of(SHELL))
    page = open_console(signed_in(user), SHELL)
    page.click("#screen")
    minted = wait_until(lambda: field.mints_of(SHELL)[before:], timeout=10, interval=0.1, message="the console's mint")[
        0
    ]
    markers = []
    field.forwarder.cut()
    try:
        # Typed across the relay's switch (at SWITCH_AFTER) and the first token's expiry (TTL), both in the outage.
        while time.monotonic() < minted + TTL + 2:
            markers.append(f"P{len(markers) + 1}-{tag}")
            type_marker(page, markers[-1])
            time.sleep(2)
        lab.wait_for_serial(SHELL, markers[-1], timeout=10)
        changes = [value for _, name, value in page.evaluate("window.__states") if name == "data-state"]
        kept_back = relay_log(lab).count(RECORD_KEPT_BACK)
        page.close()  # its record must wait for the database
        wait_until(
            lambda: relay_log(lab).count(RECORD_KEPT_BACK) > kept_back,
            timeout=10,
            interval=0.1,
            message="the record kept back",
        )
        assert not disconnects(field, user)
    finally:
        field.forwarder.restore()
    assert changes[changes.index("live") :] == ["live"], changes
    log = lab.serial_log(SHELL)
    positions = [log.find(marker) for marker in markers]
    assert -1 not in positions and positions == sorted(positions), dict(zip(markers, positions, strict=True))
    assert len(field.mints_of(SHELL)) - before >= 2, "the outage did not span a switch"
    found = wait_until(lambda: disconnects(field, user), timeout=10, interval=0.1, message="the disconnect's record")
    assert len(found) == 1 and found[0]["reason"].startswith("the browser closed the connection"), found
    assert not field.query("SELECT id FROM live_consoles WHERE username = :user", user=user), (
        "its live console row stayed"
    )


def disconnects(field: FieldLab, user: str) -> list[dict]:
    return field.query(
        "SELECT reason FROM audit WHERE action = 'relay' AND detail = 'disconnect' AND username = :user", user=user
    )


def relay_log(lab: Lab) -> str:
    return (lab.workdir / "relay.log").read_text(errors="replace")
