"""A 2D workload: x11perf, the X11 server performance test (xorg ``app/x11perf``).

x11perf prints one line per repetition of a test, and with ``-repeat`` > 1 one average line
(``trep``) once all repetitions of the test are done; the format is ``ReportTimes()`` in
``x11perf.c`` (``%7d reps @ %8.4f msec (%8.1f/sec): %s``)::

      40000 reps @   0.0277 msec ( 36100.0/sec): 500x500 rectangle
      40000 reps @   0.0269 msec ( 37200.0/sec): 500x500 rectangle
      40000 reps @   0.0253 msec ( 39500.0/sec): 500x500 rectangle
     120000 trep @   0.0266 msec ( 37500.0/sec): 500x500 rectangle

With ``-time 1`` each repetition lasts about a second, so during a migration the definition
repeats one test many times and every line is a throughput reading (objects per second). As
captured from x11perf 1.6.1 (Debian 13 ``x11-apps``) on Xvfb, the first line comes only after a
header (server, host, date, "Sync time adjustment") and a calibration of several seconds; the
rate has three significant digits; SIGTERM ends it without an average line.
"""

from __future__ import annotations

import re
import statistics

from mdevtest.workloads.base import Phase, ProcessWorkload, Reading, ResultParseError, WorkloadResult

_REP = re.compile(
    r"\s*(?P<n>\d+)\s+(?P<kind>reps|trep)\s+@\s+(?P<msec>\d+(?:\.\d+)?)\s+msec\s+"
    r"\(\s*(?P<rate>\d+(?:\.\d+)?)/sec\):\s+(?P<label>.+?)\s*"
)


class X11perfWorkload(ProcessWorkload):
    driver = "x11perf"
    kinds = ("2d",)
    unit = "ops/s"
    throughput_method = (
        "x11perf's own objects per second of the newest repetition (-time 1: about a second each)"
    )

    def parse_progress(self, line: str) -> Reading | None:
        m = _REP.fullmatch(line)
        if m is None or m["kind"] != "reps":
            return None
        return Reading(rate=float(m["rate"]), detail=m["label"])

    def parse_results(self, text: str) -> WorkloadResult:
        reps: dict[str, list[re.Match[str]]] = {}
        averages: dict[str, re.Match[str]] = {}
        for line in text.splitlines():
            m = _REP.fullmatch(line)
            if m is None:
                continue
            if m["kind"] == "trep":
                averages[m["label"]] = m
            else:
                reps.setdefault(m["label"], []).append(m)
        if not reps and not averages:
            raise ResultParseError(
                f"{self.name}: no x11perf result line (reps/trep @ ... msec) in the output", text
            )
        phases = []
        for label in dict.fromkeys([*reps, *averages]):
            runs = reps.get(label, [])
            if label in averages:  # x11perf's own average over all repetitions
                avg = averages[label]
                rate, msec, count = float(avg["rate"]), float(avg["msec"]), len(runs) or None
            else:  # stopped before the average line: the mean of the repetitions seen
                rate = statistics.fmean(float(r["rate"]) for r in runs)
                msec = statistics.fmean(float(r["msec"]) for r in runs)
                count = len(runs)
            extra = {"msec": msec} | ({"repetitions": float(count)} if count else {})
            phases.append(Phase(name=label, value=rate, unit="ops/s", extra=extra))
        return WorkloadResult(workload=self.name, phases=tuple(phases), raw=text)
