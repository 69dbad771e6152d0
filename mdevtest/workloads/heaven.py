"""Unigine Heaven 4.0 on Linux, run automatically.

The benchmark binary is started directly (``bin/heaven_x64``, as the Phoronix Test Suite does;
the ``./heaven`` script only opens the launcher GUI) with ``-extern_define PHORONIX,...``: with
that define the engine runs the benchmark camera path once, prints its result block on stdout
and exits. What is implemented is that block, as the Unigine engine prints it (tab-separated;
the same in Heaven 4.0 and Valley 1.0)::

    Benchmark results:
    Time:	260.061
    Frames:	6918
    FPS:	26.6013
    Min FPS:	8.12981
    Max FPS:	55.8081
    Score:	670.082

The HTML report of the launcher's GUI runs is not read. Heaven prints no progress while it
runs, so its samples only say whether it is still running (``progress_readings = False``), and
it prints the block only when its pass ends: it is a ``finite`` benchmark, whose ``stop()`` waits
for that end (bounded by the definition's ``timeout_s`` from the start) instead of killing it
first. Unproven: no real Heaven output was ever captured for its tests (see ``unproven_reason``).
"""

from __future__ import annotations

import re

from mdevtest.workloads.base import ProcessWorkload, Reading, ResultParseError, WorkloadResult

_FIELD = re.compile(
    r"\s*(?P<key>Time|Frames|FPS|Min FPS|Max FPS|Score):\s*(?P<value>-?\d+(?:\.\d+)?)\s*"
)
_MARK = "Benchmark results:"


class HeavenWorkload(ProcessWorkload):
    driver = "heaven"
    kinds = ("3d",)
    unit = "fps"
    throughput_method = (
        "none while running (Heaven prints no progress; samples only say whether it runs); "
        "FPS, min/max FPS and score from its result block at the end"
    )
    progress_readings = False
    finite = True
    proven = False
    unproven_reason = (
        "Heaven 4.0's output was never captured from a real run (Unigine's licence keeps it out "
        "of the lab images): the 'Benchmark results:' block this driver parses is reconstructed "
        "from the layout Unigine engine benchmarks print, and that -extern_define PHORONIX makes "
        "it run one pass, print the block and exit is taken from how the Phoronix Test Suite "
        "runs it, not verified"
    )

    def parse_progress(self, line: str) -> Reading | None:
        return None

    def parse_results(self, text: str) -> WorkloadResult:
        lines = text.splitlines()
        # The figures after the last "Benchmark results:" (a log may hold several runs).
        start = max((i for i, line in enumerate(lines) if line.strip() == _MARK), default=-1)
        fields: dict[str, float] = {}
        for line in lines[start + 1 :]:
            if m := _FIELD.fullmatch(line):
                fields.setdefault(m["key"], float(m["value"]))
        if start < 0 or "FPS" not in fields:
            raise ResultParseError(
                f"{self.name}: no Heaven result block ({_MARK!r} with FPS:) in the output; "
                "was it started with -extern_define PHORONIX and did it run to the end?",
                text,
            )
        frames = fields.get("Frames")
        return WorkloadResult(
            workload=self.name,
            score=fields.get("Score"),
            score_unit="Heaven score" if "Score" in fields else None,
            fps=fields["FPS"],
            fps_min=fields.get("Min FPS"),
            fps_max=fields.get("Max FPS"),
            frames=int(frames) if frames is not None else None,
            duration_s=fields.get("Time"),
            info=self.caveats(),
            raw=text,
        )
