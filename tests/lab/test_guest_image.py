"""The lab guest image, built for real and booted in plain QEMU (TCG) on the controller.

Builds into the lab's real cache (:data:`DEFAULT_CACHE_DIR`), boots the image with the synthetic
workload, and checks what a migration test will rely on: the console protocol (READY, gap-free
heartbeats) and numbered frames that a QMP ``screendump`` captures and that equal the expected
frame pixel for pixel.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from statistics import median
from typing import Any

import pytest
from PIL import Image

from mdevtest.errors import LabError
from mdevtest.lab.image import DEFAULT_CACHE_DIR, GuestImage, build_guest_image
from mdevtest.workloads.synthetic import (
    FbInfo,
    decode_frame_number,
    find_ready,
    heartbeat_gaps,
    parse_boot_ms,
    parse_frames,
    parse_heartbeats,
    parse_ready,
    verify_frame,
)

pytestmark = pytest.mark.lab

QEMU = "qemu-system-x86_64"
HB_MS = 20
FPS = 10
BOOT_TIMEOUT_S = 180.0  # TCG on a loaded 2-core machine; a normal boot takes a few seconds
QMP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Build:
    image: GuestImage
    seconds: float
    progress: list[str]


@dataclass
class Guest:
    proc: subprocess.Popen[bytes]
    workdir: Path
    serial: Path
    qmp: _Qmp
    started: float
    ready_after_s: float = 0.0

    def console(self) -> str:
        return self.serial.read_bytes().decode(errors="replace")

    def wait_for(self, what: str, done: Callable[[str], bool], timeout_s: float) -> str:
        """Poll the console until ``done(text)``; fail with the console tail otherwise."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.console()
            if done(text):
                return text
            if self.proc.poll() is not None:
                qemu_log = (self.workdir / "qemu.log").read_text(errors="replace")
                pytest.fail(
                    f"QEMU exited (rc={self.proc.returncode}) before {what}\n"
                    f"--- QEMU output ---\n{qemu_log}\n{_tail(text)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout_s:g} s\n{_tail(text)}")
            time.sleep(0.05)

    def screendump(self, name: str) -> Image.Image:
        path = self.workdir / name
        self.qmp.execute("screendump", filename=str(path), format="png")
        with Image.open(path) as image:
            image.load()
            return image


