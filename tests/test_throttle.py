"""The count-before-work throttle: atomic under threads, shared by gunicorn workers through Redis."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from broker.throttle import Throttle
from broker.throttle import ThrottleConfigError
from broker.throttle import parse_limit
from tests.support import ROOT

REDIS_URL = os.environ.get("BROKER_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def test_take_is_atomic_under_many_threads():
    throttle = Throttle()
    limit = parse_limit("5 per minute")
    start = threading.Barrier(50)

    def take(_: int) -> bool:
        start.wait()
        return throttle.take(limit, "k").granted

    with ThreadPoolExecutor(50) as pool:
        granted = list(pool.map(take, range(50)))
    assert granted.count(True) == 5


def test_a_refused_attempt_costs_nothing_and_a_refund_gives_one_slot_back():
    throttle = Throttle()
    limit = parse_limit("2 per minute")
    first = throttle.take(limit, "account", "address")
    throttle.take(limit, "account", "other-address")
    refused = throttle.take(limit, "account", "address")
    assert not refused.granted and 1 <= refused.retry_after <= 60
    # The refusal took nothing from "address": one slot is still there.
    assert throttle.take(limit, "another-account", "address").granted
    throttle.refund(first)
    assert throttle.take(limit, "account", "third-address").granted
    assert not throttle.take(limit, "account", "fourth-address").granted


@pytest.mark.parametrize("text", ["five per minute", "", "5 per fortnight", "1/second;2/minute"])
def test_limits_that_do_not_parse_are_refused(text):
    with pytest.raises(ThrottleConfigError):
        parse_limit(text)


def redis_available() -> bool:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception:
        return False
    return True


def require_redis() -> None:
    if redis_available():
        return
    reason = f"needs Redis at {REDIS_URL} (BROKER_TEST_REDIS_URL)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " (CI=true: the CI machine runs Redis)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_workers(tmp_path):
    """The Procfile's gunicorn line (2 workers x 100 threads) on the demo cloud, throttled through Redis."""
    require_redis()
    import redis

    database = 15  # a database of the machine's Redis that only this test uses
    redis.Redis.from_url(f"{REDIS_URL}/{database}").flushdb()
    port = free_port()
    env = {
        **os.environ,
        "BROKER_DEMO": "1",
        "BROKER_SECRET_KEY": "gunicorn-test-secret-key-0123456789",
        "BROKER_DATABASE_URL": f"sqlite:///{tmp_path}/broker.sqlite3",
        "BROKER_RATELIMIT_STORAGE_URL": f"{REDIS_URL}/{database}",
    }
    argv = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", "2", "--threads", "100"]
    argv += ["--bind", f"127.0.0.1:{port}", "app:app"]
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            try:
                if requests.get(url + "/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        yield url, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        redis.Redis.from_url(f"{REDIS_URL}/{database}").flushdb()


def test_parallel_guesses_across_two_workers_get_at_most_the_limit(two_workers):
    url, tmp_path = two_workers
    sessions = [requests.Session() for _ in range(40)]
    forms = []
    for session in sessions:
        page = session.get(url + "/login", timeout=10).text
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        forms.append({"username": "demo", "password": "not-the-password", "csrf_token": token})
    start = threading.Barrier(40)

    def guess(n: int) -> int:
        start.wait()
        return sessions[n].post(url + "/login", data=forms[n], allow_redirects=False, timeout=30).status_code

    with ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(guess, range(40)))
    assert statuses.count(401) <= 5, statuses  # 401: a password was checked and was wrong
    assert set(statuses) <= {401, 429, 503}
    assert statuses.count(429) >= 30
