"""What the cloud client hands out: servers, console URLs, and the timeouts it is built with."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field


@dataclass(frozen=True)
class Details:
    """A server's state beyond its status, for the panel that says why it is broken."""

    task_state: str = ""
    vm_state: str = ""
    power_state: str = ""
    fault_code: int | None = None
    fault_message: str = ""
    flavor: str = ""
    image: str = ""
    created: str = ""
    updated: str = ""

    def to_json(self) -> dict:
        fault = {"code": self.fault_code, "message": self.fault_message} if self.fault_message else None
        return {
            "task_state": self.task_state,
            "vm_state": self.vm_state,
            "power_state": self.power_state,
            "fault": fault,
            "flavor": self.flavor,
            "image": self.image,
            "created": self.created,
            "updated": self.updated,
        }


@dataclass(frozen=True)
class ServerInfo:
    """What the broker shows of a server."""

    id: str
    name: str
    status: str
    cloud: str
    addresses: tuple[str, ...] = ()
    az: str = ""
    metadata: dict = field(default_factory=dict, hash=False, compare=False)
    # What the server panel shows, as the cloud's own list gave it ("" or None when it did not say).
    details: Details = field(default_factory=lambda: Details(), hash=False, compare=False)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "cloud": self.cloud,
            "addresses": list(self.addresses),
            "availability_zone": self.az,
        }


@dataclass(frozen=True)
class Console:
    """A console URL as the cloud returned it (opaque; never rewritten)."""

    url: str
    type: str = "novnc"
    protocol: str = "vnc"


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for a connection and for an answer."""

    connect: float = 5.0
    read: float = 30.0

    def as_requests(self) -> tuple[float, float]:
        return (self.connect, self.read)
