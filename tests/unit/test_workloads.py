"""Workloads: parsers on the tools' real output formats, the guest channels, the registry,
sampling across a switchover and the dip (mdevtest.workloads)."""

from __future__ import annotations

import base64
import codecs
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from mdevtest.errors import CommandFailed, CommandTimedOut, GuestError, QmpError, StateError
from mdevtest.localexec import LocalExecutor
from mdevtest.workloads.base import (
    ExecResult,
    GuestExec,
    GuestExecError,
    GuestOS,
    GuestProcess,
    ProcessOutput,
    ResultParseError,
    Sample,
    UnknownWorkload,
    Workload,
    WorkloadDefinition,
    WorkloadDefinitionError,
    WorkloadError,
    WorkloadResult,
    WorkloadRun,
    split_lines,
)
from mdevtest.workloads.glmark2 import Glmark2Workload, renderer_problem
from mdevtest.workloads.guestexec import ConsoleGuestExec, QgaGuestExec, ShellGuestExec
from mdevtest.workloads.heaven import HeavenWorkload
from mdevtest.workloads.media import FfmpegWorkload, GstWorkload, clock_seconds, parse_ffmpeg_stats
from mdevtest.workloads.registry import (
    DEFINITIONS_DIR,
    get_workload,
    known_workloads,
    load_definition,
    load_definitions,
)
from mdevtest.workloads.sampling import Sampler, dip, switchover_window
from mdevtest.workloads.synthetic_def import SyntheticWorkload
from mdevtest.workloads.threedmark06 import ThreeDMark06Workload
from mdevtest.workloads.twod import X11perfWorkload

DATA = Path(__file__).parent / "data" / "workloads"
SHIPPED = (
    "3dmark06",
    "ffmpeg-sw-decode",
    "ffmpeg-sw-encode",
    "ffmpeg-vaapi-decode",
    "ffmpeg-vaapi-encode",
    "glmark2",
    "gst-qsv-decode",
    "gst-sw-decode",
    "gst-vaapi-decode",
    "heaven",
    "synthetic",
    "x11perf",
)


def sample_text(name: str) -> str:
    return (DATA / name).read_bytes().decode("utf-8")


def definition(**fields: Any) -> WorkloadDefinition:
    base: dict[str, Any] = {"name": "t", "kind": "3d", "driver": "glmark2", "description": "test"}
    return WorkloadDefinition.model_validate(base | fields)


# -- parsers --------------------------------------------------------------------------------------
# Files without "reconstructed" in their name are the tools' real output, captured with
# scripts/capture-workload-output (see data/workloads/README.md); the reconstructed ones are for
# programs or hardware that cannot run here (Heaven, 3DMark06, VA-API, QSV): their drivers are
# unproven against the real programs.


def test_glmark2_default_run_gives_every_scene_the_score_and_the_renderer() -> None:
    text = sample_text("glmark2-default.txt")  # captured: glmark2 2023.01 on llvmpipe
    result = get_workload("glmark2").parse_results(text)
    assert (result.score, result.score_unit) == (192, "glmark2 score")
    assert len(result.phases) == 33
    first, last = result.phases[0], result.phases[-1]
    assert (first.name, first.value, dict(first.extra)) == (
        "[build] use-vbo=false",
        410,
        {"frame_time_ms": 2.443},
    )
    assert (last.name, last.value) == (
        "[loop] fragment-steps=5:fragment-uniform=true:vertex-steps=5",
        301,
    )
    assert [p.name for p in result.phases].count("[terrain] <default>") == 1
    # glmark2's score is its own mean: not the mean of the rounded FPS it prints
    assert result.fps == pytest.approx(193.64, abs=0.01)
    assert (result.fps_min, result.fps_max) == (3, 469)  # terrain, texture-filter=nearest
    assert dict(result.info) == {
        "version": "2023.01",
        "vendor": "Mesa",
        "renderer": "llvmpipe (LLVM 19.1.7, 256 bits)",
        "surface_size": "1280x720 windowed",
    }


def test_glmark2_finite_build_scene_prints_a_score() -> None:
    result = get_workload("glmark2").parse_results(sample_text("glmark2-build-score.txt"))
    assert [(p.name, p.value) for p in result.phases] == [("[build] duration=1.0:use-vbo=true", 367)]
    assert result.phases[0].extra["frame_time_ms"] == 2.728
    assert result.score == 366


def test_glmark2_run_forever_has_scenes_but_no_score() -> None:
    text = sample_text("glmark2-run-forever.txt")  # the definition's command, stopped with SIGTERM
    result = get_workload("glmark2").parse_results(text)
    assert result.score is None
    assert [p.value for p in result.phases] == [270, 345, 448, 318, 335, 295, 370]
    assert {p.name for p in result.phases} == {"[build] duration=1.0:use-vbo=true"}
    assert result.fps_min == 270
    # stopped mid-scene: glmark2 had written the scene's name, not yet its FPS
    assert text.endswith("\n[build] duration=1.0:use-vbo=true:")
    assert result.info["renderer"] == "llvmpipe (LLVM 19.1.7, 256 bits)"


def test_glmark2_progress_lines_and_other_lines() -> None:
    wl = get_workload("glmark2")
    assert isinstance(wl, Glmark2Workload)
    lines = split_lines(sample_text("glmark2-run-forever.txt"))
    reading = wl.parse_progress(lines[15])
    assert lines[15] == "[build] duration=1.0:use-vbo=true: FPS: 270 FrameTime: 3.714 ms"
    assert reading is not None
    assert (reading.rate, reading.counter, reading.detail) == (
        270,
        None,
        "[build] duration=1.0:use-vbo=true",
    )
    # the header, glmark2's stderr warnings, the half-written last scene and the score are not
    assert [line for line in lines if wl.parse_progress(line) is None][:3] == [
        "ATTENTION: default value of option vblank_mode overridden by environment.",
        "** GLX does not support GLX_EXT_swap_control or GLX_MESA_swap_control!",
        "** Failed to set swap interval. Results may be bounded above by refresh rate.",
    ]
    assert wl.parse_progress(lines[-1]) is None
    assert wl.parse_progress("                                  glmark2 Score: 366 ") is None
    with pytest.raises(ResultParseError, match="no glmark2 scene line") as info:
        wl.parse_results("Error: main: Could not initialize canvas\n")
    assert "Could not initialize canvas" in str(info.value)


def test_renderer_problem_tells_a_software_fallback_from_a_gpu() -> None:
    wl = get_workload("glmark2")
    llvmpipe = wl.parse_results(sample_text("glmark2-build-score.txt"))
    assert renderer_problem(llvmpipe, expect_software=True) is None  # the lab's llvmpipe guest
    problem = renderer_problem(llvmpipe, expect_software=False)
    assert problem == (
        "glmark2: rendered in software (GL_RENDERER 'llvmpipe (LLVM 19.1.7, 256 bits)') where a "
        "GPU was expected: the figures are the CPU's; check the guest's Mesa driver for the vGPU "
        "(/dev/dri/renderD128, `glxinfo -B`) and the X server's driver"
    )
    # the same output with another renderer line: a GPU's renderer is fine, other software ones not
    for renderer, software in [
        ("Mesa Intel(R) UHD Graphics 630 (CFL GT2)", False),
        ("softpipe", True),
        ("Software Rasterizer", True),
        ("Mesa DRI Intel(R) Ivybridge Desktop x86/MMX/SSE2 (swrast)", True),
    ]:
        text = sample_text("glmark2-build-score.txt").replace(
            "llvmpipe (LLVM 19.1.7, 256 bits)", renderer
        )
        result = wl.parse_results(text)
        assert result.info["renderer"] == renderer
        assert (renderer_problem(result, expect_software=False) is not None) == software, renderer
    no_header = wl.parse_results("[build] use-vbo=true: FPS: 388 FrameTime: 2.583 ms\n")
    assert renderer_problem(no_header, expect_software=False) == (
        "glmark2: glmark2 printed no GL_RENDERER, so whether it rendered on the GPU cannot be told"
    )
    assert renderer_problem(no_header, expect_software=True) is None


def test_heaven_result_block() -> None:
    # reconstructed: no real Heaven run was ever captured, and the driver says so
    result = get_workload("heaven").parse_results(sample_text("heaven-4.0-phoronix.reconstructed.log"))
    assert result.fps == pytest.approx(26.6013)
    assert (result.fps_min, result.fps_max) == (pytest.approx(8.12981), pytest.approx(55.8081))
    assert result.score == pytest.approx(670.082)
    assert result.frames == 6918
    assert result.duration_s == pytest.approx(260.061)
    assert result.info["unproven"] == HeavenWorkload.unproven_reason
    assert "never captured from a real run" in result.info["unproven"]


