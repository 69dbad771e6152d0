"""Vendors whose migratable device is an SR-IOV VF bound to a vfio-pci variant driver, not an mdev.

* ``xe-sriov``: Intel Xe GPUs (Battlemage, Panther Lake; Linux 6.19+). The VF is bound to
  ``xe-vfio-pci``; migration is STOP_COPY only (no pre-copy), so the downtime grows with the
  VF's provisioned VRAM. ``vgpu.type`` names the VF profile as the lab provisions it (``auto``: the
  PF's fair share); the compatibility that matters (device ID, revision, driver versions) is in
  the preflight.
* ``nvidia-vfio``: NVIDIA vGPU 17+ on Ada/Hopper/Blackwell. The VF stays with the ``nvidia``
  host driver and gets its vGPU type in ``nvidia/current_vgpu_type``; ``vgpu.type`` is that type's
  id from ``creatable_vgpu_types`` (e.g. ``1156``).
* ``vfio-variant``: any other variant driver (``mlx5_vfio_pci``, ``virtio_vfio_pci``, ``vfio-pci``
  itself for a device without migration): ``vgpu.type`` is the driver to bind.
* ``sim-xe-sriov``, ``sim-nvidia-vfio``: the same flows on the local lab's simulated PFs
  (:mod:`mdevtest.lab.simsriov`): real sysfs semantics, nothing behind the VF, so QEMU gets no
  VFIO device; labelled simulated in every report.

Every one of them hands QEMU the VF as ``-device vfio-pci,id=vgpu0,sysfsdev=<VF>`` with the
migration option the host's QEMU has. Proven only on the simulated tree here (no such hardware
on this machine): docs/vgpu.md says what is verified where.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Sequence
from importlib import metadata
from typing import ClassVar

from mdevtest.errors import MdevError
from mdevtest.localexec import Executor
from mdevtest.mdev import MdevType
from mdevtest.qemu.caps import QemuCaps
from mdevtest.vendors.base import (
    IOMMU_PROBES,
    VGPU_DEVICE_ID,
    CaptureMethod,
    HostCheck,
    TypeInfo,
    VendorProfile,
    device_arg,
    iommu_check,
    run_probes,
    sysfsdev_option,
)

__all__ = ["VfProfile", "profile_named"]


class VfProfile(VendorProfile):
    """A vendor whose device is a VF: which driver the VF is bound to, what its type means."""

    device_kind: ClassVar[str] = "vf"
    capture_method: ClassVar[CaptureMethod] = "vnc"
    pf_driver: ClassVar[str]
    """The PF's driver (checked loaded; the VFs' default driver)."""
    variant_driver: ClassVar[str | None]
    """The driver a VF is bound to for QEMU; None: the type names it (vfio-variant)."""
    typed_vfs: ClassVar[bool] = False
    """``vgpu.type`` is a vGPU type id written to the VF (NVIDIA), not a profile name."""

    def bind_driver(self, type_id: str) -> str:
        return self.variant_driver or type_id

    def vgpu_type(self, type_id: str) -> int | None:
        """The id written to ``nvidia/current_vgpu_type``; None for vendors without one."""
        if not self.typed_vfs:
            return None
        if not type_id.isdigit():
            raise MdevError(
                f"{self.name}: vgpu.type {type_id!r} must be a vGPU type id from the VF's "
                "nvidia/creatable_vgpu_types (a number such as 1156)"
            )
        return int(type_id)

    def parse_type(self, mdev_type: MdevType) -> TypeInfo:
        raise MdevError(f"{self.name} devices are SR-IOV VFs, not mdevs: there is no mdev type")

    def host_checks(self, executor: Executor, *, sysfs_root: str = "/") -> list[HostCheck]:
        drivers = posixpath.join(sysfs_root, "sys", "bus", "pci", "drivers")
        wanted = [self.pf_driver] + ([self.variant_driver] if self.variant_driver else [])
        probes = run_probes(
            executor,
            {
                **{f"drv {d}": f"[ -d {shlex.quote(posixpath.join(drivers, d))} ]" for d in wanted},
                **IOMMU_PROBES,
            },
        )
        checks = [
            HostCheck(
                f"{d} driver loaded",
                probes[f"drv {d}"].ok,
                f"{drivers}/{d} present"
                if probes[f"drv {d}"].ok
                else f"no {d} driver in {drivers}: modprobe {d.replace('-', '_')}",
            )
            for d in wanted
        ]
        if not self.simulated:
            checks.append(iommu_check(probes["cmdline"], probes["iommu_groups"]))
        return checks

    def driver_version(self, executor: Executor, *, sysfs_root: str = "/") -> str:
        if self.simulated:
            try:
                return f"mdevtest-simsysfs {metadata.version('mdevtest')}"
            except metadata.PackageNotFoundError:
                return "mdevtest-simsysfs"
        module = self.pf_driver.replace("-", "_")
        result = executor.run_shell(
            f"cat /sys/module/{module}/version 2>/dev/null || "
            f"cat /sys/module/{module}/srcversion 2>/dev/null || uname -r",
            timeout=30,
        )
        return f"{self.pf_driver} {result.stdout.strip() or 'unknown'}"

    def qemu_device_args(
        self, sysfs_path: str, qemu_caps: QemuCaps, *, extra: Sequence[str] = ()
    ) -> list[str]:
        if self.simulated:
            return []  # nothing behind a simulated VF: QEMU gets no VFIO device
        options = [f"id={VGPU_DEVICE_ID}", sysfsdev_option(sysfs_path)]
        options += [*qemu_caps.vfio_migration_options(), *extra]
        qemu_caps.check_device_options("vfio-pci", options)
        return ["-device", device_arg("vfio-pci", options)]


class XeSriovProfile(VfProfile):
    name: ClassVar[str] = "xe-sriov"
    pf_driver: ClassVar[str] = "xe"
    variant_driver: ClassVar[str | None] = "xe-vfio-pci"
    guest_display: ClassVar[str | None] = "8086"

    def type_label(self, type_name: str) -> str:
        return f"xe-vf-{type_name}"


class NvidiaVfioProfile(VfProfile):
    name: ClassVar[str] = "nvidia-vfio"
    pf_driver: ClassVar[str] = "nvidia"
    variant_driver: ClassVar[str | None] = "nvidia"  # the VF stays with the host driver
    typed_vfs: ClassVar[bool] = True
    guest_display: ClassVar[str | None] = "10de"

    def type_label(self, type_name: str) -> str:
        return f"vgpu-{type_name}"


class VfioVariantProfile(VfProfile):
    name: ClassVar[str] = "vfio-variant"
    pf_driver: ClassVar[str] = "mlx5_core"
    variant_driver: ClassVar[str | None] = None  # vgpu.type names it


class _Simulated:
    """The local lab's twin of a VF vendor: nothing behind the VF (QEMU gets no device), the
    emulated VGA stands in for the display."""

    simulated: ClassVar[bool] = True
    capture_method: ClassVar[CaptureMethod] = "qmp"
    guest_display: ClassVar[str | None] = "1234:1111"


class SimXeSriovProfile(_Simulated, XeSriovProfile):
    name: ClassVar[str] = "sim-xe-sriov"


class SimNvidiaVfioProfile(_Simulated, NvidiaVfioProfile):
    name: ClassVar[str] = "sim-nvidia-vfio"


_PROFILES: dict[str, type[VfProfile]] = {
    p.name: p
    for p in (
        XeSriovProfile,
        NvidiaVfioProfile,
        VfioVariantProfile,
        SimXeSriovProfile,
        SimNvidiaVfioProfile,
    )
}


def profile_named(name: str) -> VfProfile:
    return _PROFILES[name]()
