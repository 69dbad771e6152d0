"""Allure attachments for migrations and guests (no-ops when Allure is not recording).

Text and JSON go through :func:`mdevtest.credentials.mask`: no secret or private key in a report.
"""

from __future__ import annotations

import json
from typing import Any

import allure

from mdevtest.credentials import mask, mask_data
from mdevtest.migration import MigrationResult


def attach_json(name: str, data: Any) -> None:
    allure.attach(
        json.dumps(mask_data(data), indent=2, sort_keys=True, default=str),
        name=name,
        attachment_type=allure.attachment_type.JSON,
    )


def attach_text(name: str, text: str) -> None:
    allure.attach(mask(text), name=name, attachment_type=allure.attachment_type.TEXT)


def attach_png(name: str, data: bytes) -> None:
    allure.attach(data, name=name, attachment_type=allure.attachment_type.PNG)


def attach_migration(result: MigrationResult) -> None:
    """query-migrate's final reply, the figures with their methods, events and timeline."""
    attach_json("query-migrate (final)", result.final_stats)
    attach_json("migration figures", {**result.figures(), "methods": result.methods})
    attach_json("QMP events", [e.to_json() for e in result.events])
    attach_json("query-migrate timeline", [p.__dict__ for p in result.timeline])
    from mdevtest.report.plot import migration_timeline_png

    attach_png("migration timeline", migration_timeline_png(result))
