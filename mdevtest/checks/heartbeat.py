"""Guest heartbeat continuity across a migration (serial console of the synthetic workload).

The guest prints ``MDT-HB seq=<n>`` lines with consecutive sequence numbers. The serial device is part
of the migrated state, so the source's console log followed by the destination's must hold every number
exactly once: a line cut at the switchover continues on the destination, and a lost or repeated number
means guest-visible state was lost or replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from mdevtest.errors import CheckFailed
from mdevtest.workloads.synthetic import parse_heartbeats

METHOD = (
    "guest serial heartbeat (MDT-HB seq=N): source console log + destination console log, "
    "every sequence number exactly once"
)


@dataclass(frozen=True)
class HeartbeatContinuity:
    last_source_seq: int | None
    first_destination_seq: int | None
    last_seq: int | None
    beats_after_switchover: int
    missing: tuple[tuple[int, int], ...]
    duplicated: tuple[int, ...]
    method: str = METHOD

    def to_json(self) -> dict[str, object]:
        return {
            "last_source_seq": self.last_source_seq,
            "first_destination_seq": self.first_destination_seq,
            "last_seq": self.last_seq,
            "beats_after_switchover": self.beats_after_switchover,
            "missing": [list(r) for r in self.missing],
            "duplicated": list(self.duplicated),
            "method": self.method,
        }


def heartbeat_continuity(source_log: str, destination_log: str) -> HeartbeatContinuity:
    """Measure continuity; never raises (see :func:`check_heartbeat_continuity`)."""
    src = [hb.seq for hb in parse_heartbeats(source_log)]
    dst_only = [hb.seq for hb in parse_heartbeats(destination_log)]
    both = [hb.seq for hb in parse_heartbeats(source_log + destination_log)]
    seen: set[int] = set()
    dups: list[int] = []
    for seq in both:
        if seq in seen:
            dups.append(seq)
        seen.add(seq)
    missing: list[tuple[int, int]] = []
    ordered = sorted(seen)
    for prev, nxt in pairwise(ordered):
        if nxt != prev + 1:
            missing.append((prev + 1, nxt - 1))
    last_src = src[-1] if src else None
    after = [s for s in both if last_src is None or s > last_src]
    return HeartbeatContinuity(
        last_source_seq=last_src,
        first_destination_seq=after[0] if after else (dst_only[0] if dst_only else None),
        last_seq=ordered[-1] if ordered else None,
        beats_after_switchover=len(after),
        missing=tuple(missing),
        duplicated=tuple(dups),
    )


def check_heartbeat_continuity(
    source_log: str, destination_log: str, *, min_after: int = 5
) -> HeartbeatContinuity:
    """Raise :class:`CheckFailed` naming the lost/duplicated numbers, or a stalled guest."""
    __tracebackhide__ = True
    report = heartbeat_continuity(source_log, destination_log)
    problems = []
    if report.last_source_seq is None:
        problems.append("no heartbeat on the source console before the migration")
    if report.missing:
        spans = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in report.missing)
        problems.append(f"heartbeat sequence numbers missing: {spans}")
    if report.duplicated:
        problems.append(f"heartbeat sequence numbers repeated: {list(report.duplicated)[:10]}")
    if report.beats_after_switchover < min_after:
        problems.append(
            f"only {report.beats_after_switchover} heartbeat(s) after the switchover "
            f"(last on source: {report.last_source_seq}); the guest is stopped or stalled on the "
            f"destination (expected >= {min_after})"
        )
    if problems:
        raise CheckFailed("heartbeat: " + "; ".join(problems), report.to_json())
    return report
