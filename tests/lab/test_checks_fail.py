"""Every check can fail, for the right reason, on a real migration in the local lab.

Each test migrates a healthy guest, then injects the fault its check exists for (through the
synthetic workload's control channel, or a limit below the measured value) and runs that check:
it must fail, naming what differed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from mdevtest.checks.base import Check
from mdevtest.checks.standard import (
    DeviceMemoryCheck,
    DmaIntegrityCheck,
    DowntimeCheck,
    GraphicsCheck,
    HostLogsCheck,
    RamIntegrityCheck,
)
from mdevtest.guest import Guest
from mdevtest.guest.control import guest_command
from mdevtest.migration_run import MigrationOutcome

pytestmark = pytest.mark.pairs(1)

Migrate = Callable[..., MigrationOutcome]


def _migrated(guest: Guest, migrate: Migrate, check: Check) -> MigrationOutcome:
    outcome = migrate(guest, checks=[check], verify=False)
    assert outcome.result is not None
    assert outcome.result.completed
    return outcome


def _failure(outcome: MigrationOutcome, name: str) -> str:
    result = outcome.verify()[name]
    assert result.status == "failed", f"{name} did not fail: {result}"
    assert not result.values.get("infrastructure"), result.message
    return result.message


def test_corrupted_pixel_fails_graphics_naming_it(guest: Guest, migrate: Migrate) -> None:
    outcome = _migrated(guest, migrate, GraphicsCheck())
    fault = guest_command(outcome.destination, "FAULT", "pixel").require_ok()
    time.sleep(0.6)  # two frames at 10 fps: the corruption is on screen
    message = _failure(outcome, "graphics")
    assert f"({fault.int_value('x')}, {fault.int_value('y')})" in message
    assert "1 of" in message


def test_frozen_display_fails_graphics(guest: Guest, migrate: Migrate) -> None:
    outcome = _migrated(guest, migrate, GraphicsCheck())
    guest_command(outcome.destination, "FAULT", "freeze").require_ok()
    time.sleep(0.6)
    assert "frozen" in _failure(outcome, "graphics")


def test_lost_dirty_page_fails_ram_integrity_naming_the_page(guest: Guest, migrate: Migrate) -> None:
    outcome = _migrated(guest, migrate, RamIntegrityCheck())
    fault = guest_command(outcome.destination, "FAULT", "skip-page").require_ok()
    time.sleep(0.5)
    message = _failure(outcome, "ram-integrity")
    assert f"page={fault.int_value('page')}" in message
    assert "stale" in message


def test_changed_device_memory_word_fails_naming_the_offset(guest: Guest, migrate: Migrate) -> None:
    outcome = _migrated(guest, migrate, DeviceMemoryCheck())
    fault = guest_command(outcome.destination, "FAULT", "vram-word").require_ok()
    assert f"offset={fault.values['offset']}" in _failure(outcome, "device-memory")


def test_lost_dma_write_fails_dma_integrity_naming_slot(guest: Guest, migrate: Migrate) -> None:
    outcome = _migrated(guest, migrate, DmaIntegrityCheck())
    fault = guest_command(outcome.destination, "FAULT", "dma-skip").require_ok()
    time.sleep(0.5)
    message = _failure(outcome, "dma-integrity")
    assert f"slot={fault.values['slot']}" in message
    assert f"block={fault.values['block']}" in message


@pytest.mark.limits(downtime_ms=0.5)
def test_downtime_limit_below_the_measured_value_fails(guest: Guest, migrate: Migrate) -> None:
    outcome = _migrated(guest, migrate, DowntimeCheck())
    message = _failure(outcome, "downtime")
    assert outcome.result is not None
    assert f"QEMU downtime {outcome.result.downtime_ms} ms > limit 0.5 ms" in message
    assert "observed downtime" in message


def test_trouble_in_the_host_log_fails_host_logs(guest: Guest, migrate: Migrate) -> None:
    outcome = _migrated(guest, migrate, HostLogsCheck())
    line = f"mdevtest negative test {time.monotonic_ns()}: Call Trace:"
    outcome.destination.remote.check_shell(f"echo '{line}' > /dev/kmsg")
    message = _failure(outcome, "host-logs")
    assert line in message
