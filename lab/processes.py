"""Child processes of the lab: started in their own session, stopped by PID, never by name."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class LabError(RuntimeError):
    """A lab part failed to start; the message says which and where its log is."""


@dataclass
class Child:
    """One supervised process and the log it writes."""

    name: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the child's process group (its own PID), then SIGKILL after ``grace`` seconds."""
        if not self.alive():
            return
        # The child leads its own session, so its PID is also the group id: this reaches
        # websockify's per-connection processes and gunicorn's workers, and nothing else.
        _signal_group(self.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(self.pid, signal.SIGKILL)
            self.process.wait(grace)
        _signal_group(self.pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        """The end of the child's log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def spawn(
    name: str, argv: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Child:
    """Start ``argv`` in the foreground of a new session, output appended to ``log``."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    return Child(name, process, log)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """True when 127.0.0.1:``port`` can be bound."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(child: Child, port: int, timeout: float = 20.0) -> None:
    """Return once ``port`` accepts connections; raise LabError if the child dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise LabError(f"{child.name} exited with {child.process.returncode}; log {child.log}:\n{child.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise LabError(
        f"{child.name} did not listen on port {port} within {timeout:.0f} s; log {child.log}:\n{child.tail()}"
    )
