"""The nested lab's images: an L1 host that can run a real migratable mdev, and its L2 guest.

The controller's own kernel has no VFIO, so the nested lab runs its "hosts" as VMs (L1) that boot
Debian trixie's kernel (VFIO, VFIO_MDEV and VFIO_IOMMU_TYPE1 as modules) with the kernel's
``mtty`` sample driver, and migrates a guest (L2) with an mtty device between them.
:func:`build_nested_images` makes everything that takes, without booting anything:

- **the L1 host**: a ``debootstrap --variant=minbase trixie`` root file system with the kernel,
  QEMU (10.0), openssh-server, kmod, busybox-static, socat, iproute2, procps and mdevctl, booted
  by a small shell init (``workloads/mtty/l1-init`` as ``/sbin/mdt-init``) instead of systemd; as
  a raw ext4 image (``rootfs.ext4``, to be used through a qcow2 overlay per host) plus the
  ``vmlinuz``/``initrd.img`` to boot it with ``-kernel``. The image is the same for every host
  and every lab: a host's name, addresses and SSH keys come at boot from the kernel command line
  (:func:`host_append`) and a small config disk (:func:`write_config_disk`);
- **mtty.ko**, built out of tree in the trixie chroot from ``samples/vfio-mdev/mtty.c`` of
  ``linux-source-6.12`` (only that file is extracted) against the matching ``linux-headers``,
  installed as ``/lib/modules/extra/mtty.ko``. :func:`build_mtty_module` builds it again, with
  an optional patch, for the pre-merge path;
- **the L2 guest**: the same kernel and a busybox initramfs running the mtty workload
  (``workloads/mtty/``), as an :class:`~mdevtest.lab.image.GuestImage`.

What it guarantees (as :mod:`mdevtest.lab.image` does for the local lab's guest):

- **Cached by its inputs.** ``<cache>/host/<digest>/`` and ``<cache>/guest/<digest>/``, where a
  digest hashes every input: the suite and the date of its ``InRelease`` on the mirror (so a
  point release rebuilds, and nothing else does), the mirror, the package lists, the init
  scripts, the sshd settings, the workload source, the compiler and :data:`BUILDER_VERSION`. The
  guest's digest includes the host's (it uses the host's kernel). Same inputs, no work. Offline,
  the newest host image built from the same local inputs is used, and the progress says so.
- **Never half an image.** A build happens in a temporary directory renamed into place as its
  last step, ``manifest.json`` written last inside it. Concurrent builders serialise on
  ``<cache>/.lock``. Leftovers of interrupted builds are unmounted and removed under the lock.
- **Bounded.** Every command has a timeout and the whole build ``timeout_s``; a failure raises
  :class:`~mdevtest.errors.LabError` naming the step, the command, the end of its stderr and what
  to do.

The chroot the host image was made from stays in the cache (``<host>/chroot``): it has the
kernel headers and the compiler that :func:`build_mtty_module` needs.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import ipaddress
import re
import shlex
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mdevtest.data import data_dir
from mdevtest.errors import LabError
from mdevtest.lab.common import CpioWriter as _CpioWriter
from mdevtest.lab.common import check_busybox as _check_busybox
from mdevtest.lab.common import modinfo as _modinfo
from mdevtest.lab.image import GuestImage
from mdevtest.lab.imagebuild import APT_INSTALL as _APT_INSTALL
from mdevtest.lab.imagebuild import DEBIAN_KEYRING as _KEYRING
from mdevtest.lab.imagebuild import STDERR_TAIL_LINES as _STDERR_TAIL_LINES
from mdevtest.lab.imagebuild import CachedBuilder as _CachedBuilder
from mdevtest.lab.imagebuild import Release as _Release
from mdevtest.lab.imagebuild import Runner as _Runner
from mdevtest.lab.imagebuild import debian_mirror, suite_release
from mdevtest.lab.imagebuild import digest_of as _digest
from mdevtest.lab.imagebuild import proc_mounted as _proc_mounted
from mdevtest.lab.imagebuild import read_manifest as _read_manifest
from mdevtest.lab.imagebuild import remove_tree as _remove_tree
from mdevtest.lab.imagebuild import round_up as _round_up
from mdevtest.lab.imagebuild import sha256_hex as _sha256
from mdevtest.lab.imagebuild import tree_size as _tree_size
from mdevtest.lab.imagebuild import write_manifest as _write_manifest
from mdevtest.lab.packages import ensure_packages

#: Where the nested lab keeps its images.
DEFAULT_CACHE_DIR = Path("/var/cache/mdevtest/nested")

#: Bump when the way the images are put together changes, so cached images are rebuilt.
BUILDER_VERSION = "1"

#: The Debian release of the L1 hosts (kernel 6.12 with VFIO as modules, QEMU 10.0).
SUITE = "trixie"

#: The metapackage whose dependency names the kernel to install.
KERNEL_METAPACKAGE = "linux-image-amd64"

#: Installed into the L1 root file system (with ``--no-install-recommends``), beside the kernel
#: and its headers. ``systemd-standalone-sysusers`` satisfies openssh-server without systemd;
#: seabios, ipxe-qemu and ovmf are the firmware the L2 QEMU loads (ovmf: the UEFI disk guest);
#: qemu-utils makes the L2 disk overlays; make builds mtty.ko; zstd compresses the initramfs.
#: qemu-guest-agent and systemd-boot-efi are not used by the host: they are where the L2 UEFI
#: disk guest's agent and boot loader come from (:mod:`mdevtest.lab.mtty_disk`), the same
#: Debian build as everything else in the image. kexec-tools: provisioning's ``kexec`` boot
#: method (:mod:`mdevtest.provision`, a real kernel switch without leaving the VM);
#: libvirt-daemon, -driver-qemu and libvirt-clients: libvirtd with its QEMU driver, started by hand
#: (no systemd here) where a pair runs through libvirt.
HOST_PACKAGES: tuple[str, ...] = (
    "qemu-system-x86",
    "qemu-utils",
    "seabios",
    "ipxe-qemu",
    "ovmf",
    "qemu-guest-agent",
    "systemd-boot-efi",
    "openssh-server",
    "systemd-standalone-sysusers",
    "kmod",
    "busybox-static",
    "socat",
    "iproute2",
    "procps",
    "make",
    "zstd",
    "kexec-tools",
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
)

#: Installed when the suite has them; the image says in its manifest whether they are there.
OPTIONAL_HOST_PACKAGES: tuple[str, ...] = ("mdevctl",)

#: What the controller needs to build the images.
BUILD_PACKAGES: tuple[str, ...] = (
    "debootstrap",
    "debian-archive-keyring",
    "e2fsprogs",
    "gcc",
    "libc6-dev",
    "patch",
    "xz-utils",
)

#: Modules Debian's initramfs loads to find the root disk (``root=/dev/vda``).
INITRAMFS_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "ext4")

#: The L1 kernel command line; :func:`host_append` adds the per-host part. ``net.ifnames=0``
#: keeps the NICs named eth0, eth1, ... in PCI order (the init script configures them by name).
HOST_APPEND = (
    "root=/dev/vda rw rootfstype=ext4 init=/sbin/mdt-init console=ttyS0,115200 "
    "net.ifnames=0 fsck.mode=skip panic=-1"
)

#: The L2 kernel command line. The mtty ports are 16550s that the built-in 8250_pci driver
#: takes; it only has ``8250.nr_uarts`` ttyS entries (4 by default, all used by ISA ports).
GUEST_APPEND = "console=ttyS0,115200 8250.nr_uarts=8 panic=-1"

#: The virtio serial of the config disk that :func:`write_config_disk` makes.
CONFIG_DISK_SERIAL = "mdt-config"

#: Where the L1 init loads mtty.ko from (outside any kernel's module tree: insmod, not modprobe).
MTTY_MODULE_PATH = "/lib/modules/extra/mtty.ko"

#: mtty.c in the kernel tree; a pre-merge patch names it with git's a/ b/ prefixes (``-p1``).
MTTY_SOURCE_PATH = "samples/vfio-mdev/mtty.c"

_MTTY_KBUILD = "obj-m := mtty.o\n"

#: sshd settings of the L1 hosts (``/etc/ssh/sshd_config.d/mdevtest.conf``): keys only, one
#: ed25519 host key (from the config disk, or made at boot).
SSHD_CONFIG = """\
# mdevtest nested lab: root by key only
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
PrintMotd no
MaxStartups 64:30:128
MaxSessions 64
ClientAliveInterval 15
ClientAliveCountMax 8
"""

#: Where the guest-side sources live: the checkout's ``workloads/``, or the installed copy.
DEFAULT_SOURCE_DIR = data_dir("workloads") / "mtty"

_MKFS = ("mkfs.ext4", "-q", "-F", "-L", "mdt-l1-root", "-m", "0", "-E", "root_owner=0:0", "-d")
_CC = "gcc"
_CFLAGS = ("-std=c99", "-static", "-O2", "-s", "-Wall", "-Wextra")
_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    """Default progress sink."""


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleInfo:
    """What a kernel module's ``.modinfo`` says (``modinfo`` without running it)."""

    path: Path
    name: str
    version: str
    srcversion: str
    vermagic: str
    depends: tuple[str, ...]

    @property
    def kernel_version(self) -> str:
        """The kernel release the module was built for (first word of ``vermagic``)."""
        return self.vermagic.split(" ", 1)[0]


