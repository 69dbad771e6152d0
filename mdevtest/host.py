"""Facts about a lab host that decide how guests are started there (probed, never assumed)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from mdevtest.errors import RemoteError
from mdevtest.qemu.cmdline import Accel
from mdevtest.remote import Remote
from mdevtest.vendors import QemuCaps

_KVM_PROBE_S = 3


@dataclass(frozen=True)
class HostFacts:
    name: str
    kernel: str
    qemu_version: str
    accel: Accel
    accel_reason: str
    qemu_caps: QemuCaps


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


def probe_qemu_caps(remote: Remote, *, timeout: float = 200.0) -> QemuCaps:
    """What this host's QEMU supports, from its own answers (one SSH round trip).

    ``query-version`` and ``query-qmp-schema`` from a QEMU started with ``-machine none`` and QMP on
    stdio, and the ``vfio-pci`` property list from ``-device vfio-pci,help``.

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
true
"""
    out = remote.check_shell(script, timeout=timeout).stdout
    qmp_text, _, help_text = out.partition(_HELP_MARK)
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
    return QemuCaps.from_probe(version, help_text, schema)


def probe_host(remote: Remote) -> HostFacts:
    """Kernel, QEMU capabilities and accelerator of one host (a few SSH round trips)."""
    kernel = remote.check(["uname", "-r"], timeout=10).stdout.strip()
    caps = probe_qemu_caps(remote)
    accel, why = probe_accel(remote)
    return HostFacts(remote.host.name, kernel, caps.version_text, accel, why, caps)
