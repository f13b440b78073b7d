"""Metrics under the Procfile's gunicorn: each worker counts in its own files, /metrics adds them all up."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT
from tests.support import children
from tests.support import free_port
from tests.support import procfile_web_line
from tests.support import wait_for_health
from tests.support import wait_until

TOKEN = "metrics-token-0123456789abcdef"


@pytest.fixture
def gunicorn(tmp_path):
    """The Procfile's line (2 workers) on the demo cloud, with the metrics token set."""
    if not sys.platform.startswith("linux"):
        pytest.skip("finds gunicorn's workers through /proc")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        WEB_CONCURRENCY="2",
        GUNICORN_THREADS="20",
        BIND=f"127.0.0.1:{port}",
        BROKER_DEMO="1",
        BROKER_SECRET_KEY="gunicorn-test-secret-key-0123456789",
        BROKER_DATABASE_URL=f"sqlite:///{tmp_path}/broker.sqlite3",
        BROKER_RATELIMIT_STORAGE_URL="memory://",
        BROKER_LOGIN_LIMIT="1000 per minute",
        BROKER_METRICS_TOKEN=TOKEN,
    )
    env.pop("BROKER_REDIS_URL", None)
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 (closed below)
    # exec: the shell expands the line's ${...} and becomes gunicorn's master, the pid we stop.
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "exec " + procfile_web_line()], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc, tmp_path / "gunicorn.log")
        yield url, proc.pid, settle(url, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def settle(url: str, master: int) -> list[int]:
    """The two workers, once each answers on its own (one that failed to boot has been replaced)."""
    for _ in range(60):
        workers = children(master)
        try:
            answered = len(workers) == 2 and all(answers_alone(url, worker, workers) for worker in workers)
            # A replacement may have answered for a worker that died meanwhile.
            if answered and sorted(children(master)) == sorted(workers):
                return workers
        except ProcessLookupError:
            pass  # a worker died meanwhile: read them again
        time.sleep(0.2)
    raise AssertionError(f"gunicorn's two workers did not both answer: {children(master)}")


def answers_alone(url: str, worker: int, workers: list[int]) -> bool:
    only(worker, workers)
    try:
        return requests.get(url + "/healthz", timeout=5).ok
    except requests.RequestException:
        return False
    finally:
        for other in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, signal.SIGCONT)


def metrics_dir_of(workers: list[int]) -> str | None:
    """The private directory gunicorn.conf.py made for this server: it holds its workers' files."""
    for worker in workers:
        found = glob.glob(os.path.join(tempfile.gettempdir(), "console-broker-metrics-*", f"*_{worker}.db"))
        if found:
            return os.path.dirname(found[0])
    return None


def workers_counted(directory: str, workers: list[int]) -> set[int]:
    """The workers that have counted something (a counter file of their own)."""
    return {w for w in workers if os.path.exists(os.path.join(directory, f"counter_{w}.db"))}


def failed_sign_ins(url: str, count: int) -> list[int]:
    """``count`` wrong passwords at once, each on its own connection; their statuses."""
    sessions = [requests.Session() for _ in range(count)]
    forms = []
    for session in sessions:
        page = session.get(url + "/login", timeout=10).text
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        forms.append({"username": "demo", "password": "not-the-password", "csrf_token": token})
    start = threading.Barrier(count)

    def guess(n: int) -> int:
        start.wait()
        return sessions[n].post(url + "/login", data=forms[n], allow_redirects=False, timeout=30).status_code

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(guess, range(count)))


def sign_ins(url: str) -> dict[str, float]:
    """broker_sign_ins_total by outcome, as one scrape (answered by either worker) says."""
    response = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200
    totals = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "broker_sign_ins_total":
                totals[sample.labels["outcome"]] = sample.value
    return totals


def only(worker: int, workers: list[int]) -> None:
    """Pause every worker but ``worker``, so it accepts every new connection (the kernel picks otherwise)."""
    for other in workers:
        os.kill(other, signal.SIGCONT if other == worker else signal.SIGSTOP)


def test_metrics_add_up_every_worker(gunicorn):
    url, master, workers = gunicorn
    statuses: list[int] = []
    try:
        for worker in workers:
            only(worker, workers)
            statuses += failed_sign_ins(url, 4)
        directory = metrics_dir_of(workers)
        assert directory is not None and workers_counted(directory, workers) == set(workers)
        # Each worker, answering alone, counts every attempt of both.
        for worker in workers:
            only(worker, workers)
            totals = sign_ins(url)
            assert sum(totals.values()) == len(statuses) == 8, (totals, statuses)
            assert totals.get("failed", 0) == statuses.count(401) > 0
    finally:
        for worker in workers:
            os.kill(worker, signal.SIGCONT)
    assert os.stat(directory).st_mode & 0o077 == 0  # private to the server's user
    assert requests.get(url + "/metrics", timeout=10).status_code == 404
    os.kill(master, signal.SIGTERM)
    wait_until(  # gunicorn takes seconds to stop, more on a loaded machine
        lambda: not os.path.exists(directory),
        timeout=30,
        interval=0.1,
        message="gunicorn.conf.py removes the directory it made when the server stops",
    )


def test_a_start_stopped_by_bad_configuration_leaves_no_metrics_directory(tmp_path):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OS_", "PROMETHEUS_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        TMPDIR=str(private_tmp),  # where tempfile.mkdtemp puts the directory
        BIND="127.0.0.1:0",
        BROKER_SECRET_KEY="k" * 32,
        BROKER_DATABASE_URL=f"sqlite:///{tmp_path}/b.sqlite3",
        BROKER_LOG_FORMAT="yaml",  # not a format: the master stops before it forks
    )
    done = subprocess.run(
        ["/bin/sh", "-c", "exec " + procfile_web_line()], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3 and "BROKER_LOG_FORMAT" in done.stderr
    assert list(private_tmp.iterdir()) == []
