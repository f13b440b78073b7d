"""This process's row in the instances table, kept fresh while it runs and removed when it exits.

The heartbeat is a unit of work of its own (its own thread, its own app context), so it commits
its writes itself; ``broker.services.instances`` only stages them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from broker.extensions import db
from broker.services.instances import HEARTBEAT
from broker.services.instances import Profile
from broker.services.instances import forget
from broker.services.instances import register
from broker.services.instances import touch

log = logging.getLogger(__name__)

# Where an app keeps its registration (app.extensions).
EXTENSION = "broker.instance"


@dataclass
class Registration:
    """An app's row: what it recorded, as what, and the row's id (a new one if the row had to be written again)."""

    profile: Profile
    role: str
    row_id: int


def beat(app: Flask) -> None:
    """Touch ``app``'s row; one that is gone (a database restored from a backup) is written again."""
    record: Registration = app.extensions[EXTENSION]
    with app.app_context():
        if not touch(record.row_id):
            record.row_id = register(record.profile, record.role)
        db.session.commit()


def leave(app: Flask) -> None:
    """Remove ``app``'s row, so that a process stopped on purpose stops counting at once."""
    record: Registration = app.extensions[EXTENSION]
    with app.app_context():
        forget(record.row_id)
        db.session.commit()


class Heartbeat:
    """One daemon thread per process beats for its apps every HEARTBEAT seconds; at exit their rows go."""

    def __init__(self, interval: float = HEARTBEAT) -> None:
        self.interval = interval
        self.apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.thread: threading.Thread | None = None
        self.failing = False

    def add(self, app: Flask) -> None:
        with self.lock:
            self.apps.add(app)
            if self.pid != os.getpid():
                # A forked child has neither its parent's thread nor, usefully, its exit handler.
                self.pid, self.thread = os.getpid(), None
                atexit.register(self.stop, self.pid)
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="instance-heartbeat", daemon=True)
                self.thread.start()

    def run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self.lock:
                if not self.apps:  # every app gone (tests) or stopped
                    self.thread = None
                    return
            self.beat_all()

    def beat_all(self) -> None:
        for app in list(self.apps):
            # Under the lock, so that a beat never writes again a row that stop has just removed.
            with self.lock:
                if app not in self.apps:
                    continue
                try:
                    beat(app)
                except SQLAlchemyError as exc:
                    self.note_failure(exc)
                else:
                    self.failing = False

    def note_failure(self, exc: SQLAlchemyError) -> None:
        """One line when the heartbeat starts failing (the database is down), not one per beat."""
        if not self.failing:
            log.warning(
                "instance heartbeat: cannot write to the database (%s); trying every %d s",
                type(exc).__name__,
                self.interval,
            )
        self.failing = True

    def stop(self, pid: int) -> None:
        """At exit: remove the rows of this process's apps (not those of a parent that forked it)."""
        if pid != os.getpid():
            return
        with self.lock:
            apps = list(self.apps)
            self.apps.clear()
            for app in apps:
                with contextlib.suppress(SQLAlchemyError):  # else the row ages out within RUNNING_WITHIN
                    leave(app)


# One per process.
BEATING = Heartbeat()


def keep(app: Flask) -> None:
    """Keep ``app``'s row fresh from now on, and remove it when the process exits."""
    BEATING.add(app)
