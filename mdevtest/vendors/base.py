"""What every vendor profile is made of: the :class:`VendorProfile` interface, its typed results
(:class:`HostCheck`, :class:`TypeInfo`), host probes run in one round trip (:func:`run_probes`)
and the pieces of a ``-device`` argument. The vendor modules build on this; the package
(:mod:`mdevtest.vendors`) finds them by name and re-exports these names.
"""

from __future__ import annotations

import re
import secrets
import shlex
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from mdevtest.errors import MdevError
from mdevtest.localexec import Executor
from mdevtest.mdev import MdevType
from mdevtest.qemu.caps import QemuCaps

__all__ = [
    "ALL_CHECKS",
    "COMMON_TROUBLE",
    "IOMMU_PROBES",
    "VGPU_DEVICE_ID",
    "CaptureMethod",
    "HostCheck",
    "Probe",
    "TypeInfo",
    "VendorProfile",
    "compile_patterns",
    "device_arg",
    "iommu_check",
    "module_loaded_snippet",
    "not_ours",
    "run_probes",
    "sysfsdev_option",
    "vfio_pci_device",
]

CaptureMethod = Literal["qmp", "vnc", "none"]

#: Names of the verification checks a profile can declare applicable.
ALL_CHECKS = frozenset({"downtime", "graphics", "device-state", "workload", "host-logs", "guest-logs"})

_PROBE_TIMEOUT_S = 30.0

#: The QOM id of the vGPU's VFIO device (``VFIO_MIGRATION`` events and ``screendump`` name it).
VGPU_DEVICE_ID = "vgpu0"

# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class HostCheck:
    """One host fact a vendor needs: its name, whether it holds, and what was seen."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class TypeInfo:
    """What a vendor's mdev type offers; vendor modules subclass it with typed fields."""

    type_id: str
    parent: str
    name: str

    def summary(self) -> str:
        """One line for reports."""
        return self.name or self.type_id


# --------------------------------------------------------------------------------------------
# Host probes: several shell snippets, one round trip


@dataclass(frozen=True)
class Probe:
    """What one probe snippet printed and its exit status."""

    rc: int
    output: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def run_probes(
    executor: Executor, probes: Mapping[str, str], *, timeout: float = _PROBE_TIMEOUT_S
) -> dict[str, Probe]:
    """Run each snippet (stdout and stderr merged) in one script; return its result by key.

    Snippets are shell written in this package; values in them must already be quoted.
    """
    mark = f"@probe-{secrets.token_hex(6)}"
    parts = ["LC_ALL=C; export LC_ALL"]
    for name, snippet in probes.items():
        parts.append(f"echo {shlex.quote(f'{mark} begin {name}')}")
        parts.append(f"( {snippet}\n) 2>&1")
        parts.append(f'rc=$?; echo; echo "{mark} rc $rc"')  # echo: output may lack a final newline
    result = executor.run_shell("\n".join(parts) + "\n", timeout=timeout)
    found: dict[str, Probe] = {}
    key: str | None = None
    lines: list[str] = []
    for line in result.stdout.splitlines():
        if line.startswith(f"{mark} begin "):
            key, lines = line[len(mark) + 7 :], []
        elif line.startswith(f"{mark} rc ") and key is not None:
            found[key] = Probe(int(line.split()[-1]), "\n".join(lines).strip())
            key = None
        elif key is not None:
            lines.append(line)
    missing = [k for k in probes if k not in found]
    if missing:
        raise MdevError(
            f"{executor.name}: host probes did not finish ({', '.join(missing)}); rc={result.rc}, "
            f"stderr: {result.stderr.strip()[-300:]}"
        )
    return found


def module_loaded_snippet(module: str, proc_modules: str = "/proc/modules") -> str:
    """Shell succeeding if ``module`` is loaded (listed in /proc/modules, or built in)."""
    q = shlex.quote(module)
    return f"grep -q '^'{q}' ' {proc_modules} || [ -d /sys/module/{q} ]"


def iommu_check(cmdline: Probe, iommu_groups: Probe) -> HostCheck:
    """IOMMU on: the kernel command line asks for it, or the kernel has IOMMU groups."""
    flags = [w for w in cmdline.output.split() if w.startswith(("intel_iommu=", "amd_iommu=", "iommu="))]
    groups = iommu_groups.output.strip()
    if any(f in ("intel_iommu=on", "amd_iommu=on", "iommu=pt") for f in flags):
        return HostCheck("IOMMU on", True, f"kernel command line: {' '.join(flags)}")
    if groups.isdigit() and int(groups) > 0:
        return HostCheck("IOMMU on", True, f"{groups} IOMMU groups (default on in this kernel)")
    return HostCheck(
        "IOMMU on",
        False,
        "no IOMMU groups and no intel_iommu=on on the kernel command line "
        f"({' '.join(flags) or 'no iommu flags'}); add intel_iommu=on and reboot",
    )


IOMMU_PROBES = {
    "cmdline": "cat /proc/cmdline",
    "iommu_groups": "ls /sys/kernel/iommu_groups 2>/dev/null | wc -l",
}


