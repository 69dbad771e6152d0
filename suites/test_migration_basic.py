"""Basic live migration: the guest keeps running on the destination, within the limits, intact."""

from __future__ import annotations

from collections.abc import Callable

import allure

from mdevtest.guest import Guest
from mdevtest.inventory import HostPair
from mdevtest.migration_run import MigrationOutcome


@allure.feature("live migration")
def test_live_migration(
    pair: HostPair,
    guest: Guest,
    migrate: Callable[..., MigrationOutcome],
) -> None:
    outcome = migrate(guest)
    result = outcome.result
    assert result is not None
    with allure.step("verify"):
        assert result.completed, f"migration status {result.status}: {result.error_desc}"
        assert outcome.destination.status() == "running"
        assert outcome.source_status_after == "postmigrate"
        # downtime (QEMU and observed) and total time against the limits, heartbeat continuity,
        # exact frames, RAM / device-memory / DMA integrity, device state, host and guest logs
        outcome.raise_for_checks()
