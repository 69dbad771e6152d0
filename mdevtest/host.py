"""Facts about a lab host that decide how guests are started there (probed, never assumed)."""

from __future__ import annotations

from dataclasses import dataclass

from mdevtest.qemu.cmdline import Accel
from mdevtest.remote import Remote

_KVM_PROBE_S = 3


@dataclass(frozen=True)
class HostFacts:
    name: str
    kernel: str
    qemu_version: str
    accel: Accel
    accel_reason: str


def probe_accel(remote: Remote) -> tuple[Accel, str]:
    """Decide KVM or TCG for this host.

    ``/dev/kvm`` existing is not enough (nested or restricted hosts expose a KVM that fails on the
    first MSR write), so a real vCPU is started with ``-cpu host`` and must survive a few seconds.
    The inventory's ``accel`` overrides the probe.
    """
    wanted = remote.host.accel
    if wanted != "auto":
        return wanted, "set in the inventory"
    if remote.run(["test", "-w", "/dev/kvm"], timeout=10).rc != 0:
        return "tcg", "/dev/kvm is missing or not writable"
    probe = remote.run(
        ["timeout", str(_KVM_PROBE_S), remote.host.qemu_binary, "-accel", "kvm", "-cpu", "host",
         "-machine", "q35", "-m", "64", "-display", "none", "-nodefaults", "-no-user-config"],
        timeout=_KVM_PROBE_S + 30,
    )  # fmt: skip
    if probe.rc == 124:  # still running when `timeout` stopped it: KVM works
        return "kvm", "KVM probe guest ran"
    reason = probe.stderr.strip().splitlines()[-1:] or [f"exit {probe.rc}"]
    return "tcg", f"KVM probe guest failed: {reason[0]}"


def probe_host(remote: Remote) -> HostFacts:
    """Kernel, QEMU version and accelerator of one host (a few SSH round trips)."""
    kernel = remote.check(["uname", "-r"], timeout=10).stdout.strip()
    version = remote.check([remote.host.qemu_binary, "--version"], timeout=30).stdout
    first = version.splitlines()[0] if version else ""
    qemu_version = first.split("version", 1)[-1].strip().split()[0] if "version" in first else first
    accel, why = probe_accel(remote)
    return HostFacts(remote.host.name, kernel, qemu_version, accel, why)
