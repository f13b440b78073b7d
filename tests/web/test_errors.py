"""How errors leave the broker: cloud trouble mapped to statuses and slugs in the web layer, and the
database out of reach answered as an outage (503) on a real PostgreSQL behind a forwarder the test cuts."""

from __future__ import annotations

import inspect
import logging
import uuid

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from broker.cloud import errors
from broker.web.errors import CLOUD_ANSWERS
from broker.web.errors import OUTAGE_LOG_EVERY
from broker.web.errors import OutageLog
from broker.web.errors import cloud_answer
from tests.support import AGENT
from tests.support import Forwarder
from tests.support import csrf_from
from tests.support import require_postgres
from tests.support import server_id

KINDS = [kind for _, kind in inspect.getmembers(errors, inspect.isclass) if issubclass(kind, errors.CloudError)]


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
def test_every_cloud_error_has_an_answer_and_carries_no_web_status(kind):
    status, slug = cloud_answer(kind("message"))
    assert 400 <= status < 600 and slug
    assert not hasattr(kind, "status") and not hasattr(kind, "code")


@pytest.mark.parametrize(
    ("exc", "answer"),
    [
        (errors.CircuitOpen("x"), (503, "cloud_unreachable")),
        (errors.CloudBusyHere("x"), (503, "cloud_busy")),
        (errors.ServerNotReady("x", upstream_status=409), (409, "server_not_running")),
        (errors.CloudError("x", upstream_status=406), (502, "cloud_error")),
    ],
)
def test_a_subclass_answers_as_its_nearest_listed_kind(exc, answer):
    assert cloud_answer(exc) == answer


def test_the_table_lists_only_cloud_errors():
    assert all(issubclass(kind, errors.CloudError) for kind in CLOUD_ANSWERS)


# -- the database out of reach -----------------------------------------------------------------------


@pytest.fixture
def forwarded_database():
    """A PostgreSQL database of the test's own, reached through a Forwarder; dropped afterwards."""
    server = make_url(require_postgres())
    name = f"broker_outage_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    forwarder = Forwarder((server.host or "127.0.0.1", server.port or 5432))
    try:
        url = server.set(host="127.0.0.1", port=forwarder.port, database=name)
        yield forwarder, url.render_as_string(hide_password=False)
    finally:
        forwarder.close()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def records():
    """Every record the broker's loggers and the root logger (SQLAlchemy's pool) get meanwhile."""
    kept: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger("broker"), logging.getLogger()]
    for logger in loggers:
        logger.addHandler(handler)
    yield kept
    for logger in loggers:
        logger.removeHandler(handler)


class TestDatabaseOutage:
    @pytest.fixture
    def env_overrides(self, forwarded_database) -> dict:
        return {"BROKER_DATABASE_URL": forwarded_database[1]}

    def test_pages_and_api_answer_503_probes_stay_honest_and_it_recovers_by_itself(
        self, app, client, auth, forwarded_database, records, capfd
    ):
        forwarder, _ = forwarded_database
        auth.login()
        token = auth.csrf()
        assert client.get("/").status_code == 200
        stranger = app.test_client()
        stranger_token = csrf_from(stranger.get("/login").get_data(as_text=True))
        forwarder.cut()
        del records[:]

        page = client.get("/")
        assert page.status_code == 503
        html = BeautifulSoup(page.get_data(as_text=True), "html.parser")
        assert html.find(id="error")["data-code"] == "database_unavailable"
        assert "database is unavailable" in html.find(id="error-message").get_text()
        for response in (
            client.get("/api/servers"),
            client.post(f"/api/consoles/{server_id(1)}", headers={"X-CSRFToken": token}),
        ):
            assert response.status_code == 503
            assert response.get_json()["error"]["code"] == "database_unavailable"
        for form in ({"csrf_token": stranger_token}, {"csrf_token": "forged"}):  # the sign-in, and its CSRF record
            signing_in = stranger.post("/login", data={"username": AGENT[0], "password": AGENT[1], **form})
            assert signing_in.status_code == 503
        forged = client.post("/api/consoles/" + server_id(1), headers={"X-CSRFToken": "forged"})
        assert forged.get_json()["error"]["code"] == "database_unavailable"
        # The probes: alive whatever the cookie, not ready while the database is gone.
        assert client.get("/healthz").status_code == 200
        assert stranger.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        assert stranger.get("/readyz").get_json() == {"status": "not ready"}

        # One line for the burst, naming the trouble, and not one traceback anywhere.
        assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == [
            f"database unreachable: the database server at 127.0.0.1:{forwarder.port} closed the connection; "
            "pages and the API answer 503 until it is back (1 refused since the last line)"
        ]
        assert not [r for r in records if r.exc_info], [r.getMessage() for r in records if r.exc_info]
        assert "Traceback" not in capfd.readouterr().err

        forwarder.restore()
        assert client.get("/").status_code == 200  # still signed in, and the pool came back by itself
        assert client.get("/api/servers").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_the_outage_log_says_once_per_interval_how_many_were_refused(app):
    moments = iter([0.0, 1.0, 2.0, OUTAGE_LOG_EVERY + 0.5, OUTAGE_LOG_EVERY + 1.0])
    outage = OutageLog(clock=lambda: next(moments))
    refused = OperationalError("SELECT 1", {}, Exception("connection failed: Connection refused"))
    handler_records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            handler_records.append(record.getMessage())

    keep = Keep()
    logging.getLogger("broker").addHandler(keep)
    try:
        with app.app_context():
            for _ in range(5):
                outage.refused_one(refused)
    finally:
        logging.getLogger("broker").removeHandler(keep)
    lines = [line for line in handler_records if line.startswith("database unreachable")]
    assert len(lines) == 2
    assert "nothing accepts connections at" in lines[0] and lines[0].endswith("(1 refused since the last line)")
    assert lines[1].endswith("(3 refused since the last line)")
