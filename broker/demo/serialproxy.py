"""The demo cloud's serial console proxy: nova-serialproxy's checks in front of a tiny shell on each server.

The relay process mounts a :class:`SerialProxy`'s ``handle`` at :data:`PATH`, so a relay minting
a demo serial console URL (``ws://.../demo-serial/?token=``) opens it as it would open
nova-serialproxy: token from the query, Origin checked when sent, subprotocol ``binary``, raw
bytes each way. As QEMU does with a serial port, one client at a time is let through per
server: a second websocket is accepted and then waits, silent, until the first leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from dataclasses import field

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from broker.demo.consoleproxy import Lookup
from broker.demo.consoleproxy import refusal
from broker.demo.consoleproxy import token_of

log = logging.getLogger(__name__)

PATH = "/demo-serial/"
BACKSPACE = (b"\x7f", b"\x08")
# A line longer than this is someone pasting into the demo: it is cut, as a tty's line buffer would.
MAX_LINE = 4096


@dataclass
class Shell:
    """What a server's serial port answers: a prompt, typed characters echoed, a few commands."""

    name: str
    line: bytearray = field(default_factory=bytearray)

    @property
    def prompt(self) -> bytes:
        return f"root@{self.name}:~# ".encode()

    def feed(self, data: bytes) -> bytes:
        """What the terminal shows for ``data`` typed (echo, and a command's output at each Enter)."""
        out = bytearray()
        for byte in (data[i : i + 1] for i in range(len(data))):
            if byte in (b"\r", b"\n"):
                command, self.line = self.line.decode("utf-8", "replace").strip(), bytearray()
                out += b"\r\n" + self.run(command) + self.prompt
            elif byte in BACKSPACE:
                if self.line:
                    self.line = self.line[:-1]
                    out += b"\b \b"
            elif byte == b"\x03":
                self.line = bytearray()
                out += b"^C\r\n" + self.prompt
            elif len(self.line) < MAX_LINE:
                self.line += byte
                out += byte
        return bytes(out)

    def run(self, command: str) -> bytes:
        """A command's output, lines ending in CRLF."""
        word, _, rest = command.partition(" ")
        if not word:
            return b""
        if word == "echo":
            text = rest
        elif word == "hostname":
            text = self.name
        elif word == "uptime":
            text = time.strftime("%H:%M:%S up 42 days,  1 user,  load average: 0.00, 0.01, 0.05")
        elif word == "help":
            text = "demo serial console: echo, hostname, uptime, help"
        else:
            text = f"sh: {word}: not found"
        return text.encode() + b"\r\n"


class SerialProxy:
    """nova-serialproxy for the demo cloud: one client at a time per server, each server's shell kept."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self._ports: dict[str, asyncio.Lock] = {}
        self._shells: dict[str, Shell] = {}

    async def handle(self, connection: ServerConnection) -> None:
        """Serve one serial websocket: check it as Nova would, then wait for the port and carry the shell."""
        request = connection.request
        token = token_of(request.path, request.headers)
        grant = self.lookup(token) if token else None
        refused = refusal(connection, grant)
        if grant is None or refused:
            log.info("demo serial console refused for %s: %s", connection.remote_address, refused)
            await connection.close(CloseCode.POLICY_VIOLATION, refused or "")
            return
        port = self._ports.setdefault(grant.server, asyncio.Lock())
        async with port:
            shell = self._shells.setdefault(grant.server, Shell(grant.server))
            await self._carry(connection, shell)

    async def _carry(self, connection: ServerConnection, shell: Shell) -> None:
        try:
            async for message in connection:
                data = message.encode() if isinstance(message, str) else message
                echoed = shell.feed(data)
                if echoed:
                    await connection.send(echoed)
        except ConnectionClosed:
            pass
