"""The migration timeline as a PNG: RAM remaining and throughput over time, downtime shaded.

Drawn with Pillow alone (axes, ticks, labels, lines), so a report needs no plotting library.
The x axis is the controller's time since ``migrate`` was sent (the timeline's ``t_ms``); RAM
remaining (MiB) uses the left axis, throughput (Mbps) the right one.

Where the downtime window lies is not in ``query-migrate``: :func:`downtime_window` places it
from QEMU's own clock, at the source's ``STOP`` event relative to the ``MIGRATION`` ``setup`` event
(which QEMU emits as it starts the migration, a few ms after the controller sent ``migrate``),
and makes it ``downtime`` ms long. Without those events it puts the window just before the first
``completed`` poll, which is accurate to one poll interval.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from mdevtest.migration import MigrationResult, TimelinePoint
    from mdevtest.qemu.qmp import QmpEvent

MIB = 1 << 20

_BG = (255, 255, 255)
_FG = (40, 40, 40)
_GRID = (225, 225, 225)
_RAM = (31, 119, 180)
_MBPS = (230, 120, 20)
_DOWN = (250, 205, 205)
_DOWN_EDGE = (200, 60, 60)


def timeline_png(
    timeline: Sequence[TimelinePoint],
    *,
    downtime_window: tuple[float, float] | None,
    title: str,
    size: tuple[int, int] = (960, 440),
) -> bytes:
    """The PNG of one migration's ``query-migrate`` timeline."""
    width, height = size
    img = Image.new("RGB", size, _BG)
    draw = ImageDraw.Draw(img)
    font = _font(13)
    small = _font(11)
    left, right, top, bottom = 78, width - 78, 62, height - 48
    if right - left < 100 or bottom - top < 80:
        raise ValueError(f"plot size {width}x{height} is too small (at least 260x190)")

    draw.text((left, 10), title, fill=_FG, font=_font(15))
    ram = [(p.t_ms, p.ram_remaining / MIB) for p in timeline if p.ram_remaining is not None]
    mbps = [(p.t_ms, float(p.mbps)) for p in timeline if p.mbps is not None]
    t_max = max([p.t_ms for p in timeline] + [downtime_window[1] if downtime_window else 0.0])
    x_ticks = _nice_ticks(t_max)
    ram_ticks = _nice_ticks(max((v for _, v in ram), default=0.0))
    mbps_ticks = _nice_ticks(max((v for _, v in mbps), default=0.0))

    def x_of(t: float) -> float:
        return left + (right - left) * t / x_ticks[-1]

    def y_of(v: float, ticks: list[float]) -> float:
        return bottom - (bottom - top) * v / ticks[-1]

    if downtime_window is not None:
        x0, x1 = x_of(max(downtime_window[0], 0.0)), x_of(downtime_window[1])
        x1 = max(x1, x0 + 2)  # a few ms on a long migration is still visible
        draw.rectangle((x0, top, x1, bottom), fill=_DOWN)
        draw.line((x0, top, x0, bottom), fill=_DOWN_EDGE)
        draw.line((x1, top, x1, bottom), fill=_DOWN_EDGE)
        span = downtime_window[1] - downtime_window[0]
        label = f"downtime {span:.0f} ms"
        lw = draw.textlength(label, font=small)
        draw.text((min(x1 + 4, right - lw), top + 4), label, fill=_DOWN_EDGE, font=small)

    # grid and the three axes
    for v in ram_ticks:
        y = y_of(v, ram_ticks)
        draw.line((left, y, right, y), fill=_GRID)
        _text_right(draw, (left - 6, y), _num(v), _RAM, small)
    for v in mbps_ticks:
        y = y_of(v, mbps_ticks)
        draw.line((right, y, right + 4, y), fill=_FG)
        draw.text((right + 7, y - 6), _num(v), fill=_MBPS, font=small)
    for t in x_ticks:
        x = x_of(t)
        draw.line((x, bottom, x, bottom + 4), fill=_FG)
        tw = draw.textlength(_num(t), font=small)
        draw.text((x - tw / 2, bottom + 6), _num(t), fill=_FG, font=small)
    draw.line((left, top, left, bottom), fill=_FG)
    draw.line((right, top, right, bottom), fill=_FG)
    draw.line((left, bottom, right, bottom), fill=_FG)
    xlabel = "time since migrate (ms)"
    draw.text(((left + right - draw.textlength(xlabel, font=font)) / 2, bottom + 24), xlabel,
              fill=_FG, font=font)  # fmt: skip
    draw.text((8, top - 22), "RAM remaining (MiB)", fill=_RAM, font=font)
    mlabel = "throughput (Mbps)"
    draw.text((width - 8 - draw.textlength(mlabel, font=font), top - 22), mlabel, fill=_MBPS, font=font)

    for series, ticks, colour in ((ram, ram_ticks, _RAM), (mbps, mbps_ticks, _MBPS)):
        points = [(x_of(t), y_of(v, ticks)) for t, v in series]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2, joint="curve")
        for x, y in points:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    if not ram and not mbps:
        msg = "no RAM figures in the timeline"
        draw.text(((left + right - draw.textlength(msg, font=font)) / 2, (top + bottom) / 2), msg,
                  fill=_FG, font=font)  # fmt: skip

    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def throughput_png(
    samples: Sequence[tuple[float, float | None]],
    *,
    switchover: tuple[float, float] | None,
    unit: str,
    title: str,
    size: tuple[int, int] = (960, 400),
) -> bytes:
    """The PNG of a workload's throughput across a migration: ``samples`` are ``(t, value)``
    on one clock (value None: no reading, drawn as a break), ``switchover`` the STOP..RESUME
    window on that clock, shaded. Time is shown in s since the first sample."""
    width, height = size
    img = Image.new("RGB", size, _BG)
    draw = ImageDraw.Draw(img)
    font, small = _font(13), _font(11)
    left, right, top, bottom = 78, width - 30, 50, height - 48
    draw.text((left, 10), title, fill=_FG, font=_font(15))
    t0 = samples[0][0] if samples else 0.0
    points = [(t - t0, v) for t, v in samples]
    t_max = max([t for t, _ in points] + [((switchover[1] - t0) if switchover else 0.0), 1.0])
    x_ticks = _nice_ticks(t_max)
    y_ticks = _nice_ticks(max((v for _, v in points if v is not None), default=0.0))

    def x_of(t: float) -> float:
        return left + (right - left) * t / x_ticks[-1]

    def y_of(v: float) -> float:
        return bottom - (bottom - top) * v / y_ticks[-1]

    if switchover is not None:
        x0, x1 = x_of(max(switchover[0] - t0, 0.0)), x_of(switchover[1] - t0)
        x1 = max(x1, x0 + 2)
        draw.rectangle((x0, top, x1, bottom), fill=_DOWN)
        label = f"switchover {(switchover[1] - switchover[0]) * 1000:.0f} ms"
        draw.text((min(x1 + 4, right - draw.textlength(label, font=small)), top + 4), label,
                  fill=_DOWN_EDGE, font=small)  # fmt: skip
    for v in y_ticks:
        y = y_of(v)
        draw.line((left, y, right, y), fill=_GRID)
        _text_right(draw, (left - 6, y), _num(v), _FG, small)
    for t in x_ticks:
        x = x_of(t)
        draw.line((x, bottom, x, bottom + 4), fill=_FG)
        draw.text((x - draw.textlength(_num(t), font=small) / 2, bottom + 6), _num(t), fill=_FG,
                  font=small)  # fmt: skip
    draw.line((left, top, left, bottom), fill=_FG)
    draw.line((left, bottom, right, bottom), fill=_FG)
    xlabel = "time (s)"
    draw.text(((left + right - draw.textlength(xlabel, font=font)) / 2, bottom + 24), xlabel,
              fill=_FG, font=font)  # fmt: skip
    draw.text((8, top - 20), unit, fill=_RAM, font=font)
    run: list[tuple[float, float]] = []
    ended: list[tuple[float, float | None]] = [*points, (t_max, None)]
    for when, value in ended:
        if value is None:
            if len(run) > 1:
                draw.line(run, fill=_RAM, width=2)
            run = []
            continue
        xy = (x_of(when), y_of(value))
        run.append(xy)
        draw.ellipse((xy[0] - 2, xy[1] - 2, xy[0] + 2, xy[1] + 2), fill=_RAM)
    if not any(v is not None for _, v in points):
        msg = "no throughput readings"
        draw.text(((left + right - draw.textlength(msg, font=font)) / 2, (top + bottom) / 2), msg,
                  fill=_FG, font=font)  # fmt: skip
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def downtime_window(
    events: Sequence[QmpEvent | Mapping[str, Any]],
    downtime_ms: float | None,
    timeline: Sequence[TimelinePoint] = (),
) -> tuple[float, float] | None:
    """Where on the timeline's x axis (ms since ``migrate``) the guest was stopped.

    ``events`` are the source's QMP events of this migration (:class:`QmpEvent` or their
    ``to_json()`` form). ``None`` when the migration reported no downtime.
    """
    if downtime_ms is None:
        return None
    setup = stop = None
    for ev in events:
        name, data, ts = _event(ev)
        if name == "MIGRATION" and data.get("status") == "setup" and setup is None:
            setup = ts
        elif name == "STOP" and setup is not None and stop is None:
            stop = ts
    if setup is not None and stop is not None and stop >= setup:
        start = (stop - setup) * 1000
        return (start, start + downtime_ms)
    done = next((p.t_ms for p in timeline if p.status == "completed"), None)
    if done is None:
        return None
    return (max(done - downtime_ms, 0.0), done)


