"""Build QEMU command lines from a typed machine description.

Source and destination of a migration must be started with the same device model; building both from
one :class:`MachineSpec` (the destination only adds ``incoming``) is how that is guaranteed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Accel = Literal["kvm", "tcg"]


@dataclass(frozen=True)
class MachineSpec:
    """What a guest looks like; paths are on the host that runs it."""

    name: str
    memory_mib: int
    vcpus: int
    kernel: str
    initrd: str
    append: str
    accel: Accel = "tcg"
    mac: str = "52:54:00:12:34:56"
    incoming: str | None = None  # "defer" for a migration destination
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    control_channel: bool = True  # a second UART (ttyS1) for the guest workload's commands
    pattern_disk: str | None = None  # read-only disk the guest DMAs from (the DMA probe)

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


def build_argv(binary: str, spec: MachineSpec, paths: MachinePaths, tag: str) -> list[str]:
    """The full argument vector. ``tag`` goes into ``-name`` so leftovers are recognisable."""
    accel = ["-accel", "kvm", "-cpu", "host"] if spec.accel == "kvm" else ["-accel", "tcg"]
    argv = [
        binary,
        "-name", tag,
        "-machine", "q35",
        *accel,
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-nodefaults",
        "-no-user-config",
        "-kernel", spec.kernel,
        "-initrd", spec.initrd,
        "-append", spec.append,
        # The stand-in for the vGPU's display in the local lab: an emulated VGA (screendump works).
        "-vga", "std",
        "-display", "none",
        "-vnc", f"unix:{paths.vnc_sock}",  # the capture path for displays screendump cannot read
        "-chardev", f"socket,id=qmp0,path={paths.qmp},server=on,wait=off",
        "-mon", "chardev=qmp0,mode=control",
        "-chardev",
        f"socket,id=ser0,path={paths.serial_sock},server=on,wait=off,logfile={paths.serial_log}",
        "-serial", "chardev:ser0",
        "-netdev", "user,id=net0",
        "-device", f"virtio-net-pci,netdev=net0,mac={spec.mac}",
        "-pidfile", paths.pidfile,
        *spec.extra_args,
    ]  # fmt: skip
    if spec.control_channel:
        argv += [
            "-chardev",
            f"socket,id=ctl0,path={paths.ctl_sock},server=on,wait=off,logfile={paths.ctl_log}",
            "-device", "isa-serial,chardev=ctl0,index=1",
        ]  # fmt: skip
    if spec.pattern_disk is not None:
        argv += [
            "-drive", f"file={spec.pattern_disk},if=none,id=pat0,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=pat0",
        ]  # fmt: skip
    if spec.incoming is not None:
        argv += ["-incoming", spec.incoming]
    return argv