def test_heaven_without_result_block_says_how_it_must_be_run() -> None:
    text = sample_text("heaven-4.0-phoronix.reconstructed.log").split("Benchmark results:")[0]
    with pytest.raises(ResultParseError, match="extern_define PHORONIX"):
        get_workload("heaven").parse_results(text)


def test_3dmark06_result_details() -> None:
    # reconstructed: 3DMark06 does not write this file itself, and the driver says so
    result = get_workload("3dmark06").parse_results(
        sample_text("3dmark06-result-details.reconstructed.txt")
    )
    assert (result.score, result.score_unit) == (4585, "3DMarks")
    assert dict(result.values) == {"sm2_score": 1704, "hdr_sm3_score": 1650, "cpu_score": 3912}
    assert [(p.name, p.value) for p in result.phases] == [
        ("GT1 - Return To Proxycon", 13.9),
        ("GT2 - Firefly Forest", 14.5),
        ("HDR1 - Canyon Flight", 18.1),
        ("HDR2 - Deep Freeze", 14.9),
        ("CPU1 - Red Valley", 1.24),
        ("CPU2 - Red Valley", 1.975),
    ]
    # the mean FPS is over the graphics tests only
    assert result.fps == pytest.approx((13.9 + 14.5 + 18.1 + 14.9) / 4)
    assert (result.fps_min, result.fps_max) == (13.9, 18.1)
    assert result.info["unproven"].startswith("3DMark06 does not write result_file")


def test_3dmark06_accepts_colons_spaces_and_thousands_separators() -> None:
    text = (
        "3DMark Score: 12,345 3DMarks\nSM 2.0 Score   5,001\ncpu score:3,000 Marks\n"
        "GT1 - Return to Proxycon: 41.5 fps\n"
    )
    result = get_workload("3dmark06").parse_results(text)
    assert result.score == 12345
    assert dict(result.values) == {"sm2_score": 5001, "cpu_score": 3000}
    assert result.phases[0].name == "GT1 - Return to Proxycon"


def test_ffmpeg_progress_lines_are_split_at_carriage_returns() -> None:
    text = sample_text("ffmpeg-sw-decode.txt")  # captured: ffmpeg 7.1, stopped with SIGTERM
    assert text.count("\r") == 11  # each progress line rewrites the previous one
    stats = [f for f in map(parse_ffmpeg_stats, split_lines(text)) if f]
    assert len(stats) == 12
    assert stats[0] == {
        "frame": "182",
        "fps": "0.0",  # ffmpeg prints 0.0 during the first second
        "q": "-0.0",
        "size": "N/A",
        "time": "00:00:06.06",
        "bitrate": "N/A",
        "speed": "12.1x",
    }
    assert stats[8]["speed"] == "13x"  # "speed=  13x": ffmpeg pads %4.3g
    assert [int(s["frame"]) for s in stats] == [
        182, 378, 572, 773, 969, 1161, 1360, 1552, 1752, 1958, 2157, 2373,
    ]  # fmt: skip
    # the banner, "Stream mapping" and "Input #0" lines are not progress
    assert parse_ffmpeg_stats("ffmpeg stats and -progress period set to 0.5.") is None
    assert (
        parse_ffmpeg_stats("  Stream #0:0 -> #0:0 (h264 (native) -> wrapped_avframe (native))") is None
    )
    assert "Stream #0:0 -> #0:0 (h264 (native) -> wrapped_avframe (native))" in text


def test_ffmpeg_results_from_the_final_line() -> None:
    result = get_workload("ffmpeg-sw-decode").parse_results(sample_text("ffmpeg-sw-decode.txt"))
    assert (result.frames, result.fps) == (2373, 394)
    assert result.values["speed"] == pytest.approx(13.1)
    assert result.values["media_time_s"] == pytest.approx(79.13)
    assert "bitrate_kbps" not in result.values  # N/A with the null muxer
    assert result.duration_s is None  # ffmpeg 7.1 prints no elapsed=
    assert result.info["final"] == "yes"
    enc = get_workload("ffmpeg-sw-encode").parse_results(sample_text("ffmpeg-sw-encode.txt"))
    assert (enc.frames, enc.fps, enc.values["speed"]) == (1007, 165, 5.52)
    assert "h264 (native) -> h264 (libx264)" in enc.raw
    # reconstructed hardware runs (VA-API): the same progress format, unproven command lines
    vaapi = get_workload("ffmpeg-vaapi-decode").parse_results(
        sample_text("ffmpeg-5.1-vaapi-decode.reconstructed.txt")
    )
    assert (vaapi.frames, vaapi.fps, vaapi.values["speed"]) == (1718, 264, 8.81)
    vaapi_enc = get_workload("ffmpeg-vaapi-encode").parse_results(
        sample_text("ffmpeg-5.1-vaapi-encode.reconstructed.txt")
    )
    assert (vaapi_enc.frames, vaapi_enc.fps) == (409, 117)


def test_ffmpeg_optional_fields_and_clock_values() -> None:
    # a made-up line with every optional field (dup=, drop=, a bitrate, elapsed=)
    line = (
        "frame= 2400 fps=240 q=26.0 size=   10240KiB time=00:01:20.00 bitrate=1048.6kbits/s "
        "dup=2 drop=5 speed=8.00x elapsed=0:00:10.01"
    )
    result = get_workload("ffmpeg-sw-encode").parse_results(line)
    assert result.duration_s == pytest.approx(10.01)
    assert result.values["bitrate_kbps"] == pytest.approx(1048.6)
    assert (result.values["dropped"], result.values["duplicated"]) == (5, 2)
    assert result.info["final"] == "no"
    assert clock_seconds("01:02:03.50") == pytest.approx(3723.5)
    assert clock_seconds("N/A") is None
    with pytest.raises(ResultParseError, match="no ffmpeg progress line"):
        get_workload("ffmpeg-vaapi-encode").parse_results(
            "[AVHWDeviceContext @ 0x55d] Failed to initialise VAAPI connection: "
            "-1 (unknown libva error).\n"
        )


def test_gstreamer_fpsdisplaysink_messages() -> None:
    wl = get_workload("gst-sw-decode")
    result = wl.parse_results(sample_text("gst-sw-decode.txt"))  # captured: GStreamer 1.26
    assert result.frames == 2381
    assert result.fps == pytest.approx(475.92)  # the last average
    assert (result.fps_min, result.fps_max) == (pytest.approx(316.98), pytest.approx(573.87))
    assert dict(result.values) == {"dropped": 0}
    assert result.duration_s is None  # killed, no "Execution ended"
    readings = wl.readings(split_lines(sample_text("gst-sw-decode.txt")))
    assert [(r.rate, r.counter) for r in readings] == [
        (555.05, 556),
        (573.87, 1130),
        (497.85, 1628),
        (435.71, 2064),
        (316.98, 2381),
    ]
    # reconstructed hardware runs: the same sink messages, unproven decoders
    vaapi = get_workload("gst-vaapi-decode").parse_results(
        sample_text("gst-1.22-vaapih264dec-loop.reconstructed.txt")
    )
    assert (vaapi.frames, vaapi.fps) == (3534, pytest.approx(392.67))
    qsv = get_workload("gst-qsv-decode").parse_results(
        sample_text("gst-1.22-qsvh264dec-eos.reconstructed.txt")
    )
    assert (qsv.frames, qsv.duration_s) == (1561, pytest.approx(4.619873401))


def test_gstreamer_drop_form_and_errors() -> None:
    wl = get_workload("gst-sw-decode")
    assert isinstance(wl, GstWorkload)
    # the form fpsdisplaysink uses once frames were dropped (gstfpsdisplaysink.c; not captured)
    line = (
        "/GstPipeline:pipeline0/GstFPSDisplaySink:fpsdisplaysink0: last-message = "
        "rendered: 2998, dropped: 3, fps: 58.20, drop rate: 1.20"
    )
    reading = wl.parse_progress(line)
    assert reading is not None
    assert (reading.rate, reading.counter, reading.detail) == (58.2, 2998, "dropped=3")
    result = wl.parse_results(line)
    assert (result.fps, result.values["dropped"], result.values["drop_rate"]) == (None, 3, 1.2)
    with pytest.raises(ResultParseError, match='no element "qsvh264dec"'):
        wl.parse_results('WARNING: erroneous pipeline: no element "qsvh264dec"\n')


