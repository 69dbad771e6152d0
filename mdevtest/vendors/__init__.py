"""Vendor profiles: what differs between an Intel GVT-g, an NVIDIA vGPU, an mtty and the local lab.

One module per vendor (``gvt``, ``nvidia``, ``mtty``, ``simulated``), found by name with
:func:`get_profile`. A :class:`VendorProfile` says

* which host facts must hold before a guest starts (:meth:`VendorProfile.host_checks`, one round trip);
* what a type's sysfs ``name``/``description`` mean (:meth:`VendorProfile.parse_type` -> a typed
  :class:`TypeInfo`);
* how QEMU gets the device (:meth:`VendorProfile.qemu_device_args`, chosen from :class:`QemuCaps`);
* how the guest's display is captured (``capture_method``), which verification checks apply
  (``applicable_checks``), which checks only it has (:meth:`VendorProfile.vendor_checks`) and
  which host log lines mean trouble (``trouble_patterns``).

:class:`QemuCaps` is what a host's QEMU supports, parsed from the real outputs of ``query-version``,
``-device vfio-pci,help`` and ``query-qmp-schema`` (probe, don't assume: labs mix versions).
Every ``-device`` option a profile emits is checked against the properties that QEMU lists for
the driver (:meth:`QemuCaps.check_device_options`, :func:`check_device_options`), so an option
the QEMU lacks is refused here, naming it, instead of QEMU exiting at start on the lab host.
"""

from __future__ import annotations

import difflib
import importlib
import re
import secrets
import shlex
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mdevtest.errors import MdevError, MdevtestError
from mdevtest.localexec import Executor
from mdevtest.mdev import MdevType

if TYPE_CHECKING:
    from mdevtest.checks.base import Check

__all__ = [
    "ALL_CHECKS",
    "COMMON_TROUBLE",
    "GENERIC_DEVICE_KEYS",
    "VFIO_DRIVERS",
    "VGPU_DEVICE_ID",
    "CaptureMethod",
    "DeviceOptionError",
    "HostCheck",
    "Probe",
    "QemuCaps",
    "TypeInfo",
    "UnknownVendorError",
    "VendorProfile",
    "check_device_options",
    "device_arg",
    "get_profile",
    "known_vendors",
    "parse_device_help",
    "run_probes",
    "split_device_help",
    "sysfsdev_option",
]

CaptureMethod = Literal["qmp", "vnc", "none"]

#: Names of the verification checks a profile can declare applicable.
ALL_CHECKS = frozenset({"downtime", "graphics", "device-state", "workload", "host-logs", "guest-logs"})

#: Vendor name -> module (under this package). The inventory's ``vgpu.vendor`` uses these names.
_REGISTRY: dict[str, str] = {
    "gvt": "mdevtest.vendors.gvt",
    "nvidia": "mdevtest.vendors.nvidia",
    "mtty": "mdevtest.vendors.mtty",
    "simulated": "mdevtest.vendors.simulated",
}

_PROBE_TIMEOUT_S = 30.0


class UnknownVendorError(MdevtestError):
    """No vendor profile has the requested name."""


class DeviceOptionError(MdevError):
    """A ``-device`` option that the QEMU's driver does not have: QEMU would exit at start.

    Carries the driver, the option as written and the QEMU version it was checked against.
    """

    def __init__(self, message: str, *, driver: str, option: str, qemu_version: str) -> None:
        super().__init__(message)
        self.driver = driver
        self.option = option
        self.qemu_version = qemu_version


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
    profile: VendorProfile = module.profile()
    return profile


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
# QEMU capabilities