@dataclass(frozen=True)
class HostImage:
    """The L1 host image on the controller."""

    kernel: Path
    initrd: Path
    rootfs: Path  # raw ext4; use it as the backing file of a qcow2 overlay per host
    append: str
    kernel_version: str
    qemu_version: str  # the Debian version of qemu-system-x86 in the image
    mtty: ModuleInfo  # the module baked in at MTTY_MODULE_PATH (its path: a copy beside the image)
    mtty_source: Path  # a directory holding the pristine mtty.c
    chroot: Path  # the tree the image was made from, with headers and compiler
    packages: Mapping[str, str]  # package -> version, for the ones this module names
    digest: str

    @property
    def directory(self) -> Path:
        """The cache directory holding the image and its ``manifest.json``."""
        return self.rootfs.parent


@dataclass(frozen=True)
class NestedImages:
    """Everything the nested lab boots: the L1 host image and the L2 guest image."""

    host: HostImage
    guest: GuestImage

    @property
    def digest(self) -> str:
        return f"{self.host.digest}-{self.guest.digest}"


# -- public API --------------------------------------------------------------------------------------


def build_nested_images(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    progress: Progress = _quiet,
    timeout_s: float = 2400,
    mirror: str | None = None,
    source_dir: Path = DEFAULT_SOURCE_DIR,
) -> NestedImages:
    """Build the L1 host and L2 guest images into ``cache_dir``, or return the cached ones.

    ``mirror`` is the Debian mirror to debootstrap from; by default the one apt uses here
    (:func:`debian_mirror`). ``source_dir`` holds ``l1-init``, ``init`` and ``mdt-mtty.c``.
    Needs root (debootstrap, chroot). Raises :class:`LabError` when a step fails or the build
    outlives ``timeout_s``.
    """
    runner = _Runner("nested image", progress, time.monotonic() + timeout_s, timeout_s)
    return _NestedBuilder(Path(cache_dir), runner).build(mirror or debian_mirror(), Path(source_dir))


