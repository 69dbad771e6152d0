"""What one QEMU binary supports, probed rather than assumed: labs mix QEMU versions.

:class:`QemuCaps` is parsed from the real outputs of ``query-version``, ``-device vfio-pci,help``
(and ``vfio-pci-nohotplug,help``) and ``query-qmp-schema`` (:func:`mdevtest.host.probe_qemu_caps`
runs the probes on a host). Every ``-device`` option a vendor profile emits is checked against
the properties that QEMU lists for the driver (:meth:`QemuCaps.check_device_options`,
:func:`check_device_options`), so an option the QEMU lacks is refused here, naming it, instead of
QEMU exiting at start on the lab host.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mdevtest.errors import MdevError

__all__ = [
    "GENERIC_DEVICE_KEYS",
    "VFIO_DRIVERS",
    "DeviceOptionError",
    "QemuCaps",
    "check_device_options",
    "parse_device_help",
    "split_device_help",
]


class DeviceOptionError(MdevError):
    """A ``-device`` option that the QEMU's driver does not have: QEMU would exit at start.

    Carries the driver, the option as written and the QEMU version it was checked against.
    """

    def __init__(self, message: str, *, driver: str, option: str, qemu_version: str) -> None:
        super().__init__(message)
        self.driver = driver
        self.option = option
        self.qemu_version = qemu_version


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
    machine_types: frozenset[str] = frozenset()
    """The machine types ``-machine help`` lists (aliases included); empty: not probed."""
    incoming_exit_on_error: bool = False
    """``migrate-incoming`` takes ``exit-on-error`` (QEMU 9.1+): with it off, a destination
    that fails to load the state stays up and says why in its own ``query-migrate``."""

    @property
    def q35_versions(self) -> list[tuple[int, int]]:
        """The versioned q35 machine types (``pc-q35-M.m``) it has, newest first."""
        found = (_Q35.fullmatch(name) for name in self.machine_types)
        return sorted(((int(m[1]), int(m[2])) for m in found if m), reverse=True)

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
        machine_help_text: str = "",
    ) -> QemuCaps:
        """Parse the three probes' real outputs.

        * ``query_version_reply``: the QMP reply (``{"return": {"qemu": {...}}}``) or its value;
        * ``device_help_text``: stdout of ``qemu-system-* -device vfio-pci,help``, optionally
          followed by ``-device vfio-pci-nohotplug,help`` (each section starts with QEMU's
          ``DRIVER options:`` line; text without such a line is vfio-pci's);
        * ``qmp_schema``: the ``query-qmp-schema`` reply or its ``return`` list;
        * ``machine_help_text``: stdout of ``qemu-system-* -machine help`` (optional).
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
        incoming = schema.command_arguments("migrate-incoming")
        return cls(
            version=version,
            vfio_migration_prop=prop,
            switchover_ack="switchover-ack" in capabilities,
            screendump_png="png" in formats,
            vfio_properties=frozenset(props),
            migration_capabilities=frozenset(capabilities),
            nohotplug_properties=None if nohotplug is None else frozenset(parse_device_help(nohotplug)),
            machine_types=parse_machine_help(machine_help_text),
            incoming_exit_on_error="exit-on-error" in incoming,
        )


_Q35 = re.compile(r"pc-q35-(\d+)\.(\d+)")


def parse_machine_help(text: str) -> frozenset[str]:
    """Machine type names from ``-machine help`` (``name  description`` lines after the
    ``Supported machines are:`` header; an alias line names the alias)."""
    names: set[str] = set()
    for line in text.splitlines():
        if not line or line[0].isspace() or line.startswith("Supported machines"):
            continue
        name = line.split(None, 1)[0]
        if re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
            names.add(name)
    return frozenset(names)


def common_machine_type(*caps: QemuCaps) -> str:
    """The machine type every QEMU of a pair (or more) runs the same way: the newest versioned
    q35 they all have, which is the older QEMU's newest (a guest started with an unversioned
    ``q35`` on a newer QEMU cannot migrate to an older one). ``q35`` when any QEMU's types were
    not probed or they share no versioned type."""
    shared: set[tuple[int, int]] | None = None
    for c in caps:
        versions = set(c.q35_versions)
        if not versions:
            return "q35"
        shared = versions if shared is None else shared & versions
    if not shared:
        return "q35"
    major, minor = max(shared)
    return f"pc-q35-{major}.{minor}"


#: The VFIO PCI drivers a profile may put on ``-device``. ``vfio-pci-nohotplug`` is vfio-pci
#: that cannot be hot-unplugged, and the only one with ``ramfb`` (a boot display for the vGPU).
VFIO_DRIVERS = ("vfio-pci", "vfio-pci-nohotplug")
_NOHOTPLUG_ONLY = frozenset({"ramfb"})

#: ``-device`` keys every driver takes besides its own properties (QEMU's ``qdev_device_add``
#: reads them; ``-device DRIVER,help`` does not list them).
GENERIC_DEVICE_KEYS = frozenset({"driver", "bus", "id"})

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

    def command_arguments(self, command: str) -> set[str]:
        """The names of ``command``'s arguments (empty when it has none or does not exist)."""
        cmd = self.by_name.get(command)
        if cmd is None or cmd.get("meta-type") != "command":
            return set()
        args = self.by_name.get(str(cmd.get("arg-type")))
        return {str(m.get("name")) for m in (args or {}).get("members", ())}

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