@dataclass(frozen=True)
class QemuCaps:
    """What one QEMU binary supports, as far as VFIO migration and capture are concerned.

    ``vfio_migration_prop`` is the ``vfio-pci`` property that turns migration on:
    ``x-enable-migration`` (protocol v1 in 5.2-7.2, experimental v2 in 8.0), ``enable-migration``
    (8.1+), or None (this QEMU cannot migrate VFIO devices).

    ``vfio_properties`` are the properties ``-device vfio-pci,help`` lists;
    ``nohotplug_properties`` those of ``vfio-pci-nohotplug`` (the only driver with ``ramfb``), or
    None when that help was not probed: they are then inferred as vfio-pci's plus ``ramfb``,
    which is what QEMU's subclass adds (seen in the captured 7.2 help).
    """

    version: tuple[int, int, int]
    vfio_migration_prop: str | None
    switchover_ack: bool
    screendump_png: bool
    vfio_properties: frozenset[str] = frozenset()
    migration_capabilities: frozenset[str] = frozenset()
    nohotplug_properties: frozenset[str] | None = None

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)

    @property
    def vfio_migration_protocol(self) -> int | None:
        """1 (migration region, QEMU 5.2-7.2), 2 (``VFIO_DEVICE_FEATURE``, 8.0+) or None."""
        if self.vfio_migration_prop is None:
            return None
        return 1 if self.version < (8, 0, 0) else 2

    def vfio_migration_options(self) -> tuple[str, ...]:
        """The ``vfio-pci`` options that enable migration here (empty if it cannot)."""
        return () if self.vfio_migration_prop is None else (f"{self.vfio_migration_prop}=on",)

    def device_properties(self, driver: str) -> tuple[frozenset[str], str]:
        """The properties of VFIO ``driver`` here, and how they are known (``probed``, ``inferred``)."""
        if driver == "vfio-pci":
            return self.vfio_properties, "probed"
        if driver == "vfio-pci-nohotplug":
            if self.nohotplug_properties is not None:
                return self.nohotplug_properties, "probed"
            return (
                self.vfio_properties | _NOHOTPLUG_ONLY,
                "inferred: vfio-pci's properties plus ramfb (-device vfio-pci-nohotplug,help "
                "was not probed)",
            )
        raise ValueError(f"no probed properties for -device {driver}; known: {', '.join(VFIO_DRIVERS)}")

    def check_device_options(self, driver: str, options: Iterable[str]) -> None:
        """Raise :class:`DeviceOptionError` unless every option is a property of VFIO ``driver``
        in this QEMU; an option only the other VFIO driver has is named with that driver."""
        props, how = self.device_properties(driver)
        others = {d: self.device_properties(d)[0] for d in VFIO_DRIVERS if d != driver}
        check_device_options(
            driver,
            options,
            props,
            qemu_version=self.version_text,
            elsewhere=others,
            note="" if how == "probed" else how,
        )

    @classmethod
    def from_probe(
        cls,
        query_version_reply: Mapping[str, Any],
        device_help_text: str,
        qmp_schema: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    ) -> QemuCaps:
        """Parse the three probes' real outputs.

        * ``query_version_reply``: the QMP reply (``{"return": {"qemu": {...}}}``) or its value;
        * ``device_help_text``: stdout of ``qemu-system-* -device vfio-pci,help``, optionally
          followed by ``-device vfio-pci-nohotplug,help`` (each section starts with QEMU's
          ``DRIVER options:`` line; text without such a line is vfio-pci's);
        * ``qmp_schema``: the ``query-qmp-schema`` reply or its ``return`` list.
        """
        version = _parse_version(query_version_reply)
        sections = split_device_help(device_help_text)
        props = parse_device_help(sections.get("vfio-pci", sections.get("", "")))
        nohotplug = sections.get("vfio-pci-nohotplug")
        if "enable-migration" in props:
            prop: str | None = "enable-migration"
        elif "x-enable-migration" in props:
            prop = "x-enable-migration"
        else:
            prop = None
        schema = _Schema(qmp_schema)
        capabilities = schema.command_member_enum(
            "migrate-set-capabilities", "capabilities", "capability"
        )
        formats = schema.command_member_enum("screendump", "format")
        return cls(
            version=version,
            vfio_migration_prop=prop,
            switchover_ack="switchover-ack" in capabilities,
            screendump_png="png" in formats,
            vfio_properties=frozenset(props),
            migration_capabilities=frozenset(capabilities),
            nohotplug_properties=None if nohotplug is None else frozenset(parse_device_help(nohotplug)),
        )


#: The VFIO PCI drivers a profile may put on ``-device``. ``vfio-pci-nohotplug`` is vfio-pci
#: that cannot be hot-unplugged, and the only one with ``ramfb`` (a boot display for the vGPU).
VFIO_DRIVERS = ("vfio-pci", "vfio-pci-nohotplug")
_NOHOTPLUG_ONLY = frozenset({"ramfb"})

#: ``-device`` keys every driver takes besides its own properties (QEMU's ``qdev_device_add``
#: reads them; ``-device DRIVER,help`` does not list them).
GENERIC_DEVICE_KEYS = frozenset({"driver", "bus", "id"})

#: The QOM id of the vGPU's VFIO device (``VFIO_MIGRATION`` events and ``screendump`` name it).
VGPU_DEVICE_ID = "vgpu0"

_HELP_LINE = re.compile(r"^\s*(?:[A-Za-z0-9_-]+\.)?([A-Za-z0-9_.-]+)=(?:<([^>]*)>|(\S+))")
_HELP_HEADER = re.compile(r"^(\S+) options:\s*$")


