"""A minimal VNC (RFB 3.8, RFC 6143) client that types into a guest, straight to QEMU's VNC port.

It sends what noVNC sends for a US keyboard: a KeyEvent press and release per key, with Shift held
around shifted characters (QEMU maps keysyms to scancodes and does not add Shift by itself).
"""

from __future__ import annotations

import socket
import struct

SHIFT_L = 0xFFE1
SPECIAL = {"\n": 0xFF0D, "\r": 0xFF0D, "\t": 0xFF09, "\b": 0xFF08, "\x1b": 0xFF1B}
SHIFTED = set('~!@#$%^&*()_+{}|:"<>?ABCDEFGHIJKLMNOPQRSTUVWXYZ')
SECURITY_NONE = 1
KEY_EVENT = 4


class RfbError(RuntimeError):
    """The server spoke something other than what this client expects."""


def keys_for(text: str) -> list[tuple[int, bool]]:
    """(keysym, with Shift) for each character of ``text``; printable ASCII keysyms are the code points."""
    keys = []
    for char in text:
        if char in SPECIAL:
            keys.append((SPECIAL[char], False))
        elif " " <= char <= "~":
            keys.append((ord(char), char in SHIFTED))
        else:
            raise ValueError(f"cannot type {char!r} on a US keyboard")
    return keys


class VncClient:
    """One RFB connection; ``with VncClient(port) as vnc: vnc.type("ls\\n")``."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.width = self.height = 0
        self.name = ""
        try:
            self._handshake()
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> VncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _recv(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise RfbError(f"connection closed after {len(data)} of {size} bytes")
            data += chunk
        return data

    def _handshake(self) -> None:
        version = self._recv(12)
        if not version.startswith(b"RFB 003."):
            raise RfbError(f"not an RFB server: {version!r}")
        self.sock.sendall(b"RFB 003.008\n")
        types = self._recv(self._recv(1)[0])
        if SECURITY_NONE not in types:
            raise RfbError(f"server wants authentication (security types {list(types)})")
        self.sock.sendall(bytes([SECURITY_NONE]))
        if struct.unpack(">I", self._recv(4))[0] != 0:
            raise RfbError("security handshake failed")
        self.sock.sendall(b"\x01")  # ClientInit: share the desktop with other viewers
        self.width, self.height = struct.unpack(">HH", self._recv(4))
        self._recv(16)  # pixel format
        self.name = self._recv(struct.unpack(">I", self._recv(4))[0]).decode(errors="replace")

    def key(self, keysym: int, down: bool) -> None:
        """Send one KeyEvent."""
        self.sock.sendall(struct.pack(">BBxxI", KEY_EVENT, int(down), keysym))

    def type(self, text: str) -> None:
        """Press and release a key per character (Return for a newline)."""
        for keysym, shift in keys_for(text):
            if shift:
                self.key(SHIFT_L, True)
            self.key(keysym, True)
            self.key(keysym, False)
            if shift:
                self.key(SHIFT_L, False)
