"""Instances: each process records its version and a fingerprint of its settings; one whose secret key the
running ones neither share nor accept refuses to start; a key change with fallbacks runs; nothing secret is kept."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy import update

from broker import create_app
from broker import heartbeat
from broker import startup
from broker.cloud.registry import Cloud
from broker.config import StartupStopped
from broker.config import load_settings
from broker.extensions import db
from broker.models import Instance
from broker.services import instances
from broker.services import users
from broker.startup import prepare_schema
from tests.support import AGENT
from tests.support import broker_env
from tests.support import csrf_from
from tests.support import make_client

OLD_KEY = "old-secret-key-0123456789abcdef"
NEW_KEY = "new-secret-key-0123456789abcdef"
OTHER_KEY = "another-secret-key-0123456789ab"


@pytest.fixture
def start(tmp_path):
    """Start instances on one database (the suite's), as two hosts' workers would; the first gets the agent."""
    started = []

    def start(key: str, fallbacks: tuple[str, ...] = (), clouds: tuple[Cloud, ...] = (), **config):
        env = broker_env(tmp_path, BROKER_SECRET_KEY=key)
        if fallbacks:
            env["BROKER_SECRET_KEY_FALLBACKS"] = ",".join(fallbacks)
        test_config = {"ENV": env, "CLOUDS": list(clouds), "INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True}
        app = create_app({**test_config, **config})
        started.append(app)
        if len(started) == 1:
            with app.app_context():
                users.add(*AGENT, role="agent")
                db.session.commit()
        return app

    yield start
    for app in started:
        with app.app_context():
            db.engine.dispose()


def rows(app) -> list[Instance]:
    with app.app_context():
        return list(db.session.scalars(select(Instance).order_by(Instance.id)))


def signed_in(app) -> bool:
    return app.test_client().get("/api/pins").status_code == 200


def carry(source, target) -> None:
    """The session cookie one instance set, sent to another (nginx's round robin)."""
    target.set_cookie("session", source.get_cookie("session").value)


def sign_in_across(first, second):
    """The sign-in form of one instance, posted to the other; the client that posted."""
    one, other = first.test_client(), second.test_client()
    token = csrf_from(one.get("/login").get_data(as_text=True))
    carry(one, other)
    response = other.post("/login", data={"username": AGENT[0], "password": AGENT[1], "csrf_token": token})
    return response, other


# -- the secret key ---------------------------------------------------------------------------------


def test_an_instance_with_another_secret_key_refuses_to_start_naming_the_setting(start, capsys):
    first = start(OLD_KEY)
    with pytest.raises(StartupStopped) as stopped:
        start(OTHER_KEY)
    message = str(stopped.value)
    # Seen 0 s ago on a quiet machine; a busy one may take a second or two between the starts.
    assert re.match(
        re.escape(
            "console-broker: configuration error: BROKER_SECRET_KEY is not the key of the instances running on this "
            f"database ({rows(first)[0].name} web, seen "
        )
        + r"[0-5] s ago\), and neither side has the other's in BROKER_SECRET_KEY_FALLBACKS",
        message,
    ), message
    assert "'The form was stale or forged'" in message
    assert message in capsys.readouterr().err
    assert OLD_KEY not in message and OTHER_KEY not in message
    assert len(rows(first)) == 1  # the refused one recorded nothing; the running one is untouched


def test_instances_with_the_same_key_both_run_and_share_sign_ins(start):
    first, second = start(OLD_KEY), start(OLD_KEY)
    with first.app_context():
        assert len(instances.running()) == 2
        assert [f.level for f in instances.findings(instances.running())] == ["ok"]
    response, client = sign_in_across(first, second)
    assert response.status_code == 302 and client.get("/api/pins").status_code == 200


@pytest.mark.parametrize(
    ("running", "starting"),
    [
        # The rolling update: the new key with the old one as fallback, beside instances on the old key.
        ((OLD_KEY, ()), (NEW_KEY, (OLD_KEY,))),
        # The other way round: the running ones already accept the key the new one signs with.
        ((OLD_KEY, (NEW_KEY,)), (NEW_KEY, ())),
    ],
    ids=["new-key-with-old-as-fallback", "running-ones-accept-the-new-key"],
)
def test_a_key_change_with_fallbacks_runs_beside_the_old_key(start, running, starting):
    first = start(running[0], running[1])
    second = start(starting[0], starting[1])
    assert len(rows(first)) == 2
    with second.app_context():
        assert "fail" not in [f.level for f in instances.findings(instances.running())]


def test_a_session_and_a_form_signed_with_the_old_key_are_accepted_by_an_instance_on_the_new_key(start):
    old, new = start(OLD_KEY), start(NEW_KEY, (OLD_KEY,))
    response, client = sign_in_across(old, new)  # the form from the old instance, posted to the new
    assert response.status_code == 302, response.get_data(as_text=True)
    browser = old.test_client()
    token = csrf_from(browser.get("/login").get_data(as_text=True))
    browser.post("/login", data={"username": AGENT[0], "password": AGENT[1], "csrf_token": token})
    on_new = new.test_client()
    carry(browser, on_new)
    assert on_new.get("/api/pins").status_code == 200
    # Not the reverse: the old key's instance cannot read the new key's cookie (the note check gives).
    on_old = old.test_client()
    carry(client, on_old)
    assert on_old.get("/api/pins").status_code == 401
    with old.app_context():
        [note] = [f for f in instances.findings(instances.running()) if f.level == "note"]
    assert note.text.startswith("BROKER_SECRET_KEY is being changed: ")


def test_a_stopped_instance_does_not_hold_a_new_key_back(start):
    first = start(OLD_KEY)
    with first.app_context():
        moment = datetime.now(UTC) - timedelta(seconds=instances.RUNNING_WITHIN + 1)
        db.session.execute(update(Instance).values(seen_at=moment))
        db.session.commit()
    start(OTHER_KEY)
    assert len(rows(first)) == 2


def test_an_instance_that_exits_removes_its_row(start):
    first = start(OLD_KEY)
    heartbeat.leave(first)
    assert rows(first) == []
    start(OTHER_KEY)


def test_gunicorns_master_refuses_before_forking(start, tmp_path, monkeypatch):
    start(OLD_KEY)
    env = broker_env(tmp_path, BROKER_SECRET_KEY=OTHER_KEY, OS_CLOUD="prod")
    with pytest.raises(StartupStopped, match="BROKER_SECRET_KEY is not the key of the instances running"):
        prepare_schema(load_settings(env, str(tmp_path)), str(tmp_path / "instance"))
    # Its workers, checked by the master, do not ask again: a worker restarted later never stops a running
    # instance for a newcomer that slipped in meanwhile.
    monkeypatch.setattr(startup, "checked_by_master", True)
    start(OTHER_KEY)


def test_the_relay_records_itself_as_relay(start):
    web = start(OLD_KEY)
    start(OLD_KEY, SCHEMA_OWNER=False)
    assert [row.role for row in rows(web)] == ["web", "relay"]


# -- what is recorded ---------------------------------------------------------------------------


def test_the_table_holds_no_key_nor_a_cheap_hash_of_one_nor_a_password(start, fake):
    clouds = (Cloud("lab", make_client(fake), 600, "idle", "relay"),)
    app = start(OLD_KEY, (NEW_KEY,), clouds)
    [row] = rows(app)
    stored = " ".join(str(getattr(row, column.name)) for column in Instance.__table__.columns)
    for secret in (OLD_KEY, NEW_KEY, fake.password):
        assert secret not in stored
        for cheap in (
            hashlib.sha256(secret.encode()).hexdigest(),
            hashlib.sha1(secret.encode()).hexdigest(),
            hashlib.md5(secret.encode()).hexdigest(),
            hmac.new(secret.encode(), instances.FINGERPRINT_SALT, hashlib.sha256).hexdigest(),
        ):
            assert cheap[:16] not in stored
    # scrypt with 16 MiB per guess: what the row holds of each key.
    cost = instances.SCRYPT_COST
    assert 128 * cost["n"] * cost["r"] >= 16 * 2**20
    slow = hashlib.scrypt(OLD_KEY.encode(), salt=instances.FINGERPRINT_SALT, **cost).hex()
    assert row.key_fingerprint == slow
    assert row.fallback_fingerprints == instances.fingerprint(NEW_KEY)
    assert row.clouds == f"lab {fake.auth_url} {fake.region}"
    assert row.console_mode == "relay"
    assert row.role == "web" and row.name.endswith(f":{os.getpid()}")
    assert row.version.startswith("0.1.0")


def test_equal_keys_give_equal_fingerprints_on_any_host():
    assert instances.fingerprint(OLD_KEY) == instances.fingerprint(str(OLD_KEY))
    assert instances.fingerprint(OLD_KEY) != instances.fingerprint(NEW_KEY)


def test_urls_keep_no_credentials():
    assert instances.public_url("https://u:pw@keystone.example:5000/v3?token=t#x") == "https://keystone.example:5000/v3"


def test_console_modes_are_one_word_when_alike_else_each_clouds(fake):
    lab = Cloud("lab", make_client(fake), 600, "idle", "relay")
    prod = Cloud("prod", make_client(fake, "prod"), 600, "idle", "iframe")
    assert instances.describe_modes([lab], "iframe") == "relay"
    assert instances.describe_modes([prod, lab], "iframe") == "lab: relay, prod: iframe"
    assert instances.describe_modes([], "relay") == "relay"


# -- the heartbeat ------------------------------------------------------------------------------------


def age(app, seconds: int) -> None:
    with app.app_context():
        db.session.execute(update(Instance).values(seen_at=datetime.now(UTC) - timedelta(seconds=seconds)))
        db.session.commit()


def test_a_beat_keeps_the_row_running_and_writes_a_lost_one_again(start):
    app = start(OLD_KEY)
    age(app, instances.RUNNING_WITHIN + 1)
    heartbeat.beat(app)
    with app.app_context():
        assert len(instances.running()) == 1
        db.session.execute(Instance.__table__.delete())
        db.session.commit()
    heartbeat.beat(app)
    [row] = rows(app)
    assert row.id == app.extensions[heartbeat.EXTENSION].row_id


def test_rows_of_processes_long_gone_are_dropped_at_the_next_start(start):
    first = start(OLD_KEY)
    age(first, instances.FORGET_AFTER + 60)
    start(OLD_KEY)
    assert len(rows(first)) == 1


def test_the_heartbeat_thread_beats_and_removes_the_rows_at_exit(start):
    app = start(OLD_KEY)
    age(app, instances.RUNNING_WITHIN + 1)
    beats = heartbeat.Heartbeat(interval=0.01)
    beats.add(app)
    deadline = time.monotonic() + 10
    while not is_running(app) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert is_running(app)
    thread = beats.thread
    beats.stop(os.getpid())
    assert rows(app) == []
    thread.join(timeout=5)
    assert not thread.is_alive()  # no app left to beat for


def is_running(app) -> bool:
    with app.app_context():
        return bool(instances.running())
