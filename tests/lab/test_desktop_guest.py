"""The desktop guest on the local lab: a Debian disk image booted through UEFI, reached over
qemu-guest-agent, with the probe agent deployed into it; the suites run on it as users run them.

- the basic and ping-pong suites migrate it with every probe check required (RAM, DMA,
  device memory, device state, heartbeat): a skip of any of them fails;
- the workloads suite really runs glmark2, x11perf and the software media workloads across a
  live migration, with samples and the dip at the switchover in summary.json; the workloads that
  cannot exist in this image skip, each saying why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "inventory" / "local-lab-desktop.yaml"
PROBE_CHECKS = "ram-integrity,dma-integrity,device-memory,device-state,heartbeat,downtime"


def run_suites(pytester: pytest.Pytester, reports: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        *args,
        "--rootdir", str(REPO),
        "--inventory", str(INVENTORY),
        "--mdevtest-pairs", "host-a->host-b",
        "--mdevtest-report-dir", str(reports),
        "-p", "no:cacheprovider",
        "-v", "-rs",
        timeout=2400,
    )  # fmt: skip


def entries(reports: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((reports / "summary.json").read_text())["migrations"]
    return data


def test_uefi_disk_guest_migrates_with_every_probe_check(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    result = run_suites(
        pytester,
        reports,
        str(REPO / "suites" / "test_migration_basic.py"),
        str(REPO / "suites" / "test_ping_pong.py"),
        "--mdevtest-require-checks",
        PROBE_CHECKS,
    )
    result.assert_outcomes(passed=2)
    found = entries(reports)
    legs = [e for e in found if "test_ping_pong" in e["test_id"]]
    assert len(found) - len(legs) == 1  # the basic suite's one migration
    assert len(legs) >= 2  # the round trips, every leg with every probe check (below)
    assert {"host-a->host-b", "host-b->host-a"} <= {e["pair"] for e in legs}
    for entry in found:
        assert entry["status"] == "completed", entry["test_id"]
        assert "uefi" in entry["guest_image"], entry["guest_image"]
        coverage = entry["coverage"]
        assert coverage["missing_required"] == [], coverage
        for name in PROBE_CHECKS.split(","):
            assert entry["checks"][name]["status"] == "passed", (entry["test_id"], name)
        assert entry["observed_downtime_ms"] is not None


WORKLOADS_RUN = ("glmark2", "x11perf", "ffmpeg-sw-decode", "ffmpeg-sw-encode", "gst-sw-decode")


def test_gpu_and_media_workloads_run_across_a_migration(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    result = run_suites(pytester, reports, str(REPO / "suites" / "test_workloads.py"))
    for name in WORKLOADS_RUN:
        result.stdout.fnmatch_lines(
            [f"*test_migrate_under_load?host-a->host-b-GVTg_V5_4-{name}? PASSED*"]
        )
    for reason in (
        "Unigine Heaven's licence",
        "3DMark06 needs a Windows guest",
        "needs a GPU's video engine (VA-API)",
        "needs a GPU's video engine (Intel QSV)",
    ):
        result.stdout.fnmatch_lines([f"*SKIPPED*{reason}*"])  # each on its own: any order
    result.assert_outcomes(passed=len(WORKLOADS_RUN), skipped=7)
    by_workload = {e["workload"]: e for e in entries(reports)}
    assert set(by_workload) == set(WORKLOADS_RUN)
    for name, entry in by_workload.items():
        run = entry["workload_run"]
        values = [s["value"] for s in run["samples"] if s["value"] is not None]
        assert len(values) >= 5, (name, run["samples"])
        assert run["switchover"] is not None, name
        dip = run["dip"]
        assert dip["baseline"] is not None, (name, dip)
        assert dip["baseline"] > 0, (name, dip)
        assert dip["samples_before"] > 0, (name, dip)
        assert dip["samples_after"] > 0, (name, dip)
    renderer = by_workload["glmark2"]["workload_run"]["result"]["info"].get("renderer", "")
    assert "llvmpipe" in renderer  # the lab's desktop renders in software, and says so
