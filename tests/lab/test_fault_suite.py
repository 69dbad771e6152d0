"""The fault suite, run through the plugin as a user runs it; it also writes the reliability table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_fault_suite_passes_and_writes_the_reliability_table(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    result = pytester.runpytest_subprocess(
        str(REPO / "suites" / "test_faults.py"),
        "--rootdir",
        str(REPO),
        "--inventory",
        str(REPO / "inventory" / "local-lab.yaml"),
        "--mdevtest-report-dir",
        str(reports),
        "-p",
        "no:cacheprovider",
        "-v",
        timeout=2400,
    )
    result.assert_outcomes(passed=12)
    rows = json.loads((reports / "reliability.json").read_text())
    assert len(rows) == 12
    assert all(r["leaks"].startswith("none") for r in rows)
    assert {r["class"] for r in rows} >= {"infrastructure", "product"}
    # Keep the latest table beside the reports of this run's tests (docs/reliability.md quotes it).
    shutil.copy(reports / "reliability.md", REPO / "reports" / "reliability.md")
