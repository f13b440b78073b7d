"""gunicorn settings read by the Procfile's line: check the configuration once, before any worker starts.

Metrics: every worker keeps its values in files under ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` adds them up, whichever worker answers. The variable is set here, when the
master reads this file and before anything imports prometheus_client; unless the operator
chose a directory, each start gets a fresh private one, removed again at exit.
"""

import glob
import os
import shutil
import tempfile
import threading

# gunicorn's control socket has one default path per user, so two instances on a host would take
# it from each other; the broker does not use it.
control_socket_disable = True
# How long a stopping instance (SIGTERM: systemctl stop or restart) lets its requests finish: as long
# as nginx waits for an answer (proxy_read_timeout), which takes none later. The unit's
# TimeoutStopSec= is longer still.
graceful_timeout = 90

MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
# Names the directory this start created, so that exit removes it (a reload reads this file again).
CREATED = "CONSOLE_BROKER_CREATED_METRICS_DIR"
if not os.environ.get(MULTIPROC):
    os.environ[MULTIPROC] = os.environ[CREATED] = tempfile.mkdtemp(prefix="console-broker-metrics-")  # 0700


def on_starting(server) -> None:
    forget_earlier_runs(os.environ[MULTIPROC])
    # Imported here so that gunicorn's own start-up stays independent of the app.
    from broker.startup import check_configuration

    try:
        settings = check_configuration()
    except SystemExit:
        # A configuration error stops the master before it starts: on_exit will not run.
        remove_created_dir()
        raise
    if settings.log_format == "json":
        json_logs()


def on_reload(server) -> None:
    # A reload sets gunicorn's log handlers up again, in text.
    if os.environ.get("BROKER_LOG_FORMAT", "").strip().lower() == "json":
        json_logs()


def json_logs() -> None:
    """gunicorn's error and access logs in the broker's JSON lines (the master's own lines too)."""
    import logging

    from broker.logs import RedactQueryStrings
    from broker.logs import use_json

    use_json(logging.getLogger("gunicorn.error"))
    access = logging.getLogger("gunicorn.access")
    use_json(access)
    if not any(isinstance(f, RedactQueryStrings) for f in access.filters):
        access.addFilter(RedactQueryStrings())


def post_worker_init(worker) -> None:
    from broker.startup import settle

    settle()
    start_threads(worker)
    refuse_when_stopping(worker)


def start_threads(worker) -> None:
    """Every thread of a gthread worker's pool started before its first request, not one per new connection.

    The pool starts a thread when a connection finds none idle, in the worker's one dispatching
    thread, which waits for the new thread to run. When 100 mints arrive at once and their threads
    compete for the GIL, each start takes milliseconds, and every other request, whatever its
    cloud, waits behind them to be dispatched (the bench's storm: healthy requests queued for
    hundreds of milliseconds before any of the broker's code ran). Started here, no request waits
    for one.
    """
    pool = getattr(worker, "tpool", None)
    if pool is None:
        return  # not a gthread worker
    count = worker.cfg.threads
    # Each task holds its thread until all have started, so that every submit finds no idle thread and starts one.
    everyone = threading.Barrier(count + 1)
    for _ in range(count):
        pool.submit(everyone.wait, 30)
    everyone.wait(30)


def refuse_when_stopping(worker) -> None:
    """A stopping worker refuses new connections at once, and /readyz says it is stopping.

    gunicorn's worker stops accepting on SIGTERM but keeps its listening socket open until its last
    request is answered; connections meanwhile wait in the kernel's queue and are reset when it
    exits, after nginx sent them a request. nginx then answers 502 to a POST, which it never sends
    twice. A connection refused was never sent anything, so nginx passes any request to the next
    instance. (gthread calls set_accept_enabled(False) when it stops, and when it is full.)
    """
    from broker.web import observability

    toggle = worker.set_accept_enabled

    def set_accept_enabled(enabled: bool) -> None:
        toggle(enabled)
        if not enabled and not worker.alive:
            observability.STOPPING.set()
            for listener in worker.sockets:
                take_waiting(worker, listener)
                listener.close()

    worker.set_accept_enabled = set_accept_enabled


def take_waiting(worker, listener) -> None:
    """Connections already in the kernel's queue are answered, not reset (the listener does not block)."""
    while True:
        taken = worker.nr_conns
        worker.accept(listener)
        if worker.nr_conns == taken:
            return


def child_exit(server, worker) -> None:
    """A worker is gone: its live gauges (open circuits, list ages) stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def forget_earlier_runs(directory: str) -> None:
    """prometheus_client's files left by an earlier run of a directory the operator chose (its workers are gone)."""
    for kind in ("counter", "gauge", "histogram", "summary"):
        for path in glob.glob(os.path.join(directory, f"{kind}_*.db")):
            os.remove(path)


def on_exit(server) -> None:
    remove_created_dir()


def remove_created_dir() -> None:
    """The metrics directory this start made, if it did (never one the operator chose)."""
    created = os.environ.get(CREATED)
    if created and created == os.environ.get(MULTIPROC):
        shutil.rmtree(created, ignore_errors=True)
