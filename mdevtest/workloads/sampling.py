"""Throughput across a migration: a sampling thread, and the dip at the switchover.

:class:`Sampler` calls :meth:`Workload.sample` every ``interval_s`` seconds in a thread while the
migration runs, keeps at most ``max_samples`` samples (the oldest go first) and is stopped
explicitly or by leaving its ``with`` block. A sample that cannot be taken because the guest
channel is unreachable (the agent of a guest that is being switched over) is kept as a sample
with ``error`` set; anything else that goes wrong in the thread is raised again from
:meth:`Sampler.stop`.

:func:`dip` reads samples against the switchover window (the controller-monotonic times of the
source's ``STOP`` and the destination's ``RESUME`` events) and gives a :class:`Dip`: throughput
before, the lowest after the switchover began, how long until it was back, and the longest time
without a progress reading.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from types import TracebackType
from typing import Any, Protocol

from mdevtest.errors import MdevtestError, StateError
from mdevtest.workloads.base import Sample, Workload, WorkloadError, WorkloadRun

__all__ = ["Dip", "Sampler", "dip", "switchover_window"]


class Sampler:
    """Sample one run every ``interval_s`` seconds in a daemon thread; bounded and stoppable.

    Ticks are on a fixed grid from :meth:`start` (a slow sample skips the ticks it overran
    rather than bunching up). Usable once: ``start`` → ``stop``.
    """

    def __init__(
        self,
        workload: Workload,
        run: WorkloadRun,
        interval_s: float = 1.0,
        *,
        max_samples: int = 7200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s!r}")
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples!r}")
        self.workload = workload
        self.run = run
        self.interval_s = interval_s
        self.max_samples = max_samples
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=max_samples)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self.dropped = 0
        self.taken = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "idle"
        every = f"every {self.interval_s:g} s"
        return f"Sampler({self.workload.name!r}, {every}, {self.taken} samples, {state})"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def samples(self) -> tuple[Sample, ...]:
        """The samples kept so far, oldest first (a snapshot; safe while running)."""
        with self._lock:
            return tuple(self._samples)

    def wait_readings(self, count: int, *, timeout: float, poll_s: float = 0.2) -> float:
        """Block until ``count`` samples carry a value (the workload is past its start-up and
        reporting steadily, so a migration has a baseline to compare with); return the seconds
        waited. Raises :class:`WorkloadError` after ``timeout`` naming the last sample, or
        re-raises what broke the sampling thread."""
        started = self._clock()
        while True:
            if self._failure is not None:
                self.stop()
            samples = self.samples
            if sum(1 for s in samples if s.value is not None) >= count:
                return self._clock() - started
            if self._clock() - started > timeout:
                last = samples[-1] if samples else None
                detail = "no sample yet" if last is None else (
                    last.error or last.detail or f"alive={last.alive}, no reading"
                )
                raise WorkloadError(
                    f"{self.workload.name}: fewer than {count} throughput readings within "
                    f"{timeout:g} s of sampling (last: {detail}); it is still starting up or "
                    "prints no progress"
                )
            time.sleep(poll_s)

    def start(self) -> Sampler:
        if self._thread is not None:
            raise StateError(f"{self!r} was already started; a Sampler is used once")
        self._thread = threading.Thread(
            target=self._loop, name=f"mdt-sampler-{self.workload.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> tuple[Sample, ...]:
        """Stop sampling and return the samples; re-raise what broke the thread, if anything.
        Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise WorkloadError(
                    f"{self!r}: the sampling thread did not stop within {timeout:g} s "
                    "(a guest call is hanging past its own timeout)"
                )
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        return self.samples

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
            return
        try:
            self.stop()
        except Exception as stop_exc:  # the error in the block matters more; keep this one too
            exc.add_note(f"while stopping the sampler: {stop_exc!r}")

    def _loop(self) -> None:
        next_tick = self._clock()
        try:
            while not self._stop.is_set():
                self._add(self._take())
                next_tick += self.interval_s
                now = self._clock()
                if next_tick <= now:  # overran: next tick on the grid
                    next_tick += ((now - next_tick) // self.interval_s + 1) * self.interval_s
                self._stop.wait(next_tick - now)
        except BaseException as exc:
            self._failure = exc

    def _take(self) -> Sample:
        try:
            return self.workload.sample(self.run)
        except (MdevtestError, OSError) as exc:
            if isinstance(exc, StateError):
                raise
            return Sample(
                t=self._clock(),
                value=None,
                unit=self.workload.unit,
                alive=True,
                error=f"{type(exc).__name__}: {exc}",
            )

    def _add(self, sample: Sample) -> None:
        with self._lock:
            if len(self._samples) == self.max_samples:
                self.dropped += 1
            self._samples.append(sample)
            self.taken += 1


@dataclass(frozen=True)
class Dip:
    """Throughput around a switchover, from samples (times are controller-monotonic seconds).

    ``baseline`` is the median before the switchover began; ``minimum`` the lowest from the
    switchover's start until throughput was back (``minimum_at`` seconds after the start);
    ``drop_pct`` how far below the baseline that is; ``recovery_s`` the time from the
    switchover's end to the first of ``hold`` samples in a row at or above
    ``recovery_fraction`` of the baseline (None: not recovered while sampled); ``longest_gap_s``
    the longest time without a progress reading that overlaps the switchover. ``reason`` says
    why figures are None. Resolution is the sampling interval.
    """

    unit: str
    switchover_s: float
    baseline: float | None
    minimum: float | None
    minimum_at: float | None
    drop_pct: float | None
    recovery_s: float | None
    recovered: bool
    longest_gap_s: float | None
    samples_before: int
    samples_after: int
    method: str
    reason: str | None = None

    def figures(self) -> dict[str, Any]:
        """JSON-ready, rounded for the report."""

        def r(v: float | None, nd: int = 3) -> float | None:
            return None if v is None else round(v, nd)

        return {
            "unit": self.unit,
            "switchover_s": r(self.switchover_s),
            "baseline": r(self.baseline),
            "minimum": r(self.minimum),
            "minimum_at_s": r(self.minimum_at),
            "drop_pct": r(self.drop_pct, 1),
            "recovery_s": r(self.recovery_s),
            "recovered": self.recovered,
            "longest_gap_s": r(self.longest_gap_s),
            "samples_before": self.samples_before,
            "samples_after": self.samples_after,
            "method": self.method,
            "reason": self.reason,
        }


def dip(
    samples: Sequence[Sample],
    switchover_start: float,
    switchover_end: float,
    *,
    baseline_s: float = 10.0,
    recovery_fraction: float = 0.9,
    hold: int = 2,
) -> Dip:
    """The :class:`Dip` in ``samples`` at a switchover from ``switchover_start`` to
    ``switchover_end`` (the same clock as :attr:`Sample.t`).

    Samples without a value (no new progress reading, or a failed read) count only for
    ``longest_gap_s``. The baseline is the median of the values in the ``baseline_s`` seconds
    before the start; recovery needs ``hold`` samples in a row (or all remaining ones, if fewer)
    at or above ``recovery_fraction`` x baseline after the end.
    """
    if switchover_end < switchover_start:
        raise ValueError(f"switchover ends ({switchover_end}) before it starts ({switchover_start})")
    if not 0 < recovery_fraction <= 1:
        raise ValueError(f"recovery_fraction must be in (0, 1], got {recovery_fraction!r}")
    if hold < 1:
        raise ValueError(f"hold must be at least 1, got {hold!r}")
    ordered = sorted(samples, key=lambda s: s.t)
    valued = [s for s in ordered if s.value is not None]
    unit = ordered[0].unit if ordered else ""
    method = (
        f"samples of the workload's throughput ({unit}) read on the controller; baseline = median "
        f"of the {baseline_s:g} s before the switchover; recovered = {hold} samples in a row at "
        f">= {recovery_fraction:.0%} of baseline; resolution = the sampling interval"
    )
    before = [s for s in valued if switchover_start - baseline_s <= s.t <= switchover_start]
    after = [s for s in valued if s.t > switchover_start]
    empty = Dip(
        unit=unit,
        switchover_s=switchover_end - switchover_start,
        baseline=None,
        minimum=None,
        minimum_at=None,
        drop_pct=None,
        recovery_s=None,
        recovered=False,
        longest_gap_s=_longest_gap(ordered, switchover_start, switchover_end),
        samples_before=len(before),
        samples_after=len(after),
        method=method,
    )
    if not valued:
        return _with_reason(empty, "no sample has a throughput value (the tool reports no progress)")
    if not before:
        return _with_reason(
            empty, f"no throughput reading in the {baseline_s:g} s before the switchover"
        )
    baseline = statistics.median(s.value for s in before if s.value is not None)
    if not after:
        return _with_reason(
            replace(empty, baseline=baseline), "no throughput reading after the switchover began"
        )
    threshold = recovery_fraction * baseline
    recovery_at: Sample | None = None
    tail = [s for s in after if s.t > switchover_end]
    for i, s in enumerate(tail):
        window = tail[i : i + hold]
        if all(w.value is not None and w.value >= threshold for w in window):
            recovery_at = s
            break
    # The effect window: from the start to the recovery (at least the first reading after the end).
    last_t = recovery_at.t if recovery_at is not None else after[-1].t
    if tail:
        last_t = max(last_t, tail[0].t)
    affected = [s for s in after if s.t <= last_t]
    lowest = min(affected, key=lambda s: s.value if s.value is not None else float("inf"))
    assert lowest.value is not None
    return Dip(
        unit=unit,
        switchover_s=switchover_end - switchover_start,
        baseline=baseline,
        minimum=lowest.value,
        minimum_at=lowest.t - switchover_start,
        drop_pct=100.0 * (1.0 - lowest.value / baseline) if baseline > 0 else None,
        recovery_s=max(0.0, recovery_at.t - switchover_end) if recovery_at is not None else None,
        recovered=recovery_at is not None,
        longest_gap_s=empty.longest_gap_s,
        samples_before=len(before),
        samples_after=len(after),
        method=method,
        reason=None if recovery_at is not None else "throughput did not recover while sampled",
    )


def _longest_gap(ordered: Sequence[Sample], start: float, end: float) -> float | None:
    """Longest time between two consecutive readings with a value, among gaps overlapping
    [start, end]; None when there are not two such readings around it."""
    times = [s.t for s in ordered if s.value is not None]
    gaps = [b - a for a, b in pairwise(times) if b >= start and a <= end]
    return max(gaps) if gaps else None


def _with_reason(d: Dip, reason: str) -> Dip:
    return replace(d, reason=reason)


class _Event(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def mono(self) -> float: ...


def switchover_window(
    source_events: Iterable[_Event], destination_events: Iterable[_Event]
) -> tuple[float, float] | None:
    """The switchover as controller-monotonic times: the source's first ``STOP`` and the
    destination's first ``RESUME`` after it (``QmpEvent.mono``); None without a ``STOP``. When
    the destination never resumed, the window ends at the stop."""
    stop = next((e.mono for e in source_events if e.name == "STOP"), None)
    if stop is None:
        return None
    resume = next((e.mono for e in destination_events if e.name == "RESUME" and e.mono >= stop), stop)
    return stop, resume
