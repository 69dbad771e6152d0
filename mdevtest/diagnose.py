"""After a migration failed or timed out: was it the lab, or the product under test?

Looks, in one pass and with short timeouts, at what a lab engineer would look at first: is the
destination QEMU still alive and answering QMP, and does the source host reach the destination's
migration address. The answer pins ``failure_class`` on the error and adds the findings to it.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from mdevtest.errors import INFRASTRUCTURE, PRODUCT, FailureClass, MdevtestError
from mdevtest.inventory import HostPair
from mdevtest.qemu.machine import RemoteMachine
from mdevtest.remote import Remote


@dataclass(frozen=True)
class Diagnosis:
    failure_class: FailureClass
    findings: tuple[str, ...]

    def text(self) -> str:
        return "; ".join(self.findings) or "no infrastructure problem found"


#: What QEMU's destination prints when a *device* refused its incoming state: the vendor driver's
#: (or QEMU's device model's) verdict, so the product's. Seen on QEMU 10.0 with mtty:
#: ``error while loading state section id 2(0000:00:03.0/vfio)`` then ``load of migration failed:
#: Bad address``; a post_load failure reads ``error while loading state for instance 0x0 of device
#: '...'``. A stream cut short (a source that died, a link) fails in RAM or without a section:
#: not matched, so not pinned on the product.
_DEVICE_REFUSED = re.compile(
    r"error while loading state section id \d+\((?!ram\))[^)]+\)"
    r"|error while loading state for instance \S+ of device '[^']+'"
)
_LOAD_FAILED = re.compile(r"load of migration failed")


def load_error(qemu_log: str) -> str | None:
    """The destination log's lines saying a device refused the incoming state (None: none)."""
    lines = qemu_log.splitlines()
    if not any(_DEVICE_REFUSED.search(ln) for ln in lines):
        return None
    said = [ln.strip() for ln in lines if _DEVICE_REFUSED.search(ln) or _LOAD_FAILED.search(ln)]
    return " / ".join(said[-3:])


def diagnose(
    route: HostPair,
    source_remote: Remote,
    destination: RemoteMachine,
    *,
    cancelled: bool = False,
) -> Diagnosis:
    """``cancelled``: mdevtest cancelled the migration (it did not converge in time): the
    destination QEMU ends with the cancel, which is no infrastructure finding then."""
    findings: list[str] = []
    infra = False
    refused: str | None = None
    try:
        alive = destination.is_alive()
    except MdevtestError as exc:
        alive, infra = False, True
        findings.append(f"{route.destination} unreachable over SSH: {exc}")
    if not alive and not infra:
        try:
            tail = destination.log_tail(30)
        except MdevtestError as exc:
            tail = f"(its log cannot be read: {exc})"
        refused = load_error(tail)
        if refused is not None:
            findings.append(f"the destination refused the device state: {refused}")
        elif cancelled:
            findings.append("the destination QEMU ended with the cancel (expected)")
        else:
            infra = True
            findings.append(
                f"destination QEMU ({destination.label}) is gone; log: {tail.strip()[-400:]}"
            )
    elif alive:
        try:
            destination.qmp.execute("query-status", timeout=3)
            incoming = destination.qmp.execute("query-migrate", timeout=3)
        except MdevtestError:
            infra = True
            findings.append(
                f"destination QEMU ({destination.label}) does not answer QMP (stopped or hung)"
            )
        else:
            # a destination kept up after a failed load (exit-on-error off, QEMU 9.1+) says why
            # itself; its log has QEMU's lines on the section that was refused
            if str(incoming.get("status")) == "failed":
                desc = str(incoming.get("error-desc") or "no error-desc")
                with contextlib.suppress(MdevtestError):
                    refused = load_error(destination.log_tail(30))
                if refused is None and _DEVICE_REFUSED.search(desc):
                    refused = desc
                if refused is not None:
                    findings.append(f"the destination refused the device state: {refused} ({desc})")
                elif cancelled:
                    findings.append("the destination's load ended with the cancel (expected)")
                else:  # the stream broke (a source that died, a link): not the device's verdict
                    infra = True
                    findings.append(f"the destination's load failed, no device refused: {desc}")
    try:
        probe = source_remote.run(["ping", "-c", "1", "-W", "2", route.migration_address], timeout=15)
        reached: bool | None = probe.rc == 0 if probe.rc != 127 else None
        why = f"ping rc={probe.rc}"
    except MdevtestError as exc:
        reached, why = False, f"{route.source} unreachable over SSH: {exc}"
    if reached is None:  # no ping on the host (rc 127): not a finding against the lab
        findings.append(
            f"the migration address {route.migration_address} was not checked: {route.source} "
            "has no ping"
        )
    elif not reached:
        infra = True
        address = route.migration_address
        findings.append(f"{route.source} cannot reach the migration address {address} ({why})")
    # A refused device state is the product's, whatever else is wrong with the lab.
    failure: FailureClass = PRODUCT if refused is not None or not infra else INFRASTRUCTURE
    return Diagnosis(failure, tuple(findings))


def pin(exc: MdevtestError, diagnosis: Diagnosis) -> None:
    """Attach the diagnosis to the error: its ``failure_class`` (on the instance, over the
    class's), and the findings in its message."""
    exc.failure_class = diagnosis.failure_class
    exc.args = (f"[{diagnosis.failure_class}] {exc.args[0] if exc.args else exc}; {diagnosis.text()}",)
