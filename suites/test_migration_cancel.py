"""Cancel mid-migration: the guest keeps running on the source, and a later migration still works."""

from __future__ import annotations

import time
from collections.abc import Callable

import allure

from mdevtest.checks.heartbeat import check_heartbeat_continuity
from mdevtest.guest import Guest
from mdevtest.migration import MigrationPolicy, TimelinePoint
from mdevtest.migration_run import MigrationOutcome


def _mid_way(point: TimelinePoint) -> bool:
    """Cancel once RAM is moving and some is still left."""
    return point.status == "active" and bool(point.ram_transferred) and bool(point.ram_remaining)


@allure.feature("cancel")
def test_cancel_mid_migration_keeps_the_guest_on_the_source(
    guest: Guest, migrate: Callable[..., MigrationOutcome]
) -> None:
    source = guest.machine
    slow = MigrationPolicy.from_options(max_bandwidth_mib=16, timeout_s=60)  # caught mid-way
    cancelled = migrate(guest, cancel_when=_mid_way, policy=slow)
    assert cancelled.result is not None
    assert cancelled.result.status == "cancelled"
    assert any(p.status == "active" for p in cancelled.result.timeline)
    assert guest.machine is source, "the guest must not have moved"
    assert source.status() == "running"
    before = source.serial_log()
    time.sleep(1.0)
    check_heartbeat_continuity(before, source.serial_log()[len(before) :], min_after=10)

    again = migrate(guest)  # the pair is still usable: a full migration now completes
    assert again.result is not None
    assert again.result.completed
    again.raise_for_checks()
