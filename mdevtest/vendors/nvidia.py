"""NVIDIA vGPU: time-sliced (or MIG-backed) vGPUs managed by the NVIDIA vGPU host driver.

* Host: the ``nvidia`` and ``nvidia_vgpu_vfio`` modules loaded, the ``nvidia-vgpu-mgr`` daemon
  running, IOMMU on. The driver version (``/sys/module/nvidia/version``) must match between source
  and destination unless a test declares itself cross-version.
* Types ``nvidia-<N>`` with a board/profile name (``GRID T4-2Q``, ``NVIDIA A40-4Q``: framebuffer
  in GiB and series: Q workstation, B vPC, A apps, C compute) and a ``key=value`` description
  (``num_heads=4, frl_config=60, framebuffer=2048M, max_resolution=4096x2160, max_instance=8``).
* QEMU: ``-device vfio-pci,id=vgpu0,sysfsdev=...,display=on`` with the migration option this QEMU
  has; ``display=on`` (the vGPU's own display through VFIO's display region) only where this QEMU's
  vfio-pci has the ``display`` property. Every option is checked against the host QEMU's
  properties before QEMU starts. The display is captured over VNC.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from mdevtest.errors import MdevError
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

__all__ = ["NvidiaProfile", "NvidiaTypeInfo", "parse_nvidia_description", "profile"]

_PROFILE_NAME = re.compile(r"(?:GRID |NVIDIA )?(?P<board>\S+)-(?P<size>\d+)(?P<series>[A-Z])\w*$")
_SIZE = re.compile(r"(\d+)\s*([MG])B?", re.IGNORECASE)
_RESOLUTION = re.compile(r"(\d+)x(\d+)")


@dataclass(frozen=True, kw_only=True)
class NvidiaTypeInfo(TypeInfo):
    """An NVIDIA vGPU type: framebuffer, display heads, frame rate limiter, instance limit."""

    board: str | None
    """``T4``, ``A40``... from the profile name."""
    series: str | None
    """``Q`` (virtual workstation), ``B`` (vPC), ``A`` (virtual apps), ``C`` (compute)."""
    framebuffer_mib: int
    heads: int | None
    max_resolution: tuple[int, int] | None
    frl_fps: int | None
    """Frame rate limit (``frl_config``); 0 or None means none."""
    max_instances: int | None

    def summary(self) -> str:
        parts = [f"{self.framebuffer_mib} MiB framebuffer"]
        if self.heads is not None:
            parts.append(f"{self.heads} heads")
        if self.max_resolution is not None:
            parts.append("up to {}x{}".format(*self.max_resolution))
        if self.frl_fps:
            parts.append(f"FRL {self.frl_fps} fps")
        return f"{self.name or self.type_id}: {', '.join(parts)}"


def parse_nvidia_description(description: str) -> dict[str, str]:
    """``key=value`` pairs separated by commas or newlines."""
    fields = {}
    for item in re.split(r"[,\n]", description):
        key, sep, value = item.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _mib(text: str) -> int | None:
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        return None
    value = int(match.group(1))
    return value * 1024 if match.group(2).upper() == "G" else value


def _int(fields: dict[str, str], key: str) -> int | None:
    value = fields.get(key)
    return int(value) if value is not None and value.isdigit() else None


class NvidiaProfile(VendorProfile):
    name: ClassVar[str] = "nvidia"
    guest_display: ClassVar[str | None] = "10de"  # the NVIDIA vGPU function (PCI vendor 10de)
    capture_method: ClassVar[CaptureMethod] = "vnc"
    trouble_patterns = (
        *COMMON_TROUBLE,
        *compile_patterns(
            r"NVRM: Xid",
            r"NVRM: .*(GPU has fallen off the bus|RmInitAdapter failed)",
            r"nvidia-vgpu-mgr\[\d+\]: error",
            r"(?i)vgpu.*migration.*fail",
        ),
    )

    def host_checks(self, executor: Executor, *, sysfs_root: str = "/") -> list[HostCheck]:
        probes = run_probes(
            executor,
            {
                "nvidia": module_loaded_snippet("nvidia"),
                "vgpu_vfio": module_loaded_snippet("nvidia_vgpu_vfio"),
                "mgr": "pgrep -x nvidia-vgpu-mgr",
                "version": "cat /sys/module/nvidia/version",
                **IOMMU_PROBES,
            },
        )
        version = probes["version"].output if probes["version"].ok else "unknown"
        mgr = probes["mgr"]
        return [
            HostCheck(
                "nvidia module loaded",
                probes["nvidia"].ok,
                f"driver {version}"
                if probes["nvidia"].ok
                else "the nvidia module is not loaded: install the vGPU host driver",
            ),
            HostCheck(
                "nvidia_vgpu_vfio loaded",
                probes["vgpu_vfio"].ok,
                "nvidia_vgpu_vfio is loaded"
                if probes["vgpu_vfio"].ok
                else "nvidia_vgpu_vfio is not loaded: modprobe nvidia_vgpu_vfio",
            ),
            HostCheck(
                "nvidia-vgpu-mgr running",
                mgr.ok,
                f"pid {' '.join(mgr.output.split())}"
                if mgr.ok
                else "nvidia-vgpu-mgr is not running: systemctl start nvidia-vgpu-mgr",
            ),
            iommu_check(probes["cmdline"], probes["iommu_groups"]),
        ]

    def driver_version(self, executor: Executor, *, sysfs_root: str = "/") -> str:
        result = executor.run(["cat", "/sys/module/nvidia/version"], timeout=30)
        if result.rc != 0:
            raise MdevError(f"{executor.name}: nvidia driver version unknown (is nvidia loaded?)")
        return result.stdout.strip()

    def parse_type(self, mdev_type: MdevType) -> NvidiaTypeInfo:
        if not mdev_type.type_id.startswith("nvidia-"):
            raise not_ours("NVIDIA vGPU", mdev_type, "NVIDIA type ids start with 'nvidia-'")
        fields = parse_nvidia_description(mdev_type.description)
        name_match = _PROFILE_NAME.search(mdev_type.name.strip())
        framebuffer = _mib(fields.get("framebuffer", ""))
        if framebuffer is None and name_match is not None:
            framebuffer = int(name_match.group("size")) * 1024
        if framebuffer is None:
            raise not_ours("NVIDIA vGPU", mdev_type, "no framebuffer in name or description")
        res = _RESOLUTION.fullmatch(fields.get("max_resolution", ""))
        return NvidiaTypeInfo(
            type_id=mdev_type.type_id,
            parent=mdev_type.parent,
            name=mdev_type.name,
            board=name_match.group("board") if name_match else None,
            series=name_match.group("series") if name_match else None,
            framebuffer_mib=framebuffer,
            heads=_int(fields, "num_heads"),
            max_resolution=(int(res.group(1)), int(res.group(2))) if res else None,
            frl_fps=_int(fields, "frl_config"),
            max_instances=_int(fields, "max_instance"),
        )

    def device_options(
        self, sysfs_path: str, qemu_caps: QemuCaps, *, extra: Sequence[str] = ()
    ) -> tuple[str, list[str]]:
        """The ``-device`` driver and its options, each checked against ``qemu_caps``'s
        properties (:class:`~mdevtest.qemu.caps.DeviceOptionError` if one is not there)."""
        driver = "vfio-pci"
        options = [f"id={VGPU_DEVICE_ID}", sysfsdev_option(sysfs_path)]
        if "display" in qemu_caps.vfio_properties:
            options.append("display=on")
        options += [*qemu_caps.vfio_migration_options(), *extra]
        qemu_caps.check_device_options(driver, options)
        return driver, options

    def display_device(self, qemu_caps: QemuCaps) -> str | None:
        return VGPU_DEVICE_ID if "display" in qemu_caps.vfio_properties else None

    def qemu_device_args(
        self, sysfs_path: str, qemu_caps: QemuCaps, *, extra: Sequence[str] = ()
    ) -> list[str]:
        driver, options = self.device_options(sysfs_path, qemu_caps, extra=extra)
        return ["-device", device_arg(driver, options)]


def profile() -> NvidiaProfile:
    return NvidiaProfile()
