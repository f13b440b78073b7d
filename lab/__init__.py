"""The console lab: real console components (QEMU, websockify, noVNC) behind a stand-in Nova."""

from lab.lab import Lab
from lab.lab import LabServer
from lab.processes import LabError

__all__ = ["Lab", "LabError", "LabServer"]