def test_x11perf_repetitions_and_averages() -> None:
    wl = get_workload("x11perf")
    result = wl.parse_results(sample_text("x11perf-rect500-repeat3.txt"))  # captured, Xvfb
    (rect,) = result.phases
    assert (rect.name, rect.value, rect.unit) == ("500x500 rectangle", 29500, "ops/s")
    assert dict(rect.extra) == {"msec": 0.0339, "repetitions": 3}  # from x11perf's trep line
    # stopped before the average line: the mean of the repetitions seen
    loop = wl.parse_results(sample_text("x11perf-rect500-loop.txt"))
    rates = [30500, 30100, 28600, 31600, 33200, 27800, 30300, 34100]
    assert loop.phases[0].value == pytest.approx(sum(rates) / len(rates))
    assert loop.phases[0].extra["repetitions"] == 8
    assert isinstance(wl, X11perfWorkload)
    readings = wl.readings(split_lines(sample_text("x11perf-rect500-loop.txt")))
    assert [r.rate for r in readings] == rates
    assert (
        wl.parse_progress("     150000 trep @   0.0339 msec ( 29500.0/sec): 500x500 rectangle") is None
    )
    assert wl.parse_progress("Sync time adjustment is 0.0232 msecs.") is None


def test_synthetic_results_from_the_console() -> None:
    result = get_workload("synthetic").parse_results(sample_text("synthetic-console.log"))
    assert result.frames == 64
    assert result.fps == pytest.approx(64 / 7)
    assert (result.fps_min, result.fps_max) == (pytest.approx(4.0), pytest.approx(10.0))
    assert result.values["late"] == 1


# -- qemu-guest-agent -----------------------------------------------------------------------------


@dataclass
class FakeProcess:
    argv: list[str]
    polls_left: int
    stdout: bytes = b""
    stderr: bytes = b""
    exitcode: int | None = 0
    signal: int | None = None
    log: str | None = None
    chunks: list[bytes] = field(default_factory=list)  # appended to the log, one per status poll
    ignores_term: bool = False


