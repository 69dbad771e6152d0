"""Downtime two ways over many migrations, from a summary.json (e.g. a ping-pong run).

Usage:
    .venv/bin/pytest suites/test_ping_pong.py --mdevtest-pairs 'host-a->host-b' \\
        --mdevtest-round-trips 10 --mdevtest-report-dir /tmp/pp        # 20 migrations
    .venv/bin/python benchmarks/downtime_stats.py /tmp/pp/summary.json

Prints min/median/max of QEMU's downtime, the guest-observed downtime (UDP heartbeat, controller
clock), their difference (observed - QEMU), and the seconds the checks add per migration.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _mmm(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
        "max": round(max(values), 1),
    }


def main() -> None:
    doc: dict[str, Any] = json.loads(Path(sys.argv[1]).read_text())
    done = [m for m in doc["migrations"] if m.get("status") == "completed"]
    qemu = [float(m["downtime_ms"]) for m in done if m.get("downtime_ms") is not None]
    observed = [
        float(m["observed_downtime_ms"]) for m in done if m.get("observed_downtime_ms") is not None
    ]
    diff = [
        float(m["observed_downtime_ms"]) - float(m["downtime_ms"])
        for m in done
        if m.get("observed_downtime_ms") is not None and m.get("downtime_ms") is not None
    ]
    checks = [float(m["checks_seconds"]) for m in done if m.get("checks_seconds") is not None]
    print(
        json.dumps(
            {
                "migrations": len(done),
                "qemu_downtime_ms": _mmm(qemu),
                "observed_downtime_ms": _mmm(observed),
                "observed_minus_qemu_ms": _mmm(diff),
                "checks_seconds_per_migration": _mmm(checks),
                "total_time_ms": _mmm(
                    [float(m["total_time_ms"]) for m in done if m.get("total_time_ms")]
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
