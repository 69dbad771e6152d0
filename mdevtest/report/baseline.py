"""The baseline gate: does this run's ``summary.json`` regress against a previous one?

A pre-merge job runs the suites with the patch and compares the summary with the one of the last
good nightly run. Entries are grouped by ``test_id`` (a ping-pong test has several entries under
one id); for each test present in both runs the gate compares

- downtime median and p95 (``downtime_ms``, and ``observed_downtime_ms`` where both runs have it),
- total time median (``total_time_ms``),
- bytes medians (``ram_transferred_bytes``; ``vfio_transferred_bytes`` where both runs have it),

over *completed* migrations only, and the status: a test whose migrations all completed before
and that now has one that did not is a regression ("status completed -> failed"). A test that
already failed in the baseline is not a new regression (negative tests fail on purpose).

A figure regresses when it is worse by more than *both* the relative slack and the absolute
slack of its unit: ``after > max(before * (1 + relative), before + absolute)``. The absolute
slack keeps a 7 ms -> 12 ms downtime on a noisy lab from failing a merge; the relative one keeps a
large figure from hiding a real slowdown. Tests in only one of the runs are listed apart; they are
not failures (a suite grew, or a pair was filtered out).

p95 is linear interpolation between closest ranks (numpy's default), so with one migration it is
that migration's figure and with two it is close to the larger one.

Both documents are parsed into :class:`~mdevtest.report.summary.SummaryFile` first (a file
without ``schema_version`` is version 0, of the same shape); one that is not a valid summary, or
is of a newer schema version, is a :class:`BaselineError` naming the file and the bad key.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from mdevtest.errors import MdevtestError

if TYPE_CHECKING:
    from mdevtest.report.summary import SummaryEntry, SummaryFile

Unit = Literal["ms", "bytes"]
Stat = Literal["median", "p95"]
#: The figures of :class:`~mdevtest.report.summary.SummaryEntry` the gate compares.
MetricField = Literal[
    "downtime_ms",
    "observed_downtime_ms",
    "total_time_ms",
    "ram_transferred_bytes",
    "vfio_transferred_bytes",
]
#: A summary document: as loaded from JSON (any schema version), or parsed.
Summary: TypeAlias = "Mapping[str, Any] | SummaryFile"


class BaselineError(MdevtestError):
    """A summary file is missing or not a summary, or a tolerance cannot be parsed."""


@dataclass(frozen=True)
class Tolerance:
    """How much worse a figure may get before it is a regression (both slacks must be exceeded)."""

    relative: float = 0.2
    absolute_ms: float = 20.0
    absolute_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("relative", "absolute_ms", "absolute_bytes"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise BaselineError(f"tolerance {name}={value!r}: must be a finite number >= 0")

    def limit(self, before: float, unit: Unit) -> float:
        """The worst ``after`` that is still acceptable for ``before``."""
        absolute = self.absolute_ms if unit == "ms" else float(self.absolute_bytes)
        return max(before * (1 + self.relative), before + absolute)

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        """``"relative=0.2,absolute_ms=20,absolute_bytes=1048576"``; omitted keys keep defaults.

        For a command-line option such as ``--mdevtest-baseline-tolerance``.
        """
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = part.partition("=")
            key = key.strip()
            if not sep or key not in ("relative", "absolute_ms", "absolute_bytes"):
                raise BaselineError(
                    f"tolerance {part!r}: expected key=value with key relative, absolute_ms "
                    "or absolute_bytes, e.g. relative=0.2,absolute_ms=20,absolute_bytes=1048576"
                )
            try:
                values[key] = float(raw)
            except ValueError:
                raise BaselineError(f"tolerance {part!r}: {raw!r} is not a number") from None
            if not math.isfinite(values[key]) or values[key] < 0:
                raise BaselineError(f"tolerance {part!r}: must be a finite number >= 0")
        default = cls()
        return cls(
            relative=values.get("relative", default.relative),
            absolute_ms=values.get("absolute_ms", default.absolute_ms),
            absolute_bytes=int(values.get("absolute_bytes", default.absolute_bytes)),
        )


@dataclass(frozen=True)
class Metric:
    """One compared figure: the summary field, the statistic over a test's migrations, the unit."""

    field: MetricField
    stat: Stat
    label: str
    unit: Unit
    optional: bool = False  # compared only when both runs have non-null values