class FakeQga:
    """qemu-guest-agent as seen through QMP: real command names, argument names and reply
    shapes (``guest-exec`` -> ``{"pid"}``, ``guest-exec-status`` -> ``{"exited", "exitcode",
    "out-data" (base64, only when non-empty)}``, ``guest-file-read`` -> ``{"count", "buf-b64",
    "eof"}``); a finished process is forgotten once its status was read, as qemu-ga does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.files: dict[str, bytearray] = {}
        self.procs: dict[int, FakeProcess] = {}
        self.handles: dict[int, list[Any]] = {}
        self.programs: dict[str, Callable[[list[str]], FakeProcess]] = {}
        self.next_pid = 4000

    def __call__(self, command: str, arguments: Mapping[str, Any] | None, timeout: float) -> Any:
        assert timeout > 0
        args = dict(arguments or {})
        self.calls.append((command, args))
        return getattr(self, "_" + command.replace("-", "_"))(
            **{k.replace("-", "_"): v for k, v in args.items()}
        )

    def commands(self, name: str) -> list[dict[str, Any]]:
        return [a for c, a in self.calls if c == name]

    def _error(self, command: str, desc: str) -> QmpError:
        return QmpError("guest-agent", command, desc)

    def _guest_exec(self, path: str, arg: list[str], capture_output: bool) -> dict[str, Any]:
        argv = [path, *arg]
        pid = self.next_pid
        self.next_pid += 1
        if path == "/bin/sh" and arg[:1] == ["-c"] and "exec" in arg[1]:  # the spawn wrapper
            proc = self.programs[arg[3]](arg[3:])
            proc.log = arg[2]
        elif path == "sh" and arg[:1] == ["-c"] and "kill" in arg[1]:  # the kill helper
            target = self.procs[int(arg[4])]
            if arg[3] == "KILL" or not target.ignores_term:
                target.polls_left, target.exitcode = 0, None
                target.signal = 9 if arg[3] == "KILL" else 15
            proc = FakeProcess(argv, polls_left=0)
        elif path == "rm":
            for name in arg[1:]:
                self.files.pop(name, None)
            proc = FakeProcess(argv, polls_left=0)
        else:
            proc = self.programs[path](argv)
        proc.argv = argv
        self.procs[pid] = proc
        return {"pid": pid}

    def _guest_exec_status(self, pid: int) -> dict[str, Any]:
        if pid not in self.procs:
            raise self._error("guest-exec-status", f"Invalid parameter 'pid' ({pid})")
        proc = self.procs[pid]
        if proc.chunks and proc.log is not None:
            self.files[proc.log] += proc.chunks.pop(0)
        if proc.polls_left > 0:
            proc.polls_left -= 1
            return {"exited": False}
        del self.procs[pid]
        reply: dict[str, Any] = {"exited": True}
        if proc.signal is not None:
            reply["signal"] = proc.signal
        else:
            reply["exitcode"] = proc.exitcode
        if proc.stdout:
            reply["out-data"] = base64.b64encode(proc.stdout).decode()
        if proc.stderr:
            reply["err-data"] = base64.b64encode(proc.stderr).decode()
        return reply

    def _guest_file_open(self, path: str, mode: str = "r") -> int:
        if mode.startswith("w"):
            self.files[path] = bytearray()
        elif path not in self.files:
            raise self._error("guest-file-open", f"failed to open file '{path}' (mode: '{mode}')")
        handle = 1000 + len(self.handles)
        self.handles[handle] = [path, 0]
        return handle

    def _guest_file_seek(self, handle: int, offset: int, whence: str) -> dict[str, Any]:
        assert whence == "set"
        self.handles[handle][1] = offset
        return {"position": offset, "eof": False}

    def _guest_file_read(self, handle: int, count: int) -> dict[str, Any]:
        path, pos = self.handles[handle]
        data = bytes(self.files[path][pos : pos + count])
        self.handles[handle][1] = pos + len(data)
        return {"count": len(data), "buf-b64": base64.b64encode(data).decode(), "eof": len(data) < count}

    def _guest_file_close(self, handle: int) -> dict[str, Any]:
        del self.handles[handle]
        return {}


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def qga_exec(fake: FakeQga, **kwargs: Any) -> QgaGuestExec:
    t = FakeTime()
    return QgaGuestExec(
        fake,
        name="win-guest" if kwargs.get("os") == "windows" else "guest",
        sleep=t.sleep,
        clock=t.clock,
        **kwargs,
    )


def test_qga_run_waits_for_exit_and_decodes_base64_output() -> None:
    fake = FakeQga()
    fake.programs["vainfo"] = lambda argv: FakeProcess(
        argv,
        polls_left=2,
        stdout="VAProfileH264Main : VAEntrypointVLD\nµs\n".encode(),
        stderr=b"libva info: VA-API version 1.17.0\n",
    )
    gx = qga_exec(fake)
    assert isinstance(gx, GuestExec)
    rc, out, err = gx.run(["vainfo", "--display", "drm"], timeout=10)
    assert rc == 0
    assert out == "VAProfileH264Main : VAEntrypointVLD\nµs\n"
    assert err == "libva info: VA-API version 1.17.0\n"
    assert fake.commands("guest-exec")[0] == {
        "path": "vainfo",
        "arg": ["--display", "drm"],
        "capture-output": True,
    }
    assert len(fake.commands("guest-exec-status")) == 3


def test_qga_run_reports_a_signal_like_a_shell() -> None:
    fake = FakeQga()
    fake.programs["crash"] = lambda argv: FakeProcess(argv, polls_left=0, exitcode=None, signal=11)
    assert qga_exec(fake).run(["crash"], timeout=5).rc == 139


def test_qga_run_timeout_kills_the_command() -> None:
    fake = FakeQga()
    fake.programs["sleep"] = lambda argv: FakeProcess(argv, polls_left=10**6)
    gx = qga_exec(fake)
    with pytest.raises(CommandTimedOut, match=r"guest: command timed out after 2 s: sleep 600"):
        gx.run(["sleep", "600"], timeout=2)
    kills = [a for a in fake.commands("guest-exec") if a["path"] == "sh"]
    assert kills[0]["arg"][3:] == ["KILL", "4000"]
    assert 4000 not in fake.procs  # killed and reaped


def test_qga_spawn_streams_the_log_and_keeps_split_characters_whole() -> None:
    fake = FakeQga()
    mu = "µ".encode()
    fake.programs["glmark2"] = lambda argv: FakeProcess(
        argv,
        polls_left=3,
        chunks=[b"[build] use-vbo=true: FPS: 2376 F", b"rameTime: 0.421 ms " + mu[:1], mu[1:] + b"\n"],
    )
    gx = qga_exec(fake)
    proc = gx.spawn(["glmark2", "--run-forever"])
    assert proc.log is not None
    assert proc.log.startswith("/tmp/mdt-")
    # the log exists before the command starts, then the shell becomes the command
    assert fake.calls[0] == ("guest-file-open", {"path": proc.log, "mode": "w"})
    spawn = fake.commands("guest-exec")[0]
    assert spawn["path"] == "/bin/sh"
    assert spawn["arg"][2:] == [proc.log, "glmark2", "--run-forever"]
    assert spawn["capture-output"] is False
    texts = [gx.read_output(proc) for _ in range(4)]
    assert "".join(o.text for o in texts) == "[build] use-vbo=true: FPS: 2376 FrameTime: 0.421 ms µ\n"
    assert texts[1].text.endswith("ms ")  # the first byte of µ waits for the second
    assert [o.exited for o in texts] == [False, False, False, True]
    assert texts[-1].rc == 0
    # each read starts where the previous one ended
    offsets = [a["offset"] for a in fake.commands("guest-file-seek")]
    assert offsets == [33, 53, 55]
    # exited and forgotten by the agent: no more status queries
    before = len(fake.commands("guest-exec-status"))
    assert gx.read_output(proc) == ProcessOutput("", True, 0)
    assert len(fake.commands("guest-exec-status")) == before
    gx.release(proc)
    assert proc.log not in fake.files
    with pytest.raises(GuestExecError, match="was not spawned here or was released"):
        gx.read_output(proc)


def test_qga_kill_is_soft_then_hard_and_idempotent() -> None:
    fake = FakeQga()
    fake.programs["ffmpeg"] = lambda argv: FakeProcess(argv, polls_left=10**6)
    fake.programs["stubborn"] = lambda argv: FakeProcess(argv, polls_left=10**6, ignores_term=True)
    gx = qga_exec(fake, kill_grace_s=1.0)
    proc = gx.spawn(["ffmpeg", "-i", "in.mp4"])
    gx.kill(proc)
    gx.kill(proc)
    signals = [a["arg"][3] for a in fake.commands("guest-exec") if a["path"] == "sh"]
    assert signals == ["TERM"]
    assert gx.read_output(proc) == ProcessOutput("", True, 143)
    stubborn = gx.spawn(["stubborn"])
    gx.kill(stubborn)
    signals = [a["arg"][3] for a in fake.commands("guest-exec") if a["path"] == "sh"]
    assert signals == ["TERM", "TERM", "KILL"]
    assert gx.read_output(stubborn).rc == 137


def test_qga_read_file_in_chunks() -> None:
    fake = FakeQga()
    data = bytes(range(256)) * (10 * 1024)  # 2.5 MiB: three reads of 1 MiB
    fake.files["/var/log/Xorg.0.log"] = bytearray(data)
    assert qga_exec(fake).read_file("/var/log/Xorg.0.log", timeout=30) == data
    assert len(fake.commands("guest-file-read")) == 3
    assert not fake.handles  # closed
    with pytest.raises(QmpError, match="failed to open file"):
        qga_exec(fake).read_file("/nonexistent", timeout=30)


def test_qga_replies_of_the_wrong_shape() -> None:
    def no_pid(command: str, arguments: Mapping[str, Any] | None, timeout: float) -> Any:
        return {}

    with pytest.raises(GuestExecError, match=r"returned \{\}, no pid"):
        QgaGuestExec(no_pid).run(["true"], timeout=1)

    def bad_output(command: str, arguments: Mapping[str, Any] | None, timeout: float) -> Any:
        return (
            {"pid": 7}
            if command == "guest-exec"
            else {"exited": True, "exitcode": 0, "out-data": "not base64!"}
        )

    with pytest.raises(GuestExecError, match="out-data of pid 7 is not valid base64"):
        QgaGuestExec(bad_output).run(["true"], timeout=1)


def test_qga_on_windows_runs_programs_directly() -> None:
    fake = FakeQga()
    exe = r"C:\Program Files (x86)\Futuremark\3DMark06\3DMark06.exe"
    fake.programs[exe] = lambda argv: FakeProcess(argv, polls_left=10**6)
    fake.programs["taskkill"] = lambda argv: FakeProcess(argv, polls_left=0)
    gx = qga_exec(fake, os="windows")
    proc = gx.spawn([exe, "-nosplash"])
    assert proc.log is None
    assert fake.commands("guest-exec")[0] == {"path": exe, "arg": ["-nosplash"], "capture-output": False}
    assert gx.read_output(proc) == ProcessOutput("", False, None)
    fake.procs[proc.pid].polls_left = 0  # taskkill ends it
    gx.kill(proc)
    assert fake.commands("guest-exec")[1]["path"] == "taskkill"
    assert fake.commands("guest-exec")[1]["arg"] == ["/PID", str(proc.pid), "/T", "/F"]
    fake.files[r"C:\mdt\r.txt"] = bytearray(b"x")
    gx.read_file(r"C:\mdt\r.txt", timeout=5)
    assert fake.commands("guest-file-open")[-1]["mode"] == "rb"


# -- a shell in the guest (here: this machine) ------------------------------------------------------


@pytest.fixture
def shell(tmp_path: Path) -> ShellGuestExec:
    return ShellGuestExec(
        LocalExecutor("guest-under-test", default_timeout=30), tmp_dir=str(tmp_path), kill_grace_s=1.0
    )


def read_until_exit(gx: GuestExec, proc: GuestProcess, timeout: float = 20.0) -> list[ProcessOutput]:
    outs = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outs.append(gx.read_output(proc))
        if outs[-1].exited:
            return outs
        time.sleep(0.05)
    raise AssertionError(f"pid {proc.pid} did not exit within {timeout} s")


def test_shell_run_and_spawn_with_exit_status(shell: ShellGuestExec) -> None:
    assert shell.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10) == ExecResult(
        3, "out\n", "err\n"
    )
    proc = shell.spawn(["sh", "-c", "echo one; sleep 0.3; echo two >&2; exit 4"])
    outs = read_until_exit(shell, proc)
    assert "".join(o.text for o in outs) == "one\ntwo\n"
    assert (outs[-1].exited, outs[-1].rc) == (True, 4)
    assert proc.log is not None
    assert Path(proc.log).exists()
    shell.release(proc)
    assert not Path(proc.log).exists()


def test_shell_output_keeps_a_split_character_whole(shell: ShellGuestExec) -> None:
    proc = shell.spawn(["sh", "-c", r"printf 'frame \302'; sleep 1; printf '\265\n'"])  # µ is C2 B5
    time.sleep(0.4)
    first = shell.read_output(proc)
    outs = read_until_exit(shell, proc)
    assert first.text == "frame "
    assert first.text + "".join(o.text for o in outs) == "frame µ\n"


def test_shell_kill_takes_the_whole_session(shell: ShellGuestExec, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    proc = shell.spawn(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; trap '' TERM; wait"])
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pidfile.read_text())
    started = time.monotonic()
    shell.kill(proc)
    assert time.monotonic() - started < 5
    assert read_until_exit(shell, proc)[-1].exited
    gone = LocalExecutor().run(["sh", "-c", f"kill -0 {child} 2>/dev/null || echo gone"], timeout=5)
    zombie = Path(f"/proc/{child}/status")
    assert gone.stdout == "gone\n" or "zombie" in zombie.read_text()
    shell.kill(proc)  # idempotent


def test_shell_read_file_is_byte_exact(shell: ShellGuestExec, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    (tmp_path / "result.bin").write_bytes(data)
    assert shell.read_file(str(tmp_path / "result.bin"), timeout=10) == data
    with pytest.raises(GuestExecError, match="cannot read"):
        shell.read_file(str(tmp_path / "missing"), timeout=10)


def test_console_guest_has_no_commands() -> None:
    gx = ConsoleGuestExec(lambda: "MDT-BOOT uptime_ms=1\n", name="lab-guest")
    assert gx.console_text() == "MDT-BOOT uptime_ms=1\n"
    with pytest.raises(
        GuestExecError, match=r"lab-guest: cannot run true: .* only through its serial console"
    ):
        gx.run(["true"], timeout=1)


# -- presence and installation --------------------------------------------------------------------


def test_present_lists_everything_missing(shell: ShellGuestExec) -> None:
    wl = Glmark2Workload(
        definition(
            requires={
                "commands": ["sh", "no-such-tool-mdt"],
                "paths": ["/", "/no/such/path"],
                "checks": [["sh", "-c", "echo 'vaapih264dec: no such element' >&2; exit 1"], ["true"]],
            },
            install_hint="bake it into the image",
            command=["true"],
        )
    )
    why = wl.present(shell)
    assert why == (
        "t is not present in guest-under-test: missing command no-such-tool-mdt; missing path "
        "/no/such/path; check failed (rc=1): sh -c 'echo '\"'\"'vaapih264dec: no such element'\"'\"' "
        ">&2; "
        "exit 1': vaapih264dec: no such element (bake it into the image)"
    )
    assert (
        Glmark2Workload(
            definition(requires={"commands": ["sh"], "paths": ["/"]}, command=["true"])
        ).present(shell)
        is None
    )


def test_present_checks_the_guest_os(shell: ShellGuestExec) -> None:
    wl = get_workload("3dmark06")
    assert (
        wl.present(shell)
        == "3dmark06 is not present in guest-under-test: it needs a windows guest, this one runs linux ("
        + (wl.definition.install_hint or "")
        + ")"
    )


def test_install_runs_the_steps_then_checks_again(shell: ShellGuestExec, tmp_path: Path) -> None:
    marker = tmp_path / "installed"
    wl = Glmark2Workload(
        definition(
            requires={"paths": [str(marker)]},
            install=[["sh", "-c", 'touch "$0"', str(marker)]],
            command=["true"],
        )
    )
    assert wl.present(shell) is not None
    wl.install(shell)
    assert wl.present(shell) is None
    broken = Glmark2Workload(
        definition(
            install=[["sh", "-c", "echo 'E: Unable to locate package glmark2' >&2; exit 100"]],
            command=["true"],
        )
    )
    with pytest.raises(CommandFailed, match=r"rc=100.*Unable to locate package glmark2"):
        broken.install(shell)
    useless = Glmark2Workload(
        definition(requires={"paths": ["/no/such"]}, install=[["true"]], command=["true"])
    )
    with pytest.raises(WorkloadError, match="still missing: missing path /no/such"):
        useless.install(shell)
    with pytest.raises(
        WorkloadError, match="cannot install it into guest-under-test: Unigine's licence"
    ):
        get_workload("heaven").install(shell)


# -- running tools end to end through a shell --------------------------------------------------------

REPLAY = r"""
import re, sys, time
text = open(sys.argv[1], newline="").read()
delay = float(sys.argv[2])
out = sys.stderr if sys.argv[3] == "stderr" else sys.stdout
for piece in re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text):
    out.write(piece)
    out.flush()
    time.sleep(delay)
