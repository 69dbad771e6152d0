"""The Migrator's state machine against scripted QMP peers (no QEMU)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from mdevtest.errors import (
    MigrationBlocked,
    MigrationFailed,
    MigrationTimedOut,
    QmpError,
    QmpTimedOut,
    StateError,
)
from mdevtest.migration import MigrationPolicy, Migrator
from mdevtest.qemu.machine import RemoteMachine
from mdevtest.qemu.qmp import QmpEvent


@dataclass
class FakeQmp:
    """Answers query-migrate from a script; records every command sent."""

    script: Iterator[dict[str, Any]] = field(default_factory=lambda: iter([]))
    sent: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)
    events: list[QmpEvent] = field(default_factory=list)
    status: str = "running"
    last: dict[str, Any] = field(default_factory=lambda: {"status": "none"})

    def execute(self, command: str, arguments: dict[str, Any] | None = None, **_: Any) -> Any:
        self.sent.append((command, arguments))
        if command == "query-migrate":
            self.last = next(self.script, self.last)
            return self.last
        if command == "query-status":
            return {"status": self.status}
        if command == "query-migrate-capabilities":
            return [{"capability": c, "state": False} for c in ("events", "multifd", "return-path")]
        if command == "query-migrate-parameters":
            return {"downtime-limit": 300, "max-bandwidth": 134217728, "multifd-channels": 2}
        return {}

    def event_count(self) -> int:
        return len(self.events)


@dataclass
class FakeMachine:
    label: str
    qmp: FakeQmp

    @property
    def host(self) -> Any:
        return type("H", (), {"name": self.label})()

    def status(self) -> str:
        return str(self.qmp.execute("query-status")["status"])

    def initial_migration_parameters(self) -> dict[str, Any]:
        return dict(self.qmp.execute("query-migrate-parameters"))


def _pair(script: list[dict[str, Any]]) -> tuple[FakeMachine, FakeMachine]:
    return FakeMachine("src", FakeQmp(iter(script))), FakeMachine("dst", FakeQmp())


def _migrator(src: FakeMachine, dst: FakeMachine, **policy: Any) -> Migrator:
    return Migrator(
        cast(RemoteMachine, src),
        cast(RemoteMachine, dst),
        uri="tcp:198.18.1.12:4444",
        policy=MigrationPolicy(poll_interval_s=0, **policy),
    )


def test_waits_for_qemu_to_compute_the_final_figures() -> None:
    src, dst = _pair(
        [
            {"status": "none"},  # blocked-reasons probe
            {"status": "setup"},
            {"status": "active", "ram": {"remaining": 10}},
            {"status": "completed", "total-time": 0, "downtime": 0},  # QEMU 7.2's window
            {"status": "completed", "total-time": 716, "downtime": 14, "setup-time": 1,
             "ram": {"transferred": 100, "total": 200, "dirty-sync-count": 3}},
        ]
    )  # fmt: skip
    result = _migrator(src, dst).run()
    assert (result.total_time_ms, result.downtime_ms, result.passes) == (716, 14, 3)
    assert [p.status for p in result.timeline] == ["setup", "active", "completed"]
    assert ("migrate-incoming", {"uri": "tcp:198.18.1.12:4444"}) in dst.qmp.sent
    caps = [a for c, a in src.qmp.sent + dst.qmp.sent if c == "migrate-set-capabilities"]
    resets = [{"capability": c, "state": False} for c in ("multifd", "return-path")]
    assert caps == [{"capabilities": [*resets, {"capability": "events", "state": True}]}] * 2
    params = [a for c, a in src.qmp.sent if c == "migrate-set-parameters"]
    assert params == [{"downtime-limit": 300, "max-bandwidth": 134217728, "multifd-channels": 2}]


def test_blocked_source_never_starts_the_migration() -> None:
    src, dst = _pair([{"status": "none", "blocked-reasons": ["VFIO device doesn't support migration"]}])
    with pytest.raises(MigrationBlocked, match="VFIO device doesn't support migration"):
        _migrator(src, dst).run()
    assert "migrate" not in [c for c, _ in src.qmp.sent]


def test_failure_reports_error_desc_and_checks_the_source_runs() -> None:
    src, dst = _pair([{"status": "none"}, {"status": "failed", "error-desc": "Connection refused"}])
    with pytest.raises(MigrationFailed, match="Connection refused"):
        _migrator(src, dst).run()
    assert "query-status" in [c for c, _ in src.qmp.sent]


def test_timeout_cancels_and_requires_the_source_running() -> None:
    src, dst = _pair([{"status": "none"}] + [{"status": "active"}] * 3 + [{"status": "cancelled"}])
    with pytest.raises(MigrationTimedOut, match="cancelled, source is running again"):
        _migrator(src, dst, timeout_s=0).run()
    assert "migrate_cancel" in [c for c, _ in src.qmp.sent]


def test_a_timeout_keeps_the_timeline_with_the_cancelled_status() -> None:
    src, dst = _pair([{"status": "none"}] + [{"status": "active"}] * 3 + [{"status": "cancelled"}])
    migrator = _migrator(src, dst, timeout_s=0)
    with pytest.raises(MigrationTimedOut):
        migrator.run()
    assert migrator.result.status == "cancelled"
    assert [p.status for p in migrator.result.timeline] == ["active"]


class DyingQmp(FakeQmp):
    """The source's QMP connection breaks after two query-migrate replies."""

    def execute(self, command: str, arguments: dict[str, Any] | None = None, **kw: Any) -> Any:
        if command == "query-migrate" and sum(c == "query-migrate" for c, _ in self.sent) >= 3:
            raise QmpError("src", command, "connection lost")
        return super().execute(command, arguments, **kw)


