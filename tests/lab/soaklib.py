"""The soak loop shared by benchmarks/soak.py and the short CI version (test_soak.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from mdevtest.inventory import load_inventory
from mdevtest.lab.local import LocalLab
from mdevtest.migration import Migrator
from mdevtest.testbed import Testbed


def sample() -> dict[str, int]:
    rss = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return {"rss_kib": rss, "fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count()}


def slope_per_100(values: list[int]) -> float:
    """Least-squares slope over the second half, per 100 samples (0 for fewer than 4)."""
    tail = values[len(values) // 2 :]
    n = len(tail)
    if n < 4:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(tail) / n
    cov = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(tail))
    var = sum((i - mean_x) ** 2 for i in range(n))
    return round(cov / var * 100, 2)


def soak(inventory_path: Path, migrations: int) -> dict[str, Any]:
    inventory = load_inventory(inventory_path)
    LocalLab(inventory).up()
    samples: list[dict[str, int]] = []
    figures: list[dict[str, Any]] = []
    with Testbed(inventory) as lab:
        there = inventory.pairs[0]
        back = lab.reverse(there)
        machine = lab.start_source(there)
        try:
            baseline = sample()
            for i in range(migrations):
                route = there if i % 2 == 0 else back
                destination = lab.start_destination(route, machine)
                try:
                    result = Migrator(machine, destination, uri=lab.migration_uri(route)).run()
                except BaseException:
                    lab.release(destination)
                    raise
                lab.release(machine)
                machine = destination
                figures.append({"total_ms": result.total_time_ms, "downtime_ms": result.downtime_ms})
                samples.append(sample())
        finally:
            lab.release(machine)
    series = {k: [s[k] for s in samples] for k in ("rss_kib", "fds", "threads")}
    downtimes = sorted(int(f["downtime_ms"] or 0) for f in figures)
    return {
        "migrations": len(figures),
        "baseline": baseline,
        "end": samples[-1] if samples else baseline,
        "max": {k: max(v) for k, v in series.items()} if samples else baseline,
        "slope_per_100_migrations": {k: slope_per_100(v) for k, v in series.items()},
        "downtime_ms_min_median_max": [downtimes[0], downtimes[len(downtimes) // 2], downtimes[-1]]
        if downtimes
        else None,
    }