"""


def replay_definition(
    tmp_path: Path, name: str, sample: str, *, stream: str = "stdout", delay: float = 0.01
) -> WorkloadDefinition:
    """The shipped definition of ``name`` with its command replaced by a replay of a sample."""
    script = tmp_path / "replay.py"
    script.write_text(REPLAY)
    shipped = load_definition(DEFINITIONS_DIR / f"{name}.yaml")
    return shipped.model_copy(
        update={
            "command": (sys.executable, str(script), str(DATA / sample), str(delay), stream),
            "workdir": None,
            "env": {},
            "requires": shipped.requires.model_copy(update={"commands": (), "paths": (), "checks": ()}),
        }
    )


@pytest.mark.parametrize(
    ("name", "sample", "stream", "cls"),
    [
        ("glmark2", "glmark2-run-forever.txt", "stdout", Glmark2Workload),
        ("ffmpeg-sw-decode", "ffmpeg-sw-decode.txt", "stderr", FfmpegWorkload),
        ("ffmpeg-sw-encode", "ffmpeg-sw-encode.txt", "stderr", FfmpegWorkload),
        ("gst-sw-decode", "gst-sw-decode.txt", "stdout", GstWorkload),
        ("x11perf", "x11perf-rect500-loop.txt", "stdout", X11perfWorkload),
        ("heaven", "heaven-4.0-phoronix.reconstructed.log", "stdout", HeavenWorkload),
    ],
)
def test_a_tool_run_end_to_end(
    shell: ShellGuestExec, tmp_path: Path, name: str, sample: str, stream: str, cls: type[Workload]
) -> None:
    wl = cls(replay_definition(tmp_path, name, sample, stream=stream))
    assert wl.present(shell) is None
    run = wl.start(shell)
    samples = wl.wait(run, timeout=30, interval_s=0.05)
    assert not samples[-1].alive
    assert all(s.unit == wl.unit for s in samples)
    wl.stop(run)
    wl.stop(run)  # idempotent
    assert run.state == "stopped"
    with pytest.raises(StateError, match="cannot sample it: the run is stopped"):
        wl.sample(run)
    text = sample_text(sample)
    assert run.output == text  # every byte, \r included
    assert wl.result(run) == wl.parse_results(text)
    values = [s.value for s in samples if s.value is not None]
    if wl.progress_readings:
        assert values, samples
        assert len(values) <= len(wl.readings(split_lines(text)))
    else:
        assert name == "heaven"
        assert values == []  # Heaven prints no progress: alive or not, that is all


def test_ffmpeg_throughput_is_the_frame_counter_rate(shell: ShellGuestExec, tmp_path: Path) -> None:
    wl = FfmpegWorkload(
        replay_definition(
            tmp_path, "ffmpeg-sw-decode", "ffmpeg-sw-decode.txt", stream="stderr", delay=0.05
        )
    )
    run = wl.start(shell)
    try:
        samples = wl.wait(run, timeout=30, interval_s=0.12)
    finally:
        wl.stop(run)
    counted = [s for s in samples if s.counter is not None]
    assert counted[-1].counter == 2373
    for a, b in pairwise(counted):
        assert a.counter is not None
        assert b.counter is not None
        assert b.counter >= a.counter
        if b.value is not None:
            assert b.value == pytest.approx((b.counter - a.counter) / (b.t - a.t))


def test_workdir_and_env_reach_the_command(shell: ShellGuestExec, tmp_path: Path) -> None:
    (tmp_path / "heaven.log").write_text(sample_text("heaven-4.0-phoronix.reconstructed.log"))
    wl = HeavenWorkload(
        definition(
            kind="3d",
            driver="heaven",
            workdir=str(tmp_path),
            env={"DISPLAY": ":0", "LD_LIBRARY_PATH": "x64"},
            command=["sh", "-c", 'test "$DISPLAY:$LD_LIBRARY_PATH" = ":0:x64" && cat heaven.log'],
        )
    )
    run = wl.start(shell)
    wl.wait(run, timeout=10, interval_s=0.05)
    wl.stop(run)
    assert run.rc == 0
    assert wl.result(run).score == pytest.approx(670.082)


def test_heaven_stop_waits_for_its_pass_to_end(
    shell: ShellGuestExec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heaven prints its results only when its pass ends: stop() right after start (a quick
    migration) waits for that end instead of killing it before the results."""
    from mdevtest.workloads import base

    monkeypatch.setattr(base, "FINISH_POLL_S", 0.05)
    replay = replay_definition(tmp_path, "heaven", "heaven-4.0-phoronix.reconstructed.log", delay=0.05)
    wl = HeavenWorkload(replay)
    assert (wl.finite, wl.progress_readings, wl.proven) == (True, False, False)
    run = wl.start(shell)
    sample = wl.sample(run)
    assert (sample.alive, sample.value) == (True, None)  # alive, and no reading to give
    wl.stop(run)
    assert (run.exited, run.killed, run.rc) == (True, False, 0)
    result = wl.result(run)
    assert result.fps == pytest.approx(26.6013)
    # without the wait the same run is killed before its results
    monkeypatch.setattr(HeavenWorkload, "finite", False)
    early = wl.start(shell)
    wl.stop(early)
    assert early.killed
    with pytest.raises(ResultParseError, match="did it run to the end"):
        wl.result(early)


