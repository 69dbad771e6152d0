"""What the embedded labs share, under public names: one place for what more than one lab file
uses, so no lab module reaches into another's private helpers.

- the lab surface: :data:`Progress` (a progress sink), :func:`quiet`, the :class:`Lab` and
  :class:`LabStatusView` protocols that both flavours (:mod:`.local`, :mod:`.nested`) implement;
- controller-side commands and processes: :func:`sh`, :func:`lab_lock`, and processes found by
  pid and checked against their command line before they are signalled (:func:`pid_if_ours`,
  :func:`terminate`, :func:`netns_pids`);
- initramfs building: :class:`CpioWriter` (the kernel's ``newc`` format, reproducible),
  :func:`check_busybox`, :func:`read_module` and :func:`modinfo` (kernel modules read from
  their ELF, compressed or not).
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import os
import signal
import stat
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from mdevtest.errors import LabError
from mdevtest.filelock import give_up_after, locked

__all__ = [
    "CpioWriter",
    "Lab",
    "LabStatusView",
    "Progress",
    "check_busybox",
    "cmdline",
    "lab_lock",
    "modinfo",
    "netns_pids",
    "pid_if_ours",
    "quiet",
    "read_module",
    "sh",
    "terminate",
]

# -- the lab surface -----------------------------------------------------------------------------

Progress = Callable[[str], None]


def quiet(_msg: str) -> None:
    """Default progress sink: says nothing."""


class LabStatusView(Protocol):
    """What ``lab status`` shows of either flavour."""

    @property
    def up(self) -> bool: ...

    @property
    def anything(self) -> bool: ...

    def render(self) -> str: ...


class Lab(Protocol):
    """An embedded lab: ``up`` is idempotent and returns whether it started the lab (so the
    caller owns it); ``down`` removes everything the lab made (``state_dir`` included) and is
    idempotent."""

    state_dir: Path

    def up(self, progress: Progress = ..., *, build_image: bool = True) -> bool: ...

    def down(self, progress: Progress = ...) -> None: ...

    def status(self) -> LabStatusView: ...


# -- commands and processes on the controller ----------------------------------------------------


def sh(argv: Sequence[str], *, timeout: float = 60.0, check: bool = True) -> str:
    """Run a local command; return stdout. Failures raise :class:`LabError` with stderr."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)} did not finish within {timeout:g} s") from exc
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} is not installed; run `mdevtest lab up` as root") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed (rc={proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def lab_lock(path: Path, timeout: float) -> contextlib.AbstractContextManager[None]:
    """A lab's cross-process lock (``up``/``down`` of one flavour); a LabError after ``timeout``."""
    return locked(
        path,
        while_waiting=give_up_after(
            timeout, lambda: LabError(f"another mdevtest holds {path} for more than {timeout:g} s")
        ),
    )


def netns_pids(netns: str) -> list[int]:
    """The processes running in network namespace ``netns`` (none if it does not exist)."""
    out = sh(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def cmdline(pid: int) -> str:
    """A process's command line, arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def pid_if_ours(pidfile: Path, marker: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and its command line contains ``marker``."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if marker in cmdline(pid) else None


def terminate(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if Path(f"/proc/{p}").exists() and _state(p) != "Z"}
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


# -- initramfs building --------------------------------------------------------------------------


def check_busybox(path: Path) -> None:
    """Require a statically linked busybox: the initramfs has no C library for it."""
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                raise LabError(f"guest image: {path} is not a 64-bit ELF binary")
            (phoff,) = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except FileNotFoundError as exc:
        raise LabError(
            f"guest image: {path} is missing; install busybox-static (apt-get install busybox-static)"
        ) from exc
    pt_interp = 3
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", table, i * phentsize)
        if p_type == pt_interp:
            raise LabError(
                f"guest image: {path} is dynamically linked; install busybox-static "
                f"(apt-get install busybox-static), which replaces it with a static one"
            )


def read_module(path: Path, zstd: Callable[[Path], bytes]) -> bytes:
    """A kernel module file, uncompressed (``.ko``, ``.ko.xz``, ``.ko.gz``; ``.ko.zst`` through
    ``zstd``, which Python cannot read): busybox insmod loads plain ELF objects only."""
    name = path.name
    if name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".zst"):
        return zstd(path)
    return path.read_bytes()


def modinfo(path: Path, zstd: Callable[[Path], bytes]) -> dict[str, str]:
    """The ``.modinfo`` section of a kernel module (key=value strings), read from its ELF."""
    data = read_module(path, zstd)
    try:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ValueError("not a 64-bit little-endian ELF object")
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

        def section(i: int) -> tuple[int, int, int]:
            base = shoff + i * shentsize
            (name_off,) = struct.unpack_from("<I", data, base)
            offset, size = struct.unpack_from("<QQ", data, base + 0x18)
            return name_off, offset, size

        _, str_off, str_size = section(shstrndx)
        names = data[str_off : str_off + str_size]
        for i in range(shnum):
            name_off, offset, size = section(i)
            end = names.index(b"\0", name_off)
            if names[name_off:end] == b".modinfo":
                fields: dict[str, str] = {}
                for raw in data[offset : offset + size].split(b"\0"):
                    key, sep, value = raw.decode(errors="replace").partition("=")
                    if sep:
                        fields.setdefault(key, value)
                return fields
    except (struct.error, ValueError) as exc:
        raise LabError(f"guest image: cannot read the module info of {path}: {exc}") from exc
    raise LabError(f"guest image: {path} has no .modinfo section; is it a kernel module?")


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class CpioWriter:
    """Writes a cpio archive in the kernel's ``newc`` format, reproducibly (owner root, mtime 0).

    Written here rather than with cpio(1) so that device nodes need no mknod (and no root)
    and the same inputs give the same bytes.
    """

    def __init__(self, out: _Writable) -> None:
        self._out = out
        self._ino = 1

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, b"", nlink=2)

    def file(self, name: str, data: bytes, mode: int) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def char_device(self, name: str, mode: int, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def trailer(self) -> None:
        self._entry("TRAILER!!!", 0, b"", ino=0, nlink=1)

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes,
        *,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
        ino: int | None = None,
    ) -> None:
        if ino is None:
            ino = self._ino
            self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded + _pad4(len(header) + len(encoded)))
        self._out.write(data + _pad4(len(data)))


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)
