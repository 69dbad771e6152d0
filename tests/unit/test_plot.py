"""The timeline PNG: a real image with both series and the downtime window where QEMU says."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mdevtest.migration import MigrationResult, TimelinePoint
from mdevtest.qemu.qmp import QmpEvent
from mdevtest.report.plot import (
    _DOWN,
    _MBPS,
    _RAM,
    _nice_ticks,
    downtime_window,
    migration_timeline_png,
    timeline_png,
)

MIB = 1 << 20


def timeline() -> list[TimelinePoint]:
    """A real run's query-migrate polls (host-a -> host-b, 2026-11-26), every 50 ms or so."""
    remaining = [None, 251, 243, 229, 214, 198, 81, 81, 69, 69, 55, 55, 27, 23, 0, 0]
    points = []
    for i, mib in enumerate(remaining):
        status = "setup" if i == 0 else "completed" if i == len(remaining) - 1 else "active"
        points.append(
            TimelinePoint(
                t_ms=4.5 + 56.9 * i,
                status=status,
                ram_transferred=None if mib is None else (270 - mib) * MIB,
                ram_remaining=None if mib is None else mib * MIB,
                mbps=None if i == 0 else (0.0 if i == 1 else 1073.9),
                dirty_pages_rate=None if i == 0 else 0,
                expected_downtime_ms=None if i == 0 else 300,
            )
        )
    return points


EVENTS = [
    QmpEvent("MIGRATION", {"status": "setup"}, 1795687905.989092, 2277.97),
    QmpEvent("MIGRATION_PASS", {"pass": 1}, 1795687905.99311, 2277.98),
    QmpEvent("MIGRATION", {"status": "active"}, 1795687905.993184, 2277.98),
    QmpEvent("STOP", {}, 1795687906.693777, 2278.68),
    QmpEvent("MIGRATION", {"status": "completed"}, 1795687906.810667, 2278.79),
]


def decode(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    img.load()
    return img.convert("RGB")


def count(img: Image.Image, colour: tuple[int, int, int]) -> int:
    return int(np.all(np.asarray(img) == colour, axis=2).sum())


def test_png_has_both_series_and_the_downtime_window() -> None:
    png = timeline_png(timeline(), downtime_window=(704.7, 763.7), title="host-a -> host-b")
    img = decode(png)
    assert img.size == (960, 440)
    colours = img.getcolors(maxcolors=1 << 16)
    assert colours is not None
    assert len(colours) > 20  # not blank: text, axes, lines, shading
    assert count(img, _RAM) > 200
    assert count(img, _MBPS) > 200
    assert count(img, _DOWN) > 1000
    # the shaded band is where the window is: x of 704.7..763.7 ms on a 0..1000 ms axis
    left, right = 78, 960 - 78
    mid_x = round(left + (right - left) * 734 / 1000)
    assert img.getpixel((mid_x, 100)) == _DOWN
    assert img.getpixel((round(left + (right - left) * 0.3), 100)) != _DOWN


def test_without_a_window_nothing_is_shaded() -> None:
    img = decode(timeline_png(timeline(), downtime_window=None, title="no downtime"))
    assert count(img, _DOWN) == 0
    assert count(img, _RAM) > 200


def test_custom_size_and_empty_timeline() -> None:
    img = decode(timeline_png([], downtime_window=None, title="nothing polled", size=(400, 240)))
    assert img.size == (400, 240)
    assert count(img, (255, 255, 255)) < 400 * 240  # axes and the "no RAM figures" note
    with pytest.raises(ValueError, match="too small"):
        timeline_png([], downtime_window=None, title="x", size=(100, 100))


def test_downtime_window_from_qemu_events() -> None:
    window = downtime_window(EVENTS, 59, timeline())
    assert window is not None
    start, end = window
    assert start == pytest.approx((1795687906.693777 - 1795687905.989092) * 1000)
    assert end - start == pytest.approx(59)
    # the same from the events as attached to Allure (to_json form)
    assert downtime_window([e.to_json() for e in EVENTS], 59) == pytest.approx(window)


def test_downtime_window_fallback_and_none() -> None:
    tl = timeline()
    assert downtime_window([], None, tl) is None
    done = tl[-1].t_ms
    assert downtime_window([], 59, tl) == pytest.approx((done - 59, done))
    assert downtime_window([], 59, tl[:-1]) is None  # never completed


def test_migration_timeline_png_of_a_result() -> None:
    tl = timeline()
    result = MigrationResult(
        source="host-a",
        destination="host-b",
        uri="tcp:198.18.1.12:4444",
        status="completed",
        total_time_ms=764,
        setup_time_ms=1,
        downtime_ms=59,
        ram_transferred_bytes=122129141,
        ram_total_bytes=286072832,
        vfio_transferred_bytes=None,
        passes=3,
        wall_time_ms=787.1,
        error_desc=None,
        final_stats={"status": "completed"},
        events=tuple(EVENTS),
        timeline=tuple(tl),
    )
    img = decode(migration_timeline_png(result))
    assert count(img, _DOWN) > 1000


def test_nice_ticks() -> None:
    assert _nice_ticks(914.2) == [0, 200, 400, 600, 800, 1000]
    assert _nice_ticks(251) == [0, 100, 200, 300]
    assert _nice_ticks(1073.9) == [0, 250, 500, 750, 1000, 1250]
    assert _nice_ticks(0) == [0.0, 1.0]
    assert _nice_ticks(float("nan")) == [0.0, 1.0]


def test_throughput_plot_shades_the_switchover_and_breaks_at_gaps() -> None:
    import io

    from PIL import Image

    from mdevtest.report.plot import throughput_png

    samples = [(100.0 + i, None if 10 <= i < 13 else 50.0) for i in range(30)]
    png = throughput_png(samples, switchover=(110.2, 110.25), unit="fps", title="glmark2")
    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.size == (960, 400)
    # the shaded switchover (light red) is drawn at ~10.2 s of the 30 s axis
    x = round(78 + (960 - 30 - 78) * 10.22 / 30)
    assert img.getpixel((x, 200)) == (250, 205, 205)
    empty = throughput_png([(0.0, None)], switchover=None, unit="fps", title="none")
    assert Image.open(io.BytesIO(empty)).size == (960, 400)