def parse_device_help(text: str) -> dict[str, str]:
    """Property -> type from ``-device DRIVER,help`` (``  name=<type>  - ...`` lines; QEMU
    before 2.x printed ``driver.name=type``). Header lines are skipped."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        if line.rstrip().endswith("options:"):
            continue
        match = _HELP_LINE.match(line)
        if match:
            props[match.group(1)] = match.group(2) or match.group(3) or ""
    return props


def split_device_help(text: str) -> dict[str, str]:
    """Several ``-device DRIVER,help`` outputs in one text, by driver (from QEMU's
    ``DRIVER options:`` lines); lines before the first such line are under ``""``."""
    sections: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        header = _HELP_HEADER.match(line)
        if header:
            current = header.group(1)
            sections.setdefault(current, [])
        else:
            sections.setdefault(current, []).append(line)
    return {driver: "\n".join(lines) for driver, lines in sections.items()}


def check_device_options(
    driver: str,
    options: Iterable[str],
    help_props: Collection[str],
    *,
    qemu_version: str,
    elsewhere: Mapping[str, Collection[str]] | None = None,
    note: str = "",
) -> None:
    """Raise :class:`DeviceOptionError` for the first option that is not a property of ``driver``.

    ``options`` are ``key=value`` (or bare ``key``) words of a ``-device`` argument after the
    driver; ``help_props`` the driver's properties (:func:`parse_device_help` of its
    ``-device DRIVER,help``, or :attr:`QemuCaps.vfio_properties`); ``elsewhere`` other drivers'
    properties of the same QEMU, so the message can say which driver has the option; ``note``
    says how the properties are known when they were not probed. Keys every driver takes
    (:data:`GENERIC_DEVICE_KEYS`) always pass.
    """
    for option in options:
        key = option.partition("=")[0]
        if key in GENERIC_DEVICE_KEYS or key in help_props:
            continue
        where = f"QEMU {qemu_version}: -device {driver} has no property {key!r} (option {option!r})"
        owners = [d for d, props in (elsewhere or {}).items() if key in props]
        if not help_props:
            hint = (
                f"this QEMU lists no properties for {driver} (`-device {driver},help` printed "
                "none): is it built with VFIO?"
            )
        elif owners:
            hint = (
                f"{key} is a property of {' and '.join(owners)} only: use -device {owners[0]} "
                f"for it, or leave {key} out"
            )
        else:
            close = difflib.get_close_matches(key, sorted(help_props), n=3, cutoff=0.75)
            hint = (f"did you mean {' or '.join(close)}? " if close else "") + (
                f"QEMU would refuse to start; see `qemu-system-x86_64 -device {driver},help`"
            )
        message = f"{where}; {hint}" + (f" ({note})" if note else "")
        raise DeviceOptionError(message, driver=driver, option=option, qemu_version=qemu_version)


def _parse_version(reply: Mapping[str, Any]) -> tuple[int, int, int]:
    body = reply.get("return", reply)
    try:
        qemu = body["qemu"]
        return int(qemu["major"]), int(qemu["minor"]), int(qemu["micro"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a query-version reply: {dict(reply)!r}") from exc


class _Schema:
    """Walks a ``query-qmp-schema`` reply (type names are masked numbers; follow references)."""

    def __init__(self, reply: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> None:
        entries = reply.get("return", []) if isinstance(reply, Mapping) else reply
        self.by_name: dict[str, Mapping[str, Any]] = {str(e.get("name")): e for e in entries}

    def _member_type(self, object_name: str | None, member: str) -> Mapping[str, Any] | None:
        obj = self.by_name.get(object_name or "")
        if obj is None:
            return None
        for m in obj.get("members", ()):
            if m.get("name") == member:
                found = self.by_name.get(str(m.get("type")))
                if found is not None and found.get("meta-type") == "array":
                    found = self.by_name.get(str(found.get("element-type")))
                return found
        return None

    def command_member_enum(self, command: str, *path: str) -> set[str]:
        """The enum values at ``command``'s argument ``path[0]`` -> ``path[1]`` -> ..."""
        cmd = self.by_name.get(command)
        if cmd is None or cmd.get("meta-type") != "command":
            return set()
        node: Mapping[str, Any] | None = self.by_name.get(str(cmd.get("arg-type")))
        for member in path:
            if node is None:
                return set()
            node = self._member_type(str(node.get("name")), member)
        if node is None or node.get("meta-type") != "enum":
            return set()
        values = node.get("values")
        if values is None:  # "members" replaced "values" over time; accept either
            values = [m.get("name") for m in node.get("members", ())]
        return {str(v) for v in values}


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

    def vendor_checks(self) -> list[Check]:
        """Checks only this vendor has, run with the standard set (default: none)."""
        return []

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
