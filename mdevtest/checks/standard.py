"""The standard checks every migration gets (each proven able to fail by a negative test).

========================  ===========================================================================
``downtime``              QEMU's downtime and the guest-observed (UDP) downtime, both against the
                          limit; total time against its limit; QEMU's last ``expected-downtime``
``heartbeat``             the serial heartbeat continues on the destination, every number once
``graphics``              exact-pixel frames before and after, and a series after that is not frozen
``ram-integrity``         checksummed, ledgered RAM pages the guest kept dirtying (dirty tracking)
``device-memory``         a pattern in the display's video memory (device state)
``dma-integrity``         disk blocks DMA'd into guest RAM during the migration (DMA-dirtied pages)
``device-state``          PCI config space, display mode, interrupts still arriving
(vendor checks)           the vendor's own (:data:`VENDOR_CHECKS`), e.g. ``mtty-device-state``
``host-logs``             both hosts' dmesg since before the test, and the QEMU logs
``guest-logs``            the guest's console: kernel oopses, workload errors
========================  ===========================================================================
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import BytesIO
from itertools import pairwise
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from mdevtest.checks.base import Check, CheckContext, Skip
from mdevtest.checks.graphics import (
    SIMILARITY_THRESHOLD,
    capture,
    diff_image,
    perceptual_similarity,
)
from mdevtest.checks.heartbeat import METHOD as SERIAL_METHOD
from mdevtest.checks.heartbeat import check_heartbeat_continuity
from mdevtest.checks.mtty import MttyDeviceStateCheck
from mdevtest.checks.observer import METHOD as UDP_METHOD
from mdevtest.errors import CheckFailed
from mdevtest.guest import Guest, synthetic_workload
from mdevtest.guest.control import guest_command
from mdevtest.qemu.machine import RemoteMachine
from mdevtest.remote import Remote
from mdevtest.report.attach import attach_png
from mdevtest.vendors import COMMON_TROUBLE, VendorProfile
from mdevtest.workloads.synthetic import (
    GuestReply,
    compare_states,
    decode_frame_number,
    parse_state,
    verify_frame,
)


class DowntimeCheck(Check):
    name = "downtime"
    category = "downtime"
    method = (
        "QEMU query-migrate 'downtime' and 'total-time' (source), and the observed downtime: "
        + UDP_METHOD
    )

    def after(self, ctx: CheckContext) -> dict[str, Any]:
        result = ctx.result
        if result is None or not result.completed:
            raise Skip("the migration did not complete")
        limits = ctx.limits
        values: dict[str, Any] = {
            "downtime_ms": result.downtime_ms,
            "total_time_ms": result.total_time_ms,
            "limit_downtime_ms": limits.downtime_ms,
            "limit_total_time_s": limits.total_time_s,
        }
        expected = [
            p.expected_downtime_ms for p in result.timeline if p.expected_downtime_ms is not None
        ]
        values["last_expected_downtime_ms"] = expected[-1] if expected else None
        problems = []
        if result.downtime_ms is None or result.downtime_ms > limits.downtime_ms:
            problems.append(f"QEMU downtime {result.downtime_ms} ms > limit {limits.downtime_ms:g} ms")
        if result.total_time_ms is None or result.total_time_ms > limits.total_time_s * 1000:
            problems.append(f"total time {result.total_time_ms} ms > limit {limits.total_time_s:g} s")
        observer = ctx.guest.observer
        if observer is not None and observer.count() == 0:
            observer = None  # this guest's workload sends no UDP heartbeat: QEMU's figure only
            values["observed_downtime_note"] = "the guest sent no UDP heartbeat"
        if observer is not None and ctx.migrate_started is not None and ctx.migrate_finished is not None:
            observer.wait_for_beats(50, timeout=10)
            seen = observer.analyse(ctx.migrate_started - 0.5, ctx.migrate_finished + 2.0)
            values.update(
                observed_downtime_ms=seen.observed_downtime_ms,
                observed_gap_after_seq=seen.gap_start_seq,
                udp_received=seen.received,
                udp_lost=seen.lost,
                udp_duplicated=seen.duplicated,
            )
            if seen.observed_downtime_ms is None:
                problems.append("no guest heartbeat arrived around the switchover")
            elif seen.observed_downtime_ms > limits.downtime_ms:
                problems.append(
                    f"observed downtime {seen.observed_downtime_ms:.1f} ms (heartbeats stopped after "
                    f"seq {seen.gap_start_seq}) > limit {limits.downtime_ms:g} ms"
                )
            if seen.duplicated:
                problems.append(f"{seen.duplicated} heartbeat datagram(s) arrived twice")
        else:
            values["observed_downtime_ms"] = None
        if problems:
            raise CheckFailed("downtime: " + "; ".join(problems), values)
        return values


class SerialHeartbeatCheck(Check):
    name = "heartbeat"
    category = "workload"
    method = SERIAL_METHOD

    def after(self, ctx: CheckContext) -> dict[str, Any]:
        dst = ctx.require_destination()
        source_log = ctx.source.serial_log()
        deadline = time.monotonic() + 10
        while True:
            try:
                return check_heartbeat_continuity(source_log, dst.serial_log()).to_json()
            except CheckFailed as exc:
                if "after the switchover" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)


class GraphicsCheck(Check):
    """Exact frames when the workload draws predictable frames; perceptual otherwise."""

    name = "graphics"
    category = "graphics"
    method = (
        "display captured (QMP screendump or VNC framebuffer, as the vendor profile says: "
        "capture_method in the values) on the source before the migration and on the destination "
        "after it, then 3 more captures 0.5 s apart: every frame decoded and compared pixel by "
        "pixel with its expected render; frame numbers must increase (not frozen). Unpredictable "
        "workloads: not black, changing, and perceptually similar "
        f"(>= {SIMILARITY_THRESHOLD:g}) to the last source capture"
    )
    series = 3
    interval_s = 0.5
    similarity_threshold: ClassVar[float] = SIMILARITY_THRESHOLD

    def _how(self, ctx: CheckContext) -> str:
        how = ctx.profile.capture_method if ctx.profile is not None else "qmp"
        if how == "none":
            raise Skip("the vendor profile has no display to capture")
        return how

    def before(self, ctx: CheckContext) -> None:
        how = self._how(ctx)
        png = capture(ctx.source, how)
        attach_png(f"capture before ({ctx.source.label})", png)
        ctx.scratch["graphics:before"] = png

    def after(self, ctx: CheckContext) -> dict[str, Any]:
        how = self._how(ctx)
        dst = ctx.require_destination()
        frames: list[int] = []
        exact = True
        images: list[Image.Image] = []
        for i in range(1 + self.series):
            if i:
                time.sleep(self.interval_s)
            png = capture(dst, how)
            attach_png(f"capture after #{i} ({dst.label})", png)
            with Image.open(BytesIO(png)) as img:
                rgb = img.convert("RGB")
            images.append(rgb)
            try:
                frames.append(verify_frame(rgb))
            except CheckFailed as exc:
                try:
                    n = decode_frame_number(rgb)
                except CheckFailed:
                    exact = False  # not our synthetic frames: judge perceptually below
                    continue
                attach_png(f"diff #{i} (frame {n})", diff_image(rgb, n))
                raise CheckFailed(f"graphics: capture #{i} on {dst.label}: {exc}",
                                  {"capture": i, "frame": n, "method": how}) from exc  # fmt: skip
        values: dict[str, Any] = {"capture_method": how, "frames": frames, "exact": exact}
        if exact:
            if any(b <= a for a, b in pairwise(frames)):
                raise CheckFailed(
                    f"graphics: display frozen on {dst.label}: frames {frames} over "
                    f"{self.series * self.interval_s:g} s",
                    values,
                )
            return values
        before = ctx.scratch.get("graphics:before")
        sims = []
        for shot in images:
            if int(np.asarray(shot.convert("L")).max()) < 8:
                raise CheckFailed(f"graphics: black display on {dst.label}", values)
        if all(images[0].tobytes() == img.tobytes() for img in images[1:]):
            raise CheckFailed(f"graphics: display frozen on {dst.label} (identical captures)", values)
        if before is not None:
            with Image.open(BytesIO(before)) as opened:
                ref = opened.convert("RGB")
            sims = [perceptual_similarity(ref, shot) for shot in images]
            values["similarity"] = [round(s, 3) for s in sims]
            if max(sims) < self.similarity_threshold:
                raise CheckFailed(
                    f"graphics: destination display unlike the source's (similarity {max(sims):.2f} "
                    f"< {self.similarity_threshold})",
                    values,
                )
        return values


def _require_probe_agent(guest: Guest) -> None:
    """Skip unless the synthetic workload's probe agent runs in the guest. Judged from the
    guest's whole console, not the source machine's log: on a round trip's later legs the
    source is an earlier destination, whose log never shows the boot's ``MDT-READY`` line."""
    if not guest.probe:
        raise Skip(f"no synthetic workload in this guest: {guest.no_probe_reason}")


