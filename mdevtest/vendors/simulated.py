"""The local lab's simulated vGPU (:mod:`mdevtest.lab.simsysfs`).

The mdev lifecycle is real sysfs semantics on a simulated GVT-g-like parent, but nothing backs the
mdev: QEMU gets no VFIO device (:meth:`SimulatedProfile.qemu_device_args` returns nothing) and the
guest's display is the emulated VGA the local lab always adds, captured with QMP ``screendump``.
Every report labels such a run as simulated (``simulated = True``).
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import ClassVar

from mdevtest.lab.simsysfs import FSTYPE
from mdevtest.localexec import Executor
from mdevtest.mdev import MdevType
from mdevtest.qemu.caps import QemuCaps
from mdevtest.vendors.base import (
    CaptureMethod,
    HostCheck,
    TypeInfo,
    VendorProfile,
    run_probes,
)
from mdevtest.vendors.gvt import GvtTypeInfo, gvt_type_info

__all__ = ["SimulatedProfile", "SimulatedTypeInfo", "profile"]


@dataclass(frozen=True, kw_only=True)
class SimulatedTypeInfo(TypeInfo):
    """A simulated type whose description is not in GVT-g's format."""

    description: str


class SimulatedProfile(VendorProfile):
    name: ClassVar[str] = "simulated"
    simulated: ClassVar[bool] = True
    guest_display: ClassVar[str | None] = "1234:1111"  # the emulated VGA stands in for the vGPU
    type_prefix: ClassVar[str] = "i915-"
    capture_method: ClassVar[CaptureMethod] = "qmp"

    def host_checks(self, executor: Executor, *, sysfs_root: str = "/") -> list[HostCheck]:
        sys_dir = posixpath.join(sysfs_root, "sys")
        bus = posixpath.join(sys_dir, "class", "mdev_bus")
        probes = run_probes(
            executor,
            {
                "mount": f"findmnt -n -o FSTYPE --mountpoint {shlex.quote(sys_dir)}",
                "parents": f"ls {shlex.quote(bus)}",
            },
        )
        fstype = probes["mount"].output.strip()
        parents = probes["parents"].output.split()
        return [
            HostCheck(
                "simulated sysfs mounted",
                probes["mount"].ok and fstype == FSTYPE,
                f"{sys_dir} is {fstype or 'not a mount point'}"
                + (
                    ""
                    if fstype == FSTYPE
                    else f"; start it: python -m mdevtest.lab.simsysfs --root {sysfs_root} --daemon"
                ),
            ),
            HostCheck(
                "simulated parent present",
                probes["parents"].ok and bool(parents),
                f"parents: {', '.join(parents)}" if parents else f"{bus} is empty or missing",
            ),
        ]

    def driver_version(self, executor: Executor, *, sysfs_root: str = "/") -> str:
        try:
            return f"mdevtest-simsysfs {metadata.version('mdevtest')}"
        except metadata.PackageNotFoundError:
            return "mdevtest-simsysfs"

    def parse_type(self, mdev_type: MdevType) -> GvtTypeInfo | SimulatedTypeInfo:
        """GVT-g-format descriptions (the default simulated parent) parse as GVT-g types."""
        if "low_gm_size" in mdev_type.description:
            return gvt_type_info(mdev_type, "simulated GVT-g")
        return SimulatedTypeInfo(
            type_id=mdev_type.type_id,
            parent=mdev_type.parent,
            name=mdev_type.name,
            description=mdev_type.description,
        )

    def qemu_device_args(
        self, sysfs_path: str, qemu_caps: QemuCaps, *, extra: Sequence[str] = ()
    ) -> list[str]:
        return []


def profile() -> SimulatedProfile:
    return SimulatedProfile()
