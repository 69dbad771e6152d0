"""The libvirt domain XML of a guest: the same machine :func:`mdevtest.qemu.cmdline.build_argv`
starts, described to libvirt.

Built from the one :class:`~mdevtest.qemu.cmdline.MachineSpec` both backends share, so a guest
looks the same to its checks whichever backend runs it: the same consoles (UNIX sockets with log
files in the machine's directory), the same disks, the same probe channels, VNC on a UNIX socket.

The vGPU's ``-device`` line (what a vendor profile emits) becomes a ``<hostdev>``:

* an mdev (``sysfsdev=/sys/bus/mdev/devices/<uuid>``):
  ``<hostdev mode='subsystem' type='mdev' model='vfio-pci'>`` with the uuid as its source;
* a PCI function (an SR-IOV VF, ``sysfsdev=/sys/bus/pci/devices/<bdf>``):
  ``<hostdev mode='subsystem' type='pci' managed='no'>`` with its address and
  ``<driver name='vfio'/>`` (the VF is bound to its variant driver by mdevtest, not by libvirt);
* ``id=X`` is the hostdev's user alias ``ua-X`` (QEMU's device id then is ``ua-X``),
  ``display=on`` / ``ramfb=on`` are the hostdev's own attributes (libvirt picks
  ``vfio-pci-nohotplug`` for ramfb itself); every other option (``enable-migration``,
  ``x-igd-opregion``, ``x-device-dirty-page-tracking``...) is set through libvirt's
  ``<qemu:override>`` of that device's properties (libvirt 8.2+), which libvirt has no element for.

Arguments that are not a vfio device (a test's own ``-device``, ``-display egl-headless``) go
through ``<qemu:commandline>``; libvirt then marks the domain *tainted* (custom-argv) in its log.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from mdevtest.errors import MachineError
from mdevtest.qemu.cmdline import (
    AGENT_PORT,
    CONTROL_PORT,
    PATTERN_SERIAL,
    MachinePaths,
    MachineSpec,
    hoist_iommu,
)

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)

#: libvirt's prefix of a user-chosen device alias; QEMU's device id is the alias.
USER_ALIAS = "ua-"
_VFIO_DRIVERS = ("vfio-pci", "vfio-pci-nohotplug")
_BDF = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$", re.IGNORECASE)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


@dataclass(frozen=True)
class VfioHostdev:
    """A ``-device vfio-pci...`` line of the machine, as a hostdev."""

    sysfsdev: str
    device_id: str | None = None
    display: bool = False
    ramfb: bool = False
    properties: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def alias(self) -> str | None:
        return None if self.device_id is None else USER_ALIAS + self.device_id

    @property
    def mdev_uuid(self) -> str | None:
        name = self.sysfsdev.rstrip("/").rsplit("/", 1)[-1]
        return name if _UUID.match(name) and "/mdev/" in self.sysfsdev else None

    @property
    def pci_address(self) -> tuple[str, str, str, str] | None:
        match = _BDF.match(self.sysfsdev.rstrip("/").rsplit("/", 1)[-1])
        if match is None or self.mdev_uuid is not None:
            return None
        domain, bus, slot, function = match.groups()
        return domain, bus, slot, function


def split_options(value: str) -> list[str]:
    """QEMU's option list split at single commas (``,,`` is an escaped comma)."""
    parts: list[str] = []
    current = ""
    i = 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1 : i + 2] == ",":
                current += ","
                i += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += value[i]
        i += 1
    parts.append(current)
    return parts


def parse_vfio_device(value: str) -> VfioHostdev | None:
    """The hostdev of a ``-device`` value, None when it is not a vfio-pci device."""
    driver, *options = split_options(value)
    if driver not in _VFIO_DRIVERS:
        return None
    sysfsdev: str | None = None
    device_id: str | None = None
    display = ramfb = False
    props: list[tuple[str, str]] = []
    for option in options:
        key, _, val = option.partition("=")
        if key == "sysfsdev":
            sysfsdev = val
        elif key == "host":
            sysfsdev = f"/sys/bus/pci/devices/{val if val.count(':') == 2 else '0000:' + val}"
        elif key == "id":
            device_id = val
        elif key == "display":
            display = val == "on"
        elif key == "ramfb":
            ramfb = val == "on"
        else:
            props.append((key, val))
    if sysfsdev is None:
        raise MachineError(f"-device {value}: a vfio-pci device without sysfsdev= or host=")
    return VfioHostdev(sysfsdev, device_id, display, ramfb, tuple(props))


