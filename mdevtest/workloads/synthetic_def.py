"""The lab's synthetic GPU workload as a :class:`~mdevtest.workloads.base.Workload`.

The guest's init starts it at boot (``workloads/synthetic``), so there is nothing to install,
start or stop: the workload is present when the console shows ``MDT-READY`` with a display, and
its progress is the ``MDT-FRAME n=<frame> t=<ns>`` line it prints once a second (parsed by
:func:`mdevtest.workloads.synthetic.parse_frames`). The guest is reached through its console
only (:class:`~mdevtest.workloads.guestexec.ConsoleGuestExec`).
"""

from __future__ import annotations

import re
from itertools import pairwise

from mdevtest.workloads.base import (
    GuestExec,
    ResultParseError,
    Sample,
    Workload,
    WorkloadError,
    WorkloadResult,
    WorkloadRun,
)
from mdevtest.workloads.guestexec import ConsoleReader
from mdevtest.workloads.synthetic import FrameMark, find_ready, parse_frames

_EXIT = re.compile(r"^MDT-EXIT\b.*$", re.MULTILINE)


class _ConsoleRun(WorkloadRun):
    last_n: int | None = None


class SyntheticWorkload(Workload):
    driver = "synthetic"
    kinds = ("synthetic",)
    unit = "frames/s"
    needs_command = False
    throughput_method = (
        "frames per second between the guest's two newest MDT-FRAME lines (frame numbers over the "
        "guest's CLOCK_MONOTONIC), read from the serial console on the controller"
    )

    def _console(self, guest: GuestExec) -> ConsoleReader:
        if not isinstance(guest, ConsoleReader):
            raise WorkloadError(
                f"{self.name}: {guest.name} gives no console to read ({type(guest).__name__}); "
                "the synthetic workload reports on the serial console (use ConsoleGuestExec)"
            )
        return guest

    def present(self, guest: GuestExec) -> str | None:
        if not isinstance(guest, ConsoleReader):
            return (
                f"{self.name} reports on the serial console, and {guest.name} gives no console to read"
            )
        ready = find_ready(guest.console_text())
        if ready is None:
            return (
                f"{self.name} is not running in {guest.name}: no MDT-READY on its console "
                "(not the lab guest image, or it has not booted yet)"
            )
        if ready.fb is None:
            return (
                f"{self.name} runs without a display in {guest.name} ({ready.reason}): "
                "it draws no frames"
            )
        return None

    def start(self, guest: GuestExec) -> WorkloadRun:
        why = self.present(guest)
        if why is not None:
            raise WorkloadError(why)
        return _ConsoleRun(self, guest, None)

    def sample(self, run: WorkloadRun) -> Sample:
        run.require_running("sample it")
        assert isinstance(run, _ConsoleRun)
        text = self._console(run.guest).console_text()
        marks = parse_frames(text)
        alive = _EXIT.search(text) is None
        if not marks:
            return Sample(
                t=run.clock(), value=None, unit=self.unit, alive=alive, detail="no MDT-FRAME yet"
            )
        newest = marks[-1]
        fresh = run.last_n is None or newest.n > run.last_n
        run.last_n = newest.n
        rate = _rate(marks[-2], newest) if fresh and len(marks) > 1 else None
        return Sample(
            t=run.clock(),
            value=rate,
            unit=self.unit,
            counter=float(newest.n),
            alive=alive,
            detail=f"frame {newest.n}, late={newest.late}",
        )

    def stop(self, run: WorkloadRun) -> None:
        """Nothing to stop in the guest (its init owns the workload); keeps the console as the
        run's output."""
        if run.state == "stopped":
            return
        try:
            run.feed(self._console(run.guest).console_text())
            run.flush()
        finally:
            run.state = "stopped"

    def parse_results(self, text: str) -> WorkloadResult:
        marks = parse_frames(text)
        if not marks:
            raise ResultParseError(f"{self.name}: no MDT-FRAME line on the console", text)
        first, last = marks[0], marks[-1]
        span_s = (last.t_ns - first.t_ns) / 1e9
        rates = [r for a, b in pairwise(marks) if (r := _rate(a, b)) is not None]
        return WorkloadResult(
            workload=self.name,
            fps=(last.n - first.n) / span_s if span_s > 0 else None,
            fps_min=min(rates) if rates else None,
            fps_max=max(rates) if rates else None,
            frames=last.n - first.n,
            duration_s=span_s,
            values={
                "late": float(last.late),
                "first_frame": float(first.n),
                "last_frame": float(last.n),
            },
            raw=text,
        )


def _rate(a: FrameMark, b: FrameMark) -> float | None:
    dt = (b.t_ns - a.t_ns) / 1e9
    return (b.n - a.n) / dt if dt > 0 and b.n >= a.n else None
