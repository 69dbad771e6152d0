"""The basic suite through SR-IOV VFs: a simulated Intel Xe VF (xe-vfio-pci) one way, a simulated
NVIDIA vendor-VFIO VF (vGPU type 1156) the other, and a ping-pong round trip with the Xe VF (the
guest keeps its VF type on the way back), run through the installed plugin as a user runs it;
the PFs are back as found afterwards (VF count, autoprobe), no VF left bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdevtest.testbed import Testbed

REPO = Path(__file__).resolve().parents[2]
LAB = Path("/var/lib/mdevtest/local-lab/hosts")
PFS = {"host-a": "0000:03:00.0", "host-b": "0000:04:00.0"}  # the pair's PF, by source host


def test_basic_suite_through_simulated_xe_and_nvidia_vfs(
    pytester: pytest.Pytester, tmp_path: Path, lab: Testbed
) -> None:
    """``lab``: this session holds the local lab up, so the suite's run does not take it down
    (the simulated trees are read afterwards)."""
    reports = tmp_path / "reports"
    result = pytester.runpytest_subprocess(
        str(REPO / "suites" / "test_migration_basic.py"),
        str(REPO / "suites" / "test_ping_pong.py") + "::test_ping_pong[host-a->host-b-xe-vf-auto]",
        "--rootdir", str(REPO),
        "--inventory", str(REPO / "inventory" / "local-lab-vf.yaml"),
        "--mdevtest-report-dir", str(reports),
        "--mdevtest-round-trips", "1",
        "-p", "no:cacheprovider",
        "-v",
        timeout=1200,
    )  # fmt: skip
    result.stdout.fnmatch_lines(
        [
            "*test_live_migration?host-a->host-b-xe-vf-auto? PASSED*",
            "*test_live_migration?host-b->host-a-vgpu-1156? PASSED*",
            "*test_ping_pong?host-a->host-b-xe-vf-auto? PASSED*",
        ],
        consecutive=False,
    )
    result.assert_outcomes(passed=3)

    summary = json.loads((reports / "summary.json").read_text())
    basic = {e["pair"]: e for e in summary["migrations"] if "test_live_migration" in e["test_id"]}
    xe, nv = basic["host-a->host-b"]["vgpu"], basic["host-b->host-a"]["vgpu"]
    legs = [e for e in summary["migrations"] if "test_ping_pong" in e["test_id"]]
    assert [e["pair"] for e in legs] == ["host-a->host-b", "host-b->host-a"]
    assert {e["vgpu"]["vendor"] for e in legs} == {"sim-xe-sriov"}  # the same VF type back
    assert (xe["vendor"], xe["kind"], xe["parent"], xe["simulated"]) == (
        "sim-xe-sriov", "vf", "0000:03:00.0", True,
    )  # fmt: skip
    assert (nv["vendor"], nv["type"], nv["kind"], nv["simulated"]) == (
        "sim-nvidia-vfio", "1156", "vf", True,
    )  # fmt: skip
    for vgpu in (xe, nv):  # a VF of the PF on each side (any free one: addresses may differ)
        for role in ("source", "destination"):
            assert vgpu["devices"][role].startswith(vgpu["parent"][:-1]), vgpu
        assert vgpu["mdev_uuids"] == {}
    for entry in summary["migrations"]:
        assert entry["status"] == "completed"
        assert isinstance(entry["downtime_ms"], int)
        assert entry["checks"]["heartbeat"]["status"] == "passed"

    # SR-IOV hygiene: every PF the run enabled VFs on is back as it was, nothing left bound
    for host in ("host-a", "host-b"):
        for pf in PFS.values():
            pf_dir = LAB / host / "sysroot" / "sys" / "bus" / "pci" / "devices" / pf
            assert (pf_dir / "sriov_numvfs").read_text().strip() == "0", (host, pf)
            assert (pf_dir / "sriov_drivers_autoprobe").read_text().strip() == "1", (host, pf)
        owners = LAB / host / "vfs.owners"
        assert not owners.exists() or not owners.read_text().strip(), owners.read_text()
