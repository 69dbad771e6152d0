"""Intel GVT-g (i915): mediated vGPUs of an integrated Intel GPU (parent ``0000:00:02.0``).

* Host: i915 loaded with ``enable_gvt=Y``, ``kvmgt`` loaded, the mdev core present, IOMMU on.
* Types ``i915-GVTg_V<gen>_<n>`` (V5 on Gen9+, V4 on Gen8): ``n`` vGPUs share the GPU; the
  description (``intel_vgpu_show_description``) gives ``low_gm_size``, ``high_gm_size``, ``fence``,
  ``resolution`` and ``weight``.
* QEMU: ``-device vfio-pci-nohotplug,id=vgpu0,sysfsdev=...,display=on,ramfb=on,x-igd-opregion=on``
  plus ``-display egl-headless``: the display is dma-buf (needs OpenGL), the ramfb shows the boot
  display before the guest's i915 driver runs, and ``ramfb`` exists only on vfio-pci-nohotplug
  (plain vfio-pci makes QEMU exit at start with it). Without a display (``GvtProfile(display=
  False)``) it is ``-device vfio-pci,id=vgpu0,sysfsdev=...,x-igd-opregion=on``. Every option is
  checked against the host QEMU's properties for the driver before QEMU starts. QMP
  ``screendump`` returns "no surface" for dma-buf displays, so the graphics check captures over
  VNC from egl-headless. No ``romfile=``: the inventory's ``vgpu`` has no place for one.
* Upstream GVT-g implements no VFIO migration protocol; vendor trees may. The migration option is
  added whenever this QEMU has one, so such a tree is exercised as it would be on an mtty host.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from mdevtest.localexec import Executor
from mdevtest.mdev import MdevType
from mdevtest.qemu.caps import QemuCaps
from mdevtest.vendors.base import (
    COMMON_TROUBLE,
    IOMMU_PROBES,
    VGPU_DEVICE_ID,
    CaptureMethod,
    HostCheck,
    TypeInfo,
    VendorProfile,
    compile_patterns,
    device_arg,
    iommu_check,
    module_loaded_snippet,
    not_ours,
    run_probes,
    sysfsdev_option,
)

__all__ = ["GvtProfile", "GvtTypeInfo", "parse_gvt_description", "profile"]

_TYPE_NAME = re.compile(r"GVTg_(V\d+)_(\d+)")
_SIZE = re.compile(r"(\d+)\s*MB")
_RESOLUTION = re.compile(r"(\d+)x(\d+)")


@dataclass(frozen=True, kw_only=True)
class GvtTypeInfo(TypeInfo):
    """A GVT-g type: graphics memory (MiB), fence registers, max resolution, scheduler weight."""

    gvt_version: str | None
    """``V5`` (Gen9+) or ``V4`` (Gen8), from the type name."""
    per_gpu: int | None
    """``n`` in ``GVTg_V5_n``: how many such vGPUs the GPU is divided into."""
    low_gm_mib: int
    high_gm_mib: int
    fence: int
    resolution: tuple[int, int]
    weight: int

    def summary(self) -> str:
        w, h = self.resolution
        return (
            f"{self.name or self.type_id}: {self.low_gm_mib} MiB low GM, {self.high_gm_mib} MiB "
            f"high GM, {self.fence} fences, up to {w}x{h}, weight {self.weight}"
        )


def parse_gvt_description(description: str) -> dict[str, str]:
    """``key: value`` lines (GVT-g's format) as a dict; other lines are ignored.

    Also reads mdevctl's rendering, which joins the lines with ``", "``.
    """
    fields = {}
    for line in re.split(r"\n|, ", description):
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def gvt_type_info(mdev_type: MdevType, profile_name: str = "GVT-g") -> GvtTypeInfo:
    fields = parse_gvt_description(mdev_type.description)
    try:
        low = _SIZE.fullmatch(fields["low_gm_size"])
        high = _SIZE.fullmatch(fields["high_gm_size"])
        res = _RESOLUTION.fullmatch(fields["resolution"])
        if low is None or high is None or res is None:
            raise ValueError("sizes must read 'N MB' and the resolution 'WxH'")
        fence, weight = int(fields["fence"]), int(fields["weight"])
    except KeyError as exc:
        raise not_ours(profile_name, mdev_type, f"description lacks {exc.args[0]!r}") from None
    except ValueError as exc:
        raise not_ours(profile_name, mdev_type, f"unreadable description: {exc}") from None
    name_match = _TYPE_NAME.search(mdev_type.name or mdev_type.type_id)
    return GvtTypeInfo(
        type_id=mdev_type.type_id,
        parent=mdev_type.parent,
        name=mdev_type.name,
        gvt_version=name_match.group(1) if name_match else None,
        per_gpu=int(name_match.group(2)) if name_match else None,
        low_gm_mib=int(low.group(1)),
        high_gm_mib=int(high.group(1)),
        fence=fence,
        resolution=(int(res.group(1)), int(res.group(2))),
        weight=weight,
    )


class GvtProfile(VendorProfile):
    """``display``: give the guest the vGPU's display (dma-buf + ramfb, captured over VNC from
    egl-headless); off, the vGPU is a plain ``vfio-pci`` device without a QEMU console."""

    name: ClassVar[str] = "gvt"
    guest_display: ClassVar[str | None] = "8086"  # an Intel display function (PCI vendor 8086)
    capture_method: ClassVar[CaptureMethod] = "vnc"
    type_prefix: ClassVar[str] = "i915-"
    trouble_patterns = (
        *COMMON_TROUBLE,
        *compile_patterns(
            r"GPU HANG",
            r"(?i)gvt: .*error",
            r"(?i)gvt: vgpu \d+: .*fail",
            r"i915 [0-9a-f:.]+: \[drm\] \*ERROR\*",
            r"(?i)i915 .*GPU reset",
        ),
    )

    def __init__(self, *, display: bool = True) -> None:
        self.display = display

    def host_checks(self, executor: Executor, *, sysfs_root: str = "/") -> list[HostCheck]:
        param = shlex.quote(f"{sysfs_root.rstrip('/')}/sys/module/i915/parameters/enable_gvt")
        probes = run_probes(
            executor,
            {
                "enable_gvt": f"cat {param}",
                "kvmgt": module_loaded_snippet("kvmgt"),
                "mdev": module_loaded_snippet("mdev"),
                **IOMMU_PROBES,
            },
        )
        gvt = probes["enable_gvt"]
        return [
            HostCheck(
                "i915 enable_gvt",
                gvt.ok and gvt.output == "Y",
                f"enable_gvt={gvt.output}"
                if gvt.ok
                else "i915 is not loaded or has no enable_gvt parameter; boot with i915.enable_gvt=1",
            ),
            HostCheck(
                "kvmgt loaded",
                probes["kvmgt"].ok,
                "kvmgt is loaded" if probes["kvmgt"].ok else "kvmgt is not loaded: modprobe kvmgt",
            ),
            HostCheck(
                "mdev core present",
                probes["mdev"].ok,
                "mdev is loaded" if probes["mdev"].ok else "the mdev module is missing: modprobe mdev",
            ),
            iommu_check(probes["cmdline"], probes["iommu_groups"]),
        ]

    def parse_type(self, mdev_type: MdevType) -> GvtTypeInfo:
        if not mdev_type.type_id.startswith("i915-"):
            raise not_ours("GVT-g", mdev_type, "GVT-g type ids start with 'i915-'")
        return gvt_type_info(mdev_type)

    def device_options(
        self, sysfs_path: str, qemu_caps: QemuCaps, *, extra: Sequence[str] = ()
    ) -> tuple[str, list[str]]:
        """The ``-device`` driver and its options, each checked against ``qemu_caps``'s
        properties for that driver (:class:`~mdevtest.qemu.caps.DeviceOptionError` if one is not)."""
        driver = "vfio-pci-nohotplug" if self.display else "vfio-pci"
        options = [f"id={VGPU_DEVICE_ID}", sysfsdev_option(sysfs_path)]
        if self.display:
            options += ["display=on", "ramfb=on"]
        options += ["x-igd-opregion=on", *qemu_caps.vfio_migration_options(), *extra]
        qemu_caps.check_device_options(driver, options)
        return driver, options

    def display_device(self, qemu_caps: QemuCaps) -> str | None:
        return VGPU_DEVICE_ID if self.display else None

    def qemu_device_args(
        self, sysfs_path: str, qemu_caps: QemuCaps, *, extra: Sequence[str] = ()
    ) -> list[str]:
        driver, options = self.device_options(sysfs_path, qemu_caps, extra=extra)
        args = ["-device", device_arg(driver, options)]
        return [*args, "-display", "egl-headless"] if self.display else args


def profile() -> GvtProfile:
    return GvtProfile()
