"""Facts about a lab host that decide how guests are started there (probed, never assumed)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Any, Literal

from mdevtest.errors import RemoteError
from mdevtest.qemu.caps import QemuCaps
from mdevtest.qemu.cmdline import Accel
from mdevtest.remote import Remote

_KVM_PROBE_S = 3


#: How QEMU learns which guest pages a VFIO device wrote during a migration:
#: ``device`` QEMU's default: the device's own DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING);
#: ``off`` ``x-device-dirty-page-tracking=off``: no device tracking, QEMU counts every page the
#: device can reach as dirty at the switchover (correct, but more to copy while stopped).
DirtyTrackingMode = Literal["device", "off"]

#: First kernel that builds the DMA-logging bitmap helpers (iova_bitmap) only with
#: CONFIG_IOMMUFD_DRIVER (moved into iommufd in 6.7); before, vfio always had them.
IOMMUFD_DRIVER_KERNEL = (6, 7)
_DIRTY_OPTION = "x-device-dirty-page-tracking"


@dataclass(frozen=True)
class DirtyTracking:
    """The dirty-tracking mode VFIO migrations use on a host, and why (what preflight reports).

    ``device_logging`` is whether the kernel can report a device's DMA log (None: unknown);
    ``usable`` whether a VFIO migration can work here at all in ``mode``.
    """

    mode: DirtyTrackingMode
    device_logging: bool | None
    usable: bool
    detail: str

    @property
    def vfio_options(self) -> tuple[str, ...]:
        """``vfio-pci`` options this mode needs (besides enabling migration)."""
        return (f"{_DIRTY_OPTION}=off",) if self.mode == "off" else ()


def dirty_tracking(kernel: str, config_line: str | None, caps: QemuCaps) -> DirtyTracking:
    """Decide the mode from the kernel release, its ``CONFIG_IOMMUFD_DRIVER`` line and QEMU.

    ``config_line`` is the ``CONFIG_IOMMUFD_DRIVER=...`` line of ``/boot/config-<kernel>``, ""
    when the file has none (the option is off), or None when there is no config file. From
    6.7 a kernel without CONFIG_IOMMUFD_DRIVER has stub DMA-logging helpers: a device that
    offers DMA logging (mtty does, as a no-op) starts it, and every report then fails with
    EOPNOTSUPP, so QEMU's default mode fails the migration at once ("ram_save_setup failed:
    Operation not supported"). QEMU must then run the device with the option off, which also
    needs ``enable-migration=on`` (``auto`` would call the device unmigratable).
    """
    match = re.match(r"(\d+)\.(\d+)", kernel)
    release = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if release < IOMMUFD_DRIVER_KERNEL:
        return DirtyTracking(
            "device", True, True, f"kernel {kernel} (< 6.7) has vfio's DMA-logging helpers built in"
        )
    if config_line is None:
        return DirtyTracking(
            "device", None, True,
            f"kernel {kernel}: no /boot/config-{kernel}, so whether device DMA logging works is "
            "unknown; QEMU's default (device dirty tracking) is used",
        )  # fmt: skip
    if config_line.split("=", 1)[-1] in ("y", "m"):
        return DirtyTracking("device", True, True, f"kernel {kernel}: {config_line}")
    can_turn_off = _DIRTY_OPTION in caps.vfio_properties and caps.vfio_migration_prop is not None
    why = (
        f"kernel {kernel} is built without CONFIG_IOMMUFD_DRIVER, so device DMA-logging reports "
        "fail (EOPNOTSUPP)"
    )
    if can_turn_off:
        return DirtyTracking(
            "off", False, True,
            f"{why}: QEMU {caps.version_text} runs the device with "
            f"{caps.vfio_migration_prop}=on,{_DIRTY_OPTION}=off (all pages the device can reach "
            "count as dirty at the switchover)",
        )  # fmt: skip
    return DirtyTracking(
        "device", False, False,
        f"{why}, and QEMU {caps.version_text}'s vfio-pci has no {_DIRTY_OPTION} property to "
        "migrate without it; use a kernel with CONFIG_IOMMUFD_DRIVER=y or QEMU >= 8.1",
    )  # fmt: skip


def probe_kernel(remote: Remote) -> tuple[str, str | None]:
    """The host's ``uname -r`` and the ``CONFIG_IOMMUFD_DRIVER`` line of its ``/boot/config-*``
    ("" when the file has none, None without a config file), in one round trip."""
    script = (
        'k=$(uname -r); echo "kernel $k"; c="/boot/config-$k"; '
        'if [ -r "$c" ]; then echo "config $(grep -m1 "^CONFIG_IOMMUFD_DRIVER=" "$c")"; fi; true'
    )
    out = remote.check_shell(script, timeout=30).stdout.splitlines()
    kernel = next((ln.split(" ", 1)[1] for ln in out if ln.startswith("kernel ")), "")
    config = next((ln.partition(" ")[2].strip() for ln in out if ln.startswith("config")), None)
    return kernel, config


@dataclass(frozen=True)
class HostFacts:
    name: str
    kernel: str
    qemu_version: str
    accel: Accel
    accel_reason: str
    qemu_caps: QemuCaps
    dirty_tracking: DirtyTracking | None = None
    build: str | None = None
    """The build ``mdevtest provision`` recorded on the host, in one line (None: none)."""


@dataclass(frozen=True)
class KernelMigration:
    """What the kernel says of one VFIO device's migration support (Linux 6.8+ debugfs:
    ``/sys/kernel/debug/vfio/<device>/migration/state`` exists exactly when its driver
    registered migration ops). ``supported`` None: the kernel cannot tell (no debugfs, an
    older kernel, ``CONFIG_VFIO_DEBUGFS`` off); ``detail`` says what was seen."""

    supported: bool | None
    detail: str


def parse_kernel_migration(device: str, output: str) -> KernelMigration:
    """The reply of :func:`probe_kernel_migration`'s script."""
    word, _, rest = output.strip().partition(" ")
    where = f"/sys/kernel/debug/vfio/{device}"
    if word == "yes":
        return KernelMigration(True, f"{where}/migration present (state {rest or '?'})")
    if word == "no":
        return KernelMigration(
            False,
            f"{where} has no migration directory: its driver has no migration support in this kernel",
        )
    return KernelMigration(None, rest or "unknown")