def build_mtty_module(
    chroot: Path,
    source_dir: Path,
    patch: Path | None = None,
    *,
    out: Path | None = None,
    kernel_version: str | None = None,
    progress: Progress = _quiet,
    timeout_s: float = 300,
) -> Path:
    """Build ``mtty.ko`` from ``source_dir/mtty.c`` (plus ``patch``) inside ``chroot``.

    ``chroot`` is :attr:`HostImage.chroot` (trixie with the kernel headers and gcc);
    ``source_dir`` a directory holding the pristine ``mtty.c`` (:attr:`HostImage.mtty_source`).
    ``patch`` is a unified diff against the kernel tree applied with ``patch -p1`` (git's
    ``a/samples/vfio-mdev/mtty.c`` paths). The module goes to ``out``, by default
    ``<chroot>/../modules/mtty-<srcversion>.ko``; the build happens in a temporary directory in
    the chroot that is always removed. Returns the module's path; :func:`module_info` reads its
    ``srcversion``, which the progress also reports. Raises :class:`LabError` when the patch does
    not apply, the build fails or the module is not for the chroot's kernel.
    """
    runner = _Runner("mtty module", progress, time.monotonic() + timeout_s, timeout_s)
    return _build_mtty(
        runner, Path(chroot), Path(source_dir), patch=patch, out=out, kernel_version=kernel_version
    )


def module_info(path: Path) -> ModuleInfo:
    """Read ``name``, ``version``, ``srcversion``, ``vermagic`` and ``depends`` of a ``.ko``."""

    def no_zstd(p: Path) -> bytes:
        raise LabError(f"module info: {p} is zstd-compressed; decompress it first")

    fields = _modinfo(Path(path), no_zstd)
    return ModuleInfo(
        path=Path(path),
        name=fields.get("name", ""),
        version=fields.get("version", ""),
        srcversion=fields.get("srcversion", ""),
        vermagic=fields.get("vermagic", "").strip(),
        depends=tuple(d for d in fields.get("depends", "").split(",") if d),
    )


def host_append(
    host: HostImage,
    *,
    hostname: str,
    addresses: Mapping[str, str],
    gateway: str | None = None,
    load_mtty: bool = True,
    extra: str = "",
) -> str:
    """The L1 kernel command line for one host.

    ``addresses`` maps NIC names (``eth0``, ``eth1``: PCI order) to ``ADDR/PREFIX`` or ``none``;
    a NIC not named gets DHCP. ``load_mtty=False`` boots without mtty loaded (a pre-merge run
    loads its own build).
    """
    if not _HOSTNAME_RE.match(hostname):
        raise LabError(f"nested host: {hostname!r} is not a valid host name (a-z, 0-9, '-')")
    parts = [host.append, f"mdt.hostname={hostname}"]
    for nic, addr in sorted(addresses.items()):
        if not re.fullmatch(r"eth[0-9]", nic):
            raise LabError(f"nested host {hostname}: NIC {nic!r} must be named eth0 ... eth9")
        if addr != "none":
            try:
                ipaddress.ip_interface(addr)
            except ValueError as exc:
                raise LabError(
                    f"nested host {hostname}: {nic} address {addr!r} is not ADDR/PREFIX"
                ) from exc
            if "/" not in addr:
                raise LabError(f"nested host {hostname}: {nic} address {addr!r} needs a /PREFIX")
        parts.append(f"mdt.{nic}={addr}")
    if gateway is not None:
        try:
            ipaddress.ip_address(gateway)
        except ValueError as exc:
            raise LabError(f"nested host {hostname}: gateway {gateway!r} is not an address") from exc
        parts.append(f"mdt.gw={gateway}")
    if not load_mtty:
        parts.append("mdt.mtty=0")
    if extra:
        parts.append(extra)
    return " ".join(parts)


