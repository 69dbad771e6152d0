"""Vendor profiles: what differs between an Intel GVT-g, an NVIDIA vGPU, an mtty and the local lab.

One module per vendor (``gvt``, ``nvidia``, ``mtty``, ``simulated``; ``vf`` for the SR-IOV VF
vendors ``xe-sriov``, ``nvidia-vfio``, ``vfio-variant`` and their simulated twins), found by name
with :func:`get_profile`. A :class:`VendorProfile` (:mod:`.base`) says

* which host facts must hold before a guest starts (:meth:`VendorProfile.host_checks`, one round trip);
* what a type's sysfs ``name``/``description`` mean (:meth:`VendorProfile.parse_type` -> a typed
  :class:`TypeInfo`);
* how QEMU gets the device (:meth:`VendorProfile.qemu_device_args`, chosen from the QEMU's
  :class:`~mdevtest.qemu.caps.QemuCaps`, which also refuses an option that QEMU lacks);
* how the guest's display is captured (``capture_method``), which verification checks apply
  (``applicable_checks``) and which host log lines mean trouble (``trouble_patterns``).

Profiles know nothing of the checks: the checks that only one vendor has are listed on the
checks' side (:data:`mdevtest.checks.standard.VENDOR_CHECKS`), so vendors never import checks.
"""

from __future__ import annotations

import importlib

from mdevtest.errors import INFRASTRUCTURE, FailureClass, MdevtestError
from mdevtest.vendors.base import (
    ALL_CHECKS,
    COMMON_TROUBLE,
    IOMMU_PROBES,
    VGPU_DEVICE_ID,
    CaptureMethod,
    HostCheck,
    Probe,
    TypeInfo,
    VendorProfile,
    compile_patterns,
    device_arg,
    iommu_check,
    module_loaded_snippet,
    not_ours,
    run_probes,
    sysfsdev_option,
    vfio_pci_device,
)

__all__ = [
    "ALL_CHECKS",
    "COMMON_TROUBLE",
    "IOMMU_PROBES",
    "VGPU_DEVICE_ID",
    "CaptureMethod",
    "HostCheck",
    "Probe",
    "TypeInfo",
    "UnknownVendorError",
    "VendorProfile",
    "compile_patterns",
    "device_arg",
    "get_profile",
    "iommu_check",
    "known_vendors",
    "module_loaded_snippet",
    "not_ours",
    "run_probes",
    "sysfsdev_option",
    "vfio_pci_device",
]

#: Vendor name -> module (under this package). The inventory's ``vgpu.vendor`` uses these names.
_REGISTRY: dict[str, str] = {
    "gvt": "mdevtest.vendors.gvt",
    "nvidia": "mdevtest.vendors.nvidia",
    "mtty": "mdevtest.vendors.mtty",
    "simulated": "mdevtest.vendors.simulated",
    # SR-IOV VFs bound to vfio-pci variant drivers (one module, a profile per name)
    "xe-sriov": "mdevtest.vendors.vf",
    "nvidia-vfio": "mdevtest.vendors.vf",
    "vfio-variant": "mdevtest.vendors.vf",
    "sim-xe-sriov": "mdevtest.vendors.vf",
    "sim-nvidia-vfio": "mdevtest.vendors.vf",
}


class UnknownVendorError(MdevtestError):
    """No vendor profile has the requested name."""

    failure_class: FailureClass | None = INFRASTRUCTURE  # the input is wrong, as InventoryError


def known_vendors() -> list[str]:
    return sorted(_REGISTRY)


def get_profile(name: str) -> VendorProfile:
    """The profile for vendor ``name`` (``gvt``, ``nvidia``, ``mtty``, ``simulated``)."""
    module_name = _REGISTRY.get(name)
    if module_name is None:
        raise UnknownVendorError(
            f"unknown vGPU vendor {name!r}; known vendors: {', '.join(known_vendors())}"
        )
    module = importlib.import_module(module_name)
    named = getattr(module, "profile_named", None)
    profile: VendorProfile = named(name) if named is not None else module.profile()
    return profile