def probe_kernel_migration(remote: Remote, device: str) -> KernelMigration:
    """Ask the kernel's VFIO debugfs whether ``device`` (an mdev UUID or a VF's PCI address,
    as the kernel names it, bound to its VFIO driver) can migrate."""
    q = shlex.quote(device)
    script = f"""d=/sys/kernel/debug/vfio
if [ ! -d /sys/kernel/debug ] || ! grep -q ' /sys/kernel/debug debugfs ' /proc/mounts; then
  echo "unknown debugfs is not mounted at /sys/kernel/debug"
elif [ ! -d "$d" ]; then
  echo "unknown no $d (Linux < 6.8, or CONFIG_VFIO_DEBUGFS off)"
elif [ -d "$d"/{q}/migration ]; then
  echo "yes $(cat "$d"/{q}/migration/state 2>/dev/null)"
elif [ -d "$d"/{q} ]; then
  echo no
else
  echo "unknown no $d/{device} (the device is not registered with VFIO)"
fi
"""
    return parse_kernel_migration(device, remote.check_shell(script, timeout=30).stdout)


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


_HELP_MARK = "=====mdevtest-device-help====="
_MACHINE_MARK = "=====mdevtest-machine-help====="


def probe_qemu_caps(remote: Remote, *, timeout: float = 200.0) -> QemuCaps:
    """What this host's QEMU supports, from its own answers (one SSH round trip).

    ``query-version`` and ``query-qmp-schema`` from a QEMU started with ``-machine none`` and QMP on
    stdio, the ``vfio-pci`` property list from ``-device vfio-pci,help`` and the machine types
    from ``-machine help``.

    QEMU's replies go to a file on the host, and ``quit`` is sent only once all three replies are
    complete lines there: QEMU does not flush a reply still queued for a slow reader before it exits,
    so a ``quit`` piped in right behind the (large) schema query cut the schema short on a busy host.
    """
    qemu = shlex.quote(remote.host.qemu_binary)
    commands = " ".join(
        shlex.quote(json.dumps({"execute": c}))
        for c in ("qmp_capabilities", "query-version", "query-qmp-schema")
    )
    quit_command = shlex.quote(json.dumps({"execute": "quit"}))
    # QEMU's greeting + three replies = four complete lines in "$d/out"
    script = f"""trap '' PIPE
d=$(mktemp -d) || exit 1
trap 'rm -rf "$d"' EXIT
mkfifo "$d/in" && : >"$d/out" || exit 1
timeout 90 {qemu} -machine none -nodefaults -display none -qmp stdio <"$d/in" >"$d/out" 2>"$d/err" &
q=$!
exec 3>"$d/in"
printf '%s\\n' {commands} >&3
i=0
while [ "$(wc -l <"$d/out")" -lt 4 ] && [ $i -lt 900 ] && kill -0 $q 2>/dev/null; do
  sleep 0.1; i=$((i+1))
done
printf '%s\\n' {quit_command} >&3
exec 3>&-
wait $q
cat "$d/out" "$d/err"
echo {_HELP_MARK}
timeout 30 {qemu} -device vfio-pci,help 2>&1
echo {_MACHINE_MARK}
timeout 30 {qemu} -machine help 2>&1
true
"""
    out = remote.check_shell(script, timeout=timeout).stdout
    qmp_text, _, rest = out.partition(_HELP_MARK)
    help_text, _, machine_text = rest.partition(_MACHINE_MARK)
    replies: list[Any] = []
    for raw in qmp_text.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            try:
                message = json.loads(line)
            except ValueError:
                continue  # cut short (QEMU stopped by `timeout`): judged below
            if "return" in message:
                replies.append(message["return"])
    version = next((r for r in replies if isinstance(r, dict) and "qemu" in r), None)
    schema = next((r for r in replies if isinstance(r, list)), None)
    if version is None or schema is None:
        raise RemoteError(
            remote.name, f"cannot probe {remote.host.qemu_binary} over QMP: {qmp_text[-400:]!r}"
        )
    return QemuCaps.from_probe(version, help_text, schema, machine_text)


