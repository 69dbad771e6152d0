"""The embedded labs' desktop guest: a Debian disk image with X, Mesa, the GPU benchmarks and
qemu-guest-agent, booted through UEFI from its own disk.

:func:`build_desktop_image` makes it without booting anything:

- a ``debootstrap --variant=minbase trixie`` root file system with the kernel, udev, busybox,
  Xvfb + Mesa (llvmpipe), glmark2, x11perf, ffmpeg (libx264), GStreamer (base/good/bad/ugly/libav)
  and qemu-guest-agent (:data:`PACKAGES`), booted by a small shell init
  (``workloads/desktop/init`` as ``/sbin/mdt-init``; no systemd as PID 1: TCG-friendly) that
  leaves the root read-only and runs qemu-ga and ``Xvfb :0`` under busybox init;
- the media clips the software-codec workloads play (:data:`MEDIA_CLIPS`), made at build time
  with the image's own ffmpeg and libx264;
- a GPT disk: an EFI system partition with systemd-boot as the removable-media loader
  (``EFI/BOOT/BOOTX64.EFI``), the kernel, the initrd and one loader entry, and the ext4 root;
  converted to ``disk.qcow2`` (the base image each host's per-guest overlay points at). The
  kernel and initrd are also kept beside it, for a BIOS (direct kernel) boot of the same disk.

The probe agent (``mdt-workload``) is deliberately *not* in the image: the framework deploys it
into the running guest through qemu-guest-agent, as it would into any Linux guest.

Cached by its inputs in ``<cache>/desktop/<digest>/`` (the suite's ``InRelease`` date, the
mirror, the package list, the init files, :data:`BUILDER_VERSION`); built in a temporary
directory renamed into place, ``manifest.json`` last; builders serialise on ``<cache>/.lock``;
every command is bounded and a failure is a :class:`~mdevtest.errors.LabError` naming the step.
Offline, the newest image built from the same local inputs is used.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mdevtest.data import data_dir
from mdevtest.errors import LabError
from mdevtest.guest.image import sha256_file
from mdevtest.lab.common import Progress, quiet
from mdevtest.lab.imagebuild import (
    APT_INSTALL,
    DEBIAN_KEYRING,
    CachedBuilder,
    Runner,
    debian_mirror,
    digest_of,
    proc_mounted,
    read_manifest,
    remove_tree,
    round_up,
    sha256_hex,
    suite_release,
    tree_size,
    write_manifest,
)
from mdevtest.lab.nested_image import SUITE
from mdevtest.lab.packages import ensure_packages
from mdevtest.lab.uefi_disk import EspContents, write_uefi_disk

#: Where the desktop image is kept (beside the other lab images).
DEFAULT_CACHE_DIR = Path("/var/cache/mdevtest/desktop")

#: Bump when the way the image is put together changes.
BUILDER_VERSION = "1"

#: Installed with ``--no-install-recommends`` (with the kernel ``linux-image-amd64``).
PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "udev",
    "kmod",
    "busybox-static",
    "iproute2",
    "procps",
    "systemd-boot-efi",
    "qemu-guest-agent",
    "xvfb",
    "xauth",
    "x11-apps",
    "x11-utils",
    "mesa-utils",
    "libgl1-mesa-dri",
    "glmark2-x11",
    "ffmpeg",
    "gstreamer1.0-tools",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    "gstreamer1.0-plugins-ugly",
    "gstreamer1.0-libav",
)

#: What the controller needs to build it.
BUILD_PACKAGES: tuple[str, ...] = (
    "debootstrap",
    "debian-archive-keyring",
    "e2fsprogs",
    "dosfstools",
    "mtools",
    "fdisk",
    "qemu-utils",
)

#: The clips of the software-codec workloads: path in the guest -> the ffmpeg arguments making
#: it (testsrc2 720p30, 30 s, H.264 with libx264; the .h264 is the same as an Annex-B stream).
MEDIA_CLIPS: Mapping[str, tuple[str, ...]] = {
    "/opt/mdt/media/in-720p-h264.mp4": (
        "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-t", "30",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "30",
    ),
}  # fmt: skip
ANNEX_B_CLIP = "/opt/mdt/media/in-720p-h264.h264"

#: The GStreamer plugin registry, built into the image (see ``workloads/desktop/qemu-ga``).
GST_REGISTRY = "/usr/lib/mdt/gstreamer-registry.bin"

#: Kernel command line of the loader entry (root is the second GPT partition, read-only).
#: ``iomem=relaxed`` lets the probe map the display's BAR for the device-memory check.
APPEND = (
    "root=/dev/vda2 ro rootfstype=ext4 init=/sbin/mdt-init console=ttyS0,115200 "
    "net.ifnames=0 fsck.mode=skip panic=-1 iomem=relaxed"
)

#: Modules the initramfs needs to mount the root disk.
INITRAMFS_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "ext4")

DEFAULT_SOURCE_DIR = data_dir("workloads") / "desktop"
_SOURCES = ("init", "qemu-ga", "xserver", "udhcpc.script")
_ESP_MIB = 128
_MKFS_ROOT = ("mkfs.ext4", "-q", "-F", "-L", "mdt-root", "-m", "0", "-E", "root_owner=0:0", "-d")
_SYSTEMD_BOOT = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"


@dataclass(frozen=True)
class DesktopImage:
    """A built desktop image: ``disk`` (qcow2, GPT: ESP + root) and, for a direct kernel boot
    of the same disk, ``kernel``/``initrd``/``append``. ``packages`` are the installed versions."""

    directory: Path
    disk: Path
    disk_sha256: str
    kernel: Path
    initrd: Path
    append: str
    kernel_version: str
    packages: Mapping[str, str]
    digest: str

    @property
    def description(self) -> str:
        return (
            f"mdevtest desktop image {self.digest} (Debian {SUITE}, kernel {self.kernel_version}, "
            f"Mesa {self.packages.get('libgl1-mesa-dri', '?')}, UEFI disk)"
        )


def build_desktop_image(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    progress: Progress = quiet,
    timeout_s: float = 2400,
    mirror: str | None = None,
    source_dir: Path = DEFAULT_SOURCE_DIR,
) -> DesktopImage:
    """Build the desktop image into ``cache_dir``, or return the cached one. Needs root."""
    runner = Runner("desktop image", progress, time.monotonic() + timeout_s, timeout_s)
    return _Builder(Path(cache_dir), runner).build(mirror or debian_mirror(), Path(source_dir))


class _Builder(CachedBuilder):
    def build(self, mirror: str, source_dir: Path) -> DesktopImage:
        sources = _read_sources(source_dir)
        local = self._description(mirror, sources, None)
        local_key = digest_of(local)
        release = suite_release(mirror, SUITE, self.runner, "desktop image")
        if release is None:
            return self._offline(local_key)
        description = self._description(mirror, sources, {"date": release.date})
        digest = digest_of(description)
        image = _load(self.cache / digest, digest)
        if image is not None:
            self.progress(f"desktop image {digest}: cached in {image.directory}")
            return image
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabError(f"desktop image: cannot create {self.cache}: {exc.strerror}") from exc
        with self._lock():
            for leftover in self.cache.glob(".build-*"):
                self.progress(f"removing the leftover {leftover}")
                remove_tree(leftover)
            image = _load(self.cache / digest, digest)
            if image is None:
                installed = ensure_packages(BUILD_PACKAGES, self.progress)
                if installed:
                    self.progress(f"installed on the controller: {' '.join(installed)}")
                image = self._build(description, digest, local_key, mirror, sources)
                self._prune(keep=digest)
        return image

    def _prune(self, keep: str) -> None:
        """Older builds go once a new one is in place (each is over 1 GiB); the newest older one
        stays, for a mirror that is briefly unreachable."""
        older = sorted(
            (p for p in self.cache.glob("*/manifest.json") if p.parent.name != keep),
            key=lambda p: p.stat().st_mtime,
        )
        for manifest in older[:-1]:
            self.progress(f"removing the older desktop image {manifest.parent}")
            remove_tree(manifest.parent)

    def _description(
        self, mirror: str, sources: Mapping[str, bytes], release: Mapping[str, str] | None
    ) -> dict[str, object]:
        described: dict[str, object] = {
            "builder_version": BUILDER_VERSION,
            "suite": SUITE,
            "mirror": mirror,
            "packages": list(PACKAGES),
            "media": {k: list(v) for k, v in MEDIA_CLIPS.items()},
            "append": APPEND,
            "sources": {name: sha256_hex(data) for name, data in sorted(sources.items())},
        }
        if release is not None:
            described["release"] = dict(release)
        return described

    def _offline(self, local_key: str) -> DesktopImage:
        best = self._newest_built(self.cache, local_key, _load)
        if best is None:
            raise LabError(
                f"desktop image: the Debian mirror is unreachable and {self.cache} has no image "
                "built from these inputs; check the network or the apt sources"
            )
        self.progress(f"desktop image {best[1].digest}: offline, using the one built {best[0]}")
        return best[1]

    def _build(
        self,
        description: dict[str, object],
        digest: str,
        local_key: str,
        mirror: str,
        sources: Mapping[str, bytes],
    ) -> DesktopImage:
        final = self.cache / digest
        if final.exists():
            remove_tree(final)
        self.progress(f"desktop image {digest}: building from {mirror} ({SUITE})")
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=self.cache))
        run = self.runner
        try:
            root = work / "root"
            with self._step("debootstrap"):
                run.run(
                    "debootstrap the root file system",
                    [
                        "debootstrap",
                        "--variant=minbase",
                        f"--keyring={DEBIAN_KEYRING}",
                        SUITE,
                        root,
                        mirror,
                    ],
                    hint=f"check that {mirror} serves {SUITE}",
                )
            self._prepare(root)
            with self._step("install packages"), proc_mounted(run, root):
                run.chroot(
                    root,
                    "install the desktop packages",
                    [*APT_INSTALL, "-o", "Dpkg::Options::=--force-confold", *PACKAGES],
                    hint="the mirror may be mid-update; retry, or pass mirror=",
                )
            with self._step("media clips"), proc_mounted(run, root):
                self._media(root)
            with self._step("GStreamer registry"), proc_mounted(run, root):
                self._gst_registry(root)
            kernel_version = _kernel_version(root)
            packages = _package_versions(run, root)
            self._configure(root, sources)
            boot = root / "boot"
            shutil.copyfile(boot / f"vmlinuz-{kernel_version}", work / "vmlinuz")
            shutil.copyfile(boot / f"initrd.img-{kernel_version}", work / "initrd.img")
            loader = root / _SYSTEMD_BOOT
            if not loader.is_file():
                raise LabError(f"desktop image: systemd-boot-efi left no /{_SYSTEMD_BOOT}")
            shutil.copyfile(loader, work / "BOOTX64.EFI")
            self._clean(root)
            with self._step("disk image"):
                self._disk(work, root)
            remove_tree(root)
            (work / "BOOTX64.EFI").unlink()
            manifest = {
                "digest": digest,
                "local_key": local_key,
                "disk": "disk.qcow2",
                "disk_sha256": sha256_file(work / "disk.qcow2"),
                "kernel": "vmlinuz",
                "initrd": "initrd.img",
                "append": APPEND,
                "kernel_version": kernel_version,
                "packages": packages,
                "sizes": {"disk_bytes": (work / "disk.qcow2").stat().st_size},
                "timings": dict(self.timings, total=round(time.monotonic() - started, 1)),
                "inputs": description,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_manifest(work, manifest)
            work.chmod(0o755)
            work.rename(final)
        except BaseException:
            remove_tree(work)
            raise
        image = _load(final, digest)
        if image is None:  # pragma: no cover - just written
            raise LabError(f"desktop image: {final} is incomplete after the build")
        self.progress(
            f"desktop image {digest}: ready in {final} (kernel {kernel_version}, "
            f"{(final / 'disk.qcow2').stat().st_size / 2**20:.0f} MiB qcow2)"
        )
        return image

    def _prepare(self, root: Path) -> None:
        policy = root / "usr/sbin/policy-rc.d"  # no daemon starts inside the chroot
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        conf = root / "etc/initramfs-tools/conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "mdevtest").write_text("MODULES=list\nCOMPRESS=gzip\n")
        mods = root / "usr/share/initramfs-tools/modules.d"
        mods.mkdir(parents=True, exist_ok=True)
        (mods / "mdevtest.conf").write_text("".join(f"{m}\n" for m in INITRAMFS_MODULES))

    def _media(self, root: Path) -> None:
        for path, args in MEDIA_CLIPS.items():
            (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            self.runner.chroot(
                root, f"make {path}", ["ffmpeg", "-hide_banner", "-nostdin", "-y", *args, path]
            )
        mp4 = next(iter(MEDIA_CLIPS))
        self.runner.chroot(
            root,
            f"make {ANNEX_B_CLIP}",
            ["ffmpeg", "-hide_banner", "-nostdin", "-y", "-i", mp4, "-c:v", "copy",
             "-bsf:v", "h264_mp4toannexb", "-f", "h264", ANNEX_B_CLIP],
        )  # fmt: skip

    def _gst_registry(self, root: Path) -> None:
        """GStreamer scans every plugin on its first run and caches that under $HOME, which is
        a tmpfs here: under TCG the scan outlasts a 60 s presence check on every boot. The
        image carries the registry instead (the agent's children get ``GST_REGISTRY``)."""
        (root / GST_REGISTRY.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        self.runner.chroot(
            root,
            "build the GStreamer registry",
            ["env", f"GST_REGISTRY={GST_REGISTRY}", "gst-inspect-1.0"],
        )
        registry = root / GST_REGISTRY.lstrip("/")
        if not registry.is_file():
            raise LabError(f"desktop image: gst-inspect-1.0 wrote no {GST_REGISTRY}")
        registry.chmod(0o644)

    def _configure(self, root: Path, sources: Mapping[str, bytes]) -> None:
        init = root / "usr/sbin/mdt-init"
        init.write_bytes(sources["init"])
        init.chmod(0o755)
        etc = root / "etc/mdt"
        etc.mkdir(parents=True, exist_ok=True)
        for name in ("qemu-ga", "xserver", "udhcpc.script"):
            (etc / name).write_bytes(sources[name])
            (etc / name).chmod(0o755)
        for path in ("var/lib/xkb", "var/lib/qemu-ga", "opt/mdt/run"):
            (root / path).mkdir(parents=True, exist_ok=True)
        (root / "etc/inittab").write_text("# written at boot by /sbin/mdt-init\n")
        (root / "etc/hostname").write_text("mdt-desktop\n")
        (root / "etc/fstab").write_text("# mounted by /sbin/mdt-init (root read-only)\n")

    def _clean(self, root: Path) -> None:
        self.runner.chroot(root, "clean the apt cache", ["apt-get", "clean"])
        for entry in (root / "var/lib/apt/lists").iterdir():
            if entry.is_file() and entry.name != "lock":
                entry.unlink()
        for doc in ("usr/share/doc", "usr/share/man", "usr/share/info"):
            shutil.rmtree(root / doc, ignore_errors=True)
        resolv = root / "etc/resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        resolv.write_text("")

    def _disk(self, work: Path, root: Path) -> None:
        """GPT: the ESP (systemd-boot, kernel, initrd, one entry), then the ext4 root."""
        rootfs = work / "root.ext4"
        size = round_up(int(tree_size(root) * 1.15) + (256 << 20), 64 << 20)
        self.runner.run(
            "make the ext4 root",
            [*_MKFS_ROOT, root, rootfs, f"{size // 1024}k"],
            hint="needs e2fsprogs >= 1.43 (mkfs.ext4 -d)",
        )
        esp = EspContents(
            loader=work / "BOOTX64.EFI",
            kernel=work / "vmlinuz",
            initrd=work / "initrd.img",
            append=APPEND,
            title="mdevtest desktop",
            size_mib=_ESP_MIB,
        )
        write_uefi_disk(self.runner, work, esp, work / "disk.qcow2", root_image=rootfs)


def _read_sources(source_dir: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for name in _SOURCES:
        try:
            found[name] = (source_dir / name).read_bytes()
        except OSError as exc:
            raise LabError(
                f"desktop image: cannot read {source_dir / name}: {exc.strerror}; pass "
                "source_dir= pointing at the workloads/desktop folder of an mdevtest checkout"
            ) from exc
    return found


def _kernel_version(root: Path) -> str:
    found = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    if len(found) != 1:
        raise LabError(f"desktop image: expected one kernel in /boot, found {found or 'none'}")
    return found[0]


def _package_versions(runner: Runner, root: Path) -> dict[str, str]:
    out = runner.run(
        "list the installed versions",
        ["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W", "-f=${Package} ${Version}\\n"],
    )
    versions: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, version = line.partition(" ")
        if sep and version:
            versions[name] = version
    missing = [p for p in PACKAGES if p not in versions]
    if missing:
        raise LabError(f"desktop image: installed, yet dpkg does not list: {' '.join(missing)}")
    return versions


def _load(directory: Path, digest: str) -> DesktopImage | None:
    manifest = read_manifest(directory, digest)
    if manifest is None:
        return None
    files = {n: directory / str(manifest.get(n, "")) for n in ("disk", "kernel", "initrd")}
    packages = manifest.get("packages")
    if not all(f.is_file() for f in files.values()) or not isinstance(packages, dict):
        return None
    return DesktopImage(
        directory=directory,
        disk=files["disk"],
        disk_sha256=str(manifest["disk_sha256"]),
        kernel=files["kernel"],
        initrd=files["initrd"],
        append=str(manifest["append"]),
        kernel_version=str(manifest["kernel_version"]),
        packages={str(k): str(v) for k, v in packages.items()},
        digest=digest,
    )
