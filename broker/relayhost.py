"""The relay's host: the broker behind the relay's ``Services`` seam, the Flask app entered once per call.

The relay (broker/relay/) knows nothing of Flask, the session cookie or the database: all of it
is here. Every service call the relay makes is one unit of work, begun and committed in
``unit_of_work``: inside a request context for the browser it is made for (the audit records its
address, agent and request ID), with the app's database session.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from typing import TypeVar

from flask import Flask
from flask import g
from itsdangerous import BadSignature
from sqlalchemy.exc import DBAPIError
from werkzeug.http import parse_cookie

from broker import create_app
from broker import demo
from broker import startup
from broker import state
from broker.cloud.types import ServerInfo
from broker.demo import serialproxy
from broker.extensions import db
from broker.relay.server import Caller
from broker.relay.server import Mount
from broker.relay.server import Relay
from broker.relay.server import Services
from broker.relay.server import SignIn
from broker.schema import is_unreachable
from broker.services import relay as live
from broker.services.consoles import Minted
from broker.services.relay import DatabaseUnavailable
from broker.services.relay import Limits
from broker.services.relay import SessionOver
from broker.services.relay import Ticket
from broker.services.relay import TicketRefused

log = logging.getLogger("broker.relay")

T = TypeVar("T")


@contextmanager
def caller_context(app: Flask, caller: Caller) -> Iterator[None]:
    """A request context for ``caller``: the audit records its address, its agent and a request ID."""
    environ = {"REMOTE_ADDR": caller.client}
    with app.test_request_context("/relay", environ_base=environ, headers={"User-Agent": caller.user_agent}):
        g.request_id = caller.request_id or uuid.uuid4().hex
        yield


# Answers given on purpose: what the call staged (a spent ticket, its refusal's record, a session it
# found over and ended) is committed with them. Anything else raised commits nothing.
REFUSALS = (TicketRefused, SessionOver)


def unit_of_work(app: Flask, call: Callable[..., T], caller: Caller, /, *args: Any, **kwargs: Any) -> T:
    """One service call for the relay, made for ``caller``: the one place where each begins and is committed."""
    with caller_context(app, caller):
        return committed(call, *args, **kwargs)


def committed(call: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``call``, then a commit of what it staged; the database out of reach is DatabaseUnavailable, which the
    relay rides out (it keeps its records back and retries them)."""
    try:
        try:
            result = call(*args, **kwargs)
        except REFUSALS:
            db.session.commit()
            raise
        db.session.commit()
        return result
    except DBAPIError as exc:
        db.session.rollback()
        if not is_unreachable(exc):
            raise
        raise DatabaseUnavailable("the broker's database cannot be reached") from exc
    except BaseException:
        db.session.rollback()
        raise


def identify(app: Flask, cookie_header: str) -> SignIn | None:
    """Whom the Flask session cookie in ``cookie_header`` names, as ``broker.web.sessions.load_user`` reads it.

    None without a cookie, for one this app did not sign (a forged or tampered one, another
    key), one older than a session may live, or one that names no user and session.
    """
    value = parse_cookie(cookie_header).get(app.config["SESSION_COOKIE_NAME"])
    serializer = app.session_interface.get_signing_serializer(app)
    if not value or serializer is None:
        return None
    try:
        # As Flask reads it: signed by this app (or a fallback key), and no older than a session may live.
        data = serializer.loads(value, max_age=int(app.permanent_session_lifetime.total_seconds()))
    except BadSignature:
        return None
    sid = data.get("sid")
    # flask-login keeps "<user id>:<session token>"; the token is load_user's to compare, the relay's ticket
    # is bound to the session instead (redeem checks that it is live).
    raw_id = str(data.get("_user_id") or "").partition(":")[0]
    if not isinstance(sid, str) or not sid or not raw_id.isdigit():
        return None
    return SignIn(int(raw_id), sid)


def services(app: Flask) -> Services:
    """The broker's own: broker.services.relay, minting through the console service, the session limits."""
    settings = state.of(app).settings
    limits = Limits(settings.session_lifetime, settings.session_idle)

    def mint(ticket: Ticket, confirmed: ServerInfo | None) -> Minted:
        return live.mint(state.consoles(), limits, ticket, confirmed)

    def unit(call: Callable[..., T]) -> Callable[..., T]:
        return functools.partial(unit_of_work, app, call)

    return Services(
        identify=functools.partial(identify, app),
        redeem=unit(functools.partial(live.redeem, throttle=state.of(app).throttle)),
        mint=unit(mint),
        opened=unit(live.opened),
        failed=unit(live.failed),
        report=unit(functools.partial(live.report, limits=limits)),
        closed=unit(live.closed),
        noted=unit(live.noted),
    )


def relay(app: Flask, **options: Any) -> Relay:
    """A relay on ``app``'s settings and services (options as ``Relay`` takes them)."""
    return Relay(state.of(app).settings, services(app), **options)


def broker_app() -> Flask:
    """The web process's app, from the same environment: the relay's settings, database, services and audit."""
    # The schema and the demo account are the web process's to make; the relay waits for them.
    return create_app({"SCHEMA_OWNER": False})


def relay_process(app: Flask, host: str, port: int) -> Relay:
    """The relay ``python -m broker.relay`` runs on ``host``:``port``, after forgetting what dead relays left."""
    with app.app_context():
        # Rows a relay left behind when it died (not listed, but never removed by it).
        if gone := committed(live.forget_stale):
            log.info("relay: forgot %d live consoles of relays that stopped without closing them", gone)
    return relay(app, mounts=demo_mounts(app, host, port))


def settle() -> None:
    """The relay process, built and about to serve, keeps what start-up built out of the GC's collections.

    As a web worker does (``startup.settle``): a full collection would otherwise walk the whole app
    while every console of the relay waits.
    """
    startup.settle()


def demo_mounts(app: Flask, host: str, port: int) -> dict[str, Mount]:
    """On the demo cloud, the relay also plays its console proxy: its console URLs name this relay."""
    fake = state.of(app).demo_cloud
    if fake is None:
        return {}
    proxy = demo.consoleproxy
    # The relay reaches its own proxy over loopback whatever address it listens on.
    own = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    fake.serve_consoles_at(f"http://{own}:{port}/demo-console", proxy.PATH.lstrip("/"))

    fake.serial_base = f"ws://{own}:{port}{serialproxy.PATH.rstrip('/')}"

    def lookup(token: str, kind: str = "vnc") -> demo.consoleproxy.Grant | None:
        server = fake.check_console_token(token, kind)
        return proxy.Grant(server.name, fake.console_token_expiry(token)) if server else None

    serial = serialproxy.SerialProxy(functools.partial(lookup, kind="serial"))
    return {proxy.PATH: functools.partial(proxy.handle, lookup=lookup), serialproxy.PATH: serial.handle}
