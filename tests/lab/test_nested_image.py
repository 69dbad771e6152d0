"""The nested lab's images, built for real but never booted.

The ``nested`` tests build the L1 host and L2 guest images into the real cache
(:data:`DEFAULT_CACHE_DIR`; cold about 80 s on this machine, then cached) and look inside them: the
ext4 image through ``debugfs``, the module through its ``.modinfo``, the initramfs through its cpio
headers. Nothing here starts a VM. The rest (the workload on a pty loopback, the config disk, the
command line, the mirror lookup) needs no image.
"""

from __future__ import annotations

import difflib
import email.message
import gzip
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
import tty
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import pytest

from mdevtest.errors import LabError
from mdevtest.lab.nested_image import (
    CONFIG_DISK_SERIAL,
    DEFAULT_SOURCE_DIR,
    MTTY_MODULE_PATH,
    MTTY_SOURCE_PATH,
    HostImage,
    ModuleInfo,
    NestedImages,
    build_mtty_module,
    build_nested_images,
    debian_mirror,
    host_append,
    module_info,
    write_config_disk,
)

BUILD_TIMEOUT_S = 2400.0


@dataclass(frozen=True)
class Build:
    images: NestedImages
    seconds: float
    progress: list[str]


@pytest.fixture(scope="module")
def build() -> Build:
    if os.geteuid() != 0:
        pytest.skip("building the nested images needs root (debootstrap, chroot)")
    messages: list[str] = []
    start = time.monotonic()
    images = build_nested_images(progress=messages.append, timeout_s=BUILD_TIMEOUT_S)
    return Build(images=images, seconds=time.monotonic() - start, progress=messages)


def debugfs(image: Path, request: str) -> str:
    """Run one read-only debugfs request against an ext4 image; its stdout."""
    proc = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, timeout=120, check=True
    )
    return proc.stdout


def image_file(image: Path, path: str, dest: Path) -> bytes:
    """A file out of the ext4 image (symlinks in ``path`` are not followed: use /usr/...)."""
    debugfs(image, f"dump -p {path} {dest}")
    assert dest.is_file(), f"{path} is not in {image}"
    return dest.read_bytes()


def cpio_entries(initrd: Path) -> dict[str, bytes]:
    """Names and contents of a gzip'd newc cpio archive."""
    data = gzip.decompress(initrd.read_bytes())
    entries: dict[str, bytes] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad cpio header at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body = name_start + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = data[body : body + size]
        pos = body + size + (-size % 4)


def mtty_patch(source: str, old: str, new: str) -> str:
    """A git-style (``-p1``) patch of mtty.c replacing ``old`` with ``new``."""
    assert old in source
    changed = source.replace(old, new, 1)
    lines = difflib.unified_diff(
        source.splitlines(keepends=True),
        changed.splitlines(keepends=True),
        fromfile=f"a/{MTTY_SOURCE_PATH}",
        tofile=f"b/{MTTY_SOURCE_PATH}",
    )
    return "".join(lines)


# -- the images (nested) -----------------------------------------------------------------------------


@pytest.mark.nested
def test_warm_build_is_a_cache_hit(build: Build) -> None:
    host, guest = build.images.host, build.images.guest
    manifests = [host.directory / "manifest.json", guest.directory / "manifest.json"]
    before = [m.stat().st_mtime_ns for m in manifests]
    rootfs_before = host.rootfs.stat().st_mtime_ns

    messages: list[str] = []
    start = time.monotonic()
    again = build_nested_images(progress=messages.append)
    took = time.monotonic() - start

    assert again == build.images
    assert len(messages) == 1, messages
    assert "cached" in messages[0], messages
    assert took < 15, f"a cache hit took {took:.1f} s"
    assert [m.stat().st_mtime_ns for m in manifests] == before
    assert host.rootfs.stat().st_mtime_ns == rootfs_before


