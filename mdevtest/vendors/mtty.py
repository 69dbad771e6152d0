"""The ``mtty`` sample driver (``samples/vfio-mdev/mtty.c``): a migratable VFIO device without a GPU.

* Host: ``mtty`` loaded (built out of tree on Debian), with ``vfio``, ``vfio_iommu_type1`` and the
  ``mdev`` core; live migration needs Linux 6.7 or newer.
* Parent ``mtty``; types ``mtty-1`` ("Single port serial") and ``mtty-2`` ("Dual-ports serial"),
  sharing 24 ports (24 and 12 free instances on an idle host). A port-count mismatch is refused by
  the destination, which makes ``mtty-1`` -> ``mtty-2`` a ready negative test.
* The guest sees 16550 UARTs (PCI 4348:3253) and no display: the graphics check does not apply;
  the device's migrated state (UART registers, loopback FIFO) is checked from the guest's own
  reports by :class:`~mdevtest.checks.mtty.MttyDeviceStateCheck` (listed for mtty in
  :data:`mdevtest.checks.standard.VENDOR_CHECKS`).
* On a kernel without device DMA logging (Debian's 6.12: CONFIG_IOMMUFD_DRIVER off) QEMU must run
  the device with ``x-device-dirty-page-tracking=off``; the testbed passes that as ``extra`` when
  preflight found it so (:func:`mdevtest.host.dirty_tracking`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from mdevtest.localexec import Executor
from mdevtest.mdev import MdevType
from mdevtest.qemu.caps import QemuCaps
from mdevtest.vendors.base import (
    ALL_CHECKS,
    COMMON_TROUBLE,
    VGPU_DEVICE_ID,
    CaptureMethod,
    HostCheck,
    TypeInfo,
    VendorProfile,
    compile_patterns,
    module_loaded_snippet,
    not_ours,
    run_probes,
    vfio_pci_device,
)

__all__ = ["MIGRATION_KERNEL", "MttyProfile", "MttyTypeInfo", "profile"]

#: First kernel whose mtty supports live migration.
MIGRATION_KERNEL = (6, 7)
_NAMES = {"Single port serial": 1, "Dual-ports serial": 2}
_TYPE_ID = re.compile(r"mtty-(\d+)")
_KERNEL = re.compile(r"(\d+)\.(\d+)")


@dataclass(frozen=True, kw_only=True)
class MttyTypeInfo(TypeInfo):
    """An mtty type: how many emulated serial ports one instance has."""

    ports: int

    def summary(self) -> str:
        return f"{self.name or self.type_id}: {self.ports} serial port{'s' if self.ports != 1 else ''}"


class MttyProfile(VendorProfile):
    name: ClassVar[str] = "mtty"
    capture_method: ClassVar[CaptureMethod] = "none"
    applicable_checks: ClassVar[frozenset[str]] = ALL_CHECKS - {"graphics"}
    trouble_patterns = (*COMMON_TROUBLE, *compile_patterns(r"(?i)mtty[:\s].*(error|fail)"))

    def host_checks(self, executor: Executor, *, sysfs_root: str = "/") -> list[HostCheck]:
        probes = run_probes(
            executor,
            {
                "mtty": module_loaded_snippet("mtty"),
                "mdev": module_loaded_snippet("mdev"),
                "vfio": module_loaded_snippet("vfio"),
                "type1": module_loaded_snippet("vfio_iommu_type1"),
                "kernel": "uname -r",
            },
        )
        release = probes["kernel"].output
        match = _KERNEL.match(release)
        kernel = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        migrates = kernel >= MIGRATION_KERNEL

        def loaded(key: str, module: str, how: str) -> HostCheck:
            ok = probes[key].ok
            return HostCheck(f"{module} loaded", ok, f"{module} is loaded" if ok else how)

        return [
            loaded("mtty", "mtty", "mtty is not loaded: build samples/vfio-mdev/mtty.c, insmod mtty.ko"),
            loaded("mdev", "mdev", "the mdev core is missing: modprobe mdev"),
            loaded("vfio", "vfio", "vfio is missing: modprobe vfio"),
            loaded("type1", "vfio_iommu_type1", "modprobe vfio_iommu_type1"),
            HostCheck(
                "kernel supports mtty migration",
                migrates,
                f"kernel {release}"
                + (
                    ""
                    if migrates
                    else f": mtty migrates from Linux {'.'.join(map(str, MIGRATION_KERNEL))}"
                ),
            ),
        ]

    def parse_type(self, mdev_type: MdevType) -> MttyTypeInfo:
        match = _TYPE_ID.fullmatch(mdev_type.type_id)
        if match is None:
            raise not_ours("mtty", mdev_type, "mtty type ids are 'mtty-<ports>'")
        ports = _NAMES.get(mdev_type.name.strip(), int(match.group(1)))
        return MttyTypeInfo(
            type_id=mdev_type.type_id, parent=mdev_type.parent, name=mdev_type.name, ports=ports
        )

    def qemu_device_args(
        self, sysfs_path: str, qemu_caps: QemuCaps, *, extra: Sequence[str] = ()
    ) -> list[str]:
        options = [f"id={VGPU_DEVICE_ID}", *qemu_caps.vfio_migration_options(), *extra]
        qemu_caps.check_device_options("vfio-pci", options)
        return ["-device", vfio_pci_device(sysfs_path, options)]


def profile() -> MttyProfile:
    return MttyProfile()