def test_an_error_before_a_final_status_keeps_what_was_seen_as_aborted() -> None:
    script = [{"status": "none"}, {"status": "setup"}, {"status": "active", "ram": {"remaining": 9}}]
    src, dst = FakeMachine("src", DyingQmp(iter(script))), FakeMachine("dst", FakeQmp())
    migrator = _migrator(src, dst)
    with pytest.raises(QmpError, match="connection lost"):
        migrator.run()
    result = migrator.result
    assert result.status == "aborted"
    assert [p.status for p in result.timeline] == ["setup", "active"]
    assert result.downtime_ms is None


def test_result_before_run_is_a_state_error() -> None:
    src, dst = _pair([])
    with pytest.raises(StateError, match="no result yet"):
        _ = _migrator(src, dst).result


def test_off_for_a_capability_qemu_lacks_is_not_sent_but_on_is() -> None:
    """switchover-ack off on QEMU 7.2 (no such capability) is what QEMU does anyway: not sent."""
    src, dst = _pair([{"status": "none"}, {"status": "completed", "total-time": 5, "downtime": 1}])
    off = MigrationPolicy.from_options(switchover_ack=False, multifd=True)
    Migrator(cast(RemoteMachine, src), cast(RemoteMachine, dst), uri="tcp:x:1", policy=off).run()
    sent = next(a for c, a in src.qmp.sent if c == "migrate-set-capabilities")
    names = {c["capability"]: c["state"] for c in sent["capabilities"]}
    assert "switchover-ack" not in names
    assert names["multifd"] is True
    on = MigrationPolicy.from_options(switchover_ack=True)
    src, dst = _pair([{"status": "none"}, {"status": "completed", "total-time": 5, "downtime": 1}])
    Migrator(cast(RemoteMachine, src), cast(RemoteMachine, dst), uri="tcp:x:1", policy=on).run()
    sent = next(a for c, a in src.qmp.sent if c == "migrate-set-capabilities")
    assert {"capability": "switchover-ack", "state": True} in sent["capabilities"]


@dataclass
class StuckQmp(FakeQmp):
    """A source whose main loop is blocked: query-migrate times out until yank (OOB) is sent."""

    yanked: bool = False

    def execute(self, command: str, arguments: dict[str, Any] | None = None, **kw: Any) -> Any:
        if command == "yank":
            assert kw.get("oob") is True, "yank must go out of band: the main loop is blocked"
            self.yanked = True
        if command == "query-migrate" and self.last.get("status") == "active" and not self.yanked:
            self.sent.append((command, arguments))
            raise QmpTimedOut("src", "query-migrate", "no reply within 30 s")
        return super().execute(command, arguments, **kw)


def test_a_stuck_source_is_yanked_out_of_band_and_resumes() -> None:
    script = [{"status": "none"}, {"status": "active"}, {"status": "failed", "error-desc": "yank"}]
    src, dst = FakeMachine("src", StuckQmp(iter(script))), FakeMachine("dst", FakeQmp())
    with pytest.raises(MigrationTimedOut, match="yanked out of band") as stuck:
        _migrator(src, dst).run()
    assert "QMP did not answer query-migrate" in str(stuck.value)
    assert "source is running again" in str(stuck.value)
    assert ("yank", {"instances": [{"type": "migration"}]}) in src.qmp.sent


def test_the_kernel_says_whether_a_vfio_device_can_migrate() -> None:
    from mdevtest.host import parse_kernel_migration

    yes = parse_kernel_migration("83b8f4f2", "yes 1\n")
    assert yes.supported is True
    assert "migration present (state 1)" in yes.detail
    no = parse_kernel_migration("0000:03:00.1", "no\n")
    assert no.supported is False
    assert "/sys/kernel/debug/vfio/0000:03:00.1 has no migration directory" in no.detail
    unknown = parse_kernel_migration("x", "unknown debugfs is not mounted at /sys/kernel/debug\n")
    assert (unknown.supported, unknown.detail) == (None, "debugfs is not mounted at /sys/kernel/debug")


def test_a_destination_kept_up_on_error_is_told_so_in_migrate_incoming() -> None:
    src, dst = _pair([{"status": "none"}, {"status": "failed", "error-desc": "x"}])
    migrator = Migrator(
        cast(RemoteMachine, src),
        cast(RemoteMachine, dst),
        uri="tcp:198.18.1.12:4444",
        policy=MigrationPolicy(poll_interval_s=0),
        keep_failed_destination=True,
    )
    with pytest.raises(MigrationFailed):
        migrator.run()
    incoming = [a for c, a in dst.qmp.sent if c == "migrate-incoming"]
    assert incoming == [{"uri": "tcp:198.18.1.12:4444", "exit-on-error": False}]
