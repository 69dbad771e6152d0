"""What the labs' image builders share (the nested lab's images, the desktop image, the mtty
UEFI disk): a bounded command runner (:class:`Runner`), chroot and mount handling, the Debian
mirror and the suite's release date, the cached-builder base (:class:`CachedBuilder`: a cache
folder with a lock, timed steps, the newest image for offline use) and the manifest helpers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mdevtest.errors import LabError
from mdevtest.filelock import locked
from mdevtest.lab.common import Progress

#: Used when apt's sources name no Debian mirror.
FALLBACK_MIRROR = "http://deb.debian.org/debian"

#: The keyring debootstrap verifies the suite with.
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

#: ``apt-get install`` as the builders run it in a chroot.
APT_INSTALL = ("apt-get", "install", "-y", "-q", "--no-install-recommends")

#: Lines of a failed command's stderr quoted in the error.
STDERR_TAIL_LINES = 12

_Image = TypeVar("_Image")


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses here (the first ``.../debian`` source that is not security)."""
    candidates: list[str] = []
    sources = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in sources:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = line.split("#", 1)[0].split()
                if len(words) >= 3 and words[0] == "deb":
                    uri = next((w for w in words[1:] if not w.startswith("[")), "")
                    candidates.append(uri)
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in path.read_text().split("\n\n"):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" in fields.get("types", "").split() and fields.get("enabled") != "no":
                    candidates.extend(fields.get("uris", "").split())
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return FALLBACK_MIRROR


# -- commands ------------------------------------------------------------------------------------------


class Runner:
    """Runs the build's commands under one deadline; failures become :class:`LabError`."""

    def __init__(self, what: str, progress: Progress, deadline: float, budget: float) -> None:
        self.what = what
        self.progress = progress
        self.deadline = deadline
        self.budget = budget

    def remaining(self, step: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise LabError(
                f"{self.what}: out of time ({self.budget:g} s) before: {step}; "
                f"raise timeout_s or check why the previous steps were slow"
            )
        return left

    def run_bytes(
        self,
        step: str,
        cmd: Sequence[str | Path],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        hint: str = "",
        check: bool = True,
    ) -> bytes:
        argv = [str(c) for c in cmd]
        timeout = self.remaining(step)
        if env is None:
            env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
        try:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=dict(env),
                capture_output=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            raise LabError(
                f"{self.what}: cannot {step}: {argv[0]} is not installed" + (f"; {hint}" if hint else "")
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise LabError(
                f"{self.what}: cannot {step}: `{shlex.join(argv)}` did not finish within "
                f"{timeout:.0f} s (the budget is {self.budget:g} s)"
            ) from exc
        if check and proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
            tail = "\n    ".join(lines[-STDERR_TAIL_LINES:])
            raise LabError(
                f"{self.what}: cannot {step}: `{shlex.join(argv)}` exited {proc.returncode}"
                + (f"\n  stderr:\n    {tail}" if tail else "")
                + (f"\n  {hint}" if hint else "")
            )
        return proc.stdout

    def run(
        self,
        step: str,
        cmd: Sequence[str | Path],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        hint: str = "",
        check: bool = True,
    ) -> str:
        out = self.run_bytes(step, cmd, cwd=cwd, env=env, hint=hint, check=check)
        return out.decode(errors="replace")

    def chroot(
        self, root: Path, step: str, cmd: Sequence[str | Path], *, hint: str = "", check: bool = True
    ) -> str:
        """Run ``cmd`` inside ``root`` with a clean environment."""
        return self.run(step, ["chroot", root, *cmd], env=CHROOT_ENV, hint=hint, check=check)


CHROOT_ENV: Mapping[str, str] = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
}


@contextlib.contextmanager
def proc_mounted(runner: Runner, root: Path) -> Iterator[None]:
    """``/proc`` mounted in the chroot for the duration (package scripts read it)."""
    target = root / "proc"
    runner.run("mount /proc in the chroot", ["mount", "-t", "proc", "proc", target])
    try:
        yield
    finally:
        unmount(target)


def unmount(target: Path) -> None:
    proc = subprocess.run(["umount", str(target)], capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:  # busy: detach it, it goes when the last user does
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=60, check=False)


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path.resolve())
    found: list[Path] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """Remove a (build) tree, unmounting whatever is still mounted in it first."""
    for point in mounts_under(path):
        unmount(point)
    if mounts_under(path):
        raise LabError(f"image build: {path} still has mounts; unmount them and remove it")
    shutil.rmtree(path, ignore_errors=True)


# -- the builder --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    date: str
    version: str


def suite_release(mirror: str, suite: str, runner: Runner, what: str) -> Release | None:
    """The suite's ``Date`` and ``Version`` on the mirror; None when it cannot be reached."""
    url = f"{mirror}/dists/{suite}/InRelease"
    try:
        with urllib.request.urlopen(url, timeout=min(30.0, runner.remaining(url))) as r:
            text = r.read(1 << 20).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        raise LabError(
            f"{what}: {mirror} does not serve {suite}: {url} answered HTTP {exc.code}; "
            f"pass mirror= naming a Debian mirror that has dists/{suite}"
        ) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        runner.progress(f"cannot fetch {url} ({exc}); looking for a cached image")
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("Date", "Version", "Codename") and key not in fields:
            fields[key] = value.strip()
    if fields.get("Codename") != suite or "Date" not in fields:
        raise LabError(
            f"{what}: {url} does not describe {suite} (Codename "
            f"{fields.get('Codename', 'missing')}); pass mirror= naming a Debian mirror "
            f"that serves {suite}"
        )
    return Release(date=fields["Date"], version=fields.get("Version", ""))


class CachedBuilder:
    """What the labs' image builders share: a cache folder with a lock, timed steps, and the
    newest image built from the same local inputs for when the mirror cannot be reached."""

    def __init__(self, cache: Path, runner: Runner) -> None:
        self.cache = cache
        self.runner = runner
        self.progress = runner.progress
        self.timings: dict[str, float] = {}

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        path = self.cache / ".lock"
        return locked(
            path,
            poll_s=0.5,
            while_waiting=lambda _s: self.runner.remaining(
                f"waiting for another build to release {path}"
            ),
        )

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[None]:
        self.progress(f"{name} ...")
        start = time.monotonic()
        yield
        took = time.monotonic() - start
        self.timings[name] = round(took, 1)
        self.progress(f"{name}: {took:.1f} s")

    @staticmethod
    def _newest_built(
        directory: Path, local_key: str, load: Callable[[Path, str], _Image | None]
    ) -> tuple[str, _Image] | None:
        """The newest complete image in ``directory`` built from inputs whose local key is
        ``local_key``, with when it was built."""
        best: tuple[str, _Image] | None = None
        for manifest in directory.glob("*/manifest.json"):
            try:
                data = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict) or data.get("local_key") != local_key:
                continue
            image = load(manifest.parent, str(data.get("digest", "")))
            built = str(data.get("built_at", ""))
            if image is not None and (best is None or built > best[0]):
                best = (built, image)
        return best


def digest_of(description: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def tree_size(root: Path) -> int:
    """Bytes the tree's files take (apparent sizes, hard links once, 4 KiB per inode)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += round_up(st.st_size, 4096) + 256
    return total


def write_manifest(directory: Path, manifest: Mapping[str, object]) -> None:
    tmp = directory / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.rename(directory / "manifest.json")


def read_manifest(directory: Path, digest: str) -> dict[str, object] | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("digest") != digest:
        return None
    return manifest