METRICS: tuple[Metric, ...] = (
    Metric("downtime_ms", "median", "downtime median", "ms"),
    Metric("downtime_ms", "p95", "downtime p95", "ms"),
    Metric("observed_downtime_ms", "median", "observed downtime median", "ms", optional=True),
    Metric("observed_downtime_ms", "p95", "observed downtime p95", "ms", optional=True),
    Metric("total_time_ms", "median", "total time median", "ms"),
    Metric("ram_transferred_bytes", "median", "RAM transferred median", "bytes"),
    Metric("vfio_transferred_bytes", "median", "VFIO transferred median", "bytes", optional=True),
)


@dataclass(frozen=True)
class Regression:
    """One figure (or the status) of one test that got worse than the tolerance allows.

    ``str()`` is the line a pre-merge job prints, e.g.
    ``suites/x.py::test_live_migration[host-a->host-b]: downtime p95 14 ms -> 95 ms (limit 34 ms)``.
    """

    test_id: str
    metric: str
    before: float | str
    after: float | str
    limit: float | None
    unit: Unit | None = None

    def __str__(self) -> str:
        before, after = _fmt(self.before, self.unit), _fmt(self.after, self.unit)
        text = f"{self.test_id}: {self.metric} {before} -> {after}"
        if self.limit is not None:
            text += f" (limit {_fmt(self.limit, self.unit)})"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "test_id": self.test_id,
            "metric": self.metric,
            "before": self.before,
            "after": self.after,
            "limit": self.limit,
            "unit": self.unit,
        }


@dataclass(frozen=True)
class BaselineReport:
    """The whole comparison: regressions, and which tests only one run had."""

    regressions: tuple[Regression, ...]
    compared: tuple[str, ...]
    only_before: tuple[str, ...]  # in the baseline, not in this run
    only_after: tuple[str, ...]  # new in this run
    tolerance: Tolerance = field(default_factory=Tolerance)

    @property
    def passed(self) -> bool:
        return not self.regressions

    def render(self) -> str:
        """Human-readable lines, regressions first; what a terminal summary shows."""
        tol = self.tolerance
        lines = [
            f"baseline: {len(self.compared)} test(s) compared, {len(self.regressions)} "
            f"regression(s) (tolerance: +{tol.relative:.0%} and +{_fmt(tol.absolute_ms, 'ms')} "
            f"/ +{_fmt(tol.absolute_bytes, 'bytes')})"
        ]
        lines += [f"REGRESSION {r}" for r in self.regressions]
        lines += [f"not in this run (baseline only): {t}" for t in self.only_before]
        lines += [f"new in this run (no baseline): {t}" for t in self.only_after]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "regressions": [r.to_json() for r in self.regressions],
            "compared": list(self.compared),
            "only_before": list(self.only_before),
            "only_after": list(self.only_after),
            "tolerance": {
                "relative": self.tolerance.relative,
                "absolute_ms": self.tolerance.absolute_ms,
                "absolute_bytes": self.tolerance.absolute_bytes,
            },
        }


def load_summary(path: str | Path) -> dict[str, Any]:
    """Read and validate a ``summary.json`` (any schema version up to
    :data:`~mdevtest.report.summary.SCHEMA_VERSION`); :class:`BaselineError` says what is wrong
    with the file."""
    return _read(path).to_json()


def _read(path: str | Path) -> SummaryFile:
    from mdevtest.report.summary import SummaryError, read_summary

    try:
        return read_summary(path)
    except SummaryError as exc:
        raise BaselineError(str(exc)) from exc


