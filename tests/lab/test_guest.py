"""The lab's Linux guest: its initramfs, and a shell that boots under TCG and reacts to typing over VNC."""

from __future__ import annotations

import gzip
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from lab import LabServer
from lab import guest
from lab.lab import missing_tools
from lab.vnc import SHIFT_L
from lab.vnc import VncClient
from lab.vnc import keys_for
from tests.support import needs

SHELL = "shell-01"


def cpio_names(archive: bytes) -> dict[str, int]:
    """Member name -> mode of a newc cpio archive."""
    names, offset = {}, 0
    while True:
        header = archive[offset : offset + 110]
        assert header[:6] == b"070701", f"bad cpio magic at {offset}"
        mode, size, name_size = int(header[14:22], 16), int(header[54:62], 16), int(header[94:102], 16)
        name = archive[offset + 110 : offset + 110 + name_size - 1].decode()
        if name == "TRAILER!!!":
            return names
        names[name] = mode
        offset += 110 + name_size
        offset += -offset % 4 + size
        offset += -offset % 4


def test_the_newest_kernel_is_chosen_by_version_not_by_name(tmp_path: Path) -> None:
    for name in ("vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-56-amd64", "vmlinuz-5.10.0-30-amd64", "config-6.2.0-1"):
        (tmp_path / name).write_bytes(b"")
    assert guest.newest_kernel(tmp_path).name == "vmlinuz-6.1.0-56-amd64"
    assert guest.newest_kernel(tmp_path / "nothing") is None


def test_missing_tools_name_the_debian_packages(tmp_path: Path) -> None:
    # The Python running this is dynamically linked: it could not run alone in the initramfs.
    missing = guest.missing_tools(boot=tmp_path, busybox=Path(sys.executable).resolve())
    assert [reason.rpartition("(")[2] for reason in missing] == [
        "Debian package linux-image-amd64)",
        "Debian package busybox-static)",
    ]


def test_initramfs_is_built_once_per_content_and_holds_init_and_busybox(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF pretend busybox")
    cache = tmp_path / "cache"
    first = guest.initramfs(cache, busybox)
    built = first.stat().st_mtime_ns
    assert guest.initramfs(cache, busybox) == first and first.stat().st_mtime_ns == built
    members = cpio_names(gzip.decompress(first.read_bytes()))
    assert members["init"] == 0o100755 and members["bin/busybox"] == 0o100755
    assert members["dev/console"] == 0o020600 and members["etc/inittab"] == 0o100644
    busybox.write_bytes(b"\x7fELF another busybox version")
    assert guest.initramfs(cache, busybox) != first
    assert sorted(path.suffix for path in cache.iterdir()) == [".gz", ".gz"], "a partial file was left behind"


def test_typing_holds_shift_for_shifted_characters() -> None:
    assert keys_for("e>M\n") == [(ord("e"), False), (ord(">"), True), (ord("M"), True), (0xFF0D, False)]
    assert SHIFT_L == 0xFFE1
    with pytest.raises(ValueError, match="cannot type"):
        keys_for("é")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One Linux guest at its shell prompt; no broker."""
    missing = missing_tools(linux=True)
    if missing:
        needs("the Linux guest needs " + ", ".join(missing))
    workdir = tmp_path_factory.mktemp("linux-lab")
    servers = [LabServer(SHELL, guest="linux")]
    with Lab(with_broker=False, servers=servers, workdir=workdir, cache_dir=workdir / "cache") as running:
        running.wait_for_shell(SHELL, timeout=90)
        yield running


def type_at_shell(lab: Lab, text: str) -> None:
    """Type as a person would, through QEMU's VNC server (a VNC client straight to its port)."""
    with VncClient(lab.server(SHELL).vnc_port) as vnc:
        assert (vnc.width, vnc.height) == (720, 400), "not VGA text mode"
        vnc.type(text)


def test_a_command_typed_over_vnc_runs_in_the_shell(lab: Lab) -> None:
    marker = "MARKER-" + secrets.token_hex(4).upper()
    type_at_shell(lab, f"echo {marker} > /dev/ttyS0\n")
    # The echo's whole line (ttyS0 turns its newline into CRLF); it may follow the serial shell's own prompt,
    # which shares the port now.
    assert f"{marker}\r\n" in lab.wait_for_serial(SHELL, marker, timeout=20)


def test_the_shell_comes_back_after_exit(lab: Lab) -> None:
    before = lab.serial_log(SHELL).count(guest.READY)
    type_at_shell(lab, "exit\n")
    deadline = time.monotonic() + 20
    while lab.serial_log(SHELL).count(guest.READY) == before:
        assert time.monotonic() < deadline, "no new shell within 20 s of exit"
        time.sleep(0.1)


def test_after_a_reset_wait_for_shell_waits_for_the_new_boot(lab: Lab) -> None:
    lab.reset_guest(SHELL)
    booted = lab.wait_for_shell(SHELL, timeout=90)
    # The shell of the boot before the reset must not count: a kernel takes more than a second under TCG.
    assert booted > 1.0
