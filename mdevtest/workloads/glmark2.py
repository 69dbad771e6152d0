"""glmark2, the OpenGL 2.0 / ES 2.0 benchmark (https://github.com/glmark2/glmark2).

What it prints (glmark2 2021.02 and 2023.01, the releases Debian and Ubuntu ship)::

    =======================================================
        glmark2 2023.01
    =======================================================
        OpenGL Information
        GL_VENDOR:      Intel
        GL_RENDERER:    Mesa Intel(R) UHD Graphics 630 (CFL GT2)
        ...
    =======================================================
    [build] use-vbo=false: FPS: 1843 FrameTime: 0.543 ms
    [texture] texture-filter=nearest: FPS: 2110 FrameTime: 0.474 ms
    =======================================================
                                      glmark2 Score: 1672
    =======================================================

One line per finished scene (each runs its ``duration``, 10 s unless the benchmark says
otherwise); the score, the mean of the scene FPS, only after a finite run. During a migration the
definition runs one short scene ``--run-forever``, so a scene line, and a throughput reading,
arrives about once a second.
"""

from __future__ import annotations

import re
import statistics

from mdevtest.workloads.base import Phase, ProcessWorkload, Reading, ResultParseError, WorkloadResult

_SCENE = re.compile(
    r"\[(?P<scene>[^\]]+)\]\s+(?P<options>.*?):\s+FPS:\s+(?P<fps>\d+(?:\.\d+)?)"
    r"(?:\s+FrameTime:\s+(?P<ft>\d+(?:\.\d+)?)\s*ms)?\s*"
)
_SCORE = re.compile(r"\s*glmark2 Score:\s*(?P<score>\d+(?:\.\d+)?)\s*")
_INFO = re.compile(r"\s*(?P<key>GL_VENDOR|GL_RENDERER|GL_VERSION|Surface Size):\s+(?P<value>.*?)\s*")
_VERSION = re.compile(r"\s*glmark2 (?P<version>\d[\w.]*)\s*")


def parse_scene(line: str) -> Phase | None:
    """One ``[scene] options: FPS: n FrameTime: t ms`` line as a phase, or None."""
    m = _SCENE.fullmatch(line)
    if m is None:
        return None
    extra = {"frame_time_ms": float(m["ft"])} if m["ft"] else {}
    return Phase(name=f"[{m['scene']}] {m['options']}", value=float(m["fps"]), unit="fps", extra=extra)


class Glmark2Workload(ProcessWorkload):
    driver = "glmark2"
    kinds = ("3d",)
    unit = "fps"
    throughput_method = (
        "glmark2's own FPS of the newest finished scene (one scene of `duration` seconds, looped "
        "with --run-forever), read from its output on the controller"
    )

    def parse_progress(self, line: str) -> Reading | None:
        phase = parse_scene(line)
        return None if phase is None else Reading(rate=phase.value, detail=phase.name)

    def parse_results(self, text: str) -> WorkloadResult:
        phases: list[Phase] = []
        score: float | None = None
        info: dict[str, str] = {}
        for line in text.splitlines():
            phase = parse_scene(line)
            if phase is not None:
                phases.append(phase)
                continue
            if m := _SCORE.fullmatch(line):
                score = float(m["score"])
            elif m := _INFO.fullmatch(line):
                info.setdefault(m["key"].lower().removeprefix("gl_").replace(" ", "_"), m["value"])
            elif m := _VERSION.fullmatch(line):
                info.setdefault("version", m["version"])
        if not phases and score is None:
            raise ResultParseError(f"{self.name}: no glmark2 scene line or score in the output", text)
        fps = [p.value for p in phases]
        return WorkloadResult(
            workload=self.name,
            score=score,
            score_unit="glmark2 score" if score is not None else None,
            fps=statistics.fmean(fps) if fps else None,
            fps_min=min(fps) if fps else None,
            fps_max=max(fps) if fps else None,
            phases=tuple(phases),
            info=info,
            raw=text,
        )
