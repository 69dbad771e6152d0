"""The lab guest image: a Debian kernel and a small initramfs running the synthetic workload.

:func:`build_guest_image` turns Debian's packaged kernel, busybox-static, the init script and the
synthetic workload (``workloads/synthetic/``) into a ``vmlinuz`` + ``initrd.img`` pair that boots
in plain QEMU (``-kernel``/``-initrd``), with no boot disk (an optional read-only pattern disk
feeds the workload's DMA probe; see :func:`mdevtest.workloads.synthetic.write_pattern_disk`).

What it guarantees:

- **Cached by its inputs.** The image lives in ``<cache>/images/<digest>/`` where the digest hashes
  every input: the kernel package and version, the init script, the workload source, busybox, the
  compiler, the module list and :data:`BUILDER_VERSION`. Same inputs, same directory, no work;
  any change, a new directory. The kernel ``.deb`` is kept in ``<cache>/debs/`` and downloaded once.
- **Never half an image.** A build happens in a temporary directory that is renamed into place
  as its last step, and ``manifest.json`` is written last inside it; a directory without a manifest
  is not an image. Concurrent builders (xdist workers) serialise on a lock file.
- **Bounded.** Every command has a timeout, the whole build has ``timeout_s``; a failure raises
  :class:`~mdevtest.errors.LabError` naming the step, the command, the end of its stderr and what
  to do.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from mdevtest.data import data_dir
from mdevtest.errors import LabError
from mdevtest.filelock import locked
from mdevtest.guest.image import sha256_file
from mdevtest.lab.common import CpioWriter, check_busybox, modinfo, read_module

#: Where the lab keeps downloaded packages and built images.
DEFAULT_CACHE_DIR = Path("/var/cache/mdevtest")

#: Bump when the way an image is put together changes, so cached images are rebuilt.
BUILDER_VERSION = "2"

#: The metapackage whose dependency names the kernel to use (the regular flavour: it has the
#: display drivers that the cloud flavour leaves out).
KERNEL_METAPACKAGE = "linux-image-amd64"

#: Modules the guest loads, in this order, each after its dependencies: the std-VGA display
#: (bochs DRM driver: /dev/dri/card0, and /dev/fb0 by fbdev emulation), a virtio-net NIC and
#: virtio-blk for the read-only pattern disk that the workload's DMA reader uses (``/dev/vda``).
MODULES: tuple[str, ...] = ("bochs", "virtio_pci", "virtio_net", "virtio_blk")

#: Parameters given to ``insmod`` per module (module name: "key=value ..."); none needed now.
MODULE_PARAMS: Mapping[str, str] = {}

#: The kernel command line the image needs; callers append their own (``mdt.*`` options).
#: ``iomem=relaxed`` lets the workload map the display's BAR 0 read-only (the kernel's strict
#: /dev/mem rules refuse mapping a BAR a driver claimed), to show that its device-memory pattern
#: really is in video memory.
BASE_APPEND = "console=ttyS0,115200 panic=-1 iomem=relaxed"

#: Where the guest-side sources live: the checkout's ``workloads/``, or the installed copy.
DEFAULT_SOURCE_DIR = data_dir("workloads") / "synthetic"

_BUSYBOX = Path("/bin/busybox")
_CC = "gcc"
_CFLAGS = ("-std=c99", "-static", "-O2", "-s", "-Wall", "-Wextra")
_STDERR_TAIL_LINES = 12

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GuestImage:
    """A built guest image on the controller."""

    kernel: Path
    initrd: Path
    append: str
    digest: str
    kernel_version: str

    @property
    def directory(self) -> Path:
        """The cache directory holding the image and its ``manifest.json``."""
        return self.kernel.parent


def build_guest_image(
    cache_dir: Path,
    *,
    progress: Progress = lambda _m: None,
    timeout_s: float = 900,
    kernel_package: str | None = None,
    source_dir: Path = DEFAULT_SOURCE_DIR,
) -> GuestImage:
    """Build the guest image into ``cache_dir``, or return the cached one with the same inputs.

    ``kernel_package`` pins the kernel (``linux-image-6.1.0-41-amd64``); by default it is what
    ``linux-image-amd64`` depends on in the apt lists. ``source_dir`` holds ``init`` and
    ``mdt-workload.c``. Raises :class:`LabError` when a step fails or the build outlives
    ``timeout_s``.
    """
    builder = _Builder(Path(cache_dir), progress, time.monotonic() + timeout_s, timeout_s)
    return builder.build(kernel_package, Path(source_dir))


@dataclass(frozen=True)
class _Inputs:
    package: str
    package_version: str
    kernel_version: str
    init: bytes
    workload: bytes
    busybox: Path

    def describe(self, busybox_sha: str, cc_version: str) -> dict[str, object]:
        return {
            "builder_version": BUILDER_VERSION,
            "kernel_package": self.package,
            "kernel_package_version": self.package_version,
            "init_sha256": hashlib.sha256(self.init).hexdigest(),
            "workload_sha256": hashlib.sha256(self.workload).hexdigest(),
            "busybox_sha256": busybox_sha,
            "cc": cc_version,
            "cflags": list(_CFLAGS),
            "modules": list(MODULES),
            "module_params": dict(sorted(MODULE_PARAMS.items())),
            "append": BASE_APPEND,
        }


class _Builder:
    def __init__(self, cache: Path, progress: Progress, deadline: float, budget: float) -> None:
        self.cache = cache
        self.progress = progress
        self.deadline = deadline
        self.budget = budget

    # -- flow ------------------------------------------------------------------------------

    def build(self, kernel_package: str | None, source_dir: Path) -> GuestImage:
        inputs = self._resolve_inputs(kernel_package, source_dir)
        cc_version = self._run(
            "check the compiler",
            [_CC, "--version"],
            hint="install gcc and libc6-dev (apt-get install gcc libc6-dev)",
        ).partition("\n")[0]
        description = inputs.describe(sha256_file(inputs.busybox), cc_version)
        digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
        images = self.cache / "images"
        final = images / digest
        cached = _load_image(final, digest)
        if cached is not None:
            self.progress(f"guest image {digest}: cached in {final}")
            return cached
        try:
            images.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabError(
                f"guest image: cannot create {images}: {exc.strerror}; run as root or pass "
                f"a cache_dir you can write to"
            ) from exc
        with self._lock():
            cached = _load_image(final, digest)  # built by someone else while we waited
            if cached is not None:
                self.progress(f"guest image {digest}: cached in {final}")
                return cached
            self.progress(f"guest image {digest}: building (kernel {inputs.kernel_version})")
            _remove_leftovers(images)
            if final.exists():  # a directory without a valid manifest is not an image
                shutil.rmtree(final)
            with tempfile.TemporaryDirectory(prefix=".build-", dir=images) as tmp:
                work = Path(tmp)
                out = work / "image"
                out.mkdir()
                self._assemble(inputs, description, digest, work, out)
                out.rename(final)
        image = _load_image(final, digest)
        if image is None:  # pragma: no cover - we just wrote it
            raise LabError(f"guest image {digest}: {final} is incomplete after the build")
        self.progress(f"guest image {digest}: ready in {final}")
        return image

    def _assemble(
        self,
        inputs: _Inputs,
        description: dict[str, object],
        digest: str,
        work: Path,
        out: Path,
    ) -> None:
        deb = self._fetch_kernel_deb(inputs.package, inputs.package_version)
        self.progress(f"unpacking {deb.name}")
        root = work / "kernel"
        self._run("unpack the kernel package", ["dpkg-deb", "-x", str(deb), str(root)])
        moddir = _module_dir(root, inputs.kernel_version)
        vmlinuz = root / "boot" / f"vmlinuz-{inputs.kernel_version}"
        if not vmlinuz.is_file():
            raise LabError(
                f"guest image: {deb.name} has no boot/vmlinuz-{inputs.kernel_version}; "
                f"pass kernel_package= naming a linux-image-*-amd64 package"
            )

        modules = _resolve_modules(moddir, MODULES, self._zstd)
        self.progress(f"modules: {' '.join(m.name for m in modules)}")

        self.progress("compiling mdt-workload (static)")
        src = work / "mdt-workload.c"
        src.write_bytes(inputs.workload)
        binary = work / "mdt-workload"
        self._run(
            "compile the workload",
            [_CC, *_CFLAGS, "-o", str(binary), str(src)],
            hint="install gcc and libc6-dev (apt-get install gcc libc6-dev)",
        )

        self.progress("packing initramfs")
        load_list = "".join(
            f"{m.guest_path(inputs.kernel_version)} {MODULE_PARAMS.get(m.name, '')}".rstrip() + "\n"
            for m in modules
        )
        initrd = out / "initrd.img"
        with initrd.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            cpio = CpioWriter(gz)
            for d in ("bin", "dev", "etc", "etc/mdt", "proc", "sys", "tmp", "run", "root"):
                cpio.directory(d)
            cpio.char_device("dev/console", 0o600, 5, 1)
            cpio.file("init", inputs.init, 0o755)
            cpio.file("bin/busybox", inputs.busybox.read_bytes(), 0o755)
            cpio.file("bin/mdt-workload", binary.read_bytes(), 0o755)
            cpio.file("etc/mdt/modules", load_list.encode(), 0o644)
            cpio.file("etc/mdt/image", f"{digest}\n".encode(), 0o644)
            made: set[str] = set()
            for m in modules:
                guest = m.guest_path(inputs.kernel_version).lstrip("/")
                parts = guest.split("/")
                for i in range(1, len(parts)):
                    parent = "/".join(parts[:i])
                    if parent not in made:
                        made.add(parent)
                        cpio.directory(parent)
                cpio.file(guest, m.read(self._zstd), 0o644)
            cpio.trailer()
        shutil.copyfile(vmlinuz, out / "vmlinuz")

        manifest = {
            "digest": digest,
            "kernel": "vmlinuz",
            "initrd": "initrd.img",
            "append": BASE_APPEND,
            "kernel_version": inputs.kernel_version,
            "modules": [{"name": m.name, "params": MODULE_PARAMS.get(m.name, "")} for m in modules],
            "inputs": description,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp_manifest = out / "manifest.json.tmp"
        tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        tmp_manifest.rename(out / "manifest.json")
        size = initrd.stat().st_size / 2**20
        self.progress(f"initramfs {size:.1f} MiB, kernel {inputs.kernel_version}")

    # -- inputs ----------------------------------------------------------------------------

    def _resolve_inputs(self, kernel_package: str | None, source_dir: Path) -> _Inputs:
        init_path, src_path = source_dir / "init", source_dir / "mdt-workload.c"
        for p in (init_path, src_path):
            if not p.is_file():
                raise LabError(
                    f"guest image: {p} is missing; pass source_dir= pointing at the "
                    f"workloads/synthetic folder of an mdevtest checkout"
                )
        check_busybox(_BUSYBOX)
        self.progress("resolving the kernel package")
        package = kernel_package or self._kernel_package()
        prefix, suffix = "linux-image-", "-amd64"
        if not (package.startswith(prefix) and package.endswith(suffix)):
            raise LabError(
                f"guest image: {package} is not a linux-image-<version>-amd64 package; "
                f"pass kernel_package= naming one (see `apt-cache depends {KERNEL_METAPACKAGE}`)"
            )
        version = self._package_version(package)
        return _Inputs(
            package=package,
            package_version=version,
            kernel_version=package.removeprefix(prefix),
            init=init_path.read_bytes(),
            workload=src_path.read_bytes(),
            busybox=_BUSYBOX,
        )

    def _kernel_package(self) -> str:
        def depends() -> str | None:
            out = self._run(
                "resolve the kernel package",
                ["apt-cache", "depends", KERNEL_METAPACKAGE],
                check=False,
            )
            for line in out.splitlines():
                key, _, value = line.strip().partition(":")
                name = value.strip()
                if key == "Depends" and name.startswith("linux-image-"):
                    return name
            return None

        name = depends()
        if name is None:
            self._apt_update()
            name = depends()
        if name is None:
            raise LabError(
                f"guest image: apt does not know {KERNEL_METAPACKAGE} or its kernel even after "
                f"`apt-get update`; this needs a Debian (bookworm or later) apt source"
            )
        return name

    def _package_version(self, package: str) -> str:
        def candidate() -> str | None:
            out = self._run("resolve the kernel version", ["apt-cache", "policy", package], check=False)
            for line in out.splitlines():
                key, _, value = line.strip().partition(":")
                if key == "Candidate" and value.strip() not in ("", "(none)"):
                    return value.strip()
            return None

        version = candidate()
        if version is None:
            self._apt_update()
            version = candidate()
        if version is None:
            raise LabError(
                f"guest image: apt has no installable version of {package}; check the apt "
                f"sources or pass kernel_package= naming an available linux-image-*-amd64"
            )
        return version

    def _fetch_kernel_deb(self, package: str, version: str) -> Path:
        debs = self.cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        name = f"{package}_{version.replace(':', '%3a')}_amd64.deb"
        deb = debs / name
        if deb.is_file():
            self.progress(f"kernel package cached: {deb}")
            return deb
        self.progress(f"downloading {package}={version}")
        with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as tmp:
            cmd = [
                "apt-get",
                "download",
                "-o",
                "APT::Sandbox::User=root",
                f"{package}={version}",
            ]
            try:
                self._run("download the kernel package", cmd, cwd=Path(tmp))
            except LabError:
                self.progress("download failed; refreshing the apt lists once")
                self._apt_update()
                self._run("download the kernel package", cmd, cwd=Path(tmp))
            got = Path(tmp) / name
            if not got.is_file():
                found = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
                raise LabError(f"guest image: `{shlex.join(cmd)}` produced {found}, not {name}")
            got.rename(deb)
        return deb

    def _apt_update(self) -> None:
        self.progress("apt-get update")
        self._run(
            "refresh the apt lists",
            ["apt-get", "update"],
            hint="check the apt sources and the network (this needs root)",
        )

    def _zstd(self, path: Path) -> bytes:
        return self._run_bytes("decompress a module", ["zstd", "-dc", str(path)], hint="install zstd")

    # -- commands --------------------------------------------------------------------------

    def _remaining(self, step: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise LabError(
                f"guest image: out of time ({self.budget:g} s) before: {step}; "
                f"raise timeout_s or check why the previous steps were slow"
            )
        return left

    def _run_bytes(
        self,
        step: str,
        cmd: Sequence[str],
        *,
        cwd: Path | None = None,
        hint: str = "",
        check: bool = True,
    ) -> bytes:
        timeout = self._remaining(step)
        env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
        try:
            proc = subprocess.run(
                list(cmd),
                cwd=cwd,
                env=env,
                capture_output=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            raise LabError(
                f"guest image: cannot {step}: {cmd[0]} is not installed" + (f"; {hint}" if hint else "")
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise LabError(
                f"guest image: cannot {step}: `{shlex.join(cmd)}` did not finish within "
                f"{timeout:.0f} s (the build budget is {self.budget:g} s)"
            ) from exc
        if check and proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace").strip().splitlines()
            tail = "\n    ".join(stderr[-_STDERR_TAIL_LINES:])
            raise LabError(
                f"guest image: cannot {step}: `{shlex.join(cmd)}` exited {proc.returncode}"
                + (f"\n  stderr:\n    {tail}" if tail else "")
                + (f"\n  {hint}" if hint else "")
            )
        return proc.stdout

    def _run(
        self,
        step: str,
        cmd: Sequence[str],
        *,
        cwd: Path | None = None,
        hint: str = "",
        check: bool = True,
    ) -> str:
        return self._run_bytes(step, cmd, cwd=cwd, hint=hint, check=check).decode(errors="replace")

    def _lock(self) -> AbstractContextManager[None]:
        path = self.cache / "images" / ".lock"
        waiting = f"waiting for another build to release {path}"
        return locked(path, poll_s=0.5, while_waiting=lambda _s: self._remaining(waiting))


def _remove_leftovers(images: Path) -> None:
    """Remove what interrupted builds and downloads left (only called holding the lock)."""
    for pattern, base in ((".build-*", images), (".download-*", images.parent / "debs")):
        for path in base.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _load_image(directory: Path, digest: str) -> GuestImage | None:
    """Return the image in ``directory`` when it is complete and has ``digest``, else None."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("digest") != digest:
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