class _Qmp:
    """A minimal, bounded QMP client over a UNIX socket (events are kept, not dropped)."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.events: list[dict[str, Any]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rwb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise AssertionError(f"not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise ConnectionError("QMP connection closed")
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, **arguments: object) -> Any:
        request: dict[str, object] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._file.write(json.dumps(request).encode() + b"\n")
        self._file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise AssertionError(f"QMP {command} failed: {reply['error']}")
            return reply["return"]

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _tail(text: str, lines: int = 30) -> str:
    return "--- console tail ---\n" + "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def build() -> Build:
    progress: list[str] = []
    start = time.monotonic()
    image = build_guest_image(DEFAULT_CACHE_DIR, progress=progress.append)
    return Build(image, time.monotonic() - start, progress)


@pytest.fixture(scope="module")
def guest(build: Build, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    """The image booted in QEMU; quit over QMP afterwards, killed if that does not work."""
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    workdir = tmp_path_factory.mktemp("guest")
    serial, qmp_sock = workdir / "serial.log", workdir / "qmp.sock"
    image = build.image
    cmd = [
        QEMU,
        "-name", "mdt-test-guest-image",
        "-machine", "q35",
        "-accel", "tcg",
        "-m", "256",
        "-smp", "1",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", f"{image.append} mdt.hb_ms={HB_MS} mdt.fps={FPS}",
        "-vga", "std",
        "-display", "none",
        "-serial", f"file:{serial}",
        "-qmp", f"unix:{qmp_sock},server=on,wait=off",
        "-nic", "user,model=virtio-net-pci",
        "-no-reboot",
    ]  # fmt: skip
    started = time.monotonic()
    with (workdir / "qemu.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    qmp: _Qmp | None = None
    try:
        deadline = time.monotonic() + QMP_TIMEOUT_S
        while qmp is None:
            try:
                qmp = _Qmp(qmp_sock, QMP_TIMEOUT_S)
            except (FileNotFoundError, ConnectionRefusedError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield Guest(proc, workdir, serial, qmp, started)
    finally:
        _stop_qemu(proc, qmp)


def _stop_qemu(proc: subprocess.Popen[bytes], qmp: _Qmp | None) -> None:
    """Soft (QMP quit), then hard (kill); always reaped."""
    if qmp is not None:
        with contextlib.suppress(OSError, AssertionError):  # gone already: the kill below
            qmp.execute("quit")
        qmp.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ready_guest(guest: Guest) -> Guest:
    """The guest once the workload said MDT-READY; records how long that took from QEMU start."""
    guest.wait_for("MDT-READY", lambda t: parse_ready(t) is not None, BOOT_TIMEOUT_S)
    guest.ready_after_s = time.monotonic() - guest.started
    return guest


def test_image_builds_and_a_second_build_is_a_cache_hit(
    build: Build, record_property: Callable[[str, object], None]
) -> None:
    image = build.image
    assert image.kernel.is_file()
    assert image.initrd.is_file()
    assert image.directory == DEFAULT_CACHE_DIR / "images" / image.digest
    manifest = json.loads((image.directory / "manifest.json").read_text())
    assert manifest["digest"] == image.digest
    assert manifest["kernel_version"] == image.kernel_version
    assert {"bochs", "virtio_net", "virtio_blk"} <= {m["name"] for m in manifest["modules"]}
    assert "console=ttyS0" in image.append
    assert "iomem=relaxed" in image.append  # the workload maps the display's BAR read-only

    progress: list[str] = []
    start = time.monotonic()
    again = build_guest_image(DEFAULT_CACHE_DIR, progress=progress.append)
    warm_s = time.monotonic() - start
    record_property("image_build_s", round(build.seconds, 2))
    record_property("image_cached_build_s", round(warm_s, 2))
    print(f"image {image.digest}: first call {build.seconds:.2f} s, second {warm_s:.2f} s")
    assert again == image
    assert any("cached" in line for line in progress), progress
    assert not any("download" in line or "building" in line for line in progress), progress
    assert warm_s < 10


def test_initramfs_holds_what_init_needs(build: Build, tmp_path: Path) -> None:
    """Read back with the real cpio(1): our own newc writer must produce what it expects."""
    archive = gzip.decompress(build.image.initrd.read_bytes())
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=archive, capture_output=True, timeout=60, check=True
    ).stdout.decode()
    entries = {line.split()[-1]: line.split()[0] for line in listing.splitlines()}
    assert entries["init"].startswith("-rwxr-xr-x")
    assert entries["bin/busybox"].startswith("-rwx")
    assert entries["bin/mdt-workload"].startswith("-rwx")
    assert entries["dev/console"].startswith("c")
    subprocess.run(
        ["cpio", "-idm", "--quiet", "init", "etc/mdt/*"],
        input=archive,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    modules = [line.split()[0] for line in (tmp_path / "etc/mdt/modules").read_text().splitlines()]
    assert modules, "no modules to load"
    for path in modules:
        assert path.lstrip("/") in entries, f"{path} is listed for insmod but not in the image"
    names = [Path(p).name for p in modules]
    assert names.index("drm.ko") < names.index("bochs.ko")  # dependencies first
    assert names.index("virtio.ko") < names.index("virtio_net.ko")
    assert names[-1] == "virtio_blk.ko"  # the pattern disk of the DMA probe
    assert (tmp_path / "etc/mdt/image").read_text().strip() == build.image.digest


def test_an_unusable_kernel_package_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="not a linux-image-<version>-amd64 package"):
        build_guest_image(tmp_path, kernel_package="linux-headers-amd64")


def test_guest_boots_to_ready_with_a_framebuffer(
    ready_guest: Guest, record_property: Callable[[str, object], None]
) -> None:
    text = ready_guest.console()
    fb = parse_ready(text)
    assert fb is not None
    assert fb.bpp == 32
    ready = find_ready(text)
    assert ready is not None
    assert ready.fields.get("api") == "drm", "expected KMS double buffering, not the fbdev fallback"
    assert fb.buffers == 2
    boot_ms = parse_boot_ms(text)
    assert boot_ms is not None
    record_property("boot_to_ready_s", round(ready_guest.ready_after_s, 2))
    record_property("guest_uptime_at_init_done_ms", boot_ms)
    print(
        f"QEMU start to MDT-READY: {ready_guest.ready_after_s:.2f} s "
        f"(guest uptime when init started the workload: {boot_ms} ms); display {fb}"
    )
    assert "MDT-WARN" not in text
    assert "MDT-ERROR" not in text


def test_heartbeats_are_periodic_and_gap_free(ready_guest: Guest) -> None:
    text = ready_guest.wait_for(
        "50 heartbeats", lambda t: len(parse_heartbeats(t)) >= 50, BOOT_TIMEOUT_S
    )
    beats = parse_heartbeats(text)
    assert beats[0].seq == 1
    assert heartbeat_gaps(b.seq for b in beats) == []
    assert [b.seq for b in beats] == list(range(1, len(beats) + 1))
    intervals_ms = [(b.t_ns - a.t_ns) / 1e6 for a, b in pairwise(beats)]
    assert all(i > 0 for i in intervals_ms)
    assert HB_MS * 0.8 < median(intervals_ms) < HB_MS * 1.2, intervals_ms


def test_display_shows_exact_numbered_frames_that_advance(ready_guest: Guest) -> None:
    ready_guest.wait_for("an MDT-FRAME line", lambda t: bool(parse_frames(t)), 30)
    fb = parse_ready(ready_guest.console())
    assert isinstance(fb, FbInfo)

    first = ready_guest.screendump("first.png")
    assert first.size == (fb.width, fb.height)
    n1 = verify_frame(first)  # decodes the number and compares every pixel
    time.sleep(1.0)
    second = ready_guest.screendump("second.png")
    n2 = verify_frame(second)
    print(f"captured frames {n1} and {n2}, 1 s apart at {FPS} fps")
    assert n2 > n1
    assert n2 - n1 >= FPS // 2  # advancing at roughly the configured rate
    assert decode_frame_number(second) == n2

    reported = [m.n for m in parse_frames(ready_guest.console())]
    assert min(reported) <= n2 <= max(reported) + 2 * FPS  # console and screen agree
