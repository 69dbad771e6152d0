"""The nested lab's L2 guest as a UEFI disk with qemu-guest-agent (``guest.image.kind:
lab-mtty-uefi``): the real-guest path (firmware, agent, deployed probe) inside the nested lab.

The plain L2 guest (``lab-mtty``) is a kernel + busybox initramfs booted directly. This one is
the same kernel and the same initramfs (``workloads/mtty/init`` and the mtty workload), with a
second archive appended to the initramfs that adds:

- ``qemu-guest-agent`` and the shared libraries ``ldd`` names for it, taken from the L1 host
  image's root file system (the same Debian build; the host image installs the package for
  this); the init starts it on the virtio-serial port named ``org.qemu.guest_agent.0``;
- kernel modules, in load order, for what the probe agent uses that Debian builds as modules:
  ``virtio_blk`` (the probe's DMA pattern disk) and ``bochs`` (the DRM driver of QEMU's
  emulated VGA, the display the probe draws on when the vGPU has none: mtty has none).

The whole thing goes on a GPT disk's EFI system partition with systemd-boot
(:func:`mdevtest.lab.uefi_disk.write_uefi_disk`): OVMF boots it from the disk, readiness is
the agent's ``guest-ping``, and the framework deploys the probe through the agent, exactly as
for any Linux guest. Cached in ``<nested cache>/disk/<digest>/`` by the host and guest image
digests, the module list and :data:`BUILDER_VERSION`.
"""

from __future__ import annotations

import gzip
import io
import lzma
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mdevtest.errors import LabError
from mdevtest.guest.image import sha256_file
from mdevtest.lab.common import CpioWriter, Progress, quiet
from mdevtest.lab.imagebuild import (
    CachedBuilder,
    Runner,
    digest_of,
    read_manifest,
    remove_tree,
    write_manifest,
)
from mdevtest.lab.nested_image import DEFAULT_CACHE_DIR, NestedImages, build_nested_images
from mdevtest.lab.uefi_disk import EspContents, write_uefi_disk

__all__ = ["BUILDER_VERSION", "GUEST_MODULES", "MttyDisk", "build_mtty_disk", "module_closure"]

#: Bump when the way the disk is put together changes.
BUILDER_VERSION = "1"

#: Modules the guest loads (with their dependencies, in order) for the probe agent.
GUEST_MODULES: tuple[str, ...] = ("virtio_blk", "bochs")

#: Added to the L2 guest's kernel command line: the probe maps the display's BAR for the
#: device-memory check (the kernel refuses /dev/mem on a BAR a driver claimed without it).
APPEND_EXTRA = "iomem=relaxed"

_QGA = "/usr/sbin/qemu-ga"
_SYSTEMD_BOOT = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
_ESP_MIB = 64


@dataclass(frozen=True)
class MttyDisk:
    """A built mtty UEFI disk: ``disk`` (qcow2) and what is in it."""

    directory: Path
    disk: Path
    disk_sha256: str
    digest: str
    kernel_version: str
    agent_version: str
    modules: tuple[str, ...]

    @property
    def description(self) -> str:
        return (
            f"mdevtest nested-lab mtty UEFI disk {self.digest} (kernel {self.kernel_version}, "
            f"qemu-guest-agent {self.agent_version}, modules {','.join(self.modules)})"
        )


def build_mtty_disk(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    progress: Progress = quiet,
    timeout_s: float = 2400,
) -> MttyDisk:
    """Build the disk into ``<cache_dir>/disk`` from the nested images (built first when they
    are not cached), or return the cached one. Needs root (the nested images' build)."""
    images = build_nested_images(cache_dir, progress=progress, timeout_s=timeout_s)
    runner = Runner("mtty disk", progress, time.monotonic() + timeout_s, timeout_s)
    return _Builder(Path(cache_dir) / "disk", runner).build(images)


