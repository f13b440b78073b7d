"""The count-before-work throttle: atomic under threads, shared by gunicorn workers through Redis."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from broker.shared import SharedRedis
from broker.throttle import Throttle
from broker.throttle import ThrottleConfigError
from broker.throttle import parse_limit
from tests.support import ROOT
from tests.support import free_port
from tests.support import require_redis
from tests.support import wait_for_health


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


@pytest.fixture
def two_workers(tmp_path):
    """The Procfile's gunicorn line (2 workers x 100 threads) on the demo cloud, throttled through Redis."""
    redis_url = require_redis()
    port = free_port()
    env = {
        **os.environ,
        "BROKER_DEMO": "1",
        "BROKER_SECRET_KEY": "gunicorn-test-secret-key-0123456789",
        "BROKER_DATABASE_URL": f"sqlite:///{tmp_path}/broker.sqlite3",
        "BROKER_RATELIMIT_STORAGE_URL": redis_url,
    }
    argv = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", "2", "--threads", "100"]
    argv += ["--bind", f"127.0.0.1:{port}", "app:app"]
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc, tmp_path / "gunicorn.log")
        yield url, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


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


def test_with_redis_down_each_process_still_limits_on_its_own():
    down = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    shared = SharedRedis(down)
    throttle = Throttle(down, shared=shared)
    limit = parse_limit("2 per minute")
    tickets = [throttle.take(limit, "account") for _ in range(3)]
    assert [ticket.granted for ticket in tickets] == [True, True, False]
    assert all(ticket.local for ticket in tickets) and not shared.usable()
    throttle.refund(tickets[0])
    assert throttle.take(limit, "account").granted


def test_counting_goes_back_to_redis_when_it_answers_again(redis_url):
    now = [1000.0]
    # Redis is tried again after retry_after on this clock, which the test moves instead of sleeping.
    shared = SharedRedis(redis_url, retry_after=0.2, clock=lambda: now[0])
    throttle = Throttle(redis_url, shared=shared)
    limit = parse_limit("5 per minute")
    shared.failed(ConnectionError("the test cut it"))
    assert throttle.take(limit, "account").local
    now[0] += 0.19
    assert throttle.take(limit, "account").local  # not asked again before retry_after
    now[0] += 0.01
    assert not throttle.take(limit, "account").local
    # Another instance on the same Redis sees that one shared slot, not the local one.
    other = Throttle(redis_url)
    assert other.strategy.get_window_stats(limit, "broker", "account").remaining == 4