def migration_timeline_png(result: MigrationResult, *, title: str | None = None) -> bytes:
    """The timeline PNG of a :class:`MigrationResult`, with its downtime window."""
    window = downtime_window(result.events, result.downtime_ms, result.timeline)
    parts = [f"{result.source} -> {result.destination}: {result.status}"]
    if result.total_time_ms is not None:
        parts.append(f"total {result.total_time_ms} ms")
    if result.downtime_ms is not None:
        parts.append(f"downtime {result.downtime_ms} ms")
    if result.ram_transferred_bytes is not None:
        parts.append(f"RAM {result.ram_transferred_bytes / MIB:.1f} MiB sent")
    return timeline_png(result.timeline, downtime_window=window, title=title or ", ".join(parts))


def _event(ev: QmpEvent | Mapping[str, Any]) -> tuple[str, Mapping[str, Any], float]:
    if isinstance(ev, Mapping):
        return str(ev.get("event")), ev.get("data") or {}, float(ev.get("qemu_timestamp") or 0.0)
    return ev.name, ev.data, ev.qemu_timestamp


def _nice_ticks(maximum: float, count: int = 5) -> list[float]:
    """0, step, 2*step, ... up to the first tick >= maximum; step is 1, 2 or 5 x 10^k."""
    if not math.isfinite(maximum) or maximum <= 0:
        return [0.0, 1.0]
    raw = maximum / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(maximum / step - 1e-9)
    return [i * step for i in range(n + 1)]


def _num(v: float) -> str:
    return f"{v:.0f}" if v == int(v) else f"{v:g}"


def _text_right(
    draw: ImageDraw.ImageDraw,
    at: tuple[float, float],
    text: str,
    fill: tuple[int, int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    draw.text((at[0] - draw.textlength(text, font=font), at[1] - 6), text, fill=fill, font=font)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (AttributeError, TypeError, OSError):  # Pillow < 10.1 or no FreeType: the bitmap font
        return ImageFont.load_default()