def _parse(doc: Summary, where: str) -> SummaryFile:
    from mdevtest.report.summary import SummaryError, parse_summary

    try:
        return parse_summary(doc, where)
    except SummaryError as exc:
        raise BaselineError(str(exc)) from exc


def compare(before: Summary, after: Summary, *, tolerance: Tolerance | None = None) -> list[Regression]:
    """The regressions of ``after`` against ``before`` (two summary.json documents)."""
    return list(diff(before, after, tolerance=tolerance).regressions)


def diff(before: Summary, after: Summary, *, tolerance: Tolerance | None = None) -> BaselineReport:
    """Compare two summary documents (loaded JSON or parsed): regressions plus the tests only
    one of them has. A document that is not a valid summary raises :class:`BaselineError`."""
    tol = tolerance or Tolerance()
    old = _by_test(_parse(before, "before").migrations)
    new = _by_test(_parse(after, "after").migrations)
    common = [t for t in new if t in old]
    regressions: list[Regression] = []
    for test_id in common:
        regressions += _compare_test(test_id, old[test_id], new[test_id], tol)
    return BaselineReport(
        regressions=tuple(regressions),
        compared=tuple(common),
        only_before=tuple(t for t in old if t not in new),
        only_after=tuple(t for t in new if t not in old),
        tolerance=tol,
    )


def gate(
    baseline: str | Path, summary: str | Path, *, tolerance: Tolerance | None = None
) -> BaselineReport:
    """Load both files and compare: the one call the plugin's session-finish hook makes."""
    return diff(_read(baseline), _read(summary), tolerance=tolerance)


def _by_test(entries: Iterable[SummaryEntry]) -> dict[str, list[SummaryEntry]]:
    grouped: dict[str, list[SummaryEntry]] = {}
    for entry in entries:
        grouped.setdefault(entry.test_id, []).append(entry)
    return dict(sorted(grouped.items()))


def _compare_test(
    test_id: str,
    old: Sequence[SummaryEntry],
    new: Sequence[SummaryEntry],
    tol: Tolerance,
) -> list[Regression]:
    found: list[Regression] = []
    old_bad = [str(e.status) for e in old if e.status != "completed"]
    new_bad = [str(e.status) for e in new if e.status != "completed"]
    if new_bad and not old_bad:
        now = new_bad[0] if len(new) == 1 else f"{new_bad[0]} ({len(new_bad)} of {len(new)})"
        found.append(Regression(test_id, "status", "completed", now, None))
    old_ok = [e for e in old if e.status == "completed"]
    new_ok = [e for e in new if e.status == "completed"]
    for metric in METRICS:
        a, b = _values(old_ok, metric.field), _values(new_ok, metric.field)
        if not a or not b:
            continue  # nothing completed on one side, or a figure only one run measures
        before, after = _stat(a, metric.stat), _stat(b, metric.stat)
        limit = tol.limit(before, metric.unit)
        if after > limit:
            found.append(Regression(test_id, metric.label, before, after, limit, metric.unit))
    return found


def _values(entries: Iterable[SummaryEntry], key: MetricField) -> list[float]:
    out = []
    for e in entries:
        v = getattr(e, key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def _stat(values: Sequence[float], stat: Stat) -> float:
    if stat == "median":
        return float(statistics.median(values))
    return percentile(values, 95)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _fmt(value: float | str, unit: Unit | None) -> str:
    if isinstance(value, str) or unit is None:
        return str(value)
    if unit == "ms":
        return f"{value:.0f} ms" if abs(value) >= 10 else f"{value:.1f} ms".replace(".0 ms", " ms")
    if abs(value) >= 1 << 20:
        return f"{value / (1 << 20):.1f} MiB"
    if abs(value) >= 1 << 10:
        return f"{value / (1 << 10):.1f} KiB"
    return f"{value:.0f} bytes"
