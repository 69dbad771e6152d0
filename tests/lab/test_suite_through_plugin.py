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
    result.stdout.fnmatch_lines(["*test_live_migration?host-a->host-b-GVTg_V5_4? PASSED*"])
    result.assert_outcomes(passed=1)

    summary = json.loads((reports / "summary.json").read_text())
    (entry,) = summary["migrations"]
    assert entry["test_id"].endswith("test_live_migration[host-a->host-b-GVTg_V5_4]")
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


def test_policies_and_negative_suites_pass_on_one_pair(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """Every policy migrates (switchover-ack on skips on QEMU < 8.0, naming it); each refusal is
    clean."""
    reports = tmp_path / "reports"
    result = pytester.runpytest_subprocess(
        str(REPO / "suites" / "test_policies.py"),
        str(REPO / "suites" / "test_negative.py"),
        "--rootdir", str(REPO),
        "--inventory", str(REPO / "inventory" / "local-lab.yaml"),
        "--mdevtest-pairs", "host-a->host-b",
        "--mdevtest-report-dir", str(reports),
        "-p", "no:cacheprovider",
        "-v", "-rs",
        timeout=1800,
    )  # fmt: skip
    result.stdout.fnmatch_lines(
        [
            "*test_migration_under_policy?host-a->host-b-GVTg_V5_4-multifd-2? PASSED*",
            "*test_mismatched_vgpu_types_are_refused?host-a->host-b-GVTg_V5_4? PASSED*",
            "*test_no_free_instance_on_the_destination_is_refused?host-a->host-b-GVTg_V5_4? PASSED*",
            "*test_blocked_migration_is_refused?host-a->host-b-GVTg_V5_4? PASSED*",
        ]
    )
    # the post-copy and vIOMMU refusals are QEMU's VFIO code: skipped on the simulated vGPU,
    # saying so (the nested lab runs them, tests/lab/test_nested.py)
    result.stdout.fnmatch_lines(["*SKIPPED*no real VFIO device (simulated vGPU)*"] * 2)
    outcomes = result.parseoutcomes()
    if outcomes.get("skipped", 0) > 2:  # switchover-ack on, and only on a QEMU without it
        result.stdout.fnmatch_lines(["*has no migration capability switchover-ack*"])
        assert outcomes == {"passed": 8, "skipped": 3}, outcomes
    else:
        assert outcomes == {"passed": 9, "skipped": 2}, outcomes
    # the summary has one completed migration per policy that ran; the refusals moved nothing
    migrations = json.loads((reports / "summary.json").read_text())["migrations"]
    ran = {m["test_id"].split("[", 1)[1] for m in migrations if "under_policy" in m["test_id"]}
    assert len(ran) == 6 - (outcomes.get("skipped", 0) - 2), ran
    assert all(m["status"] == "completed" for m in migrations if "under_policy" in m["test_id"])


def test_workloads_suite_runs_what_the_image_has_and_skips_the_rest(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    result = pytester.runpytest_subprocess(
        str(REPO / "suites" / "test_workloads.py"),
        "--rootdir", str(REPO),
        "--inventory", str(REPO / "inventory" / "local-lab.yaml"),
        "--mdevtest-pairs", "host-a->host-b",
        "--mdevtest-report-dir", str(tmp_path / "reports"),
        "-p", "no:cacheprovider",
        "-v", "-rs",
        timeout=900,
    )  # fmt: skip
    result.stdout.fnmatch_lines(
        [
            "*test_migrate_under_load?host-a->host-b-GVTg_V5_4-synthetic? PASSED*",
            "*SKIPPED*workload glmark2 is not in the guest image (lab-synthetic)*",
        ]
    )
    from mdevtest.workloads.registry import known_workloads

    result.assert_outcomes(passed=1, skipped=len(known_workloads()) - 1)
