"""Assertions the suites share about where a guest is after a refused or failed migration.

They raise ``AssertionError`` (pytest shows the message) and return a short text for reports.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mdevtest.qemu.machine import process_alive
from mdevtest.workloads.synthetic import parse_heartbeats

if TYPE_CHECKING:
    from mdevtest.guest import Guest
    from mdevtest.inventory import HostPair
    from mdevtest.migration_run import MigrationOutcome
    from mdevtest.qemu.machine import RemoteMachine
    from mdevtest.testbed import Testbed


def assert_still_on_source(guest: Guest, source: RemoteMachine, *, wait_s: float = 1.0) -> str:
    """The guest did not move, its QEMU runs, and its heartbeat advances there."""
    __tracebackhide__ = True
    assert guest.machine is source, "the guest moved although the migration did not complete"
    status = source.status()
    assert status == "running", f"source is {status} after the failed migration"
    beats = len(parse_heartbeats(source.serial_log()))
    time.sleep(wait_s)
    after = len(parse_heartbeats(source.serial_log()))
    assert after > beats, "the guest stopped beating on the source"
    return f"running on {source.host.name}"


def assert_no_destination_left(lab: Testbed, pair: HostPair, outcome: MigrationOutcome | None) -> str:
    """The discarded destination's QEMU is gone and its mdev removed (or its VF released)."""
    __tracebackhide__ = True
    if outcome is None:
        return "none"
    destination = outcome.destination
    pid = destination.pid
    assert pid is None or not process_alive(destination.remote, pid), f"destination QEMU {pid} left"
    vgpu = outcome.vgpus.get("destination")
    if vgpu is not None and vgpu.kind == "vf":
        bound = {r.uuid for r in lab.vfs(pair.destination).records()}
        assert vgpu.instance.uuid not in bound, "the destination's VF was left bound"
    elif vgpu is not None:
        present = {i.uuid for i in lab.mdevs(pair.destination).instances()}
        assert vgpu.instance.uuid not in present, "the destination's mdev was left behind"
    return "none"
