"""Build QEMU command lines from a typed machine description.

Source and destination of a migration must be started with the same device model; building both from
one :class:`MachineSpec` (the destination only adds ``incoming``) is how that is guaranteed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

Accel = Literal["kvm", "tcg"]
Control = Literal["uart", "vport", "none"]

#: The virtio-serial port names the guest sees (``/sys/class/virtio-ports/*/name``).
AGENT_PORT = "org.qemu.guest_agent.0"
CONTROL_PORT = "org.mdevtest.ctl.0"
#: The serial of the synthetic workload's DMA pattern disk (``/dev/disk/by-id/virtio-<serial>``).
PATTERN_SERIAL = "mdt-pattern"


@dataclass(frozen=True)
class DiskAttach:
    """The guest's own disk on the host: a base image behind a per-machine qcow2 overlay,
    attached read-only (both hosts' overlays stay identical across a migration)."""

    base: str
    format: Literal["qcow2", "raw"] = "qcow2"


@dataclass(frozen=True)
class MachineSpec:
    """What a guest looks like; paths are on the host that runs it.

    Boot: ``kernel`` + ``initrd`` (direct), else the ``disk`` through ``firmware``; a direct
    boot may still have a disk (its root). ``ovmf_code``/``ovmf_vars`` are the host's UEFI
    firmware and variable-store template (each machine copies the template).
    """

    name: str
    memory_mib: int
    vcpus: int
    kernel: str | None
    initrd: str | None
    append: str
    accel: Accel = "tcg"
    display_device: str | None = None
    """The id of the device whose console is the vGPU's display (``display=on``): then no
    emulated VGA, and VNC shows that console. None: an emulated VGA (``-vga std``)."""
    machine: str = "q35"
    """The machine type: the pair's common versioned q35 (``mdevtest.qemu.caps.common_machine_type``)."""
    mac: str = "52:54:00:12:34:56"
    incoming: str | None = None  # "defer" for a migration destination
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    control: Control = "uart"  # the probe agent's command channel: ttyS1, a virtio port, none
    pattern_disk: str | None = None  # read-only disk the guest DMAs from (the DMA probe)
    disk: DiskAttach | None = None
    firmware: Literal["bios", "uefi"] = "bios"
    ovmf_code: str = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    ovmf_vars: str = "/usr/share/OVMF/OVMF_VARS_4M.fd"
    agent: bool = False  # a qemu-guest-agent port (org.qemu.guest_agent.0)
    cloud_init: str | None = None  # a NoCloud seed image on the host, attached read-only

    def as_destination(self) -> MachineSpec:
        return replace(self, incoming="defer")


@dataclass(frozen=True)
class MachinePaths:
    """Where one machine's files live on its host (all under one directory)."""

    root: str

    @property
    def qmp(self) -> str:
        return f"{self.root}/qmp.sock"

    @property
    def serial_sock(self) -> str:
        return f"{self.root}/serial.sock"

    @property
    def serial_log(self) -> str:
        return f"{self.root}/serial.log"

    @property
    def qemu_log(self) -> str:
        return f"{self.root}/qemu.log"

    @property
    def pidfile(self) -> str:
        return f"{self.root}/qemu.pid"

    @property
    def vnc_sock(self) -> str:
        return f"{self.root}/vnc.sock"

    @property
    def ctl_sock(self) -> str:
        return f"{self.root}/ctl.sock"

    @property
    def ctl_log(self) -> str:
        return f"{self.root}/ctl.log"

    @property
    def qga_sock(self) -> str:
        return f"{self.root}/qga.sock"

    @property
    def disk_overlay(self) -> str:
        return f"{self.root}/disk.qcow2"

    @property
    def ovmf_vars(self) -> str:
        return f"{self.root}/OVMF_VARS.fd"


def prepare_script(spec: MachineSpec, paths: MachinePaths) -> str:
    """Shell commands (run in the machine's directory, before QEMU starts) that make its own
    files: the disk overlay over the base image and the UEFI variable store."""
    from mdevtest.remote import quote_argv

    steps: list[str] = []
    if spec.disk is not None:
        steps.append(
            quote_argv(["qemu-img", "create", "-q", "-f", "qcow2", "-F", spec.disk.format,
                        "-b", spec.disk.base, paths.disk_overlay])
        )  # fmt: skip
    if spec.firmware == "uefi":
        steps.append(quote_argv(["cp", spec.ovmf_vars, paths.ovmf_vars]))
    return " && ".join(steps)


def build_argv(binary: str, spec: MachineSpec, paths: MachinePaths, tag: str) -> list[str]:
    """The full argument vector. ``tag`` goes into ``-name`` so leftovers are recognisable."""
    accel = ["-accel", "kvm", "-cpu", "host"] if spec.accel == "kvm" else ["-accel", "tcg"]
    iommu, extra = hoist_iommu(spec.extra_args)
    argv = [
        binary,
        "-name", tag,
        "-machine", spec.machine,
        *accel,
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-nodefaults",
        "-no-user-config",
        *iommu,
    ]  # fmt: skip
    if spec.firmware == "uefi":
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={spec.ovmf_code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={paths.ovmf_vars}",
        ]  # fmt: skip
    if spec.kernel is not None:
        argv += ["-kernel", spec.kernel]
        if spec.initrd is not None:
            argv += ["-initrd", spec.initrd]
        argv += ["-append", spec.append]
    if spec.display_device is None:
        # No display of the vGPU's own (the local lab's stand-in, mtty): an emulated VGA.
        video = ["-vga", "std"]
        vnc = f"unix:{paths.vnc_sock}"
    else:  # the vGPU's console is the display: VNC is bound to it, console 0 or not
        video = ["-vga", "none"]
        vnc = f"unix:{paths.vnc_sock},display={spec.display_device}"
    has_display = "-display" in extra  # e.g. egl-headless for a dma-buf display
    argv += [
        *video,
        *([] if has_display else ["-display", "none"]),
        "-vnc", vnc,  # the capture path for displays screendump cannot read
        "-chardev", f"socket,id=qmp0,path={paths.qmp},server=on,wait=off",
        "-mon", "chardev=qmp0,mode=control",
        "-chardev",
        f"socket,id=ser0,path={paths.serial_sock},server=on,wait=off,logfile={paths.serial_log}",
        "-serial", "chardev:ser0",
        "-netdev", "user,id=net0",
        "-device", f"virtio-net-pci,netdev=net0,mac={spec.mac}",
        "-pidfile", paths.pidfile,
        *extra,
    ]  # fmt: skip
    # Disks in a fixed order: the guest's own disk is vda, then the pattern disk, then the seed.
    if spec.disk is not None:
        argv += _read_only_disk(paths.disk_overlay, "qcow2", "disk0", "id=vdisk0,bootindex=0")
    if spec.pattern_disk is not None:
        argv += _read_only_disk(spec.pattern_disk, "raw", "pat0", f"id=vpat0,serial={PATTERN_SERIAL}")
    if spec.cloud_init is not None:
        argv += _read_only_disk(spec.cloud_init, "raw", "seed0", "id=vseed0")
    if spec.agent or spec.control == "vport":
        argv += ["-device", "virtio-serial-pci,id=vser0"]
    if spec.agent:
        argv += [
            "-chardev", f"socket,id=qga0,path={paths.qga_sock},server=on,wait=off",
            "-device", f"virtserialport,bus=vser0.0,nr=1,chardev=qga0,name={AGENT_PORT}",
        ]  # fmt: skip
    if spec.control != "none":
        control_device = {
            "uart": "isa-serial,chardev=ctl0,index=1",
            "vport": f"virtserialport,bus=vser0.0,nr=2,chardev=ctl0,name={CONTROL_PORT}",
        }[spec.control]
        argv += [
            "-chardev",
            f"socket,id=ctl0,path={paths.ctl_sock},server=on,wait=off,logfile={paths.ctl_log}",
            "-device", control_device,
        ]  # fmt: skip
    if spec.incoming is not None:
        argv += ["-incoming", spec.incoming]
    return argv


#: Device drivers of a guest IOMMU: QEMU puts a device behind it only when the IOMMU was created
#: first, so these go before every other device whatever their place in the extra arguments.
IOMMU_DRIVERS = ("intel-iommu", "amd-iommu", "virtio-iommu-pci", "virtio-iommu")


def hoist_iommu(extra: Sequence[str]) -> tuple[list[str], list[str]]:
    """``extra`` split into the ``-device`` pairs of a guest IOMMU and everything else."""
    iommu: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(extra):
        if extra[i] == "-device" and i + 1 < len(extra):
            if extra[i + 1].split(",", 1)[0] in IOMMU_DRIVERS:
                iommu += extra[i : i + 2]
            else:
                rest += extra[i : i + 2]
            i += 2
        else:
            rest.append(extra[i])
            i += 1
    return iommu, rest


def _read_only_disk(file: str, fmt: str, drive_id: str, device_options: str) -> list[str]:
    """A virtio disk the guest may read but never write (no shared storage between hosts)."""
    return [
        "-drive", f"file={file},if=none,id={drive_id},format={fmt},readonly=on",
        "-device", f"virtio-blk-pci,drive={drive_id},{device_options}",
    ]  # fmt: skip