def split_extra(extra: tuple[str, ...]) -> tuple[list[VfioHostdev], list[str]]:
    """The machine's extra arguments as hostdevs and what libvirt gets verbatim."""
    iommu, rest = hoist_iommu(extra)
    hostdevs: list[VfioHostdev] = []
    passthrough = list(iommu)
    i = 0
    while i < len(rest):
        if rest[i] == "-device" and i + 1 < len(rest):
            hostdev = parse_vfio_device(rest[i + 1])
            if hostdev is not None:
                hostdevs.append(hostdev)
            else:
                passthrough += rest[i : i + 2]
            i += 2
            continue
        passthrough.append(rest[i])
        i += 1
    return hostdevs, passthrough


def domain_xml(
    spec: MachineSpec,
    paths: MachinePaths,
    *,
    name: str,
    uuid: str,
    emulator: str,
) -> str:
    """The domain XML of ``spec`` running from ``paths`` as domain ``name`` (``uuid`` stays
    the same across a migration: it is the guest's identity to libvirt)."""
    hostdevs, passthrough = split_extra(spec.extra_args)
    dom = ET.Element("domain", {"type": "kvm" if spec.accel == "kvm" else "qemu"})
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "uuid").text = uuid
    ET.SubElement(dom, "memory", {"unit": "MiB"}).text = str(spec.memory_mib)
    ET.SubElement(dom, "vcpu").text = str(spec.vcpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", {"arch": "x86_64", "machine": spec.machine}).text = "hvm"
    if spec.firmware == "uefi":
        loader = ET.SubElement(os_el, "loader", {"readonly": "yes", "type": "pflash"})
        loader.text = spec.ovmf_code
        ET.SubElement(os_el, "nvram").text = paths.ovmf_vars
    if spec.kernel is not None:
        ET.SubElement(os_el, "kernel").text = spec.kernel
        if spec.initrd is not None:
            ET.SubElement(os_el, "initrd").text = spec.initrd
        ET.SubElement(os_el, "cmdline").text = spec.append
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    if spec.accel == "kvm":
        ET.SubElement(dom, "cpu", {"mode": "host-passthrough"})
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, event).text = "destroy" if event != "on_reboot" else "restart"
    devices = ET.SubElement(dom, "devices")
    ET.SubElement(devices, "emulator").text = emulator
    _disks(devices, spec, paths)
    iface = ET.SubElement(devices, "interface", {"type": "user"})
    ET.SubElement(iface, "mac", {"address": spec.mac})
    ET.SubElement(iface, "model", {"type": "virtio"})
    _chardevs(devices, spec, paths)
    graphics = ET.SubElement(devices, "graphics", {"type": "vnc", "socket": paths.vnc_sock})
    del graphics  # one VNC server on the first display (the vGPU's with display=on)
    video = ET.SubElement(devices, "video")
    model = "none" if spec.display_device is not None else "vga"
    ET.SubElement(video, "model", {"type": model})
    for hostdev in hostdevs:
        _hostdev(devices, hostdev)
    ET.SubElement(devices, "memballoon", {"model": "none"})
    # QEMU as root, as the qemu backend runs it: the machine's directory, the images and the
    # vGPU's device nodes are root's; libvirt relabels nothing.
    seclabel = ET.SubElement(dom, "seclabel", {"type": "static", "model": "dac", "relabel": "no"})
    ET.SubElement(seclabel, "label").text = "+0:+0"
    _qemu_extras(dom, hostdevs, passthrough)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def _disks(devices: ET.Element, spec: MachineSpec, paths: MachinePaths) -> None:
    """The guest's disk (vda), the pattern disk, the cloud-init seed: all read-only."""
    disks: list[tuple[str, str, str | None, bool]] = []
    if spec.disk is not None:
        disks.append((paths.disk_overlay, "qcow2", None, True))
    if spec.pattern_disk is not None:
        disks.append((spec.pattern_disk, "raw", PATTERN_SERIAL, False))
    if spec.cloud_init is not None:
        disks.append((spec.cloud_init, "raw", None, False))
    for index, (file, fmt, serial, boot) in enumerate(disks):
        disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
        ET.SubElement(disk, "driver", {"name": "qemu", "type": fmt})
        ET.SubElement(disk, "source", {"file": file})
        ET.SubElement(disk, "target", {"dev": f"vd{chr(ord('a') + index)}", "bus": "virtio"})
        ET.SubElement(disk, "readonly")
        if serial is not None:
            ET.SubElement(disk, "serial").text = serial
        if boot:
            ET.SubElement(disk, "boot", {"order": "1"})


