"""Real QEMU on the lab hosts, real QMP, real live migration (library path, no plugin fixtures)."""

from __future__ import annotations

import time

import pytest

from mdevtest.checks.heartbeat import check_heartbeat_continuity
from mdevtest.errors import MigrationTimedOut
from mdevtest.migration import MigrationPolicy, Migrator
from mdevtest.qemu.machine import RemoteMachine, process_alive, reap
from mdevtest.testbed import Testbed


def test_machine_starts_and_stops_without_leftovers(lab: Testbed) -> None:
    pair = lab.inventory.pairs[0]
    machine = lab.start_source(pair)
    vgpu = lab.vgpus.get(machine.tag)
    try:
        assert machine.status() == "running"
        assert machine.is_alive()
        pid = machine.pid
    finally:
        lab.release(machine)
    remote = lab.remote(pair.source)
    assert pid is not None
    assert not process_alive(remote, pid), "QEMU still alive after release"
    assert machine.tag not in reap(remote, keep_run=None)  # nothing of ours was left to reap
    if vgpu is not None:  # and its mdev went with it
        assert vgpu.instance.uuid not in {i.uuid for i in lab.mdevs(vgpu.host).instances()}


def test_reap_kills_what_a_crashed_run_left(lab: Testbed) -> None:
    pair = lab.inventory.pairs[0]
    spec = lab.machine_spec(pair.source, name="orphan")
    orphan = RemoteMachine(lab.remote(pair.source), spec, run_id="crashedrun")
    orphan.start()
    pid = orphan.pid
    orphan.qmp.close()  # the "crashed" controller: QEMU keeps running, nobody owns it
    reaped = reap(lab.remote(pair.source), keep_run=lab.run_id)
    assert orphan.tag in reaped
    assert pid is not None
    assert not process_alive(lab.remote(pair.source), pid)


def test_live_migration_keeps_the_guest_running(lab: Testbed) -> None:
    pair = lab.inventory.pairs[0]
    source = lab.start_source(pair)
    destination = lab.start_destination(pair, source)
    try:
        assert destination.status() == "inmigrate"
        result = Migrator(source, destination, uri=lab.migration_uri(pair)).run()
        assert result.completed
        assert source.status() == "postmigrate"
        assert destination.status() == "running"
        assert result.downtime_ms is not None
        assert result.total_time_ms is not None
        assert result.ram_transferred_bytes
        assert result.vfio_transferred_bytes is None  # no VFIO device in the local lab
        statuses = [e.data.get("status") for e in result.events if e.name == "MIGRATION"]
        assert statuses[0] == "setup"
        assert statuses[-1] == "completed"
        assert any(e.name == "MIGRATION_PASS" for e in result.events)
        assert result.timeline
        assert result.timeline[-1].status == "completed"
        time.sleep(2)
        check_heartbeat_continuity(source.serial_log(), destination.serial_log())
    finally:
        lab.release(source)
        lab.release(destination)


def test_timeout_cancels_and_the_guest_keeps_running_on_the_source(lab: Testbed) -> None:
    pair = lab.inventory.pairs[1]
    source = lab.start_source(pair)
    destination = lab.start_destination(pair, source)
    # 64 KiB/s cannot move 256 MiB in 3 s: the migration must be cancelled, not left hanging.
    policy = MigrationPolicy(timeout_s=3, max_bandwidth_bytes=64 * 1024)
    try:
        with pytest.raises(MigrationTimedOut, match="cancelled, source is running again"):
            Migrator(source, destination, uri=lab.migration_uri(pair), policy=policy).run()
        assert source.status() == "running"
        before = source.serial_log().count("MDT-HB")
        time.sleep(1.5)
        assert source.serial_log().count("MDT-HB") > before, "guest stopped beating on the source"
    finally:
        lab.release(source)
        lab.release(destination)
