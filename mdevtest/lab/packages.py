"""Debian packages the embedded local lab needs, installed on demand (root, apt-get)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence

from mdevtest.errors import LabError

#: Packages the local lab needs on the controller (which is also where its hosts run).
LAB_PACKAGES: tuple[str, ...] = (
    "qemu-system-x86",  # the hosts' QEMU
    "qemu-utils",  # qemu-img
    "ovmf",  # UEFI firmware of disk-image guests (the desktop image)
    "openssh-server",  # a real sshd per lab host
    "openssh-client",  # ssh-keygen
    "busybox-static",  # the guest's userland
    "cpio",  # packs the guest initramfs
    "gcc",  # builds the guest workload (static)
    "libc6-dev",  # static libc for the workload
    "iproute2",  # network namespaces, bridges, veth; tc for fault injection
    "socat",  # reaches QMP / console UNIX sockets through SSH
    "kmod",  # modinfo for the guest's module list
    "xz-utils",
    "zstd",
    "libfuse3-3",  # the simulated vGPU parent's FUSE sysfs
    "mdevctl",  # cross-checks the simulated mdev tree with the real tool
    "util-linux",  # unshare, flock, findmnt
    "iputils-ping",  # failure diagnosis: does the source reach the migration address?
)

_APT_TIMEOUT_S = 1800.0


def missing_packages(packages: Sequence[str]) -> list[str]:
    """Return the packages of ``packages`` that dpkg does not report as installed."""
    missing = []
    for pkg in packages:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Status}", pkg],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0 or proc.stdout.strip() != "installed":
            missing.append(pkg)
    return missing


def ensure_packages(
    packages: Sequence[str] = LAB_PACKAGES, progress: Callable[[str], None] = lambda _m: None
) -> list[str]:
    """Install what is missing of ``packages`` with apt-get; return what was installed."""
    missing = missing_packages(packages)
    if not missing:
        return []
    if os.geteuid() != 0:
        raise LabError(
            f"the local lab needs these Debian packages: {' '.join(missing)}; run as root "
            f"or install them: apt-get install {' '.join(missing)}"
        )
    progress(f"installing missing packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps: list[list[str]] = [
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ]
    for argv in steps:
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=_APT_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{' '.join(argv)} did not finish in {_APT_TIMEOUT_S:g} s") from exc
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
            raise LabError(f"{' '.join(argv)} failed (rc={proc.returncode}):\n{tail}")
    return missing
