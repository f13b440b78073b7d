"""Where an agent starts: recent consoles from the audit trail, pins kept in the database."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import create_engine
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.engine import make_url

from broker import create_app
from broker import state
from broker.extensions import db
from broker.models import Pin
from broker.services import audit
from broker.services import policy
from broker.services import shortcuts
from broker.services import users
from tests.support import ADMIN
from tests.support import AGENT
from tests.support import broker_env
from tests.support import server_id


@pytest.fixture
def mint(client, auth):
    """Open consoles through the API, as the console page does."""
    auth.login()
    token = auth.csrf()

    def open_console(n: int) -> None:
        response = client.post(f"/api/consoles/{server_id(n)}?cloud=lab", headers={"X-CSRFToken": token})
        assert response.status_code == 200, response.get_json()

    return open_console


def recent_names(app, username: str = AGENT[0], limit: int = shortcuts.RECENT) -> list[str]:
    with app.app_context():
        user = users.find(username)
        return [opened.server.name for opened in shortcuts.recent(user, state.consoles(), limit)]


def test_recent_is_newest_first_once_per_server(app, mint):
    for n in (1, 2, 1, 4):
        mint(n)
    assert recent_names(app) == ["worker", "web-01", "web-02"]


def test_recent_keeps_only_opened_consoles_of_this_user_still_allowed(app, mint):
    mint(1)
    mint(2)
    with app.app_context():
        # Refused and failed attempts, and other people's consoles, are not "recent" for this agent.
        audit.stage("console", "refused", username=AGENT[0], cloud="lab", server_id=server_id(4))
        audit.stage("console", "ok", username=ADMIN[0], cloud="lab", server_id=server_id(5))
        # A console of a cloud no longer configured, then a rule change: neither is shown.
        audit.stage("console", "ok", username=AGENT[0], cloud="gone", server_id=server_id(1))
        db.session.commit()
        for rule in policy.all_rules():
            policy.remove_rule(rule.id)
        policy.add_rule(user=AGENT[0], cloud="lab", clouds=["lab"], name_pattern="web-02")
        db.session.commit()
    assert recent_names(app) == ["web-02"]


def test_recent_stops_at_its_limit(app, mint):
    for n in (1, 2, 4, 5):
        mint(n)
    assert recent_names(app, limit=2) == ["worker", "worker"]


def test_pins_are_shared_by_every_instance_on_the_same_database(app, client, auth, fake, tmp_path):
    auth.login()
    client.put(f"/api/pins/{server_id(2)}?cloud=lab", headers={"X-CSRFToken": auth.csrf()})
    other = create_app(
        {
            "ENV": broker_env(tmp_path),
            "CLOUDS": [c for c in state.of(app).consoles.inventory.clouds.values()],
            "INSTANCE_PATH": str(tmp_path / "instance-2"),
            "TESTING": True,
        }
    )
    with other.app_context():
        user = users.find(AGENT[0])
        assert [s.name for s in shortcuts.pinned(user, state.consoles())] == ["web-02"]
        db.engine.dispose()


# -- pins sent at the same moment -----------------------------------------------------------


def in_parallel(app, count: int, work) -> list:
    """``work(user, n)`` in ``count`` threads let go together, each in its own app context (so its own
    session and connection); what each returned, or raised."""
    with app.app_context():
        state.consoles().permitted(users.find(AGENT[0]), server_id(1), "lab")  # the server list, read once
    start = threading.Barrier(count)
    results: list = [None] * count

    def run(n: int) -> None:
        with app.app_context():
            user = users.find(AGENT[0])
            start.wait()
            try:
                results[n] = work(user, n)
                db.session.commit()  # as the request's boundary does (broker.web.commits)
            except Exception as exc:  # what a request would have turned into an error answer
                results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def pin_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Pin))


class TestParallelPins:
    """On the suite's database, and on a PostgreSQL of their own whatever the suite runs on."""

    @pytest.fixture(params=["suite", "postgresql"])
    def env_overrides(self, request):
        if request.param == "suite":
            yield {}
            return
        server = make_url(request.getfixturevalue("postgres_url"))
        name = f"broker_pins_{uuid.uuid4().hex[:12]}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield {"BROKER_DATABASE_URL": server.set(database=name).render_as_string(hide_password=False)}
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()

    def test_one_server_pinned_at_once_from_many_requests_is_one_pin(self, app):
        results = in_parallel(app, 12, lambda user, n: shortcuts.pin(user, state.consoles(), server_id(2), "lab")[1])
        assert sorted(results, key=str) == [False] * 11 + [True], results  # one new pin; the others found it there
        assert pin_count(app) == 1

    def test_many_servers_pinned_at_once_never_pass_the_limit(self, app, monkeypatch):
        monkeypatch.setattr(shortcuts, "MAX_PINS", 3)
        for _ in range(3):
            results = in_parallel(
                app, 7, lambda user, n: shortcuts.pin(user, state.consoles(), server_id(n + 1), "lab")
            )
            assert sum(isinstance(result, tuple) for result in results) == 3
            assert all(isinstance(result, tuple | shortcuts.PinError) for result in results), results
            assert pin_count(app) == 3
            with app.app_context():
                db.session.execute(Pin.__table__.delete())
                db.session.commit()