class _GuestProbe(Check):
    """A check the guest runs itself over its control channel (``VERIFY-*``)."""

    command: ClassVar[str]

    def _reply(self, machine: RemoteMachine, timeout: float) -> GuestReply:
        reply = guest_command(machine, self.command, timeout=timeout)
        if reply.status == "skip":
            raise Skip(f"the guest cannot run {self.command}: {reply.values.get('reason', '?')}")
        return reply

    def before(self, ctx: CheckContext) -> None:
        _require_probe_agent(ctx.guest)
        self._reply(ctx.source, ctx.testbed.image().control_timeout_s).require_ok()

    def after(self, ctx: CheckContext) -> dict[str, Any]:
        dst = ctx.require_destination()
        reply = self._reply(dst, ctx.testbed.image().control_timeout_s)
        values: dict[str, Any] = {k: v for k, v in reply.values.items() if k != "id"}
        if not reply.ok:
            values["details"] = list(reply.details)
            raise CheckFailed(f"{self.name} on {dst.label}: {reply.describe()}", values)
        return values


class RamIntegrityCheck(_GuestProbe):
    name = "ram-integrity"
    category = "device-state"
    command = "VERIFY-RAM"
    method = (
        "guest workload rewrites checksummed pages of a RAM region (generation per page in a ledger) "
        "throughout the migration; VERIFY-RAM on the destination checks every page against the ledger"
    )