# --------------------------------------------------------------------------------------------
# The profile interface


def compile_patterns(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)


#: Host log lines that mean trouble whatever the vendor (kernel oopses, IOMMU faults, VFIO errors).
COMMON_TROUBLE = compile_patterns(
    r"Call Trace:",
    r"\bBUG: ",
    r"kernel BUG at",
    r"WARNING: CPU: \d+ PID: \d+",
    r"general protection fault",
    r"soft lockup|hard LOCKUP",
    r"blocked for more than \d+ seconds",
    # an interrupt storm: a level-triggered line nobody clears (e.g. a stuck INTx after a switchover)
    r"irq \d+: nobody cared|Disabling IRQ #\d+",
    r"DMAR: \[DMA (Read|Write)\]|DMAR: DRHD: handling fault|DMAR:.*[Ff]ault",
    r"AMD-Vi: Event logged \[IO_PAGE_FAULT",
    r"(?i)\bvfio[-_\w]*\b.*\b(error|failed|failure)\b",
)


class VendorProfile(ABC):
    """The vendor-specific half of the flow. Instances are stateless."""

    name: ClassVar[str]
    simulated: ClassVar[bool] = False
    device_kind: ClassVar[str] = "mdev"
    """``mdev`` (a mediated device of a parent) or ``vf`` (an SR-IOV VF,
    :mod:`mdevtest.vendors.vf`)."""
    capture_method: ClassVar[CaptureMethod]
    applicable_checks: ClassVar[frozenset[str]] = ALL_CHECKS
    trouble_patterns: ClassVar[tuple[re.Pattern[str], ...]] = COMMON_TROUBLE
    guest_display: ClassVar[str | None] = None
    """The vGPU's PCI ``vendor[:device]`` as the guest sees it, where the probe finds the DRM
    card of the device under test (None: the vGPU has no display of its own)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    @abstractmethod
    def host_checks(self, executor: Executor, *, sysfs_root: str = "/") -> list[HostCheck]:
        """The host facts this vendor needs, checked in one round trip."""

    @abstractmethod
    def parse_type(self, mdev_type: MdevType) -> TypeInfo:
        """Typed view of a type's sysfs name/description; :class:`MdevError` if it is not ours."""

    def display_device(self, qemu_caps: QemuCaps) -> str | None:
        """The ``-device`` id whose console is the vGPU's own display, when it brings one
        (``display=on``): the machine then has no emulated VGA, and VNC and ``screendump`` are
        bound to that console. None: no display of its own (the emulated VGA stays)."""
        return None

    @abstractmethod
    def qemu_device_args(
        self, sysfs_path: str, qemu_caps: QemuCaps, *, extra: Sequence[str] = ()
    ) -> list[str]:
        """QEMU arguments for the mdev at ``sysfs_path`` (``extra``: more ``vfio-pci`` options)."""

    def driver_version(self, executor: Executor, *, sysfs_root: str = "/") -> str:
        """The vendor driver's version, to compare source and destination (default: kernel)."""
        return executor.check(["uname", "-r"], timeout=_PROBE_TIMEOUT_S).stdout.strip()

    def find_trouble(self, log_text: str) -> list[str]:
        """The lines of a host log (dmesg) that match a trouble pattern, in order, once each."""
        seen: dict[str, None] = {}
        for line in log_text.splitlines():
            if any(p.search(line) for p in self.trouble_patterns):
                seen.setdefault(line.strip(), None)
        return list(seen)

    #: The parent driver's prefix of the sysfs type names (``i915-`` of ``i915-GVTg_V5_4``),
    #: left out of test ids.
    type_prefix: ClassVar[str] = ""

    def type_label(self, type_name: str) -> str:
        """The vGPU type as test ids show it: ``i915-GVTg_V5_4`` -> ``GVTg_V5_4``."""
        return type_name.removeprefix(self.type_prefix) or type_name

    def applies(self, check: str) -> bool:
        if check not in ALL_CHECKS:
            raise ValueError(f"unknown check {check!r}; known: {', '.join(sorted(ALL_CHECKS))}")
        return check in self.applicable_checks


def vfio_pci_device(sysfs_path: str, options: Iterable[str]) -> str:
    """``vfio-pci,sysfsdev=PATH,opt,...`` with commas in the path doubled (QEMU's escaping)."""
    return device_arg("vfio-pci", [sysfsdev_option(sysfs_path), *options])


def sysfsdev_option(sysfs_path: str) -> str:
    """``sysfsdev=PATH`` with commas in the path doubled (QEMU's option escaping)."""
    return f"sysfsdev={sysfs_path.replace(',', ',,')}"


def device_arg(driver: str, options: Iterable[str]) -> str:
    """The value of ``-device``: ``DRIVER,opt,...`` (values already escaped)."""
    return ",".join([driver, *options])


def not_ours(profile: str, mdev_type: MdevType, why: str) -> MdevError:
    return MdevError(
        f"parent {mdev_type.parent}, type {mdev_type.type_id}: not a {profile} type ({why}); "
        "check vgpu.vendor and vgpu.type in the inventory"
    )
