"""Two host pairs in parallel (pytest-xdist, -n 2): each worker leases its own pair, as in a lab.

The lab grows to four hosts for this (inventory/local-lab-2pairs.yaml); the inner run keeps it
up, so this session's own lab (hosts a and b, the same lab) is not taken down under it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_two_pairs_migrate_in_parallel_each_on_its_own_lease(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    result = pytester.runpytest_subprocess(
        str(REPO / "suites" / "test_migration_basic.py"),
        "--rootdir", str(REPO),
        "--inventory", str(REPO / "inventory" / "local-lab-2pairs.yaml"),
        "--mdevtest-report-dir", str(reports),
        "--mdevtest-keep-lab",
        "-p", "no:cacheprovider",
        "-n", "2", "--dist", "loadgroup",
        "-v",
        timeout=1800,
    )  # fmt: skip
    result.stdout.fnmatch_lines(["*created: 2/2 workers*"])
    result.assert_outcomes(passed=4)
    migrations = json.loads((reports / "summary.json").read_text())["migrations"]
    pairs = sorted(f"{m['source']}->{m['destination']}" for m in migrations)
    assert pairs == ["host-a->host-b", "host-b->host-a", "host-c->host-d", "host-d->host-c"]
    assert all(m["status"] == "completed" for m in migrations)
    # --dist loadgroup: a host set's tests (its two directions) all ran on one worker
    workers: dict[frozenset[str], set[str]] = {}
    for line in result.stdout.lines:
        # "[gw1] [ 50%] PASSED suites/...::test_live_migration[host-c->host-d-GVTg_V5_4]"
        match = re.search(
            r"\[(gw\d+)\] \[ *\d+%\] PASSED .*test_live_migration\[(host-\w)->(host-\w)-GVTg_V5_4\]",
            line,
        )
        if match:
            workers.setdefault(frozenset(match.group(2, 3)), set()).add(match.group(1))
    assert set(workers) == {frozenset({"host-a", "host-b"}), frozenset({"host-c", "host-d"})}
    assert all(len(w) == 1 for w in workers.values()), workers
