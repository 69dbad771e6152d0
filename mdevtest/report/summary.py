"""``reports/summary.json``: one entry per migration, with how every figure was measured.

Every entry has ``coverage``: the checks that ran, those skipped with why, the run's required
checks (``--mdevtest-require-checks``) and those of them that did not run; ``checks`` has each
check's full result.

Each test process (each xdist worker) appends its entries to its own JSON-lines fragment under
``summary.d/``; the controlling process merges them into ``summary.json`` at the end of the
session, so parallel workers never write the same file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdevtest.credentials import mask_data
from mdevtest.migration import METHODS, MigrationResult

if TYPE_CHECKING:
    from mdevtest.checks.base import Coverage

FRAGMENTS = "summary.d"
SUMMARY = "summary.json"


def migration_entry(
    test_id: str,
    result: MigrationResult,
    *,
    coverage: Coverage | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary entry of one migration (figures are QEMU's; see ``methods``); ``coverage``
    None means no check was run for it (every list empty)."""
    entry: dict[str, Any] = {
        "test_id": test_id,
        "source": result.source,
        "destination": result.destination,
        "uri": result.uri,
        **result.figures(),
        "ram_total_bytes": result.ram_total_bytes,
        "error_desc": result.error_desc,
        "methods": dict(METHODS),
        "coverage": (
            coverage.to_json()
            if coverage is not None
            else {"ran": [], "skipped": {}, "required": [], "missing_required": []}
        ),
    }
    if extra:
        entry.update(extra)
    return entry


class SummaryWriter:
    """Appends entries for this process; :meth:`merge` builds ``summary.json``."""

    def __init__(self, report_dir: Path, worker: str = "main") -> None:
        self.report_dir = report_dir
        self.fragment = report_dir / FRAGMENTS / f"{worker}.jsonl"

    def reset(self) -> None:
        """Start a run: drop fragments and the summary of the previous run."""
        shutil.rmtree(self.report_dir / FRAGMENTS, ignore_errors=True)
        (self.report_dir / SUMMARY).unlink(missing_ok=True)

    def add(self, entry: dict[str, Any]) -> None:
        self.fragment.parent.mkdir(parents=True, exist_ok=True)
        with self.fragment.open("a") as fh:
            fh.write(json.dumps(mask_data(entry), sort_keys=True) + "\n")

    def merge(self, *, meta: dict[str, Any] | None = None) -> Path | None:
        """Merge every fragment into ``summary.json`` (atomically). None when nothing migrated."""
        entries: list[dict[str, Any]] = []
        for frag in sorted((self.report_dir / FRAGMENTS).glob("*.jsonl")):
            entries += [json.loads(line) for line in frag.read_text().splitlines() if line]
        if not entries:
            return None
        entries.sort(key=lambda e: (str(e.get("test_id")), str(e.get("finished_at", ""))))
        doc = {
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(meta or {}),
            "migrations": entries,
        }
        path = self.report_dir / SUMMARY
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(mask_data(doc), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path
