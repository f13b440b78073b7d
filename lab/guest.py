"""The lab's Linux guest: Debian's kernel and a busybox initramfs with a shell on the VGA console and on ttyS0.

Typing at the screen's shell shows on the screen (tty1, VGA text mode, like the BIOS guests), and a
command such as ``echo MARKER > /dev/ttyS0`` lands in the serial log file QEMU writes, so
tests can prove a keystroke went all the way through. A second shell runs on the serial port
(ttyS0), for a serial console (nova-serialproxy's kind) to type at. The initramfs is built with
the standard library from busybox-static's binary and cached, keyed by what goes into it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import struct
from pathlib import Path

BOOT = Path("/boot")
BUSYBOX = Path("/bin/busybox")
# The screen's shell writes this to ttyS0 at its first prompt (so again after ``exit`` respawns it).
READY = "console-lab: shell ready"
# Enough for the kernel and a busybox in RAM; the boot menu guests get by with 64.
MEMORY_MB = 128
# nokaslr: the decompressor's KASLR notes would otherwise stay on the screen above the shell.
KERNEL_ARGS = "console=tty0 quiet nokaslr"

INIT = """#!/bin/busybox sh
# PID 1 of the console lab's Linux guest: mount what busybox needs, then busybox init (/etc/inittab).
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Kernel messages would land in the middle of what someone types.
echo 1 > /proc/sys/kernel/printk
hostname "${lab_host:-linux}"
printf '\\033[H\\033[J' > /dev/tty1
exec init
"""
# busybox init gives each terminal its own session and respawns its shell whenever it exits.
INITTAB = """tty1::respawn:-/bin/sh
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
"""
# Read by each login shell. The ready line goes out while the screen's shell expands its first
# prompt: by then it is about to read keys itself, so nothing typed after it is echoed ahead of the
# prompt. ($$ in a command substitution is still the shell's own PID.) Only tty1's shell says it:
# the ready line stands for "the screen takes keys", which is what VNC typists wait for.
PROFILE = f"""lab_ready() {{ [ -e /tmp/ready.$$ ] || {{ echo "{READY}" > /dev/ttyS0; : > /tmp/ready.$$; }}; }}
if [ "$(tty)" = /dev/tty1 ]; then PS1='$(lab_ready)\\h:\\w# '; else PS1='\\h:\\w# '; fi
"""
DIRECTORIES = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "etc", "root", "tmp")
S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFCHR = 0o020000
PT_INTERP = 3


def version_key(path: Path) -> tuple[int, ...]:
    """Sort key for kernel file names by version: 6.1.0-56 after 6.1.0-9."""
    return tuple(int(number) for number in re.findall(r"\d+", path.name))


def newest_kernel(boot: Path = BOOT) -> Path | None:
    """The newest ``vmlinuz-*`` in ``boot`` (Debian's linux-image-amd64 puts them there), else None."""
    kernels = sorted(boot.glob("vmlinuz-*"), key=version_key)
    return kernels[-1] if kernels else None


def is_static(path: Path) -> bool:
    """True for an ELF64 executable without an interpreter (a statically linked one)."""
    with path.open("rb") as elf:
        header = elf.read(64)
        if header[:5] != b"\x7fELF\x02":
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        elf.seek(phoff)
        table = elf.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, n * phentsize)[0] != PT_INTERP for n in range(phnum))


def missing_tools(boot: Path = BOOT, busybox: Path = BUSYBOX) -> list[str]:
    """What the Linux guest needs and this machine lacks (empty when all is there)."""
    missing = []
    kernel = newest_kernel(boot)
    if kernel is None or not os.access(kernel, os.R_OK):
        missing.append(f"a readable {boot}/vmlinuz-* (Debian package linux-image-amd64)")
    if not busybox.is_file() or not is_static(busybox):
        missing.append(f"a statically linked {busybox} (Debian package busybox-static)")
    return missing


def cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 0) -> bytes:
    """One member of a cpio archive in the "newc" format the kernel unpacks (owner root, time 0)."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields) + encoded
    # Header plus name, then the data, each padded to a multiple of four bytes.
    return header + b"\0" * (-len(header) % 4) + data + b"\0" * (-len(data) % 4)


def initramfs_members(busybox: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """(name, mode, data, device) for each file of the guest's root file system."""
    members = [(directory, S_IFDIR | 0o755, b"", (0, 0)) for directory in DIRECTORIES]
    members += [
        # The kernel opens /dev/console for init before anything can mount devtmpfs.
        ("dev/console", S_IFCHR | 0o600, b"", (5, 1)),
        ("bin/busybox", S_IFREG | 0o755, busybox, (0, 0)),
        ("init", S_IFREG | 0o755, INIT.encode(), (0, 0)),
        ("etc/inittab", S_IFREG | 0o644, INITTAB.encode(), (0, 0)),
        ("etc/profile", S_IFREG | 0o644, PROFILE.encode(), (0, 0)),
    ]
    return members


def build_initramfs(busybox: bytes) -> bytes:
    """The gzipped cpio archive (reproducible: fixed times and owners)."""
    archive = io.BytesIO()
    for ino, (name, mode, data, rdev) in enumerate(initramfs_members(busybox), start=1):
        archive.write(cpio_entry(name, mode, data, rdev, ino))
    archive.write(cpio_entry("TRAILER!!!", 0))
    return gzip.compress(archive.getvalue(), compresslevel=6, mtime=0)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/console-lab``, else ``~/.cache/console-lab``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "console-lab"


def initramfs(cache: Path, busybox: Path = BUSYBOX) -> Path:
    """The guest's initramfs, built on first use into ``cache`` and reused while its inputs stay the same."""
    binary = busybox.read_bytes()
    # Keyed by everything that goes in: the busybox binary (its version) and the lab's scripts. The
    # kernel is not in it (everything the guest needs is built into Debian's kernel, no modules).
    digest = hashlib.sha256(binary + INIT.encode() + INITTAB.encode() + PROFILE.encode()).hexdigest()[:16]
    path = cache / f"initramfs-{digest}.cpio.gz"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(build_initramfs(binary))
        # Atomic, so two labs building at once never boot half a file.
        os.replace(partial, path)
    return path


def hostname(name: str) -> str:
    """A server name made safe for the kernel command line and ``hostname``."""
    return re.sub(r"[^A-Za-z0-9-]", "-", name)[:63] or "linux"


def qemu_args(kernel: Path, initrd: Path, name: str) -> list[str]:
    """QEMU options that boot the kernel straight into the initramfs (the serial port is the caller's)."""
    # An unknown name=value on the kernel command line reaches init as an environment variable.
    append = f"{KERNEL_ARGS} lab_host={hostname(name)}"
    return [
        "-m", str(MEMORY_MB),
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", append,
    ]  # fmt: skip