def test_heaven_stop_waits_no_longer_than_timeout_s(
    shell: ShellGuestExec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mdevtest.workloads import base

    monkeypatch.setattr(base, "FINISH_POLL_S", 0.05)
    wl = HeavenWorkload(definition(driver="heaven", command=["sleep", "60"], timeout_s=0.5))
    run = wl.start(shell)
    started = time.monotonic()
    wl.stop(run)
    assert 0.3 < time.monotonic() - started < 5  # waited until 0.5 s after the start, not 60 s
    assert run.killed
    with pytest.raises(ResultParseError, match="no Heaven result block"):
        wl.result(run)


def test_results_only_after_stop(shell: ShellGuestExec, tmp_path: Path) -> None:
    wl = Glmark2Workload(definition(command=["sleep", "30"]))
    run = wl.start(shell)
    try:
        with pytest.raises(StateError, match="results are read after stop"):
            wl.result(run)
    finally:
        wl.stop(run)
    with pytest.raises(ResultParseError):
        wl.result(run)  # killed before any scene


def test_run_output_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from mdevtest.workloads import base

    monkeypatch.setattr(base, "OUTPUT_LIMIT", 100)
    run = WorkloadRun(get_workload("glmark2"), ConsoleGuestExec(str), None)
    for i in range(30):
        assert run.feed(f"line {i:02d}\n") == [f"line {i:02d}"]
    assert len(run.output) <= 100
    assert run.output.endswith("line 29\n")
    assert run.dropped_chars == 30 * 8 - len(run.output)
    assert run.feed("part") == []
    assert run.feed("ial\rnext") == ["partial"]
    assert run.flush() == ["next"]


# -- the synthetic workload -------------------------------------------------------------------------


def test_synthetic_workload_over_the_console() -> None:
    log = sample_text("synthetic-console.log")
    ready_at = log.index("MDT-READY")
    frames = [i for i in range(len(log)) if log.startswith("MDT-FRAME", i)]
    shown = {"upto": ready_at}
    gx = ConsoleGuestExec(lambda: log[: shown["upto"]], name="lab-guest")
    wl = get_workload("synthetic")
    assert isinstance(wl, SyntheticWorkload)
    assert wl.present(gx) == (
        "synthetic is not running in lab-guest: no MDT-READY on its console "
        "(not the lab guest image, or it has not booted yet)"
    )
    shown["upto"] = frames[0]
    assert wl.present(gx) is None
    run = wl.start(gx)
    assert wl.sample(run).value is None  # no frame yet
    values = []
    for end in frames[1:]:
        shown["upto"] = end + log[end:].index("\n") + 1
        values.append(wl.sample(run).value)
        assert wl.sample(run).value is None  # no new frame since: no reading
    assert values == [pytest.approx(v) for v in (10, 10, 10, 4, 10, 10, 10)]
    wl.stop(run)
    assert wl.result(run).frames == 64
    off = ConsoleGuestExec(lambda: "MDT-READY fb=none reason=no-drm-device version=2\n")
    assert (
        wl.present(off)
        == "synthetic runs without a display in guest (no-drm-device): it draws no frames"
    )


def test_synthetic_needs_a_console(shell: ShellGuestExec) -> None:
    wl = get_workload("synthetic")
    assert (
        wl.present(shell)
        == "synthetic reports on the serial console, and guest-under-test gives no console to read"
    )
    with pytest.raises(WorkloadError, match="no console to read"):
        wl.start(shell)
    with pytest.raises(
        WorkloadError,
        match="cannot install it into guest-under-test: it is built into the lab guest image",
    ):
        wl.install(shell)


# -- 3DMark06 in a Windows guest ----------------------------------------------------------------------


class FakeWindowsGuest:
    """A Windows guest as 3DMark06 sees it through guest-exec: schtasks, tasklist, taskkill."""

    name = "win10"
    os: GuestOS = "windows"

    def __init__(self, result: bytes | None, runs_for: int = 2) -> None:
        self.commands: list[list[str]] = []
        self.result = result
        self.running = False
        self.runs_for = runs_for
        self.tasks = {"mdt-3dmark06"}

    def run(self, argv: Sequence[str], timeout: float) -> ExecResult:
        argv = list(argv)
        self.commands.append(argv)
        if argv[0] == "where":
            return ExecResult(0, "", "")
        if argv[:2] == ["schtasks", "/Query"]:
            ok = argv[3] in self.tasks
            return ExecResult(
                0 if ok else 1, "", "" if ok else "ERROR: The system cannot find the file specified.\r\n"
            )
        if argv[:2] == ["schtasks", "/Run"]:
            self.running = True
            return ExecResult(0, 'SUCCESS: Attempted to run the scheduled task "mdt-3dmark06".\r\n', "")
        if argv[0] == "tasklist":
            if self.running and self.runs_for > 0:
                self.runs_for -= 1
                return ExecResult(0, '"3DMark06.exe","5128","Console","1","187,412 K"\r\n', "")
            self.running = False
            return ExecResult(
                0, "INFO: No tasks are running which match the specified criteria.\r\n", ""
            )
        if argv[0] == "taskkill":
            self.running = False
            return ExecResult(
                0,
                'SUCCESS: Sent termination signal to the process "3DMark06.exe" with PID 5128.\r\n',
                "",
            )
        if argv[0] == "cmd.exe":
            return ExecResult(0, "", "")
        raise AssertionError(f"unexpected command {argv}")

    def spawn(self, argv: Sequence[str]) -> GuestProcess:
        raise AssertionError("3DMark06 is started through its scheduled task")

    def read_output(self, proc: GuestProcess) -> ProcessOutput:
        raise AssertionError("not used")

    def kill(self, proc: GuestProcess) -> None:
        raise AssertionError("not used")

    def release(self, proc: GuestProcess) -> None:
        raise AssertionError("not used")

    def read_file(self, path: str, timeout: float) -> bytes:
        assert path == r"C:\mdt\3dmark06-result.txt"
        if self.result is None:
            raise GuestError(f"{path}: not found")
        return self.result


def test_3dmark06_runs_through_its_scheduled_task() -> None:
    text = sample_text("3dmark06-result-details.reconstructed.txt").replace("\n", "\r\n")
    guest = FakeWindowsGuest(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    wl = get_workload("3dmark06")
    assert isinstance(wl, ThreeDMark06Workload)
    assert isinstance(guest, GuestExec)
    assert wl.present(guest) is None
    assert guest.commands[0] == [
        "where",
        "/Q",
        r"C:\Program Files (x86)\Futuremark\3DMark06:3DMark06.exe",
    ]
    run = wl.start(guest)
    assert ["schtasks", "/Run", "/TN", "mdt-3dmark06"] in guest.commands
    assert ["cmd.exe", "/c", "del", "/f", "/q", r"C:\mdt\3dmark06-result.txt"] in guest.commands
    samples = wl.wait(run, timeout=60, interval_s=0)
    assert [(s.alive, s.detail, s.value) for s in samples] == [
        (True, "running", None),
        (True, "running", None),
        (False, "not running", None),
    ]
    wl.stop(run)
    result = wl.result(run)
    assert (result.score, result.values["hdr_sm3_score"]) == (4585, 1650)


def test_heaven_stop_interrupted_while_waiting_still_kills_it(
    shell: ShellGuestExec, monkeypatch: pytest.MonkeyPatch
) -> None:
    wl = HeavenWorkload(definition(driver="heaven", command=["sleep", "60"], timeout_s=600))
    run = wl.start(shell)
    assert run.process is not None
    pid = run.process.pid
    time.sleep(0.3)  # ShellGuestExec cannot signal a session setsid has not made yet
    assert wl.sample(run).alive

    def unreachable(proc: GuestProcess) -> ProcessOutput:
        raise GuestExecError("guest-under-test: agent not connected")

    monkeypatch.setattr(shell, "read_output", unreachable)
    with pytest.raises(GuestExecError, match="agent not connected"):
        wl.stop(run)
    assert (run.state, run.killed) == ("stopped", True)
    deadline = time.monotonic() + 5
    status = Path(f"/proc/{pid}/status")
    while status.exists() and "zombie" not in status.read_text():
        assert time.monotonic() < deadline, f"pid {pid} still runs after an interrupted stop()"
        time.sleep(0.05)


def test_3dmark06_stop_waits_for_it_to_end_by_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    from mdevtest.workloads import base

    monkeypatch.setattr(base, "FINISH_POLL_S", 0.01)
    text = sample_text("3dmark06-result-details.reconstructed.txt")
    guest = FakeWindowsGuest(text.encode(), runs_for=4)
    wl = get_workload("3dmark06")
    run = wl.start(guest)
    wl.stop(run)  # at once: it still runs its tests
    assert run.killed is False
    assert not [c for c in guest.commands if c[0] == "taskkill"]
    assert wl.result(run).score == 4585
    assert wl.describe()["unproven_reason"] == ThreeDMark06Workload.unproven_reason


def test_3dmark06_stop_kills_it_and_tolerates_a_missing_result() -> None:
    guest = FakeWindowsGuest(None, runs_for=10**6)
    guest.tasks.clear()
    shipped = get_workload("3dmark06")
    # no time left to end by itself: stop() closes it at once
    wl = ThreeDMark06Workload(shipped.definition.model_copy(update={"timeout_s": 0.001}))
    assert "no scheduled task 'mdt-3dmark06' (ERROR: The system cannot find the file specified.)" in (
        wl.present(guest) or ""
    )
    guest.tasks.add("mdt-3dmark06")
    run = wl.start(guest)
    with pytest.raises(WorkloadError, match=r"3DMark06\.exe already runs in win10"):
        wl.start(guest)
    wl.stop(run)  # it would run on: after timeout_s it is asked to close (and closes)
    assert run.killed
    assert ["taskkill", "/IM", "3DMark06.exe", "/T"] in guest.commands
    assert run.result_text is None
    with pytest.raises(ResultParseError, match="no 3DMark06 score"):
        wl.result(run)


# -- the registry ---------------------------------------------------------------------------------------


def test_every_shipped_workload_loads() -> None:
    assert known_workloads() == SHIPPED
    kinds = {name: get_workload(name).kind for name in SHIPPED}
    assert set(kinds.values()) == {"3d", "media", "2d", "synthetic"}
    unproven = {"heaven", "3dmark06"}  # their output was never captured from the real programs
    for name in SHIPPED:
        wl = get_workload(name)
        assert wl.name == name
        info = wl.describe()
        assert info["throughput_method"]
        assert (info["command"] is None) == (name == "synthetic")
        assert info["proven"] == (name not in unproven)
        assert ("unproven_reason" in info) == (name in unproven)
        # the same two print nothing while they run, and end by themselves
        assert info["progress_readings"] == (name not in unproven)
        assert info["finite"] == (name in unproven)


def test_an_unproven_driver_must_say_why() -> None:
    with pytest.raises(TypeError, match="Unsure: proven = False needs an unproven_reason"):

        class Unsure(HeavenWorkload):
            unproven_reason = ""


def test_shipped_command_lines() -> None:
    heaven = get_workload("heaven").definition.argv()
    assert heaven[:6] == (
        "sh",
        "-c",
        'cd "$1" && shift && exec "$@"',
        "sh",
        "/opt/Unigine_Heaven-4.0/bin",
        "env",
    )
    assert "PHORONIX,RELEASE,LANGUAGE_EN,QUALITY_LOW,TESSELLATION_DISABLED" in heaven
    assert heaven[heaven.index("-sound_app") + 1] == "null"  # not YAML's null
    ffmpeg = get_workload("ffmpeg-vaapi-decode").definition.argv()
    assert ffmpeg[-3:] == ("-f", "null", "-")
    assert "-hwaccel_output_format" in ffmpeg
    assert "h264_vaapi" in get_workload("ffmpeg-vaapi-encode").definition.argv()
    gst = get_workload("gst-qsv-decode").definition.argv()
    assert "qsvh264dec" in gst
    assert gst.count("!") == 3
    # the software ones: no hardware acceleration, the clips the desktop image provides
    for name in ("ffmpeg-sw-decode", "ffmpeg-sw-encode"):
        argv = get_workload(name).definition.argv()
        assert not [a for a in argv if "vaapi" in a or a == "-hwaccel"]
        assert argv[argv.index("-i") + 1] == "/opt/mdt/media/in-720p-h264.mp4"
        assert argv[-3:] == ("-f", "null", "-")
    enc = get_workload("ffmpeg-sw-encode").definition.argv()
    assert enc[enc.index("-c:v") + 1 :][:3] == ("libx264", "-preset", "ultrafast")
    sw = get_workload("gst-sw-decode").definition
    assert sw.argv()[sw.argv().index("h264parse") + 2] == "avdec_h264"
    assert "location=/opt/mdt/media/in-720p-h264.h264" in sw.argv()
    # x11perf's stdio is block-buffered into the log: line buffering makes each line a reading
    assert get_workload("x11perf").definition.argv()[:3] == ("stdbuf", "-oL", "x11perf")
    assert ("gst-inspect-1.0", "--exists", "avdec_h264") in sw.requires.checks
    assert sw.requires.paths == ("/opt/mdt/media/in-720p-h264.h264",)


def test_unknown_workload_lists_the_known_ones() -> None:
    with pytest.raises(UnknownWorkload) as info:
        get_workload("unigine-valley")
    assert info.value.known == SHIPPED
    assert str(info.value) == (
        "unknown workload 'unigine-valley'; known workloads (workloads/*.yaml): " + ", ".join(SHIPPED)
    )


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(WorkloadDefinitionError) as info:
        load_definition(path)
    assert str(info.value).startswith(f"invalid workload definition {path}:\n")
    return list(info.value.problems)


GOOD = """\
name: {name}
kind: 3d
driver: glmark2
description: a test workload
command: [glmark2, --off-screen]
"""


def test_definition_problems_are_all_listed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad",
        """\
name: Bad Name
kind: gpu
driver: glmark2
description: x
command: [x11perf, -repeat, 100000]
colour: blue
requires: {commands: [glmark2], packages: [glmark2]}
timeout_s: -1
""",
    )
    assert problems_of(path) == [
        "name: 'Bad Name': string should match pattern '^[a-z0-9][a-z0-9._-]*$'",
        "kind: 'gpu': input should be '3d', 'media', '2d' or 'synthetic'",
        "requires.packages: unknown key; allowed here: commands, paths, checks",
        "command[2]: 100000: input should be a valid string "
        "(YAML read the unquoted value as a number; put it in quotes)",
        "timeout_s: -1: input should be greater than 0",
        "colour: unknown key; allowed here: " + ", ".join(WorkloadDefinition.model_fields),
    ]


def test_definition_problems_after_the_schema(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, "other", GOOD.format(name="mine"))) == [
        "name: 'mine' differs from the file name 'other'.yaml; rename one"
    ]
    assert problems_of(
        write(tmp_path, "d", GOOD.format(name="d").replace("driver: glmark2", "driver: glxgears"))
    ) == [
        "driver: 'glxgears' is not allowed: must be one of "
        "3dmark06, ffmpeg, glmark2, gstreamer, heaven, synthetic, x11perf"
    ]
    assert problems_of(
        write(
            tmp_path,
            "m",
            GOOD.format(name="m").replace("kind: 3d", "kind: media") + "options: {task: x}\n",
        )
    ) == [
        "kind: 'media' does not fit driver glmark2: must be '3d'",
        "options.task: unknown option of driver glmark2; allowed: none",
    ]
    assert problems_of(
        write(tmp_path, "w", "name: w\nkind: 3d\ndriver: 3dmark06\ndescription: x\n")
    ) == [
        "guest_os: driver 3dmark06 runs on 'windows' guests, not 'linux'",
        "command: missing (required by driver 3dmark06)",
        "options.task: missing (required by driver 3dmark06: the scheduled task to run)",
        "result_file: missing (required by driver 3dmark06: where the scores are)",
    ]


