"""Basic live migration: the guest keeps running on the destination, within the limits."""

from __future__ import annotations

import time
from collections.abc import Callable

import allure
import pytest

from mdevtest.checks.heartbeat import METHOD as HEARTBEAT_METHOD
from mdevtest.checks.heartbeat import check_heartbeat_continuity
from mdevtest.inventory import HostPair
from mdevtest.plugin.fixtures import MigrationOutcome
from mdevtest.qemu.machine import RemoteMachine
from mdevtest.testbed import Testbed


@allure.feature("live migration")
def test_live_migration(
    lab: Testbed,
    pair: HostPair,
    guest: RemoteMachine,
    migrate: Callable[..., MigrationOutcome],
) -> None:
    limits = lab.inventory.limits
    outcome = migrate(guest)
    result = outcome.result
    assert result is not None
    with allure.step("verify"):
        assert result.completed, f"migration status {result.status}: {result.error_desc}"
        assert outcome.destination.status() == "running"
        assert outcome.source_status_after == "postmigrate"
        assert result.downtime_ms is not None
        assert result.downtime_ms <= limits.downtime_ms, (
            f"{pair.id}: downtime {result.downtime_ms} ms > limit {limits.downtime_ms:g} ms"
        )
        assert result.total_time_ms is not None
        assert result.total_time_ms <= limits.total_time_s * 1000, (
            f"{pair.id}: total time {result.total_time_ms} ms > limit {limits.total_time_s:g} s"
        )
        time.sleep(2)  # let the guest beat on the destination
        beats = check_heartbeat_continuity(outcome.source_console, outcome.destination.serial_log())
        outcome.record_check("heartbeat", "passed", beats.to_json(), HEARTBEAT_METHOD)
        frames = _frame_progress(outcome.destination)
        outcome.record_check("display-frames", "passed", {"frames": frames},
                             "QMP screendump on the destination; frame number decoded from the "
                             "image's top rows")  # fmt: skip


def _frame_progress(machine: RemoteMachine) -> list[int]:
    """The display keeps rendering new frames on the destination (it is not frozen)."""
    from io import BytesIO

    from PIL import Image

    from mdevtest.workloads.synthetic import decode_frame_number

    frames = []
    for _ in range(2):
        with Image.open(BytesIO(machine.screendump_png())) as img:
            frames.append(decode_frame_number(img.convert("RGB")))
        time.sleep(1.0)
    if frames[1] <= frames[0]:
        pytest.fail(f"{machine.label}: display frozen at frame {frames[0]} after migration")
    return frames
