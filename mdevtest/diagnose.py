"""After a migration failed or timed out: was it the lab, or the product under test?

Looks, in one pass and with short timeouts, at what a lab engineer would look at first: is the
destination QEMU still alive and answering QMP, and does the source host reach the destination's
migration address. The answer pins ``failure_class`` on the error and adds the findings to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdevtest.errors import INFRASTRUCTURE, PRODUCT, FailureClass, MdevtestError, MigrationError
from mdevtest.inventory import HostPair
from mdevtest.qemu.machine import RemoteMachine
from mdevtest.remote import Remote


@dataclass(frozen=True)
class Diagnosis:
    failure_class: FailureClass
    findings: tuple[str, ...]

    def text(self) -> str:
        return "; ".join(self.findings) or "no infrastructure problem found"


def diagnose(route: HostPair, source_remote: Remote, destination: RemoteMachine) -> Diagnosis:
    findings: list[str] = []
    infra = False
    try:
        alive = destination.is_alive()
    except MdevtestError as exc:
        alive, infra = False, True
        findings.append(f"{route.destination} unreachable over SSH: {exc}")
    if not alive and not infra:
        infra = True
        findings.append(
            f"destination QEMU ({destination.label}) is gone; log: {destination.log_tail(5)}"
        )
    elif alive:
        try:
            destination.qmp.execute("query-status", timeout=3)
        except MdevtestError:
            infra = True
            findings.append(
                f"destination QEMU ({destination.label}) does not answer QMP (stopped or hung)"
            )
    probe = source_remote.run(["ping", "-c", "1", "-W", "2", route.migration_address], timeout=15)
    if probe.rc != 0:
        infra = True
        address = route.migration_address
        findings.append(
            f"{route.source} cannot reach the migration address {address} (ping rc={probe.rc})"
        )
    return Diagnosis(INFRASTRUCTURE if infra else PRODUCT, tuple(findings))


def pin(exc: MigrationError, diagnosis: Diagnosis) -> None:
    """Attach the diagnosis to the error: its ``failure_class`` (on the instance, over the
    class's), and the findings in its message."""
    exc.failure_class = diagnosis.failure_class
    exc.args = (f"[{diagnosis.failure_class}] {exc.args[0] if exc.args else exc}; {diagnosis.text()}",)