@pytest.mark.nested
def test_offline_uses_the_cached_image_and_says_so(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(url: str, timeout: float) -> object:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("urllib.request.urlopen", unreachable)
    messages: list[str] = []
    assert build_nested_images(progress=messages.append) == build.images
    assert any("offline" in m for m in messages), messages


def test_a_mirror_without_the_suite_is_a_clear_lab_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_found(url: str, timeout: float) -> object:
        raise urllib.error.HTTPError(url, 404, "Not Found", email.message.Message(), None)

    monkeypatch.setattr("urllib.request.urlopen", not_found)
    with pytest.raises(LabError, match=r"does not serve trixie: .*HTTP 404"):
        build_nested_images(tmp_path / "cache", mirror="http://mirror.example/debian")
    assert not (tmp_path / "cache").exists()  # nothing made before the inputs are known


@pytest.mark.nested
def test_host_rootfs_has_sshd_qemu_10_and_the_init(build: Build, tmp_path: Path) -> None:
    host = build.images.host
    assert host.kernel_version.startswith("6.12."), host.kernel_version
    for path in (
        "/usr/sbin/sshd",
        "/usr/bin/qemu-system-x86_64",
        "/usr/bin/busybox",
        "/usr/bin/socat",
        "/usr/sbin/ip",
        "/usr/sbin/modprobe",
        "/usr/share/seabios/bios-256k.bin",
        "/etc/ssh/sshd_config.d/mdevtest.conf",
        f"/usr/lib/modules/{host.kernel_version}/kernel/drivers/vfio/vfio.ko.xz",
        f"/usr/lib/modules/{host.kernel_version}/kernel/drivers/vfio/vfio_iommu_type1.ko.xz",
        f"/usr/lib/modules/{host.kernel_version}/kernel/drivers/vfio/mdev/mdev.ko.xz",
    ):
        stat = debugfs(host.rootfs, f"stat {path}")
        assert re.search(r"Type: (regular|symlink)", stat), f"{path} missing"

    init = debugfs(host.rootfs, "stat /usr/sbin/mdt-init")
    assert re.search(r"Mode:\s+0755", init), init
    init_text = image_file(host.rootfs, "/usr/sbin/mdt-init", tmp_path / "init").decode()
    assert init_text == (DEFAULT_SOURCE_DIR / "l1-init").read_text()
    assert "insmod /lib/modules/extra/mtty.ko" in init_text

    # QEMU 10.x: the package, and the binary in the image says so itself (not run: no VM here).
    assert re.match(r"1:10\.\d+", host.qemu_version), host.qemu_version
    qemu = image_file(host.rootfs, "/usr/bin/qemu-system-x86_64", tmp_path / "qemu")
    assert re.search(rb"10\.\d+\.\d+ \(Debian 1:10\.", qemu)

    # Each host gets its own host key at boot: none is baked into the shared image.
    assert "ssh_host_" not in debugfs(host.rootfs, "ls /etc/ssh")
    assert "Debian" not in host.append
    assert "init=/sbin/mdt-init" in host.append


@pytest.mark.nested
def test_mtty_module_is_built_for_the_image_kernel(build: Build, tmp_path: Path) -> None:
    host = build.images.host
    data = image_file(host.rootfs, "/usr" + MTTY_MODULE_PATH, tmp_path / "mtty.ko")
    assert data == host.mtty.path.read_bytes()
    info = module_info(tmp_path / "mtty.ko")
    assert info.name == "mtty"
    assert info.kernel_version == host.kernel_version
    assert "modversions" in info.vermagic.split()
    assert set(info.depends) == {"mdev", "vfio"}
    assert re.fullmatch(r"[0-9A-F]{23}", info.srcversion), info.srcversion
    assert info.srcversion == host.mtty.srcversion
    assert (host.mtty_source / "mtty.c").is_file()
    # the headers it was built against are those of the image's kernel
    assert (host.chroot / "usr/lib/modules" / host.kernel_version / "build").exists()


@pytest.mark.nested
def test_guest_initramfs_runs_the_mtty_workload(build: Build) -> None:
    guest, host = build.images.guest, build.images.host
    entries = cpio_entries(guest.initrd)
    assert {"init", "bin/busybox", "bin/mdt-mtty", "dev/console", "etc/mdt/image"} <= set(entries)
    assert entries["init"] == (DEFAULT_SOURCE_DIR / "init").read_bytes()
    assert b"/bin/mdt-mtty" in entries["init"]
    workload = entries["bin/mdt-mtty"]
    assert workload[:4] == b"\x7fELF"
    assert b"MDT-MTTY" in workload
    assert "8250.nr_uarts=8" in guest.append
    assert "console=ttyS0" in guest.append
    assert guest.kernel.read_bytes() == host.kernel.read_bytes()
    assert guest.kernel_version == host.kernel_version


@pytest.mark.nested
def test_patch_hook_changes_srcversion(build: Build, tmp_path: Path) -> None:
    host = build.images.host
    plain = build_mtty_module(host.chroot, host.mtty_source, None, out=tmp_path / "plain.ko")
    assert module_info(plain).srcversion == host.mtty.srcversion  # same source, same srcversion

    source = (host.mtty_source / "mtty.c").read_text()
    patch = tmp_path / "version.patch"
    patch.write_text(
        mtty_patch(source, '#define VERSION_STRING  "0.1"', '#define VERSION_STRING  "0.1-mdt"')
    )
    messages: list[str] = []
    patched = build_mtty_module(
        host.chroot, host.mtty_source, patch, out=tmp_path / "patched.ko", progress=messages.append
    )
    info = module_info(patched)
    assert info.version == "0.1-mdt"
    assert info.srcversion != host.mtty.srcversion
    assert info.kernel_version == host.kernel_version
    assert any(f"srcversion={info.srcversion}" in m for m in messages), messages
    assert (host.mtty_source / "mtty.c").read_text() == source  # the pristine copy is untouched
    assert not list((host.chroot / "tmp").glob("mdt-mtty-*"))


@pytest.mark.nested
def test_patch_that_does_not_apply_is_a_clear_lab_error(build: Build, tmp_path: Path) -> None:
    host = build.images.host
    patch = tmp_path / "stale.patch"
    patch.write_text(mtty_patch("x\nno such line in mtty.c\ny\n", "no such line in mtty.c", "replaced"))
    with pytest.raises(LabError, match=r"cannot apply stale\.patch.*-p1"):
        build_mtty_module(host.chroot, host.mtty_source, patch, out=tmp_path / "never.ko")
    assert not (tmp_path / "never.ko").exists()
    assert not list((host.chroot / "tmp").glob("mdt-mtty-*"))


# -- the workload, on a pty standing in for the mtty loopback -------------------------------------------


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    binary = tmp_path_factory.mktemp("mtty") / "mdt-mtty"
    subprocess.run(
        [
            "gcc",
            "-std=c99",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
            str(binary),
            str(DEFAULT_SOURCE_DIR / "mdt-mtty.c"),
        ],
        check=True,
        timeout=120,
    )
    return binary


def run_on_loopback(binary: Path, seconds: float, corrupt_at: int | None = None) -> list[str]:
    """Run the workload on a pty whose other end echoes every byte back (as mtty does).

    ``corrupt_at``: the echo flips one bit of that byte (counted from 1). Returns the console.
    """
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen(
        [str(binary), f"ports={os.ttyname(slave)}", "report_ms=200", "hb_ms=50", "stall_ms=1000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    stop = threading.Event()

    def echo() -> None:
        seen = 0
        while not stop.is_set():
            try:
                data = bytearray(os.read(master, 256))
            except OSError:
                return
            for i in range(len(data)):
                seen += 1
                if seen == corrupt_at:
                    data[i] ^= 0x01
            os.write(master, bytes(data))

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        time.sleep(seconds)
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    finally:
        stop.set()
        os.close(slave)
        os.close(master)
        thread.join(timeout=5)
    return out.splitlines()


def fields(line: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in line.split()[1:] if "=" in word)


def test_workload_checks_every_byte_of_the_loopback(workload: Path) -> None:
    lines = run_on_loopback(workload, 2.0)
    ready = next(ln for ln in lines if ln.startswith("MDT-READY "))
    assert fields(ready)["version"] == "1"
    assert fields(ready)["ports"] != "none"
    reports = [fields(ln) for ln in lines if ln.startswith("MDT-MTTY ")]
    assert len(reports) >= 5, lines[-5:]
    tx = [int(r["tx"]) for r in reports]
    assert tx == sorted(tx)
    assert tx[-1] > tx[0] > 0
    for r in reports:
        assert r["err"] == "0", r
        if r["quiet"] == "1":  # a report waits for the bytes in flight: all came back
            assert (r["rx"], r["inflight"]) == (r["tx"], "0"), r
        assert r["regs"] == "none"  # a pty has no UART registers
    beats = [int(fields(ln)["seq"]) for ln in lines if ln.startswith("MDT-HB ")]
    assert beats == list(range(1, len(beats) + 1))
    assert len(beats) >= 20
    assert lines[-1] == "MDT-EXIT reason=signal"


def test_workload_reports_a_corrupted_byte(workload: Path) -> None:
    lines = run_on_loopback(workload, 1.5, corrupt_at=1000)
    errors = [fields(ln) for ln in lines if ln.startswith("MDT-MTTY-ERR ")]
    assert [e["kind"] for e in errors] == ["bad"], errors
    assert errors[0]["index"] == "999"
    last = fields([ln for ln in lines if ln.startswith("MDT-MTTY ")][-1])
    assert (last["err"], last["bad"]) == ("1", "1"), last


def test_workload_pattern_differs_per_port(workload: Path) -> None:
    def pattern(port: int) -> str:
        out = subprocess.run(
            [str(workload), "--pattern", str(port), "0", "64"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return out.stdout.strip()

    a, b = pattern(0), pattern(1)
    assert len(a) == 128
    assert a != b
    assert len(set(bytes.fromhex(a))) > 40  # no short period a shifted stream could match


# -- the per-host boot inputs -----------------------------------------------------------------------


def test_config_disk_is_a_raw_tar_with_the_keys(tmp_path: Path) -> None:
    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
    )
    disk = write_config_disk(
        tmp_path / "host-a.cfg", authorized_keys="ssh-ed25519 AAAA test@mdevtest", host_key=key
    )
    assert disk.stat().st_size % 512 == 0
    with tarfile.open(disk) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {
            "authorized_keys",
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
        }
        assert members["ssh_host_ed25519_key"].mode == 0o600
        keys = tar.extractfile("authorized_keys")
        assert keys is not None
        assert keys.read() == b"ssh-ed25519 AAAA test@mdevtest\n"
    # what the L1 init does with it: GNU tar reading the disk as a file
    listing = subprocess.run(
        ["tar", "-tf", str(disk)], capture_output=True, text=True, check=True, timeout=30
    )
    assert "ssh_host_ed25519_key" in listing.stdout.split()
    assert CONFIG_DISK_SERIAL in (DEFAULT_SOURCE_DIR / "l1-init").read_text()
    with pytest.raises(LabError, match="authorized_keys is empty"):
        write_config_disk(tmp_path / "empty.cfg", authorized_keys=" \n")


def stand_in_host() -> HostImage:
    """A host image that exists only as a value (host_append reads its base command line)."""
    nowhere = Path("/nonexistent")
    module = ModuleInfo(nowhere / "mtty.ko", "mtty", "0.1", "0" * 23, "6.12.0 SMP", ("mdev", "vfio"))
    return HostImage(
        kernel=nowhere / "vmlinuz",
        initrd=nowhere / "initrd.img",
        rootfs=nowhere / "rootfs.ext4",
        append="root=/dev/vda rw init=/sbin/mdt-init",
        kernel_version="6.12.0",
        qemu_version="1:10.0.0",
        mtty=module,
        mtty_source=nowhere,
        chroot=nowhere,
        packages={},
        digest="0" * 16,
    )


def test_host_append_names_the_host_and_its_nics() -> None:
    host = stand_in_host()
    line = host_append(
        host,
        hostname="host-a",
        addresses={"eth0": "10.0.2.15/24", "eth1": "198.18.1.11/24"},
        gateway="10.0.2.2",
        load_mtty=False,
    )
    assert line == (
        "root=/dev/vda rw init=/sbin/mdt-init mdt.hostname=host-a mdt.eth0=10.0.2.15/24 "
        "mdt.eth1=198.18.1.11/24 mdt.gw=10.0.2.2 mdt.mtty=0"
    )
    for bad in ({"eth0": "10.0.2.15"}, {"eth0": "ten/24"}, {"wlan0": "10.0.2.15/24"}):
        with pytest.raises(LabError):
            host_append(host, hostname="host-a", addresses=bad)
    with pytest.raises(LabError, match="host name"):
        host_append(host, hostname="Host_A", addresses={})


def test_debian_mirror_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
    )
    assert debian_mirror(apt) == "http://mirror.example/debian"
    (apt / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://one.example/debian bookworm main\n"
    )
    assert debian_mirror(apt) == "http://one.example/debian"
    assert debian_mirror(tmp_path / "nothing") == "http://deb.debian.org/debian"
