"""What the cloud client hands out: servers, console URLs, and the timeouts it is built with."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field


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