def test_definition_file_level_problems(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, "dup", GOOD.format(name="dup") + "kind: 2d\n")) == [
        "YAML error at line 6, column 1: duplicate key 'kind' (first defined on line 2)"
    ]
    assert problems_of(write(tmp_path, "list", "- glmark2\n")) == [
        "the file is a list; expected a mapping with keys " + ", ".join(WorkloadDefinition.model_fields)
    ]
    assert problems_of(write(tmp_path, "empty", "")) == [
        "the file is empty; expected a mapping with keys " + ", ".join(WorkloadDefinition.model_fields)
    ]
    assert problems_of(tmp_path / "missing.yaml") == ["file not found"]


def test_a_folder_of_definitions(tmp_path: Path) -> None:
    folder = tmp_path / "defs"
    write(folder, "one", GOOD.format(name="one"))
    write(folder, "two", GOOD.format(name="two"))
    assert known_workloads(folder) == ("one", "two")
    assert get_workload("two", folder).definition.command == ("glmark2", "--off-screen")
    with pytest.raises(UnknownWorkload, match=f"known workloads \\({folder}\\): one, two"):
        get_workload("three", folder)
    assert load_definitions(folder) is not load_definitions(folder)  # a copy each time
    with pytest.raises(WorkloadDefinitionError, match="not a folder of workload definitions"):
        load_definitions(tmp_path / "nowhere")


# -- sampling and the dip ----------------------------------------------------------------------