def probe_host(remote: Remote) -> HostFacts:
    """Kernel, QEMU capabilities and accelerator of one host (a few SSH round trips)."""
    kernel, iommufd_config = probe_kernel(remote)
    caps = probe_qemu_caps(remote)
    accel, why = probe_accel(remote)
    tracking = dirty_tracking(kernel, iommufd_config, caps)
    build = probe_build(remote)
    return HostFacts(remote.host.name, kernel, caps.version_text, accel, why, caps, tracking, build)


def probe_build(remote: Remote) -> str | None:
    """The host's provisioning record (:mod:`mdevtest.provision`) in one line; None without one."""
    import json

    res = remote.run(["cat", f"{remote.host.state_dir}/provision/record.json"], timeout=30)
    if res.rc != 0:
        return None
    try:
        record = json.loads(res.stdout)
    except json.JSONDecodeError:
        return f"unreadable record {remote.host.state_dir}/provision/record.json"
    return describe_record(record) if isinstance(record, dict) else None


def describe_record(record: dict[str, Any]) -> str:
    """One line for the Allure environment and the terminal: status, kernel, what was deployed."""
    after = record.get("after") or {}
    names = ", ".join(a.get("name", "?") for a in record.get("artifacts", [])) or "no artifacts"
    kernel = after.get("release") or (record.get("before") or {}).get("release", "?")
    return (
        f"{record.get('status', '?')} {record.get('id', '?')}: kernel {kernel}, {names} "
        f"({record.get('finished_at') or record.get('started_at', '?')})"
    )