def write_config_disk(path: Path, *, authorized_keys: str, host_key: Path | None = None) -> Path:
    """Write an L1 host's config disk: a plain tar archive the init script unpacks at boot.

    It carries ``authorized_keys`` (root's) and, when ``host_key`` is given (an OpenSSH ed25519
    private key file, with its ``.pub`` beside it or not), the host key, so the lab can write
    ``known_hosts`` before the host boots. Attach it read-only with the serial
    :data:`CONFIG_DISK_SERIAL`::

        -drive file=PATH,format=raw,if=none,id=cfg,readonly=on
        -device virtio-blk-pci,drive=cfg,serial=mdt-config

    The file is written atomically and is a multiple of 512 bytes (a valid raw disk).
    """
    if not authorized_keys.strip():
        raise LabError("nested host config disk: authorized_keys is empty; SSH would be locked")
    files: dict[str, tuple[bytes, int]] = {
        "authorized_keys": (authorized_keys.rstrip("\n").encode() + b"\n", 0o600)
    }
    if host_key is not None:
        try:
            files["ssh_host_ed25519_key"] = (Path(host_key).read_bytes(), 0o600)
            pub = Path(f"{host_key}.pub")
            if pub.is_file():
                files["ssh_host_ed25519_key.pub"] = (pub.read_bytes(), 0o644)
        except OSError as exc:
            raise LabError(f"nested host config disk: cannot read {host_key}: {exc}") from exc
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(path)
    return path


