"""Futuremark 3DMark06 in a Windows guest, driven through qemu-guest-agent.

How it is started: qemu-guest-agent runs as a Windows service in session 0, where a Direct3D 9
program gets no display. So the guest image holds a scheduled task (``options.task``) that runs
the definition's ``command`` *interactively* in the logged-on user's session, created once with::

    schtasks /Create /TN mdt-3dmark06 /SC ONCE /ST 00:00 /IT /RU <user> /F
             /TR "\\"C:\\...\\3DMark06.exe\\" -nosplash -nosysteminfo -noscreens -res=1280x1024 ..."

and the workload runs ``schtasks /Run /TN mdt-3dmark06`` through ``guest-exec``; ``tasklist``
says whether ``3DMark06.exe`` still runs and ``taskkill`` stops it. Per-test switches
(``-gt1 -gt2 -hdr1 -hdr2 -cpu1 -cpu2``, ``-gtall -cpuall``) and the trailing result-file
argument need the Professional Edition.

What is parsed: the result summary as 3DMark06 shows it in *Result Details* (the figures and
labels 3DMark06 prints; how a lab exports them to ``result_file`` is up to the image)::

    3DMark Score        5736 3DMarks
    SM2.0 Score         2302 Marks
    HDR/SM3.0 Score     2292 Marks
    CPU Score           1781 Marks
    GT1 - Return To Proxycon    18.642 FPS
    ...
    CPU2 - Red Valley    0.884 FPS

Label and value may be separated by spaces, tabs or a colon. The binary ``.3dr`` project file is
not parsed (its layout is not documented). 3DMark06 prints nothing while it runs, so samples
only say whether it is running (``progress_readings = False``).

**Unproven** (``proven = False``): 3DMark06 itself does not write ``result_file``; no documented
option that exports the Result Details as text was found, so the guest image must produce that
file by its own means, and the driver has never run against a real 3DMark06 (see
``unproven_reason``; every result says so in ``info["unproven"]``). It is a ``finite``
benchmark: ``stop()`` waits for 3DMark06.exe to end by itself, bounded by the definition's
``timeout_s`` from the start, before it closes it; whether 3DMark06 exits by itself after a
command-line run is not documented either (automation that runs it under Wine waits for it to
return), so an image where it does not costs that whole bound.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Mapping
from typing import ClassVar

from mdevtest.errors import CommandFailed, MdevtestError
from mdevtest.remote import quote_argv
from mdevtest.workloads import base
from mdevtest.workloads.base import (
    GuestExec,
    Phase,
    ResultParseError,
    Sample,
    Workload,
    WorkloadDefinition,
    WorkloadError,
    WorkloadResult,
    WorkloadRun,
    decode_text,
    number,
)

_SCORES = {
    "3dmark score": "score",
    "sm2.0 score": "sm2_score",
    "sm 2.0 score": "sm2_score",
    "hdr/sm3.0 score": "hdr_sm3_score",
    "hdr/sm 3.0 score": "hdr_sm3_score",
    "cpu score": "cpu_score",
}
_SCORE = re.compile(
    r"\s*(?P<label>3DMark Score|SM ?2\.0 Score|HDR/SM ?3\.0 Score|CPU Score)\s*[:\t ]\s*"
    r"(?P<value>\d[\d,]*(?:\.\d+)?)\s*(?:3DMarks|Marks)?\s*",
    re.IGNORECASE,
)
_TEST = re.compile(
    r"\s*(?P<id>GT\d|HDR\d|CPU\d)\s*-\s*(?P<title>.+?)\s*[:\t ]\s*(?P<fps>\d+(?:\.\d+)?)\s*FPS\s*",
    re.IGNORECASE,
)
_START_GRACE_S = 60.0  # a scheduled task may take a while to show its process
_CLOSE_GRACE_S = 15.0


class _TaskRun(WorkloadRun):
    seen = False


class ThreeDMark06Workload(Workload):
    driver = "3dmark06"
    kinds = ("3d",)
    guest_oses = ("windows",)
    unit = "fps"
    throughput_method = (
        "none while running (3DMark06 prints no progress; samples say whether 3DMark06.exe runs, "
        "from tasklist); scores and per-test FPS from its result file"
    )
    options: ClassVar[Mapping[str, str]] = {
        "task": "the guest's scheduled task that runs `command` in the user's session"
    }
    progress_readings = False
    finite = True
    proven = False
    unproven_reason = (
        "3DMark06 does not write result_file: the file named last on its command line is a "
        ".3dr project (binary, layout not documented), and no documented option that exports "
        "the Result Details as text was found (automation seen elsewhere greps '(n fps)' from "
        "log*.html files that -verbose leaves in its folder; not verified). The image must "
        "produce result_file itself; its format here is reconstructed from the labels of the "
        "Result Details dialog, and the driver has never run against a real 3DMark06"
    )

    @classmethod
    def validate_definition(cls, definition: WorkloadDefinition) -> list[str]:
        problems = super().validate_definition(definition)
        if "task" not in definition.options:
            problems.append(
                "options.task: missing (required by driver 3dmark06: the scheduled task to run)"
            )
        if definition.result_file is None:
            problems.append("result_file: missing (required by driver 3dmark06: where the scores are)")
        elif re.search(r"[\s&|<>^()%!\"]", definition.result_file):
            problems.append(
                f"result_file: {definition.result_file!r}: no spaces or cmd.exe special characters "
                "(it is deleted with `cmd /c del` before each run)"
            )
        return problems

    @property
    def image(self) -> str:
        """The program's image name, as tasklist and taskkill know it."""
        assert self.definition.command is not None
        return re.split(r"[\\/]", self.definition.command[0])[-1]

    @property
    def task(self) -> str:
        return self.definition.options["task"]

    def missing(self, guest: GuestExec) -> list[str]:
        problems = super().missing(guest)
        rc, _out, err = guest.run(["schtasks", "/Query", "/TN", self.task], timeout=60)
        if rc != 0:
            problems.append(f"no scheduled task {self.task!r} ({err.strip() or f'rc={rc}'})")
        return problems

    def _running(self, guest: GuestExec) -> bool:
        argv = ["tasklist", "/FI", f"IMAGENAME eq {self.image}", "/NH", "/FO", "CSV"]
        rc, out, err = guest.run(argv, timeout=30)
        if rc != 0:
            raise CommandFailed(guest.name, quote_argv(argv), rc, err)
        return f'"{self.image.lower()}"' in out.lower()

    def start(self, guest: GuestExec) -> WorkloadRun:
        mismatch = self._os_mismatch(guest)
        if mismatch:
            raise WorkloadError(f"{self.name}: cannot start in {guest.name}: {mismatch[0]}")
        if self._running(guest):
            raise WorkloadError(
                f"{self.name}: {self.image} already runs in {guest.name}; stop it first "
                f"(taskkill /IM {self.image} /F)"
            )
        assert self.definition.result_file is not None
        guest.run(["cmd.exe", "/c", "del", "/f", "/q", self.definition.result_file], timeout=30)
        argv = ["schtasks", "/Run", "/TN", self.task]
        rc, _out, err = guest.run(argv, timeout=60)
        if rc != 0:
            raise CommandFailed(guest.name, quote_argv(argv), rc, err)
        return _TaskRun(self, guest, None)

    def sample(self, run: WorkloadRun) -> Sample:
        run.require_running("sample it")
        running = self._running(run.guest)
        assert isinstance(run, _TaskRun)
        run.seen = run.seen or running
        starting = not run.seen and run.clock() - run.started < _START_GRACE_S
        alive = running or starting
        if not alive:
            run.exited = True
        detail = "running" if running else ("starting" if starting else "not running")
        return Sample(t=run.clock(), value=None, unit=self.unit, alive=alive, detail=detail)

    def stop(self, run: WorkloadRun) -> None:
        if run.state == "stopped":
            return
        guest = run.guest
        try:
            running = self._running(guest)
            if running and self.finite:
                try:
                    running = self._await_end(run)
                except BaseException:  # interrupted or unreachable while waiting: leave nothing
                    run.killed = True
                    guest.run(["taskkill", "/IM", self.image, "/T", "/F"], timeout=30)
                    raise
            if running:
                run.killed = True
                guest.run(["taskkill", "/IM", self.image, "/T"], timeout=30)  # asks the window to close
                deadline = time.monotonic() + _CLOSE_GRACE_S
                while self._running(guest) and time.monotonic() < deadline:
                    time.sleep(1.0)
                if self._running(guest):
                    guest.run(["taskkill", "/IM", self.image, "/T", "/F"], timeout=30)
            run.exited = True
            assert self.definition.result_file is not None
            try:
                run.result_text = decode_text(guest.read_file(self.definition.result_file, timeout=60))
            except MdevtestError:
                run.result_text = None  # no result file: stopped before 3DMark06 wrote one
        finally:
            run.state = "stopped"

    def _await_end(self, run: WorkloadRun) -> bool:
        """Wait until 3DMark06.exe is gone or the run is ``timeout_s`` old; whether it still runs."""
        deadline = run.started + self.definition.timeout_s
        while (remaining := deadline - run.clock()) > 0:
            time.sleep(min(base.FINISH_POLL_S, remaining))
            if not self._running(run.guest):
                return False
        return True

    def parse_results(self, text: str) -> WorkloadResult:
        values: dict[str, float] = {}
        phases: list[Phase] = []
        for line in text.splitlines():
            if m := _SCORE.fullmatch(line):
                label = re.sub(r"\s+", " ", m["label"].lower())
                values.setdefault(_SCORES[label], number(m["value"]))
            elif m := _TEST.fullmatch(line):
                phases.append(
                    Phase(name=f"{m['id'].upper()} - {m['title']}", value=float(m["fps"]), unit="fps")
                )
        if not values and not phases:
            raise ResultParseError(f"{self.name}: no 3DMark06 score or test line in the result", text)
        score = values.pop("score", None)
        graphics = [p.value for p in phases if not p.name.startswith("CPU")]
        return WorkloadResult(
            workload=self.name,
            score=score,
            score_unit="3DMarks" if score is not None else None,
            fps=statistics.fmean(graphics) if graphics else None,
            fps_min=min(graphics) if graphics else None,
            fps_max=max(graphics) if graphics else None,
            phases=tuple(phases),
            values=values,
            info=self.caveats(),
            raw=text,
        )
