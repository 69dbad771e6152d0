"""The baseline gate: which figures regress, how the lines read, and what is not a failure."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from mdevtest.errors import MdevtestError
from mdevtest.report.baseline import (
    BaselineError,
    Regression,
    Tolerance,
    compare,
    diff,
    gate,
    load_summary,
    percentile,
)

AB = "suites/test_migration_basic.py::test_live_migration[host-a->host-b]"
BA = "suites/test_migration_basic.py::test_live_migration[host-b->host-a]"
PING = "suites/test_pingpong.py::test_ping_pong[host-a->host-b]"


def entry(test_id: str = AB, **figures: Any) -> dict[str, Any]:
    """A summary entry shaped like the ones the migrate fixture writes (figures of a real run)."""
    e: dict[str, Any] = {
        "test_id": test_id,
        "source": "host-a",
        "destination": "host-b",
        "status": "completed",
        "verdict": "passed",
        "total_time_ms": 764,
        "setup_time_ms": 1,
        "downtime_ms": 59,
        "ram_transferred_bytes": 122129141,
        "ram_total_bytes": 286072832,
        "vfio_transferred_bytes": None,
        "passes": 3,
        "wall_time_ms": 787.1,
        "error_desc": None,
    }
    e.update(figures)
    return e


def summary(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"generated_at": "2026-11-26T10:11:54Z", "migrations": list(entries)}


def test_identical_runs_have_no_regression() -> None:
    run = summary(entry(AB), entry(BA, downtime_ms=117, total_time_ms=1020))
    report = diff(run, copy.deepcopy(run))
    assert report.passed
    assert report.compared == (AB, BA)
    assert report.only_before == report.only_after == ()


def test_downtime_p95_regression_names_test_metric_before_after_limit() -> None:
    before = summary(entry(PING, downtime_ms=14), entry(PING, downtime_ms=14))
    after = summary(entry(PING, downtime_ms=14), entry(PING, downtime_ms=95))
    regressions = compare(before, after, tolerance=Tolerance())
    by_metric = {r.metric: r for r in regressions}
    # median of (14, 95) is 54.5 > max(14 * 1.2, 14 + 20): both statistics regress
    assert set(by_metric) == {"downtime median", "downtime p95"}
    p95 = by_metric["downtime p95"]
    assert (p95.before, p95.limit) == (14.0, 34.0)
    assert p95.after == pytest.approx(14 + 0.95 * 81)
    assert str(p95) == f"{PING}: downtime p95 14 ms -> 91 ms (limit 34 ms)"


@pytest.mark.parametrize(
    ("before_ms", "after_ms", "regressed"),
    [
        (59, 79, False),  # +20 ms: within the absolute slack
        (59, 80, True),  # +21 ms and +36 %: beyond both
        (500, 600, False),  # +100 ms but only +20 %: within the relative slack
        (500, 601, True),
        (7, 26, False),  # nearly 4x, but only 19 ms: lab noise, not a regression
    ],
)
def test_both_slacks_must_be_exceeded(before_ms: int, after_ms: int, regressed: bool) -> None:
    regs = compare(summary(entry(downtime_ms=before_ms)), summary(entry(downtime_ms=after_ms)))
    assert any(r.metric == "downtime median" for r in regs) is regressed


def test_improvements_are_never_regressions() -> None:
    before = summary(entry(downtime_ms=300, total_time_ms=9000, ram_transferred_bytes=900 << 20))
    after = summary(entry(downtime_ms=30, total_time_ms=900, ram_transferred_bytes=90 << 20))
    assert compare(before, after) == []


def test_total_time_and_bytes_regressions() -> None:
    before = summary(entry(total_time_ms=764, ram_transferred_bytes=100 << 20))
    after = summary(entry(total_time_ms=2000, ram_transferred_bytes=130 << 20))
    regs = {r.metric: r for r in compare(before, after)}
    assert set(regs) == {"total time median", "RAM transferred median"}
    assert str(regs["RAM transferred median"]) == (
        f"{AB}: RAM transferred median 100.0 MiB -> 130.0 MiB (limit 120.0 MiB)"
    )


def test_bytes_use_the_absolute_byte_slack() -> None:
    tol = Tolerance(absolute_bytes=1 << 20)
    small = compare(
        summary(entry(vfio_transferred_bytes=96)),
        summary(entry(vfio_transferred_bytes=4096)),
        tolerance=tol,
    )
    assert small == []  # 96 B -> 4 KiB is 40x but far below 1 MiB
    big = compare(
        summary(entry(vfio_transferred_bytes=96)),
        summary(entry(vfio_transferred_bytes=3 << 20)),
        tolerance=tol,
    )
    assert [r.metric for r in big] == ["VFIO transferred median"]


def test_optional_figures_only_when_both_runs_have_them() -> None:
    # vfio null (no migratable VFIO device) before, set after: nothing to compare
    assert compare(summary(entry()), summary(entry(vfio_transferred_bytes=50 << 20))) == []
    # observed downtime (controller-side) where both runs measured it
    before = summary(entry(observed_downtime_ms=120))
    after = summary(entry(observed_downtime_ms=400))
    assert {r.metric for r in compare(before, after)} == {
        "observed downtime median",
        "observed downtime p95",
    }
    assert compare(summary(entry(observed_downtime_ms=120)), summary(entry())) == []


def test_failed_migration_after_completed_before_is_a_regression() -> None:
    before = summary(entry(AB), entry(BA))
    after = summary(
        entry(AB, status="failed", downtime_ms=None, total_time_ms=None, error_desc="boom"),
        entry(BA),
    )
    regs = compare(before, after)
    assert [str(r) for r in regs] == [f"{AB}: status completed -> failed"]


def test_status_regression_counts_failed_entries_of_a_ping_pong_test() -> None:
    before = summary(*[entry(PING) for _ in range(4)])
    after = summary(entry(PING), entry(PING, status="cancelled"), entry(PING), entry(PING))
    regs = compare(before, after)
    assert [str(r) for r in regs] == [f"{PING}: status completed -> cancelled (1 of 4)"]


def test_a_test_that_failed_already_in_the_baseline_is_not_a_new_regression() -> None:
    negative = "suites/test_negative.py::test_mismatched_types[host-a->host-b]"
    failed = entry(negative, status="failed", downtime_ms=None, total_time_ms=None)
    assert compare(summary(failed), summary(copy.deepcopy(failed))) == []


def test_missing_tests_are_listed_not_failed() -> None:
    report = diff(summary(entry(AB), entry(BA)), summary(entry(AB), entry(PING)))
    assert report.passed
    assert report.only_before == (BA,)
    assert report.only_after == (PING,)
    text = report.render()
    assert f"not in this run (baseline only): {BA}" in text
    assert f"new in this run (no baseline): {PING}" in text


def test_render_puts_regressions_first_with_the_tolerance() -> None:
    report = diff(summary(entry(downtime_ms=59)), summary(entry(downtime_ms=400)))
    lines = report.render().splitlines()
    assert lines[0].startswith("baseline: 1 test(s) compared, 2 regression(s) (tolerance: +20%")
    assert lines[1] == f"REGRESSION {AB}: downtime median 59 ms -> 400 ms (limit 79 ms)"
    assert json.loads(json.dumps(report.to_json()))["passed"] is False


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([7.0], 95) == 7.0
    assert percentile([10.0, 20.0], 95) == pytest.approx(19.5)
    assert percentile(list(map(float, range(1, 101))), 95) == pytest.approx(95.05)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 95)


def test_regression_str_for_small_and_fractional_figures() -> None:
    r = Regression("t", "downtime median", 7.25, 30.5, 27.25, "ms")
    assert str(r) == "t: downtime median 7.2 ms -> 30 ms (limit 27 ms)"


def test_gate_loads_both_files(tmp_path: Path) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(summary(entry(downtime_ms=59))))
    new.write_text(json.dumps(summary(entry(downtime_ms=59))))
    assert gate(old, new).passed


def test_load_summary_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match=r"does not exist; pass the summary.json"):
        load_summary(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"migrations": [')
    with pytest.raises(BaselineError, match=r"bad.json is not JSON \(line 1"):
        load_summary(bad)
    other = tmp_path / "other.json"
    other.write_text('{"tests": []}')
    with pytest.raises(BaselineError, match="not an mdevtest summary"):
        load_summary(other)
    no_id = tmp_path / "noid.json"
    no_id.write_text('{"migrations": [{"status": "completed"}]}')
    with pytest.raises(BaselineError, match=r"migrations\[0\] has no test_id"):
        load_summary(no_id)
    assert issubclass(BaselineError, MdevtestError)


def test_tolerance_parse() -> None:
    assert Tolerance.parse("") == Tolerance()
    assert Tolerance.parse("relative=0.5, absolute_ms=5") == Tolerance(0.5, 5.0, 1 << 20)
    assert Tolerance.parse("absolute_bytes=4096").absolute_bytes == 4096
    with pytest.raises(BaselineError, match="expected key=value"):
        Tolerance.parse("percent=20")
    with pytest.raises(BaselineError, match="is not a number"):
        Tolerance.parse("relative=lots")
    with pytest.raises(BaselineError, match="finite number >= 0"):
        Tolerance.parse("absolute_ms=-1")
    with pytest.raises(BaselineError, match="finite number >= 0"):
        Tolerance(relative=float("nan"))
