"""Ping-pong soak: N live migrations of one guest between host-a and host-b, sampling the
controller's memory, file descriptors and threads after each one.

Usage (root; nothing else using the lab):  .venv/bin/python benchmarks/soak.py [--migrations 200]

Samples: VmRSS from /proc/self/status, open fds in /proc/self/fd, threading.active_count(),
after every migration. The trend is the least-squares slope over the second half of the run
(after warm-up), per 100 migrations. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

from soaklib import soak  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--migrations", type=int, default=200)
    args = parser.parse_args()
    started = time.monotonic()
    report = soak(REPO / "inventory" / "local-lab.yaml", args.migrations)
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["pid"] = os.getpid()
    report["threads_at_end"] = threading.active_count()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