def module_closure(modules_dep: str, builtin: str, wanted: tuple[str, ...]) -> list[str]:
    """The ``modules.dep`` paths to load for ``wanted``, dependencies first, each once;
    modules built into the kernel (``modules.builtin``) are left out."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in modules_dep.splitlines():
        path, sep, rest = line.partition(":")
        if sep:
            deps[_module_name(path)] = (path, rest.split())
    built_in = {_module_name(line) for line in builtin.split()}
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in built_in:
            return
        if name not in deps:
            raise LabError(f"mtty disk: module {name} (for {' <- '.join(chain)}) is not in modules.dep")
        path, requires = deps[name]
        if path in order:
            return
        for dep in requires:
            visit(_module_name(dep), (*chain, name))
        order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"), (name,))
    return order


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


class _Builder(CachedBuilder):
    def build(self, images: NestedImages) -> MttyDisk:
        description: dict[str, object] = {
            "builder_version": BUILDER_VERSION,
            "host_digest": images.host.digest,
            "guest_digest": images.guest.digest,
            "modules": list(GUEST_MODULES),
            "esp_mib": _ESP_MIB,
            "append_extra": APPEND_EXTRA,
        }
        digest = digest_of(description)
        disk = _load(self.cache / digest, digest)
        if disk is not None:
            self.progress(f"mtty disk {digest}: cached in {disk.directory}")
            return disk
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabError(f"mtty disk: cannot create {self.cache}: {exc.strerror}") from exc
        with self._lock():
            for leftover in self.cache.glob(".build-*"):
                remove_tree(leftover)
            disk = _load(self.cache / digest, digest)
            if disk is None:
                disk = self._build(description, digest, images)
                for old in self.cache.glob("*/manifest.json"):
                    if old.parent.name != digest:
                        remove_tree(old.parent)
        return disk

    def _build(self, description: dict[str, object], digest: str, images: NestedImages) -> MttyDisk:
        host, guest = images.host, images.guest
        self.progress(f"mtty disk {digest}: building (kernel {guest.kernel_version})")
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=self.cache))
        try:
            loader = host.chroot / _SYSTEMD_BOOT
            if not loader.is_file():
                raise LabError(
                    f"mtty disk: the host image {host.digest} has no /{_SYSTEMD_BOOT} "
                    "(systemd-boot-efi); rebuild it with this version of mdevtest"
                )
            with self._step("mtty disk"):
                extra, contents, modules = self._extra_archive(images)
                initrd = work / "initrd.img"
                with initrd.open("wb") as out:
                    out.write(guest.initrd.read_bytes())  # the kernel unpacks archives in turn
                    out.write(extra)
                esp = EspContents(
                    loader=loader,
                    kernel=guest.kernel,
                    initrd=initrd,
                    append=f"{guest.append} {APPEND_EXTRA}",
                    title="mdevtest nested mtty guest",
                    size_mib=_ESP_MIB,
                )
                write_uefi_disk(self.runner, work, esp, work / "disk.qcow2")
                initrd.unlink()
            agent_version = host.packages.get("qemu-guest-agent", "")
            manifest = {
                "digest": digest,
                "disk": "disk.qcow2",
                "disk_sha256": sha256_file(work / "disk.qcow2"),
                "kernel_version": guest.kernel_version,
                "agent_version": agent_version,
                "modules": modules,
                "contents": contents,
                "sizes": {"disk_bytes": (work / "disk.qcow2").stat().st_size},
                "timings": dict(self.timings, total=round(time.monotonic() - started, 1)),
                "inputs": description,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_manifest(work, manifest)
            work.chmod(0o755)
            work.rename(self.cache / digest)
        except BaseException:
            remove_tree(work)
            raise
        disk = _load(self.cache / digest, digest)
        if disk is None:  # pragma: no cover - just written
            raise LabError(f"mtty disk: {self.cache / digest} is incomplete after the build")
        self.progress(f"mtty disk {digest}: ready in {disk.directory}")
        return disk

    def _extra_archive(self, images: NestedImages) -> tuple[bytes, list[str], list[str]]:
        """The appended initramfs archive (gzip'd newc cpio), its file list and the modules."""
        chroot = images.host.chroot
        files: dict[str, bytes] = {_QGA.lstrip("/"): self._chroot_read(chroot, _QGA)}
        for lib in self._libraries(chroot, _QGA):
            files[lib.lstrip("/")] = self._chroot_read(chroot, lib)
        moddir = chroot / "usr/lib/modules" / images.host.kernel_version
        try:
            dep = (moddir / "modules.dep").read_text()
            builtin = (moddir / "modules.builtin").read_text()
        except OSError as exc:
            raise LabError(f"mtty disk: cannot read {moddir}/modules.*: {exc.strerror}") from exc
        loaded: list[str] = []
        for path in module_closure(dep, builtin, GUEST_MODULES):
            name = _module_name(path)
            files[f"lib/modules/mdt/{name}.ko"] = _decompress(moddir / path)
            loaded.append(name)
        files["etc/mdt/modules"] = "".join(f"{m}\n" for m in loaded).encode()

        raw = io.BytesIO()
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            cpio = CpioWriter(gz)
            made: set[str] = {"etc", "etc/mdt"}  # in the first archive
            for name in sorted(files):
                parts = name.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    folder = "/".join(parts[:i])
                    if folder not in made:
                        cpio.directory(folder)
                        made.add(folder)
                cpio.file(name, files[name], 0o755 if not name.startswith("etc/") else 0o644)
            for folder in ("var", "var/lib", "var/lib/qemu-ga", "var/log", "var/run"):
                if folder not in made:
                    cpio.directory(folder)
                    made.add(folder)
            cpio.trailer()
        return raw.getvalue(), sorted(files), loaded

    def _libraries(self, chroot: Path, binary: str) -> list[str]:
        """The shared libraries (and the loader) ``ldd`` resolves for ``binary`` in ``chroot``."""
        out = self.runner.run("list qemu-ga's libraries", ["chroot", chroot, "ldd", binary])
        found: list[str] = []
        for line in out.splitlines():
            tokens = line.split()
            if "=>" in tokens:
                after = tokens[tokens.index("=>") + 1 :]
                if after and after[0].startswith("/"):
                    found.append(after[0])
                elif after and after[0] == "not":
                    raise LabError(f"mtty disk: {binary} in the host image: {line.strip()}")
            elif tokens and tokens[0].startswith("/"):
                found.append(tokens[0])
        if not found:
            raise LabError(f"mtty disk: ldd named no libraries for {binary}:\n{out[-500:]}")
        return found

    def _chroot_read(self, chroot: Path, path: str) -> bytes:
        """A file of the chroot, following its symlinks inside the chroot (``cat`` in it)."""
        return self.runner.run_bytes(f"read {path}", ["chroot", chroot, "cat", path])


def _decompress(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko"):
        return data
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    raise LabError(f"mtty disk: {path.name}: a compression this builder does not unpack")


def _load(directory: Path, digest: str) -> MttyDisk | None:
    manifest = read_manifest(directory, digest)
    if manifest is None:
        return None
    disk = directory / str(manifest.get("disk", ""))
    modules = manifest.get("modules")
    if not disk.is_file() or not isinstance(modules, list):
        return None
    return MttyDisk(
        directory=directory,
        disk=disk,
        disk_sha256=str(manifest["disk_sha256"]),
        digest=digest,
        kernel_version=str(manifest["kernel_version"]),
        agent_version=str(manifest.get("agent_version", "")),
        modules=tuple(str(m) for m in modules),
    )
