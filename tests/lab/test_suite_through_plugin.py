"""The basic suite, run through the installed plugin exactly as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_basic_suite_passes_and_writes_reports(pytester: pytest.Pytester, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    result = pytester.runpytest_subprocess(
        str(REPO / "suites" / "test_migration_basic.py"),
        "--rootdir",
        str(REPO),
        "--inventory",
        str(REPO / "inventory" / "local-lab.yaml"),
        "--mdevtest-pairs",
        "host-a->host-b",
        "--mdevtest-report-dir",
        str(reports),
        "-p",
        "no:cacheprovider",
        "-v",
        timeout=900,
    )
    result.stdout.fnmatch_lines(["*test_live_migration?host-a->host-b? PASSED*"])
    result.assert_outcomes(passed=1)

    summary = json.loads((reports / "summary.json").read_text())
    (entry,) = summary["migrations"]
    assert entry["test_id"].endswith("test_live_migration[host-a->host-b]")
    assert (entry["source"], entry["destination"], entry["status"]) == ("host-a", "host-b", "completed")
    for key in ("total_time_ms", "setup_time_ms", "downtime_ms", "ram_transferred_bytes"):
        assert isinstance(entry[key], int), key
        assert key in entry["methods"]
    assert entry["vfio_transferred_bytes"] is None
    vgpu = entry["vgpu"]
    assert (vgpu["vendor"], vgpu["type"], vgpu["simulated"]) == ("simulated", "i915-GVTg_V5_4", True)
    assert vgpu["mdev_uuids"]["source"] == vgpu["mdev_uuids"]["destination"]
    assert set(entry["qemu_version"]) == {"host-a", "host-b"}
    assert entry["checks"]["heartbeat"]["status"] == "passed"

    results = list((reports / "allure-results").glob("*-result.json"))
    assert results, "allure-pytest wrote no results"
    # Test-body attachments live in the result files, fixture teardown ones in the containers.
    files = [*results, *(reports / "allure-results").glob("*-container.json")]
    attachments = {a["name"] for f in files for a in _walk_attachments(json.loads(f.read_text()))}
    assert "query-migrate (final)" in attachments
    assert any(name.startswith("console host-a/") for name in attachments)
    assert any(name.startswith("console host-b/") for name in attachments)


def _walk_attachments(node: object) -> list[dict[str, str]]:
    """Every attachment record anywhere in an Allure JSON document."""
    found: list[dict[str, str]] = []
    if isinstance(node, dict):
        found += node.get("attachments", [])
        for value in node.values():
            if isinstance(value, (dict, list)):
                found += _walk_attachments(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk_attachments(value)
    return found
