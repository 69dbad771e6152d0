"""Known issues: failures whose cause is understood and lies outside the product under test.

A known issue has an id, a title, a signature (where the migration ran, what the destination's
console shows) and the check failures it explains. When *every* failed check of a migration is
explained by one known issue, the test is reported as an expected failure (xfail) naming the issue
and its evidence (``--mdevtest-known-issues=fail`` makes it a plain failure again); a failure the
issue does not explain fails the test as usual. Each migration's entry in ``summary.json`` carries
``known_issue`` (null, or the issue's id, title and evidence). docs/reports.md lists the issues.

``qemu-tcg-vfio-intx``: QEMU without KVM (TCG) delivers a VFIO device's INTx from user space and
keeps "interrupt pending, waiting for the guest's EOI" (``intx.pending`` of vfio-pci) outside the
migrated state, while the PCI line level *is* migrated. A switchover that lands between the
device's interrupt and the guest's EOI leaves the destination's line asserted with nothing to
deassert it: the guest takes the interrupt again and again, its handler finds nothing to do, and
after 100,000 unhandled interrupts Linux disables the IRQ (``Disabling IRQ #23``), 10-20 s later
under nested TCG. With KVM the irqfd resampler deasserts the line on EOI, so real labs do not see
it; the nested mtty lab (TCG inside TCG, INTx-only mtty) hits it on some migrations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mdevtest.checks.base import CheckResult

#: The guest kernel's reaction to an interrupt storm (``note_interrupt``): the disable is
#: KERN_EMERG, so it reaches even a quiet console.
IRQ_DISABLED = re.compile(r"Disabling IRQ #(\d+)")
IRQ_STORM_LINE = re.compile(r"irq \d+: nobody cared|Disabling IRQ #\d+")

TCG_INTX = "qemu-tcg-vfio-intx"
TCG_INTX_TITLE = (
    "QEMU without KVM does not migrate a VFIO INTx pending at the switchover: the destination's "
    "guest saw the line stuck asserted (an interrupt storm) until its kernel disabled the IRQ"
)


@dataclass(frozen=True)
class KnownIssue:
    id: str
    title: str
    evidence: str
    explains: tuple[str, ...]  # the failed checks it accounts for

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "evidence": self.evidence,
            "explains": list(self.explains),
        }

    def describe(self) -> str:
        return f"known issue {self.id}: {self.title} ({self.evidence})"


def match_known_issue(
    results: Mapping[str, CheckResult],
    *,
    accel: str | None,
    real_vfio: bool,
    destination_console: str,
) -> KnownIssue | None:
    """The known issue that explains every failed check, or None (nothing failed, or a failure
    no known issue explains)."""
    failed = {name: r for name, r in results.items() if r.status == "failed"}
    if not failed or accel != "tcg" or not real_vfio:
        return None
    disabled = IRQ_DISABLED.search(destination_console)
    if disabled is None or not all(_storm_explains(name, r) for name, r in failed.items()):
        return None
    stall = ""
    heartbeat = failed.get("heartbeat")
    if heartbeat is not None:
        stall = f", {heartbeat.values.get('beats_after_switchover')} heartbeat(s) after the switchover"
    return KnownIssue(
        TCG_INTX,
        TCG_INTX_TITLE,
        f"accel tcg, destination console: {disabled.group(0)!r}{stall}",
        tuple(sorted(failed)),
    )


def _storm_explains(name: str, result: CheckResult) -> bool:
    """Whether a stuck interrupt line accounts for this failure: a guest stalled on the
    destination (heartbeats late, none lost or repeated) and the storm's own log lines."""
    values = result.values
    if values.get("infrastructure"):
        return False
    if name == "heartbeat":
        return (
            values.get("last_source_seq") is not None
            and not values.get("missing")
            and not values.get("duplicated")
        )
    if name == "guest-logs":
        trouble = values.get("trouble") or []
        return bool(trouble) and all(IRQ_STORM_LINE.search(str(line)) for line in trouble)
    return False


__all__ = ["IRQ_DISABLED", "TCG_INTX", "TCG_INTX_TITLE", "KnownIssue", "match_known_issue"]
