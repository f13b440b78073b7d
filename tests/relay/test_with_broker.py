"""The relay on the broker's real services: a ticket from the API, a mint on the stand-in cloud, rows and audit."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from broker import relayhost
from broker.extensions import db
from broker.models import AuditRecord
from broker.models import LiveConsole
from broker.relay import rfb
from tests.relay import Browser
from tests.relay import FakeProxy
from tests.relay import eventually
from tests.relay import run
from tests.relay import typed
from tests.support import server_id


@pytest.mark.parametrize("console_mode", ["relay"])
def test_a_console_through_the_relay_is_minted_recorded_and_audited(app, client, auth, fake, console_mode):
    auth.login()
    response = client.post(
        f"/api/relay-tickets/{server_id(1)}", query_string={"cloud": "lab"}, headers={"X-CSRFToken": auth.csrf()}
    )
    assert response.status_code == 201
    ticket = response.get_json()["ticket"]
    cookie = f"session={client.get_cookie('session').value}"

    async def scenario():
        async with FakeProxy() as proxy:
            fake.serve_consoles_at(f"http://127.0.0.1:{proxy.port}", "")
            relay = relayhost.relay(app, poll_interval=0.02)
            await relay.start("127.0.0.1", 0)
            try:
                browser = await Browser.connect(
                    f"ws://127.0.0.1:{relay.port}/relay", ticket=ticket, cookie=cookie, origin="http://localhost"
                )
                await browser.handshake()
                await browser.start()
                await eventually(lambda: browser.screens() == [1])
                for message in typed("id"):
                    await browser.websocket.send(message)
                await eventually(lambda: len(proxy.sessions[0].of_type(rfb.KEY_EVENT)) == 4)
                await eventually(lambda: live_rows(app) and live_rows(app)[0].to_cloud > 0)
                await browser.websocket.close()
                await eventually(lambda: not relay.consoles)
                # Its end is recorded in a worker thread, which may still be at it: the row goes with the record.
                await eventually(lambda: not live_rows(app))
            finally:
                await relay.stop()

    run(scenario())
    with app.app_context():
        assert live_rows(app) == []
        # One record of the console handed out (when its cloud side connected), one of how it ended.
        [opened] = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "console")).all()
        assert (opened.outcome, opened.detail, opened.server_name, opened.client) == (
            "ok",
            "relay",
            "web-01",
            "127.0.0.1",
        )
        assert opened.reason.startswith("connected through relay ")
        [disconnect] = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "relay")).all()
        assert disconnect.detail == "disconnect"
        assert "the browser closed the connection (1000)" in disconnect.reason
        assert "; 1 console URL minted; " in disconnect.reason
        # One request ID ties the console's records together.
        assert opened.request_id == disconnect.request_id


def live_rows(app) -> list[LiveConsole]:
    with app.app_context():
        rows = db.session.scalars(select(LiveConsole)).all()
        db.session.expunge_all()
        return list(rows)
