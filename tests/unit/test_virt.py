"""The libvirt backend's pure parts: domain XML from a machine spec, job statistics as figures,
a policy as migrate flags. The real path (libvirtd, a real mtty mdev migrated direct and
peer-to-peer) runs in tests/lab/test_nested.py."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from mdevtest.errors import MachineError, MigrationError
from mdevtest.migration import MigrationPolicy
from mdevtest.qemu.cmdline import AGENT_PORT, CONTROL_PORT, DiskAttach, MachinePaths, MachineSpec
from mdevtest.virt.domain import QEMU_NS, domain_xml, parse_vfio_device, split_options
from mdevtest.virt.migration import query_info

UUID = "f7815c75-54e5-4074-8326-a72a8d2143ef"
MTTY_LINE = (
    f"vfio-pci,sysfsdev=/sys/bus/mdev/devices/{UUID},id=vgpu0,enable-migration=on,"
    "x-device-dirty-page-tracking=off"
)
PATHS = MachinePaths("/var/lib/mdevtest/vms/mdevtest-r-vm1")

#: The JOB_COMPLETED event's statistics of a direct migration of the nested lab's mtty guest
#: (libvirt 11.3, QEMU 10.0; captured by hand with libvirt-python in session 8; the nested-lab
#: test checks the same keys on every run).
COMPLETED = {
    "operation": 5, "time_elapsed": 28809, "time_elapsed_net": 28503, "downtime": 478,
    "downtime_net": 172, "setup_time": 27, "data_total": 151855104, "data_processed": 77034905,
    "data_remaining": 0, "memory_total": 151855104, "memory_processed": 77034905,
    "memory_remaining": 0, "memory_bps": 3621763, "memory_constant": 18550,
    "memory_normal": 18686, "memory_normal_bytes": 76537856, "memory_dirty_rate": 0,
    "memory_iteration": 3, "memory_postcopy_requests": 0, "memory_page_size": 4096,
    "disk_total": 0, "disk_processed": 0, "disk_remaining": 0, "vfio_data_transferred": 96,
}  # fmt: skip


def spec(**over: object) -> MachineSpec:
    base: dict[str, object] = {
        "name": "vm1",
        "memory_mib": 128,
        "vcpus": 1,
        "kernel": "/img/vmlinuz",
        "initrd": "/img/initrd.img",
        "append": "console=ttyS0",
        "machine": "pc-q35-10.0",
        "extra_args": ("-device", MTTY_LINE),
        "control": "none",
    }
    base.update(over)
    return MachineSpec(**base)  # type: ignore[arg-type]


def xml_of(machine: MachineSpec) -> ET.Element:
    return ET.fromstring(domain_xml(machine, PATHS, name="mdevtest-r-vm1", uuid=UUID, emulator="/q"))


def test_an_mdev_is_an_mdev_hostdev_with_its_alias_and_the_other_options_as_overrides() -> None:
    dom = xml_of(spec())
    hostdev = dom.find("devices/hostdev")
    assert hostdev is not None
    assert hostdev.attrib == {"mode": "subsystem", "type": "mdev", "model": "vfio-pci"}
    assert hostdev.find("source/address").attrib == {"uuid": UUID}  # type: ignore[union-attr]
    assert hostdev.find("alias").attrib == {"name": "ua-vgpu0"}  # type: ignore[union-attr]
    device = dom.find(f"{{{QEMU_NS}}}override/{{{QEMU_NS}}}device")
    assert device is not None
    assert device.attrib == {"alias": "ua-vgpu0"}
    props = {p.get("name"): p.get("value") for p in device.iter(f"{{{QEMU_NS}}}property")}
    assert props == {"enable-migration": "on", "x-device-dirty-page-tracking": "off"}
    assert dom.find(f"{{{QEMU_NS}}}commandline") is None  # nothing passed through


def test_a_vf_is_an_unmanaged_pci_hostdev() -> None:
    line = "vfio-pci,id=vgpu0,sysfsdev=/sys/bus/pci/devices/0000:03:00.1"
    dom = xml_of(spec(extra_args=("-device", line)))
    hostdev = dom.find("devices/hostdev")
    assert hostdev is not None
    assert hostdev.attrib == {"mode": "subsystem", "type": "pci", "managed": "no"}
    address = hostdev.find("source/address")
    assert address is not None
    assert address.attrib == {"domain": "0x0000", "bus": "0x03", "slot": "0x00", "function": "0x1"}
    assert dom.find(f"{{{QEMU_NS}}}override") is None


def test_a_vgpu_display_replaces_the_emulated_vga() -> None:
    line = f"vfio-pci-nohotplug,id=vgpu0,sysfsdev=/sys/bus/mdev/devices/{UUID},display=on,ramfb=on"
    dom = xml_of(spec(extra_args=("-device", line), display_device="vgpu0"))
    hostdev = dom.find("devices/hostdev")
    assert hostdev is not None
    assert (hostdev.get("display"), hostdev.get("ramfb")) == ("on", "on")
    assert dom.find("devices/video/model").get("type") == "none"  # type: ignore[union-attr]
    assert xml_of(spec()).find("devices/video/model").get("type") == "vga"  # type: ignore[union-attr]


def test_other_arguments_pass_through_and_properties_without_an_id_are_refused() -> None:
    dom = xml_of(spec(extra_args=("-device", MTTY_LINE, "-display", "egl-headless")))
    args = [a.get("value") for a in dom.iter(f"{{{QEMU_NS}}}arg")]
    assert args == ["-display", "egl-headless"]
    no_id = f"vfio-pci,sysfsdev=/sys/bus/mdev/devices/{UUID},enable-migration=on"
    with pytest.raises(MachineError, match="need the device's id="):
        xml_of(spec(extra_args=("-device", no_id)))
    with pytest.raises(MachineError, match="without sysfsdev"):
        parse_vfio_device("vfio-pci,id=x")


def test_consoles_channels_and_disks_are_the_qemu_backends() -> None:
    machine = spec(control="vport", agent=True, disk=DiskAttach("/img/base.qcow2"))
    dom = xml_of(machine)
    serial = dom.find("devices/serial")
    assert serial is not None
    assert serial.find("source").get("path") == PATHS.serial_sock  # type: ignore[union-attr]
    assert serial.find("log").get("file") == PATHS.serial_log  # type: ignore[union-attr]
    names = [c.find("target").get("name") for c in dom.iter("channel")]  # type: ignore[union-attr]
    assert names == [CONTROL_PORT, AGENT_PORT]
    disk = dom.find("devices/disk")
    assert disk is not None
    assert disk.find("source").get("file") == PATHS.disk_overlay  # type: ignore[union-attr]
    assert disk.find("readonly") is not None
    assert dom.find("seclabel/label").text == "+0:+0"  # type: ignore[union-attr]
    uart = xml_of(spec(control="uart")).findall("devices/serial")
    assert [s.find("target").get("type") for s in uart] == [None, "isa-serial"]  # type: ignore[union-attr]


def test_qemu_option_escaping_is_undone() -> None:
    assert split_options("vfio-pci,sysfsdev=/a,,b,id=x") == ["vfio-pci", "sysfsdev=/a,b", "id=x"]


def test_completed_job_statistics_read_as_query_migrate() -> None:
    info = query_info(COMPLETED, "completed")
    assert info["downtime"] == 478
    assert info["total-time"] == 28809
    assert info["vfio"] == {"transferred": 96}
    assert info["ram"]["transferred"] == 77034905
    assert info["ram"]["dirty-sync-count"] == 3
    older = {k: v for k, v in COMPLETED.items() if k != "vfio_data_transferred"}
    assert "vfio" not in query_info(older, "completed")  # libvirt before 10.6: null, not 0


def test_a_policy_becomes_libvirt_flags_or_is_refused() -> None:
    libvirt = pytest.importorskip("libvirt", reason="libvirt-python is the optional [libvirt] extra")
    from mdevtest.virt.migration import libvirt_flags

    policy = MigrationPolicy.from_options(multifd=True, multifd_channels=4, max_bandwidth_mib=100)
    flags, params = libvirt_flags(policy, p2p=True)
    assert flags & libvirt.VIR_MIGRATE_PEER2PEER
    assert flags & libvirt.VIR_MIGRATE_PARALLEL
    assert params == {
        libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS: 4,
        libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 100,
    }
    with pytest.raises(MigrationError, match="switchover-ack"):
        libvirt_flags(MigrationPolicy.from_options(switchover_ack=True), p2p=False)


def test_a_peer_uri_needs_the_libvirt_backend() -> None:
    from pydantic import ValidationError

    from mdevtest.inventory import HostPair

    base = {"source": "a", "destination": "b", "migration_address": "10.0.0.2"}
    with pytest.raises(ValidationError, match="libvirt_peer_uri applies to backend: libvirt"):
        HostPair.model_validate({**base, "libvirt_peer_uri": "qemu+tcp://10.0.0.2/system"})
    pair = HostPair.model_validate(
        {**base, "backend": "libvirt", "libvirt_peer_uri": "qemu+tcp://10.0.0.2/system"}
    )
    assert pair.backend == "libvirt"
    assert HostPair.model_validate(base).backend == "qemu"