class _NestedBuilder(_CachedBuilder):
    # -- flow --------------------------------------------------------------------------------

    def build(self, mirror: str, source_dir: Path) -> NestedImages:
        sources = _read_sources(source_dir)
        local = self._host_description(mirror, sources, release=None)
        local_key = _digest(local)
        release = self._release(mirror)
        cc_version = self.runner.run(
            "check the compiler", [_CC, "--version"], hint="apt-get install gcc libc6-dev"
        ).partition("\n")[0]
        host: HostImage | None
        if release is None:
            host = self._offline_host(local_key)
            host_digest = host.digest
        else:
            description = self._host_description(mirror, sources, release)
            host_digest = _digest(description)
            host = _load_host(self.cache / "host" / host_digest, host_digest)
        guest_description: dict[str, object] = {
            "builder_version": BUILDER_VERSION,
            "host_digest": host_digest,
            "init_sha256": _sha256(sources["init"]),
            "workload_sha256": _sha256(sources["mdt-mtty.c"]),
            "cc": cc_version,
            "cflags": list(_CFLAGS),
            "append": GUEST_APPEND,
        }
        guest_digest = _digest(guest_description)
        guest = _load_guest(self.cache / "guest" / guest_digest, guest_digest)
        if host is not None and guest is not None:
            self.progress(f"nested images {host_digest}/{guest_digest}: cached in {self.cache}")
            return NestedImages(host=host, guest=guest)

        try:
            for sub in ("host", "guest", "sources"):
                (self.cache / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabError(
                f"nested image: cannot create {self.cache}: {exc.strerror}; run as root or pass "
                f"a cache_dir you can write to"
            ) from exc
        with self._lock():
            self._remove_leftovers()
            host = _load_host(self.cache / "host" / host_digest, host_digest)
            if host is None:
                if release is None:  # pragma: no cover - _offline_host returned a loaded image
                    raise LabError("nested image: no host image and no mirror to build one")
                description = self._host_description(mirror, sources, release)
                self._ensure_build_packages()
                host = self._build_host(description, host_digest, local_key, mirror, sources)
            else:
                self.progress(f"host image {host_digest}: cached in {host.directory}")
            guest = _load_guest(self.cache / "guest" / guest_digest, guest_digest)
            if guest is None:
                guest = self._build_guest(guest_description, guest_digest, host, sources)
            else:
                self.progress(f"guest image {guest_digest}: cached in {guest.directory}")
        return NestedImages(host=host, guest=guest)

    def _host_description(
        self, mirror: str, sources: Mapping[str, bytes], release: _Release | None
    ) -> dict[str, object]:
        description: dict[str, object] = {
            "builder_version": BUILDER_VERSION,
            "suite": SUITE,
            "mirror": mirror,
            "kernel_metapackage": KERNEL_METAPACKAGE,
            "packages": list(HOST_PACKAGES),
            "optional_packages": list(OPTIONAL_HOST_PACKAGES),
            "initramfs_modules": list(INITRAMFS_MODULES),
            "append": HOST_APPEND,
            "sshd_config_sha256": _sha256(SSHD_CONFIG.encode()),
            "l1_init_sha256": _sha256(sources["l1-init"]),
            "mtty": {"path": MTTY_MODULE_PATH, "source": MTTY_SOURCE_PATH, "kbuild": _MTTY_KBUILD},
        }
        if release is not None:
            description["release"] = {"date": release.date, "version": release.version}
        return description

    def _release(self, mirror: str) -> _Release | None:
        return suite_release(mirror, SUITE, self.runner, "nested image")

    def _offline_host(self, local_key: str) -> HostImage:
        best = self._newest_built(self.cache / "host", local_key, _load_host)
        if best is None:
            raise LabError(
                f"nested image: the Debian mirror is unreachable and {self.cache}/host has no "
                f"image built from these inputs; check the network or the apt sources"
            )
        self.progress(f"host image {best[1].digest}: offline, using the one built {best[0]}")
        return best[1]

    def _ensure_build_packages(self) -> None:
        try:
            installed = ensure_packages(BUILD_PACKAGES, self.progress)
        except LabError as exc:
            raise LabError(f"nested image: {exc}") from exc
        if installed:
            self.progress(f"installed on the controller: {' '.join(installed)}")

    def _remove_leftovers(self) -> None:
        """Remove what interrupted builds left (only called holding the lock)."""
        for sub in ("host", "guest", "sources"):
            for path in (self.cache / sub).glob(".build-*"):
                self.progress(f"removing the leftover {path}")
                _remove_tree(path)

    # -- the L1 host ---------------------------------------------------------------------------

    def _build_host(
        self,
        description: dict[str, object],
        digest: str,
        local_key: str,
        mirror: str,
        sources: Mapping[str, bytes],
    ) -> HostImage:
        base = self.cache / "host"
        final = base / digest
        if final.exists():  # a directory without a valid manifest is not an image
            _remove_tree(final)
        self.progress(f"host image {digest}: building from {mirror} ({SUITE})")
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
        try:
            root = work / "chroot"
            with self._step("debootstrap"):
                self._debootstrap(root, mirror)
            self._prepare_chroot(root)
            kernel_package, kernel_version, package_version = self._resolve_kernel(root)
            optional = [p for p in OPTIONAL_HOST_PACKAGES if self._available(root, p)]
            missing_optional = sorted(set(OPTIONAL_HOST_PACKAGES) - set(optional))
            if missing_optional:
                self.progress(f"not in {SUITE}, left out: {' '.join(missing_optional)}")
            with self._step("install packages"), _proc_mounted(self.runner, root):
                self.runner.chroot(
                    root,
                    "install the host packages",
                    [
                        *_APT_INSTALL,
                        "-o",
                        "Dpkg::Options::=--force-confold",
                        kernel_package,
                        f"linux-headers-{kernel_version}",
                        *HOST_PACKAGES,
                        *optional,
                    ],
                    hint="the mirror may be mid-update; retry, or pass mirror=",
                )
            with self._step("mtty source"):
                mtty_source = self._mtty_source(root, kernel_version, package_version)
            self._configure_host(root, sources)
            with self._step("build mtty.ko"):
                module = _build_mtty(
                    self.runner,
                    root,
                    mtty_source,
                    patch=None,
                    out=work / "mtty.ko",
                    kernel_version=kernel_version,
                )
                installed = root / "usr" / MTTY_MODULE_PATH.lstrip("/")  # merged /usr
                installed.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(module, installed)
                info = module_info(module)
            packages = self._package_versions(root, kernel_package, optional)
            self._clean_chroot(root)

            boot = root / "boot"
            vmlinuz, initrd = boot / f"vmlinuz-{kernel_version}", boot / f"initrd.img-{kernel_version}"
            for f in (vmlinuz, initrd):
                if not f.is_file():
                    raise LabError(f"nested image: the kernel install left no {f.relative_to(root)}")
            shutil.copyfile(vmlinuz, work / "vmlinuz")
            shutil.copyfile(initrd, work / "initrd.img")
            shutil.copytree(mtty_source, work / "mtty-src")
            with self._step("ext4 image"):
                used = _tree_size(root)
                size = _round_up(int(used * 1.2) + (1536 << 20), 64 << 20)
                self.runner.run(
                    "make the ext4 image",
                    [*_MKFS, root, work / "rootfs.ext4", f"{size // 1024}k"],
                    hint="needs e2fsprogs >= 1.43 (mkfs.ext4 -d)",
                )
            sizes = {
                "tree_bytes": used,
                "rootfs_bytes": size,
                "rootfs_allocated_bytes": (work / "rootfs.ext4").stat().st_blocks * 512,
                "vmlinuz_bytes": (work / "vmlinuz").stat().st_size,
                "initrd_bytes": (work / "initrd.img").stat().st_size,
            }
            manifest = {
                "digest": digest,
                "local_key": local_key,
                "kernel": "vmlinuz",
                "initrd": "initrd.img",
                "rootfs": "rootfs.ext4",
                "append": HOST_APPEND,
                "kernel_version": kernel_version,
                "kernel_package": f"{kernel_package}={package_version}",
                "qemu_version": packages.get("qemu-system-x86", ""),
                "packages": packages,
                "mtty": {
                    "module": "mtty.ko",
                    "installed_at": MTTY_MODULE_PATH,
                    "name": info.name,
                    "version": info.version,
                    "srcversion": info.srcversion,
                    "vermagic": info.vermagic,
                    "depends": list(info.depends),
                    "source": "mtty-src/mtty.c",
                },
                "sizes": sizes,
                "timings": dict(self.timings, total=round(time.monotonic() - started, 1)),
                "inputs": description,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            _write_manifest(work, manifest)
            work.chmod(0o755)  # mkdtemp made it private
            (work / "mtty-src").chmod(0o755)
            work.rename(final)
        except BaseException:
            _remove_tree(work)
            raise
        host = _load_host(final, digest)
        if host is None:  # pragma: no cover - we just wrote it
            raise LabError(f"nested image: {final} is incomplete after the build")
        self.progress(
            f"host image {digest}: ready in {final} (kernel {kernel_version}, qemu "
            f"{host.qemu_version}, mtty srcversion {info.srcversion}, "
            f"{sizes['rootfs_allocated_bytes'] / 2**20:.0f} MiB)"
        )
        return host

    def _debootstrap(self, root: Path, mirror: str) -> None:
        try:
            self.runner.run(
                "debootstrap the root file system",
                ["debootstrap", "--variant=minbase", f"--keyring={_KEYRING}", SUITE, root, mirror],
                hint=f"check that {mirror} serves {SUITE} and that its InRelease verifies with "
                f"{_KEYRING} (apt-get install debian-archive-keyring)",
            )
        except LabError as exc:
            log = root / "debootstrap" / "debootstrap.log"
            with contextlib.suppress(OSError):
                tail = log.read_text(errors="replace").strip().splitlines()[-_STDERR_TAIL_LINES:]
                if tail:
                    joined = "\n    ".join(tail)
                    raise LabError(f"{exc}\n  debootstrap.log:\n    {joined}") from exc
            raise

    def _prepare_chroot(self, root: Path) -> None:
        """Settings that must be in place before the packages install."""
        policy = root / "usr/sbin/policy-rc.d"  # no daemon starts inside the chroot
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        conf = root / "etc/initramfs-tools/conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "mdevtest").write_text("MODULES=list\nCOMPRESS=zstd\n")
        mods = root / "usr/share/initramfs-tools/modules.d"
        mods.mkdir(parents=True, exist_ok=True)
        (mods / "mdevtest.conf").write_text("".join(f"{m}\n" for m in INITRAMFS_MODULES))

    def _resolve_kernel(self, root: Path) -> tuple[str, str, str]:
        """(package, kernel release, package version) of the suite's default kernel."""
        out = self.runner.chroot(
            root, "resolve the kernel", ["apt-cache", "depends", KERNEL_METAPACKAGE]
        )
        package = next(
            (
                v.strip()
                for k, _, v in (ln.strip().partition(":") for ln in out.splitlines())
                if k == "Depends" and v.strip().startswith("linux-image-")
            ),
            None,
        )
        if package is None or not package.endswith("-amd64"):
            raise LabError(
                f"nested image: {SUITE}'s {KERNEL_METAPACKAGE} names no linux-image-*-amd64 "
                f"(`apt-cache depends` said: {out.strip()[:200]})"
            )
        version = self._candidate(root, package)
        if version is None:
            raise LabError(f"nested image: {package} has no installable version in {SUITE}")
        return package, package.removeprefix("linux-image-"), version

    def _candidate(self, root: Path, package: str) -> str | None:
        out = self.runner.chroot(root, f"look up {package}", ["apt-cache", "policy", package])
        for line in out.splitlines():
            key, _, value = line.strip().partition(":")
            if key == "Candidate" and value.strip() not in ("", "(none)"):
                return value.strip()
        return None

    def _available(self, root: Path, package: str) -> bool:
        return self._candidate(root, package) is not None

    def _mtty_source(self, root: Path, kernel_version: str, package_version: str) -> Path:
        """A directory holding ``mtty.c`` of the kernel's source package (cached by version)."""
        series = ".".join(kernel_version.split(".")[:2])
        package = f"linux-source-{series}"
        cached = self.cache / "sources" / f"{package}_{package_version}"
        if (cached / "mtty.c").is_file():
            self.progress(f"mtty.c of {package} {package_version}: cached")
            return cached
        download = root / "tmp" / "mdt-source"
        download.mkdir(parents=True, exist_ok=True)
        try:
            self.progress(f"downloading {package}={package_version} for mtty.c")
            self.runner.chroot(
                root,
                f"download {package}",
                [
                    "sh",
                    "-c",
                    f"cd /tmp/mdt-source && apt-get download -q -o APT::Sandbox::User=root "
                    f"{shlex.quote(f'{package}={package_version}')}",
                ],
                hint=f"{package} must have the kernel's version ({package_version}) on the mirror",
            )
            debs = list(download.glob(f"{package}_*.deb"))
            if len(debs) != 1:
                raise LabError(f"nested image: downloading {package} gave {debs or 'nothing'}")
            tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=self.cache / "sources"))
            try:
                tarball = f"./usr/src/{package}.tar.xz"
                member = f"{package}/{MTTY_SOURCE_PATH}"
                pipeline = (
                    f"set -o pipefail; dpkg-deb --fsys-tarfile {shlex.quote(str(debs[0]))} | "
                    f"tar -xO {shlex.quote(tarball)} | tar -xJO {shlex.quote(member)} "
                    f"> {shlex.quote(str(tmp / 'mtty.c'))}"
                )
                self.runner.run(
                    "extract mtty.c from the kernel source",
                    ["bash", "-c", pipeline],
                    hint="needs dpkg-deb, tar and xz-utils on the controller",
                )
                text = (tmp / "mtty.c").read_text(errors="replace")
                if "mtty" not in text or "MODULE_LICENSE" not in text:
                    raise LabError(f"nested image: {member} in {debs[0].name} is not mtty's source")
                tmp.chmod(0o755)
                tmp.rename(cached)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            shutil.rmtree(download, ignore_errors=True)
        return cached

    def _configure_host(self, root: Path, sources: Mapping[str, bytes]) -> None:
        """The L1 boot: init script, sshd settings, no baked host keys, busybox power commands."""
        init = root / "usr/sbin/mdt-init"  # /sbin/mdt-init: trixie has a merged /usr
        init.write_bytes(sources["l1-init"])
        init.chmod(0o755)
        dropin = root / "etc/ssh/sshd_config.d"
        dropin.mkdir(parents=True, exist_ok=True)
        (dropin / "mdevtest.conf").write_text(SSHD_CONFIG)
        for key in (root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()  # each host gets its own, from the config disk or made at boot
        for name in ("poweroff", "reboot", "halt"):
            link = root / "usr/sbin" / name
            if not link.exists() and not link.is_symlink():
                link.symlink_to("/bin/busybox")
        (root / "etc/hostname").write_text("mdt-l1\n")
        (root / "etc/fstab").write_text("# mounted by /sbin/mdt-init\n")

    def _package_versions(
        self, root: Path, kernel_package: str, optional: Sequence[str]
    ) -> dict[str, str]:
        names = [kernel_package, *HOST_PACKAGES, *optional]
        out = self.runner.run(
            "list the installed versions",
            [
                "dpkg-query",
                f"--admindir={root / 'var/lib/dpkg'}",
                "-W",
                "-f=${Package} ${Version}\\n",
                *names,
            ],
        )
        versions: dict[str, str] = {}
        for line in out.splitlines():
            name, sep, version = line.partition(" ")
            if sep and version:
                versions[name] = version
        missing = [n for n in names if n not in versions]
        if missing:
            raise LabError(f"nested image: installed, yet dpkg does not list: {' '.join(missing)}")
        return versions

    def _clean_chroot(self, root: Path) -> None:
        self.runner.chroot(root, "clean the apt cache", ["apt-get", "clean"])
        lists = root / "var/lib/apt/lists"
        for entry in lists.iterdir():
            if entry.is_file() and entry.name != "lock":
                entry.unlink()
        resolv = root / "etc/resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        resolv.write_text("")  # the controller's resolver means nothing inside a lab host

    # -- the L2 guest ----------------------------------------------------------------------------

    def _build_guest(
        self,
        description: dict[str, object],
        digest: str,
        host: HostImage,
        sources: Mapping[str, bytes],
    ) -> GuestImage:
        base = self.cache / "guest"
        final = base / digest
        if final.exists():
            _remove_tree(final)
        self.progress(f"guest image {digest}: building (kernel {host.kernel_version})")
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
        try:
            with self._step("guest image"):
                busybox = host.chroot / "usr/bin/busybox"
                try:
                    _check_busybox(busybox)
                except LabError as exc:
                    raise LabError(f"nested image: the host image's busybox: {exc}") from exc
                src = work / "mdt-mtty.c"
                src.write_bytes(sources["mdt-mtty.c"])
                binary = work / "mdt-mtty"
                self.runner.run(
                    "compile the mtty workload",
                    [_CC, *_CFLAGS, "-o", binary, src],
                    hint="install gcc and libc6-dev (apt-get install gcc libc6-dev)",
                )
                out = work / "image"
                out.mkdir()
                initrd = out / "initrd.img"
                with initrd.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                    cpio = _CpioWriter(gz)
                    for d in ("bin", "dev", "etc", "etc/mdt", "proc", "sys", "tmp", "run", "root"):
                        cpio.directory(d)
                    cpio.char_device("dev/console", 0o600, 5, 1)
                    cpio.file("init", sources["init"], 0o755)
                    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
                    cpio.file("bin/mdt-mtty", binary.read_bytes(), 0o755)
                    cpio.file("etc/mdt/image", f"{digest}\n".encode(), 0o644)
                    cpio.trailer()
                shutil.copyfile(host.kernel, out / "vmlinuz")
            manifest = {
                "digest": digest,
                "kernel": "vmlinuz",
                "initrd": "initrd.img",
                "append": GUEST_APPEND,
                "kernel_version": host.kernel_version,
                "host_digest": host.digest,
                "contents": ["init", "bin/busybox", "bin/mdt-mtty", "etc/mdt/image"],
                "sizes": {
                    "initrd_bytes": initrd.stat().st_size,
                    "vmlinuz_bytes": (out / "vmlinuz").stat().st_size,
                },
                "timings": {"guest image": self.timings.get("guest image", 0.0)},
                "inputs": description,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            _write_manifest(out, manifest)
            out.rename(final)
        finally:
            _remove_tree(work)
        guest = _load_guest(final, digest)
        if guest is None:  # pragma: no cover - we just wrote it
            raise LabError(f"nested image: {final} is incomplete after the build")
        self.progress(f"guest image {digest}: ready in {final}")
        return guest


# -- mtty.ko -----------------------------------------------------------------------------------------


def _chroot_kernel(chroot: Path) -> str:
    versions = sorted(p.name for p in (chroot / "usr/lib/modules").glob("*") if (p / "build").exists())
    if len(versions) != 1:
        raise LabError(
            f"mtty module: {chroot} has kernel headers for {versions or 'no kernel'}; "
            f"pass kernel_version= naming one (it needs exactly one to choose by itself)"
        )
    return versions[0]


def _build_mtty(
    runner: _Runner,
    chroot: Path,
    source_dir: Path,
    *,
    patch: Path | None,
    out: Path | None,
    kernel_version: str | None,
) -> Path:
    source = source_dir / "mtty.c"
    if not source.is_file():
        raise LabError(f"mtty module: {source} is missing; pass the HostImage.mtty_source directory")
    if not (chroot / "usr/bin/make").exists():
        raise LabError(f"mtty module: {chroot} is not a build chroot (no make); pass HostImage.chroot")
    kver = kernel_version or _chroot_kernel(chroot)
    if not (chroot / "usr/lib/modules" / kver / "build").exists():
        raise LabError(f"mtty module: {chroot} has no headers for {kver} (lib/modules/{kver}/build)")
    (chroot / "tmp").mkdir(exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="mdt-mtty-", dir=chroot / "tmp"))
    try:
        tree = build / Path(MTTY_SOURCE_PATH).parent
        tree.mkdir(parents=True)
        shutil.copyfile(source, tree / "mtty.c")
        if patch is not None:
            patch = Path(patch).resolve()
            if not patch.is_file():
                raise LabError(f"mtty module: the patch {patch} does not exist")
            runner.run(
                f"apply {patch.name}",
                ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-i", patch],
                cwd=build,
                hint=f"the patch must apply with -p1 to {MTTY_SOURCE_PATH} of the kernel's own "
                f"source ({kver}), e.g. made by `git diff` in a kernel tree",
            )
            stray = sorted(
                str(p.relative_to(build)) for p in build.rglob("*") if p.is_file() and p.parent != tree
            )
            if stray or sorted(p.name for p in tree.iterdir()) != ["mtty.c"]:
                raise LabError(
                    f"mtty module: {patch.name} touches files other than {MTTY_SOURCE_PATH}: "
                    f"{', '.join(stray) or ', '.join(p.name for p in tree.iterdir())}"
                )
        (tree / "Kbuild").write_text(_MTTY_KBUILD)
        inside = "/" + str(tree.relative_to(chroot))
        runner.chroot(
            chroot,
            "build mtty.ko" + (f" with {patch.name}" if patch else ""),
            ["make", "-C", f"/lib/modules/{kver}/build", f"M={inside}", "modules"],
            hint="the compiler output above says what is wrong with the source",
        )
        built = tree / "mtty.ko"
        if not built.is_file():
            raise LabError(f"mtty module: make succeeded but left no {built}")
        info = module_info(built)
        if info.kernel_version != kver or info.name != "mtty":
            raise LabError(
                f"mtty module: built {info.name or '?'} for {info.kernel_version or '?'}, "
                f"expected mtty for {kver} (vermagic {info.vermagic!r})"
            )
        if out is None:
            out = chroot.parent / "modules" / f"mtty-{info.srcversion}.ko"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.copyfile(built, tmp)
        tmp.rename(out)
        runner.progress(
            f"mtty.ko srcversion={info.srcversion} version={info.version} for {kver}"
            + (f" (patched: {patch.name})" if patch else "")
            + f" -> {out}"
        )
        return out
    finally:
        shutil.rmtree(build, ignore_errors=True)


# -- helpers -------------------------------------------------------------------------------------------


def _read_sources(source_dir: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for name in ("l1-init", "init", "mdt-mtty.c"):
        path = source_dir / name
        try:
            found[name] = path.read_bytes()
        except OSError as exc:
            raise LabError(
                f"nested image: cannot read {path}: {exc.strerror}; pass source_dir= pointing "
                f"at the workloads/mtty folder of an mdevtest checkout"
            ) from exc
    return found


def _load_host(directory: Path, digest: str) -> HostImage | None:
    """The host image in ``directory`` when it is complete and has ``digest``, else None."""
    manifest = _read_manifest(directory, digest)
    if manifest is None:
        return None
    files = [directory / n for n in ("vmlinuz", "initrd.img", "rootfs.ext4", "mtty.ko")]
    if not all(f.is_file() for f in files) or not (directory / "chroot").is_dir():
        return None
    mtty = manifest.get("mtty")
    packages = manifest.get("packages")
    if not isinstance(mtty, dict) or not isinstance(packages, dict):
        return None
    depends = mtty.get("depends", [])
    info = ModuleInfo(
        path=directory / "mtty.ko",
        name=str(mtty.get("name", "")),
        version=str(mtty.get("version", "")),
        srcversion=str(mtty.get("srcversion", "")),
        vermagic=str(mtty.get("vermagic", "")),
        depends=tuple(str(d) for d in depends) if isinstance(depends, list) else (),
    )
    return HostImage(
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        rootfs=directory / "rootfs.ext4",
        append=str(manifest["append"]),
        kernel_version=str(manifest["kernel_version"]),
        qemu_version=str(manifest.get("qemu_version", "")),
        mtty=info,
        mtty_source=directory / "mtty-src",
        chroot=directory / "chroot",
        packages={str(k): str(v) for k, v in packages.items()},
        digest=digest,
    )


def _load_guest(directory: Path, digest: str) -> GuestImage | None:
    manifest = _read_manifest(directory, digest)
    if manifest is None:
        return None
    kernel, initrd = directory / "vmlinuz", directory / "initrd.img"
    if not (kernel.is_file() and initrd.is_file()):
        return None
    return GuestImage(
        kernel=kernel,
        initrd=initrd,
        append=str(manifest["append"]),
        digest=digest,
        kernel_version=str(manifest["kernel_version"]),
    )