class DeviceMemoryCheck(_GuestProbe):
    name = "device-memory"
    category = "device-state"
    command = "VERIFY-VRAM"
    method = (
        "guest fills off-screen video memory with a pattern before the migration; VERIFY-VRAM on the "
        "destination re-reads it word by word"
    )


class DmaIntegrityCheck(_GuestProbe):
    name = "dma-integrity"
    category = "device-state"
    command = "VERIFY-DMA"
    method = (
        "guest keeps reading pattern-disk blocks with O_DIRECT (virtio-blk DMA into guest RAM) into "
        "ledgered slots during the migration; VERIFY-DMA on the destination checks every slot"
    )


class DeviceStateCheck(Check):
    name = "device-state"
    category = "device-state"
    method = (
        "guest STATE before and after: CRC of each PCI function's config space, display mode, "
        "interrupt counters (live interrupts, those of the console, the local timer and the "
        "disk queues that were rising across two STATEs 0.5 s apart before the migration, must "
        "keep increasing after the switchover)"
    )

    def before(self, ctx: CheckContext) -> None:
        _require_probe_agent(ctx.guest)
        wait = ctx.testbed.image().control_timeout_s
        first = parse_state(guest_command(ctx.source, "STATE", timeout=wait))
        time.sleep(0.5)
        second = parse_state(guest_command(ctx.source, "STATE", timeout=wait))
        ctx.scratch["device-state:before"] = second
        # A guest's idle devices (a read-only root disk) legitimately stay still: only what was
        # rising right before the migration must rise after it.
        ctx.scratch["device-state:rising"] = {
            k for k, v in second.irqs.items() if k in first.irqs and v.count > first.irqs[k].count
        }

    def after(self, ctx: CheckContext) -> dict[str, Any]:
        dst = ctx.require_destination()
        time.sleep(0.5)  # let interrupts arrive on the destination
        before = ctx.scratch["device-state:before"]
        after = parse_state(guest_command(dst, "STATE", timeout=ctx.testbed.image().control_timeout_s))
        problems = compare_states(before, after, rising=ctx.scratch.get("device-state:rising"))
        values: dict[str, Any] = {
            "mode": after.mode,
            "pci_functions": len(after.pci),
            "interrupts": {
                k: [before.irqs[k].count, v.count] for k, v in after.irqs.items() if k in before.irqs
            },
        }
        if problems:
            values["problems"] = problems
            raise CheckFailed(f"device-state on {dst.label}: " + "; ".join(problems), values)
        return values


_DMESG_TIME = re.compile(r"^\[\s*(\d+\.\d+)\]")


@dataclass(frozen=True)
class DmesgCursor:
    """Where a host's kernel log stood before the migration: the timestamp of its last line.

    Not a line count: once the ring buffer is full the kernel drops the oldest lines, so the count
    stands still while new lines arrive (a busy host, a long nightly run). A kernel that prints no
    timestamps (``printk.time=0``) falls back to the count.
    """

    time: float | None
    lines: int


def dmesg_cursor(remote: Remote) -> DmesgCursor:
    # one read of the log: its line count, then its last line
    result = remote.check_shell("dmesg | awk '{ last = $0 } END { print NR; print last }'", timeout=30)
    count, _, last = result.stdout.partition("\n")
    stamp = _DMESG_TIME.match(last)
    return DmesgCursor(float(stamp.group(1)) if stamp else None, int(count.strip() or 0))


def dmesg_since_command(cursor: DmesgCursor, dmesg: str = "dmesg") -> str:
    """The shell command printing the kernel log lines after ``cursor`` (a line without a
    timestamp, the rest of a message, goes with the line before it)."""
    if cursor.time is None:
        return f"{dmesg} | tail -n +{cursor.lines + 1}"
    program = (
        "{ if (match($0, /^\\[ *[0-9]+\\.[0-9]+\\]/)) "
        "keep = (substr($0, RSTART + 1, RLENGTH - 2) + 0 > t + 0); if (keep) print }"
    )
    return f"{dmesg} | awk -v t={cursor.time:.6f} '{program}'"


