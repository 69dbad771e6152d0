"""glmark2, the OpenGL 2.0 / ES 2.0 benchmark (https://github.com/glmark2/glmark2).

What it prints, as captured from glmark2 2023.01 (Debian 13 ``glmark2-x11``) on Mesa llvmpipe
(``tests/unit/data/workloads/glmark2-*.txt``)::

    ATTENTION: default value of option vblank_mode overridden by environment.
    ** GLX does not support GLX_EXT_swap_control or GLX_MESA_swap_control!
    ** Failed to set swap interval. Results may be bounded above by refresh rate.
    =======================================================
        glmark2 2023.01
    =======================================================
        OpenGL Information
        GL_VENDOR:      Mesa
        GL_RENDERER:    llvmpipe (LLVM 19.1.7, 256 bits)
        GL_VERSION:     4.5 (Compatibility Profile) Mesa 25.0.7-2+deb13u1
        Surface Config: buf=32 r=8 g=8 b=8 a=8 depth=24 stencil=0 samples=0
        Surface Size:   1280x720 windowed
    =======================================================
    [build] duration=1.0:use-vbo=true: FPS: 388 FrameTime: 2.583 ms
    =======================================================
                                      glmark2 Score: 387
    =======================================================

One line per finished scene (each runs its ``duration``, 10 s unless the benchmark says
otherwise), its options in alphabetical order, those given with ``-b`` included. glmark2 writes
the scene's name when the scene starts and the rest of the line when it ends, so a run stopped
mid-scene ends with a partial line (``[build] duration=1.0:use-vbo=true:``). The two ``**``
lines (stderr) come before every scene where the GLX driver has no swap control (llvmpipe on
Xvfb). The score, glmark2's mean of the scenes' FPS (not always the mean of the rounded FPS
printed), only after a finite run. During a migration the definition runs one short scene
``--run-forever``, so a scene line, and a throughput reading, arrives about once a second.

The result keeps ``GL_RENDERER`` (``info["renderer"]``): :func:`renderer_problem` says when a
run that should have used the GPU rendered in software.
"""

from __future__ import annotations

import re
import statistics

from mdevtest.workloads.base import Phase, ProcessWorkload, Reading, ResultParseError, WorkloadResult

__all__ = ["Glmark2Workload", "parse_scene", "renderer_problem"]

_SCENE = re.compile(
    r"\[(?P<scene>[^\]]+)\]\s+(?P<options>.*?):\s+FPS:\s+(?P<fps>\d+(?:\.\d+)?)"
    r"(?:\s+FrameTime:\s+(?P<ft>\d+(?:\.\d+)?)\s*ms)?\s*"
)
_SCORE = re.compile(r"\s*glmark2 Score:\s*(?P<score>\d+(?:\.\d+)?)\s*")
_INFO = re.compile(r"\s*(?P<key>GL_VENDOR|GL_RENDERER|GL_VERSION|Surface Size):\s+(?P<value>.*?)\s*")
_VERSION = re.compile(r"\s*glmark2 (?P<version>\d[\w.]*)\s*")
# Mesa's software rasterisers (llvmpipe, softpipe, the classic swrast) and any renderer that
# calls itself software (e.g. "Software Rasterizer").
_SOFTWARE = re.compile(r"llvmpipe|softpipe|swrast|software", re.IGNORECASE)


def parse_scene(line: str) -> Phase | None:
    """One ``[scene] options: FPS: n FrameTime: t ms`` line as a phase, or None."""
    m = _SCENE.fullmatch(line)
    if m is None:
        return None
    extra = {"frame_time_ms": float(m["ft"])} if m["ft"] else {}
    return Phase(name=f"[{m['scene']}] {m['options']}", value=float(m["fps"]), unit="fps", extra=extra)


def renderer_problem(result: WorkloadResult, expect_software: bool) -> str | None:
    """Why the renderer of a glmark2 run does not fit what was expected, or None.

    With ``expect_software`` False (a vGPU guest), a run whose ``GL_RENDERER`` is a software
    rasteriser measured the CPU, not the GPU: that is a message, and so is a result without a
    renderer (it cannot be told). With ``expect_software`` True (the lab's llvmpipe guest)
    any renderer is fine.
    """
    if expect_software:
        return None
    renderer = result.info.get("renderer")
    if renderer is None:
        return (
            f"{result.workload}: glmark2 printed no GL_RENDERER, so whether it rendered on the "
            "GPU cannot be told"
        )
    if _SOFTWARE.search(renderer):
        return (
            f"{result.workload}: rendered in software (GL_RENDERER {renderer!r}) where a GPU was "
            "expected: the figures are the CPU's; check the guest's Mesa driver for the vGPU "
            "(/dev/dri/renderD128, `glxinfo -B`) and the X server's driver"
        )
    return None


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
