"""Video decode and encode: ffmpeg in software or with VA-API, GStreamer in software
(avdec_h264), with VA-API or with QSV.

**ffmpeg** prints its progress on stderr as one line rewritten with ``\\r`` every
``-stats_period`` seconds, and the same line once more, with ``Lsize=``, when it ends (also on
SIGTERM: "Exiting normally, received signal 15"); as captured from ffmpeg 7.1 (Debian 13)::

    frame=  378 fps=377 q=-0.0 size=N/A time=00:00:12.60 bitrate=N/A speed=12.6x

``fps=`` is 0.0 during the first second. ``dup=``, ``drop=`` and ``elapsed=`` are read when a line
has them (none of the captured 7.1 runs printed them).

``frame=`` counts frames since the start (``-stream_loop -1`` keeps counting), ``fps=`` is the
average since the start, so the throughput is the increase of ``frame`` between two samples
over the controller time between them.

**gst-launch-1.0 -v** prints every change of ``fpsdisplaysink``'s ``last-message``, once per
``fps-update-interval`` (gst-plugins-bad ``gstfpsdisplaysink.c``)::

    /GstPipeline:pipeline0/GstFPSDisplaySink:fpsdisplaysink0: last-message = rendered: 1130, \
        dropped: 0, current: 573.87, average: 564.45

(one line, wrapped here; captured from GStreamer 1.26) or, once frames were dropped, ``...
dropped: 3, fps: 58.20, drop rate: 1.20`` (that form is from the source, not captured). The
throughput is the sink's ``current`` (``fps``) rate of the last interval. gst-launch dies on
SIGTERM without a last message.
"""

from __future__ import annotations

import re

from mdevtest.workloads.base import (
    ProcessWorkload,
    Reading,
    ResultParseError,
    WorkloadResult,
    split_lines,
)

_FFMPEG_FIELD = re.compile(r"(\w+)=\s*(\S+)")
_CLOCK = re.compile(r"(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)")


def parse_ffmpeg_stats(line: str) -> dict[str, str] | None:
    """The ``key=value`` fields of one ffmpeg progress line, or None for any other line."""
    stripped = line.strip()
    if not stripped.startswith("frame="):
        return None
    fields = dict(_FFMPEG_FIELD.findall(stripped))
    return fields if fields.get("frame", "").isdigit() else None


def clock_seconds(text: str) -> float | None:
    """``HH:MM:SS.ss`` (ffmpeg ``time=``/``elapsed=``, GStreamer's "Execution ended after") as
    seconds; None for ``N/A`` or anything else."""
    m = _CLOCK.fullmatch(text.strip())
    if m is None:
        return None
    return int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"])


def _float(text: str | None, suffix: str = "") -> float | None:
    if text is None:
        return None
    try:
        return float(text.removesuffix(suffix))
    except ValueError:
        return None  # N/A


class FfmpegWorkload(ProcessWorkload):
    driver = "ffmpeg"
    kinds = ("media",)
    unit = "frames/s"
    throughput_method = (
        "increase of ffmpeg's frame= counter between two samples over the controller time between them"
    )

    def parse_progress(self, line: str) -> Reading | None:
        fields = parse_ffmpeg_stats(line)
        if fields is None:
            return None
        detail = " ".join(f"{k}={fields[k]}" for k in ("time", "speed") if k in fields)
        return Reading(counter=float(fields["frame"]), detail=detail)

    def parse_results(self, text: str) -> WorkloadResult:
        stats = [f for f in map(parse_ffmpeg_stats, split_lines(text)) if f is not None]
        if not stats:
            raise ResultParseError(
                f"{self.name}: no ffmpeg progress line (frame= ...) in the output", text
            )
        last = stats[-1]
        values: dict[str, float] = {}
        for key, name, suffix in (
            ("speed", "speed", "x"),
            ("drop", "dropped", ""),
            ("dup", "duplicated", ""),
        ):
            value = _float(last.get(key), suffix)
            if value is not None:
                values[name] = value
        media_time = clock_seconds(last.get("time", ""))
        if media_time is not None:
            values["media_time_s"] = media_time
        bitrate = _float(last.get("bitrate"), "kbits/s")
        if bitrate is not None:
            values["bitrate_kbps"] = bitrate
        return WorkloadResult(
            workload=self.name,
            fps=_float(last.get("fps")),
            frames=int(last["frame"]),
            duration_s=clock_seconds(last.get("elapsed", "")),
            values=values,
            info={"final": "yes" if "Lsize" in last else "no"},
            raw=text,
        )


_GST_MESSAGE = re.compile(
    r".*last-message = rendered: (?P<rendered>\d+), dropped: (?P<dropped>\d+), "
    r"(?:current: (?P<current>\d+(?:\.\d+)?), average: (?P<average>\d+(?:\.\d+)?)"
    r"|fps: (?P<fps>\d+(?:\.\d+)?), drop rate: (?P<drop_rate>\d+(?:\.\d+)?))\s*"
)
_GST_ENDED = re.compile(r"\s*Execution ended after (?P<clock>\d+:\d{2}:\d{2}(?:\.\d+)?)\s*")
_GST_ERROR = re.compile(r"\s*(?:ERROR: from element \S+|WARNING: erroneous pipeline): (?P<message>.*)")


class GstWorkload(ProcessWorkload):
    driver = "gstreamer"
    kinds = ("media",)
    unit = "frames/s"
    throughput_method = "fpsdisplaysink's own rate over its last update interval (current/fps)"

    def parse_progress(self, line: str) -> Reading | None:
        m = _GST_MESSAGE.fullmatch(line)
        if m is None:
            return None
        rate = float(m["current"] if m["current"] is not None else m["fps"])
        return Reading(rate=rate, counter=float(m["rendered"]), detail=f"dropped={m['dropped']}")

    def parse_results(self, text: str) -> WorkloadResult:
        messages = [m for m in map(_GST_MESSAGE.fullmatch, split_lines(text)) if m is not None]
        if not messages:
            errors = [
                m["message"] for m in map(_GST_ERROR.fullmatch, split_lines(text)) if m is not None
            ]
            why = f" (gst-launch: {errors[0]})" if errors else ""
            raise ResultParseError(
                f"{self.name}: no fpsdisplaysink last-message in the output{why}", text
            )
        last = messages[-1]
        averages = [float(m["average"]) for m in messages if m["average"] is not None]
        rates = [float(m["current"] or m["fps"]) for m in messages]
        values = {"dropped": float(last["dropped"])}
        if last["drop_rate"] is not None:
            values["drop_rate"] = float(last["drop_rate"])
        duration = None
        for line in split_lines(text):
            if m := _GST_ENDED.fullmatch(line):
                duration = clock_seconds(m["clock"])
        return WorkloadResult(
            workload=self.name,
            fps=averages[-1] if averages else None,
            fps_min=min(rates),
            fps_max=max(rates),
            frames=int(last["rendered"]),
            duration_s=duration,
            values=values,
            raw=text,
        )


__all__ = ["FfmpegWorkload", "GstWorkload", "clock_seconds", "parse_ffmpeg_stats"]