def _unix_chardev(
    devices: ET.Element, tag: str, path: str, log: str | None, target: dict[str, str]
) -> None:
    chardev = ET.SubElement(devices, tag, {"type": "unix"})
    ET.SubElement(chardev, "source", {"mode": "bind", "path": path})
    if log is not None:
        ET.SubElement(chardev, "log", {"file": log, "append": "on"})
    ET.SubElement(chardev, "target", target)


def _chardevs(devices: ET.Element, spec: MachineSpec, paths: MachinePaths) -> None:
    """ttyS0 (console, logged), the probe's control channel, the guest agent's port."""
    _unix_chardev(devices, "serial", paths.serial_sock, paths.serial_log, {"port": "0"})
    if spec.control == "uart":
        target = {"type": "isa-serial", "port": "1"}
        _unix_chardev(devices, "serial", paths.ctl_sock, paths.ctl_log, target)
    elif spec.control == "vport":
        target = {"type": "virtio", "name": CONTROL_PORT}
        _unix_chardev(devices, "channel", paths.ctl_sock, paths.ctl_log, target)
    if spec.agent:
        _unix_chardev(devices, "channel", paths.qga_sock, None, {"type": "virtio", "name": AGENT_PORT})


def _hostdev(devices: ET.Element, hostdev: VfioHostdev) -> None:
    attrs = {"mode": "subsystem"}
    if hostdev.mdev_uuid is not None:
        attrs |= {"type": "mdev", "model": "vfio-pci"}
    elif hostdev.pci_address is not None:
        attrs |= {"type": "pci", "managed": "no"}
    else:
        raise MachineError(
            f"sysfsdev={hostdev.sysfsdev}: libvirt takes an mdev (/sys/bus/mdev/devices/<uuid>) "
            "or a PCI function (/sys/bus/pci/devices/<domain:bus:slot.function>)"
        )
    if hostdev.display:
        attrs["display"] = "on"
    if hostdev.ramfb:
        attrs["ramfb"] = "on"
    element = ET.SubElement(devices, "hostdev", attrs)
    source = ET.SubElement(element, "source")
    if hostdev.mdev_uuid is not None:
        ET.SubElement(source, "address", {"uuid": hostdev.mdev_uuid})
    else:
        assert hostdev.pci_address is not None
        domain, bus, slot, function = hostdev.pci_address
        ET.SubElement(
            source,
            "address",
            {"domain": f"0x{domain}", "bus": f"0x{bus}", "slot": f"0x{slot}",
             "function": f"0x{function}"},
        )  # fmt: skip
        ET.SubElement(element, "driver", {"name": "vfio"})
    if hostdev.alias is not None:
        ET.SubElement(element, "alias", {"name": hostdev.alias})


def _qemu_extras(dom: ET.Element, hostdevs: list[VfioHostdev], passthrough: list[str]) -> None:
    """``<qemu:override>`` for the vfio properties, ``<qemu:commandline>`` for the rest."""
    overridden = [h for h in hostdevs if h.properties]
    for hostdev in overridden:
        if hostdev.alias is None:
            raise MachineError(
                f"sysfsdev={hostdev.sysfsdev}: properties {dict(hostdev.properties)} need the "
                "device's id= (libvirt overrides properties of a device by its alias)"
            )
    if overridden:
        override = ET.SubElement(dom, f"{{{QEMU_NS}}}override")
        for hostdev in overridden:
            assert hostdev.alias is not None
            device = ET.SubElement(override, f"{{{QEMU_NS}}}device", {"alias": hostdev.alias})
            frontend = ET.SubElement(device, f"{{{QEMU_NS}}}frontend")
            for key, value in hostdev.properties:
                ET.SubElement(
                    frontend,
                    f"{{{QEMU_NS}}}property",
                    {"name": key, "type": "string", "value": value},
                )
    if passthrough:
        commandline = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for arg in passthrough:
            ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", {"value": arg})