def series(values: Sequence[float | None], *, t0: float = 0.0, step: float = 1.0) -> list[Sample]:
    return [Sample(t=t0 + i * step, value=v, unit="fps") for i, v in enumerate(values)]


def test_dip_at_a_switchover() -> None:
    # steady 60 fps; the switchover from t=10.2 to t=10.5; readings at t=11 and 12 are low
    samples = series([60, 61, 59, 60, 60, 62, 58, 60, 60, 60, 60, 20, 45, 57, 59, 60, 60])
    d = dip(samples, 10.2, 10.5)
    assert d.baseline == 60
    assert (d.minimum, d.minimum_at) == (20, pytest.approx(0.8))
    assert d.drop_pct == pytest.approx(100 * (1 - 20 / 60))
    assert d.recovered
    assert d.recovery_s == pytest.approx(13 - 10.5)  # 57 >= 54 at t=13, then 59
    assert d.longest_gap_s == 1.0
    assert (d.samples_before, d.samples_after) == (10, 6)
    assert d.reason is None
    figures = d.figures()
    assert figures["drop_pct"] == 66.7
    assert "baseline = median of the 10 s before" in figures["method"]


def test_dip_counts_missing_readings_as_a_gap_not_as_zero() -> None:
    samples = series([30, 30, 30, 30, None, None, 12, 29, 30, 30], step=0.5)
    d = dip(samples, 2.1, 2.6)
    assert d.baseline == 30
    assert d.minimum == 12
    assert d.longest_gap_s == pytest.approx(1.5)  # from t=1.5 to t=3.0
    assert d.recovery_s == pytest.approx(3.5 - 2.6)


def test_dip_without_recovery_or_baseline() -> None:
    d = dip(series([60, 60, 60, 10, 12, 11]), 2.5, 2.8)
    assert (d.minimum, d.recovered, d.recovery_s) == (10, False, None)
    assert d.reason == "throughput did not recover while sampled"
    early = dip(series([60, 60, 60]), -5, -4)
    assert early.baseline is None
    assert early.reason == "no throughput reading in the 10 s before the switchover"
    late = dip(series([60, 60, 60]), 5, 6)
    assert (late.baseline, late.minimum) == (60, None)
    assert late.reason == "no throughput reading after the switchover began"
    heaven = dip(series([None, None, None]), 1, 1.5)
    assert heaven.reason == "no sample has a throughput value (the tool reports no progress)"
    assert dip([], 1, 2).unit == ""
    with pytest.raises(ValueError, match=r"ends .* before it starts"):
        dip(series([1]), 2, 1)


def test_dip_needs_recovery_to_hold() -> None:
    samples = series([50, 50, 50, 5, 48, 20, 49, 50, 50])
    d = dip(samples, 2.5, 2.6)
    assert d.minimum == 5
    assert d.recovery_s == pytest.approx(6 - 2.6)  # t=4 (48) alone does not count
    assert dip(samples, 2.5, 2.6, hold=1).recovery_s == pytest.approx(4 - 2.6)


class CountingWorkload(Glmark2Workload):
    """Samples from a script: a number, an exception, or a callable to raise from."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__(definition(command=["true"]))
        self.script = script
        self.calls = 0

    def sample(self, run: WorkloadRun) -> Sample:
        item = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if isinstance(item, BaseException):
            raise item
        return Sample(t=time.monotonic(), value=item, unit=self.unit)


def fake_run(wl: Workload) -> WorkloadRun:
    return WorkloadRun(wl, ConsoleGuestExec(str), None)


def test_sampler_samples_every_interval_until_stopped() -> None:
    wl = CountingWorkload([10.0, 20.0, 30.0])
    with Sampler(wl, fake_run(wl), interval_s=0.05) as sampler:
        time.sleep(0.4)
        assert sampler.running
    samples = sampler.samples
    assert not sampler.running
    assert 5 <= len(samples) <= 10
    assert [s.value for s in samples[:3]] == [10, 20, 30]
    gaps = [b.t - a.t for a, b in pairwise(samples)]
    assert all(0.03 < g < 0.2 for g in gaps), gaps
    calls = wl.calls
    time.sleep(0.15)
    assert wl.calls == calls  # stopped means stopped
    assert sampler.stop() == samples  # idempotent
    with pytest.raises(StateError, match="used once"):
        sampler.start()


def test_sampler_is_bounded() -> None:
    wl = CountingWorkload([1.0])
    sampler = Sampler(wl, fake_run(wl), interval_s=0.01, max_samples=5).start()
    time.sleep(0.3)
    samples = sampler.stop()
    assert len(samples) == 5
    assert sampler.dropped == sampler.taken - 5 > 0


def test_sampler_keeps_unreachable_guest_as_error_samples() -> None:
    wl = CountingWorkload(
        [
            60.0,
            GuestExecError("guest: agent not connected"),
            CommandTimedOut("guest", "cat log", 10),
            58.0,
        ]
    )
    sampler = Sampler(wl, fake_run(wl), interval_s=0.02).start()
    time.sleep(0.2)
    samples = sampler.stop()
    assert samples[0].value == 60
    assert (samples[1].value, samples[1].error) == (None, "GuestExecError: guest: agent not connected")
    assert samples[2].error == "CommandTimedOut: guest: command timed out after 10 s: cat log"
    assert samples[3].value == 58


def test_sampler_raises_what_broke_it_on_stop() -> None:
    wl = CountingWorkload([1.0, KeyError("bug")])
    sampler = Sampler(wl, fake_run(wl), interval_s=0.01).start()
    time.sleep(0.1)
    assert not sampler.running
    with pytest.raises(KeyError, match="bug"):
        sampler.stop()
    with pytest.raises(ValueError, match="interval_s must be positive"):
        Sampler(wl, fake_run(wl), interval_s=0)


def test_sampler_across_a_pause_shows_the_dip(shell: ShellGuestExec, tmp_path: Path) -> None:
    """A real process printing glmark2 lines every 0.1 s is stopped (SIGSTOP, as a guest is
    paused at switchover) for 0.6 s while sampled every 0.1 s: the dip shows the pause."""
    script = 'while :; do echo "[build] use-vbo=true: FPS: 2376 FrameTime: 0.421 ms"; sleep 0.1; done'
    wl = Glmark2Workload(definition(command=["sh", "-c", script]))
    run = wl.start(shell)
    assert run.process is not None
    try:
        with Sampler(wl, run, interval_s=0.1) as sampler:
            time.sleep(1.2)
            start = time.monotonic()
            os.killpg(run.process.pid, signal.SIGSTOP)
            try:
                time.sleep(0.6)
            finally:
                os.killpg(run.process.pid, signal.SIGCONT)
            end = time.monotonic()
            time.sleep(1.2)
    finally:
        wl.stop(run)
    d = dip(sampler.samples, start, end, hold=1)
    assert d.baseline == 2376
    assert d.longest_gap_s is not None
    assert d.longest_gap_s >= 0.5
    assert d.recovered


def test_sampler_thread_and_stop_from_another_thread() -> None:
    wl = CountingWorkload([5.0])
    sampler = Sampler(wl, fake_run(wl), interval_s=10.0).start()
    stopper = threading.Thread(target=sampler.stop)
    started = time.monotonic()
    stopper.start()
    stopper.join(5)
    assert time.monotonic() - started < 2  # the wait between ticks is interruptible
    assert len(sampler.samples) == 1


def test_result_figures_are_json_ready() -> None:
    result = get_workload("glmark2").parse_results(sample_text("glmark2-run-forever.txt"))
    figures = result.figures()
    assert figures["phases"][0] == {
        "name": "[build] duration=1.0:use-vbo=true",
        "value": 270,
        "unit": "fps",
        "frame_time_ms": 3.714,
    }
    assert figures["info"]["renderer"] == "llvmpipe (LLVM 19.1.7, 256 bits)"
    assert "raw" not in figures
    assert isinstance(result, WorkloadResult)
    with pytest.raises(TypeError):
        result.values["x"] = 1  # type: ignore[index]


@dataclass(frozen=True)
class Event:
    name: str
    mono: float


def test_switchover_window_from_qmp_events() -> None:
    source = [Event("MIGRATION", 9.0), Event("STOP", 10.2), Event("MIGRATION", 10.3)]
    destination = [Event("RESUME", 3.0), Event("MIGRATION", 10.4), Event("RESUME", 10.5)]
    assert switchover_window(source, destination) == (10.2, 10.5)
    assert switchover_window(source, []) == (10.2, 10.2)
    assert switchover_window([Event("MIGRATION", 1.0)], destination) is None