class HostLogsCheck(Check):
    name = "host-logs"
    category = "host-logs"
    method = "dmesg of both hosts from a cursor taken before the migration, and both QEMU logs, "
    method += "scanned for the vendor profile's trouble patterns (GPU hang, vendor errors, IOMMU/DMAR "
    method += "faults, vfio errors, call traces)"

    def before(self, ctx: CheckContext) -> None:
        ctx.scratch["host-logs:cursor"] = {
            "source": dmesg_cursor(ctx.testbed.remote(ctx.route.source)),
            "destination": dmesg_cursor(ctx.testbed.remote(ctx.route.destination)),
        }

    def after(self, ctx: CheckContext) -> dict[str, Any]:
        dst = ctx.require_destination()
        cursors = ctx.scratch["host-logs:cursor"]
        profile_find = ctx.profile.find_trouble if ctx.profile is not None else _common_trouble
        found: dict[str, list[str]] = {}
        for role, machine in (("source", ctx.source), ("destination", dst)):
            text = machine.remote.check_shell(dmesg_since_command(cursors[role]), timeout=30).stdout
            text += "\n" + machine.remote.run(["cat", machine.paths.qemu_log], timeout=30).stdout
            trouble = profile_find(text)
            if trouble:
                found[f"{role} {machine.host.name}"] = trouble[:10]
        if found:
            lines = "; ".join(f"{where}: {' | '.join(t)}" for where, t in found.items())
            raise CheckFailed(f"host-logs: trouble in host logs: {lines}", {"trouble": found})
        return {"scanned": ["dmesg", "qemu.log"]}


class GuestLogsCheck(Check):
    name = "guest-logs"
    category = "guest-logs"
    method = "the guest console (source and destination logs) scanned for oopses, BUG, call traces, "
    method += "and the workload's MDT-ERROR lines"

    def after(self, ctx: CheckContext) -> dict[str, Any]:
        dst = ctx.require_destination()
        text = ctx.source.serial_log() + dst.serial_log()
        trouble = _common_trouble(text) + [
            line for line in text.splitlines() if line.startswith("MDT-ERROR")
        ]
        if trouble:
            raise CheckFailed(f"guest-logs: {' | '.join(trouble[:5])}", {"trouble": trouble[:20]})
        return {"lines": text.count("\n")}


def _common_trouble(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if any(p.search(line) for p in COMMON_TROUBLE)]


#: The checks only one vendor has, by vendor name (``vgpu.vendor``); they run with the standard
#: set, before the log scans. Listed here, on the checks' side, so that vendor profiles never
#: import checks (``tests/unit/test_vendors.py`` keeps the names to known vendors).
VENDOR_CHECKS: Mapping[str, tuple[Callable[[], Check], ...]] = {
    "mtty": (MttyDeviceStateCheck,),
}


def vendor_checks(vendor: str) -> list[Check]:
    """The checks only ``vendor`` has (none for most)."""
    return [make() for make in VENDOR_CHECKS.get(vendor, ())]


def known_check_names() -> list[str]:
    """Every check name a migration can have: the standard checks', then each vendor's own
    (``mtty-device-state``), in order. ``--mdevtest-require-checks`` accepts these."""
    names = [c.name for c in standard_checks()]
    for vendor in sorted(VENDOR_CHECKS):
        names += [c.name for c in vendor_checks(vendor) if c.name not in names]
    return names


def standard_checks(profile: VendorProfile | None = None) -> list[Check]:
    """Every check, in the order they run after a migration; with ``profile``, the vendor's own
    checks too (:data:`VENDOR_CHECKS`, e.g. mtty's device state) before the log scans."""
    return [
        DowntimeCheck(),
        SerialHeartbeatCheck(),
        GraphicsCheck(),
        RamIntegrityCheck(),
        DeviceMemoryCheck(),
        DmaIntegrityCheck(),
        DeviceStateCheck(),
        *(vendor_checks(profile.name) if profile is not None else ()),
        HostLogsCheck(),
        GuestLogsCheck(),
    ]


__all__ = [
    "VENDOR_CHECKS",
    "DeviceMemoryCheck",
    "DeviceStateCheck",
    "DmaIntegrityCheck",
    "DowntimeCheck",
    "GraphicsCheck",
    "GuestLogsCheck",
    "HostLogsCheck",
    "RamIntegrityCheck",
    "SerialHeartbeatCheck",
    "known_check_names",
    "standard_checks",
    "synthetic_workload",
    "vendor_checks",
]