# -- kernel modules ------------------------------------------------------------------------

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


@dataclass(frozen=True)
class _Module:
    name: str  # with underscores, as the kernel names it
    path: Path  # in the unpacked package (maybe compressed)
    relpath: str  # under lib/modules/<version>/, always ending in .ko
    depends: tuple[str, ...]

    def guest_path(self, kernel_version: str) -> str:
        return f"/lib/modules/{kernel_version}/{self.relpath}"

    def read(self, zstd: Callable[[Path], bytes]) -> bytes:
        """The module, uncompressed: busybox insmod loads plain ELF objects only."""
        return read_module(self.path, zstd)


def _module_dir(root: Path, kernel_version: str) -> Path:
    for base in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if (base / kernel_version).is_dir():
            return base / kernel_version
    raise LabError(
        f"guest image: the kernel package has no lib/modules/{kernel_version}; pass "
        f"kernel_package= naming a linux-image-*-amd64 package"
    )


def _module_name(filename: str) -> str | None:
    for suffix in _MODULE_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)].replace("-", "_")
    return None


def _resolve_modules(
    moddir: Path, wanted: Sequence[str], zstd: Callable[[Path], bytes]
) -> list[_Module]:
    """``wanted`` and everything they depend on, dependencies first; built-ins are skipped."""
    index: dict[str, Path] = {}
    for path in sorted((moddir / "kernel").rglob("*.ko*")):
        name = _module_name(path.name)
        if name is not None:
            index.setdefault(name, path)
    builtin = set()
    builtin_file = moddir / "modules.builtin"
    if builtin_file.is_file():
        for line in builtin_file.read_text().splitlines():
            name = _module_name(line.rsplit("/", 1)[-1])
            if name:
                builtin.add(name)

    order: list[_Module] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in done or name in builtin:
            return
        if name in chain:
            raise LabError(f"guest image: module dependency cycle: {' -> '.join(chain)}")
        path = index.get(name)
        if path is None:
            needed_by = f" (needed by {chain[-1]})" if chain else ""
            raise LabError(
                f"guest image: module {name}{needed_by} is neither in {moddir} nor built in; "
                f"this kernel lacks it: pick another kernel_package or change MODULES"
            )
        info = modinfo(path, zstd)
        depends = tuple(d for d in info.get("depends", "").split(",") if d)
        for dep in depends:
            visit(dep, (*chain, name))
        done.add(name)
        rel = path.relative_to(moddir).as_posix()
        rel = rel[: rel.index(".ko") + 3]
        order.append(_Module(name=name, path=path, relpath=rel, depends=depends))

    for name in wanted:
        visit(name, ())
    return order
