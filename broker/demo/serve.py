"""Run a stand-in cloud over real HTTP on loopback: in a thread (tests) or as a process.

    python -m broker.demo.serve --port 8774 --servers 10000 --control

prints the ``OS_*`` variables that point the broker at it.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from dataclasses import dataclass

from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import make_server

from broker.demo.cloud import FakeCloud
from broker.demo.cloud import make_servers


@dataclass
class Running:
    """A stand-in cloud listening on loopback."""

    cloud: FakeCloud
    server: BaseWSGIServer
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start(cloud: FakeCloud, port: int = 0, *, control: bool = False, in_thread: bool = True) -> Running:
    """Listen on 127.0.0.1:``port`` (0 picks one); the cloud's URLs then use that port."""
    server = make_server("127.0.0.1", port, cloud.app(control=control), threaded=True)
    server.daemon_threads = True
    cloud.public_base = f"http://127.0.0.1:{server.server_port}"
    running = Running(cloud, server)
    if in_thread:
        running.thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="fake-cloud"
        )
        running.thread.start()
    return running


def environment(cloud: FakeCloud) -> dict[str, str]:
    """The ``OS_*`` variables that make openstack.config (and so the broker) use this cloud."""
    return {
        "OS_AUTH_URL": cloud.auth_url,
        "OS_AUTH_TYPE": "password",
        "OS_USERNAME": cloud.username,
        "OS_PASSWORD": cloud.password,
        "OS_PROJECT_ID": cloud.project_id,
        "OS_USER_DOMAIN_NAME": "Default",
        "OS_REGION_NAME": cloud.region,
        "OS_INTERFACE": "public",
        "OS_IDENTITY_API_VERSION": "3",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8774)
    parser.add_argument("--servers", type=int, default=24)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every Nova call")
    parser.add_argument("--console-ttl", type=int, default=600)
    parser.add_argument("--console-base", default="http://127.0.0.1:6080")
    parser.add_argument("--control", action="store_true", help="enable POST /_control to inject faults")
    args = parser.parse_args()
    cloud = FakeCloud(
        secret="stand-in",
        servers=make_servers(args.servers),
        console_ttl=args.console_ttl,
        console_base=args.console_base,
    )
    cloud.faults.latency = args.latency
    running = start(cloud, args.port, control=args.control, in_thread=False)
    for name, value in environment(cloud).items():
        print(f"export {name}={value}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        running.server.serve_forever()


if __name__ == "__main__":
    main()
