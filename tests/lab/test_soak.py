"""Short soak (CI): repeated migrations of one guest leak no fds or threads in the controller.

The long soak (200 migrations, with memory) is benchmarks/soak.py; its figures are in the notes.
"""

from __future__ import annotations

from pathlib import Path

from soaklib import soak

from mdevtest.testbed import Testbed

REPO = Path(__file__).resolve().parents[2]


def test_short_soak_leaks_no_fds_or_threads(lab: Testbed) -> None:
    report = soak(REPO / "inventory" / "local-lab.yaml", 8)
    assert report["migrations"] == 8
    base, end = report["baseline"], report["end"]
    # Every migration opens SSH channels, QMP sessions and socket bridges: all must be closed again.
    assert end["fds"] <= base["fds"] + 2, report
    assert end["threads"] <= base["threads"] + 1, report
