"""Device-state integrity of an mtty mdev across a migration, from the guest's own reports.

The nested lab's guest workload (:mod:`mdevtest.workloads.mtty`) loops a numbered byte stream
through each mtty port and reports, once a period with the port idle, its tx/rx counters, what
went wrong and the UART registers the guest can read. The device's migrated state is exactly
what those registers and the loopback FIFO hold, so the last report on the source and the
reports on the destination must agree:

- the counters continue (the destination's are not smaller: the guest's memory came along) and
  the loopback keeps working there (rx grows);
- no byte was lost, duplicated, corrupted or unexpected, no stall, no register change and no
  scratch mismatch was counted since the source's last report (``MDT-MTTY-ERR`` lines quoted);
- LCR, IER and MCR (programmed once by the guest) are equal before and after, and SCR holds
  what the guest wrote into it on the source after its last report there (``scr_next``).

The check is part of the standard set when the pair's vendor is mtty
(:data:`mdevtest.checks.standard.VENDOR_CHECKS`).
"""

from __future__ import annotations

import time
from typing import Any

from mdevtest.checks.base import Check, CheckContext, Skip
from mdevtest.errors import CheckFailed
from mdevtest.workloads.mtty import (
    ERROR_COUNTERS,
    STABLE_REGISTERS,
    MttyReport,
    find_mtty_ready,
    last_reports,
    parse_errors,
    parse_reports,
)

METHOD = (
    "mtty workload reports (MDT-MTTY per port, registers read with the port idle): the last "
    "report on the source console against the destination's first two; counters continue, "
    "error counters unchanged, LCR/IER/MCR equal, SCR = the value written on the source"
)

_WHAT = {
    "bad": "corrupted byte(s)",
    "lost": "lost byte(s)",
    "dup": "duplicated byte(s)",
    "extra": "unexpected byte(s)",
    "stalls": "stall(s) (bytes in flight never came back)",
    "scr_err": "scratch-register mismatch(es)",
    "reg_changes": "register change(s)",
}


class MttyDeviceStateCheck(Check):
    name = "mtty-device-state"
    category = "device-state"
    method = METHOD
    #: How long to wait for reports: the guest runs under TCG inside TCG in the nested lab.
    wait_s = 120.0
    #: Destination reports wanted per port (the first one checks SCR, the second that bytes flow).
    reports_after = 2

    def before(self, ctx: CheckContext) -> None:
        console = ctx.source.serial_log()
        ready = find_mtty_ready(console)
        if ready is not None:
            ports = ready.ports
        else:  # a guest that migrated before: READY is on the console of the machine it booted in
            ports = tuple(sorted(last_reports(console)))
            if not ports:
                raise Skip("no mtty workload in this guest")
        if not ports:
            reason = ready.reason if ready is not None else "?"
            raise CheckFailed(
                f"mtty-device-state: the guest on {ctx.source.label} sees no mtty port "
                f"(reason={reason}); is the mdev attached and 8250.nr_uarts large enough?"
            )
        deadline = time.monotonic() + self.wait_s
        while True:
            seen = last_reports(ctx.source.serial_log())
            missing = [p for p in ports if not seen.get(p) or not seen[p].registers]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise CheckFailed(
                    f"mtty-device-state: no report with registers for {', '.join(missing)} on "
                    f"{ctx.source.label} within {self.wait_s:g} s"
                )
            time.sleep(1.0)
        ctx.scratch["mtty:ports"] = ports

    def after(self, ctx: CheckContext) -> dict[str, Any]:
        dst = ctx.require_destination()
        ports: tuple[str, ...] = ctx.scratch["mtty:ports"]
        before = last_reports(ctx.source.serial_log())
        after = self._wait_reports(ctx, ports, before)
        problems: list[str] = []
        values: dict[str, Any] = {}
        for port in ports:
            old, new = before[port], after.get(port, [])
            values[port] = {"before": _summary(old), "after": [_summary(r) for r in new]}
            if not new:
                problems.append(f"{port}: no report on the destination within {self.wait_s:g} s")
                continue
            problems += [f"{port}: {p}" for p in compare_reports(old, new)]
        errors = [e for e in parse_errors(dst.serial_log()) if e.port in ports]
        if errors:
            values["errors"] = [f"{e.port} {e.text}" for e in errors[:20]]
            if not problems:  # the counters said nothing, the detail lines did
                problems.append("the workload reported: " + " | ".join(values["errors"][:3]))
        if problems:
            values["problems"] = problems
            raise CheckFailed(f"mtty-device-state on {dst.label}: " + "; ".join(problems), values)
        return values

    def _wait_reports(
        self, ctx: CheckContext, ports: tuple[str, ...], before: dict[str, MttyReport]
    ) -> dict[str, list[MttyReport]]:
        dst = ctx.require_destination()
        deadline = time.monotonic() + self.wait_s
        while True:
            found: dict[str, list[MttyReport]] = {p: [] for p in ports}
            for report in parse_reports(dst.serial_log()):
                if report.port in found and report.n > before[report.port].n:
                    found[report.port].append(report)
            if all(len(r) >= self.reports_after for r in found.values()):
                return found
            if time.monotonic() > deadline:
                return found
            time.sleep(1.0)


def compare_reports(before: MttyReport, after: list[MttyReport]) -> list[str]:
    """What differs between a port's last report on the source and its reports after it.

    ``after`` are the port's reports on the destination, in order (at least one).
    """
    problems: list[str] = []
    first, last = after[0], after[-1]
    if first.tx < before.tx or first.rx < before.rx:
        problems.append(
            f"counters went back: tx {before.tx} -> {first.tx}, rx {before.rx} -> {first.rx} "
            "(the guest's state did not come along)"
        )
    elif len(after) > 1 and last.rx <= before.rx:
        problems.append(
            f"no byte looped back on the destination (rx stayed at {before.rx} over "
            f"{len(after)} reports)"
        )
    for counter in ERROR_COUNTERS:
        grown = last.counters.get(counter, 0) - before.counters.get(counter, 0)
        if grown > 0:
            problems.append(
                f"{grown} {_WHAT[counter]} since the migration ({counter} "
                f"{before.counters.get(counter, 0)} -> {last.counters.get(counter, 0)})"
            )
    if before.registers and first.registers:
        for reg in STABLE_REGISTERS:
            was, now = before.registers[reg], first.registers[reg]
            if was != now:
                problems.append(f"{reg.upper()} 0x{was:02x} before the migration, 0x{now:02x} after")
        if first.n == before.n + 1 and before.scr_next is not None:
            got = first.registers["scr"]
            if got != before.scr_next:
                problems.append(
                    f"SCR 0x{got:02x} after the migration, but the guest wrote "
                    f"0x{before.scr_next:02x} before it (scratch register not migrated)"
                )
    elif not first.registers:
        problems.append("the destination's report has no registers (regs=none)")
    return problems


def _summary(report: MttyReport) -> dict[str, Any]:
    return {
        "n": report.n,
        "tx": report.tx,
        "rx": report.rx,
        "err": report.err,
        "quiet": report.quiet,
        "registers": {k: f"0x{v:02x}" for k, v in report.registers.items()},
        "scr_next": None if report.scr_next is None else f"0x{report.scr_next:02x}",
    }


__all__ = ["MttyDeviceStateCheck", "compare_reports"]
