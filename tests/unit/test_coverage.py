"""No silent coverage loss: which checks ran, which were skipped and why, and required checks.

The guest probes (``ram-integrity``, ``device-memory``, ``dma-integrity``, ``device-state``) run
against fake machines whose only state is their console log; the control channel is a fake
that answers like the synthetic workload does.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from mdevtest.checks import standard
from mdevtest.checks.base import (
    NOT_CHOSEN,
    Check,
    CheckContext,
    CheckResult,
    coverage_of,
    run_after,
    run_before,
)
from mdevtest.checks.known_issues import TCG_INTX, TCG_INTX_TITLE, KnownIssue
from mdevtest.errors import CheckFailed
from mdevtest.guest import Guest
from mdevtest.migration import MigrationResult
from mdevtest.migration_run import MigrationOutcome
from mdevtest.qemu.machine import RemoteMachine
from mdevtest.report.allure_meta import categorize, coverage_description
from mdevtest.report.summary import SummaryWriter, migration_entry
from mdevtest.workloads.synthetic import GuestReply

BOOT = "MDT-BOOT uptime_ms=2430\n"
READY = "MDT-READY fb=1280x800x32 stride=5120 buffers=2 api=drm ctl=ttyS1 version=2\n"
MTTY_READY = "MDT-READY workload=mtty ports=ttyS4,ttyS5\n"
PROBES = ("ram-integrity", "device-memory", "dma-integrity", "device-state")


def beats(seqs: range) -> str:
    return "".join(f"MDT-HB seq={n} t={n * 20_000_000}\n" for n in seqs)


@dataclass
class FakeMachine:
    """A machine the guest ran in: its label and its own console log."""

    label: str
    log: str
    reads: int = 0

    def serial_log(self) -> str:
        self.reads += 1
        return self.log


def machine(label: str, log: str) -> RemoteMachine:
    return cast(RemoteMachine, FakeMachine(label, log))


@pytest.fixture
def guest_agent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The synthetic workload's control channel: every probe passes; interrupts keep arriving.
    Returns the (machine, command) calls."""
    calls: list[tuple[str, str]] = []
    counts: Iterator[int] = itertools.count(100, 50)

    def guest_command(target: RemoteMachine, cmd: str, *args: str, timeout: float = 20.0) -> GuestReply:
        calls.append((target.label, cmd))
        if cmd == "STATE":
            n = next(counts)
            details = (
                "pci=00:02.0 id=8086:1912 class=030000 cfg_crc=0x1a2b3c4d",
                f"irq=4 name=ttyS0 count={n}",
                f"irq=LOC name=LOC count={n * 10}",
            )
            return GuestReply("STATE", "ok", {"mode": "1280x800", "frame": str(n)}, details)
        return GuestReply(cmd, "ok", {"checked": "4096"})

    monkeypatch.setattr(standard, "guest_command", guest_command)
    return calls


def context(guest: Guest, source: RemoteMachine) -> CheckContext:
    return CheckContext(
        # what the checks ask of the Testbed: the image's control timeout
        testbed=cast(Any, SimpleNamespace(image=lambda: SimpleNamespace(control_timeout_s=20.0))),
        route=cast(Any, None),
        guest=guest,
        source=source,
        limits=cast(Any, None),
        policy=cast(Any, None),
        profile=None,
    )


def probe_checks() -> list[Check]:
    return [c for c in standard.standard_checks() if c.name in PROBES]


def migrate_and_judge(ctx: CheckContext, checks: list[Check], dst: RemoteMachine) -> dict[str, Any]:
    early = run_before(checks, ctx)
    ctx.destination = dst
    ctx.guest.moved_to(dst)
    return run_after(checks, ctx, already=early)


def test_the_second_leg_of_a_round_trip_runs_the_probes(guest_agent: list[tuple[str, str]]) -> None:
    # leg 1 went host-a -> host-b; the destination's log starts with the heartbeats after it
    a = machine("host-a/vm1", BOOT + READY + beats(range(1, 200)))
    b = machine("host-b/in1", beats(range(200, 400)))
    assert not standard.synthetic_workload(b.serial_log())  # what the old rule looked at
    guest = Guest(a)
    guest.moved_to(b)
    results = migrate_and_judge(context(guest, b), probe_checks(), machine("host-a/in2", ""))
    assert {n: r.status for n, r in results.items()} == dict.fromkeys(PROBES, "passed")
    assert ("host-b/in1", "VERIFY-RAM") in guest_agent  # snapshot on leg 2's source
    assert ("host-a/in2", "VERIFY-RAM") in guest_agent  # judged on its destination


def test_the_probe_verdict_is_decided_once_from_the_whole_console() -> None:
    a = FakeMachine("host-a/vm1", BOOT)
    guest = Guest(cast(RemoteMachine, a))
    assert guest.probe is False  # booting: no READY line yet, so not decided
    a.log += READY
    assert guest.probe is True
    a.log = ""  # the source's log is gone (released) on a later leg
    guest.moved_to(machine("host-b/in1", beats(range(1, 5))))
    reads = a.reads
    assert guest.probe is True
    assert a.reads == reads  # decided: no console read again
    assert guest.console() == beats(range(1, 5))


def test_a_guest_without_the_synthetic_workload_skips_the_probes_with_the_reason(
    guest_agent: list[tuple[str, str]],
) -> None:
    a = machine("host-a/vm1", BOOT + MTTY_READY + beats(range(1, 50)))
    guest = Guest(a)
    results = migrate_and_judge(context(guest, a), probe_checks(), machine("host-b/in1", ""))
    for name in PROBES:
        assert results[name].status == "skipped"
        assert results[name].message == (
            "no synthetic workload in this guest: "
            "its MDT-READY line is another workload's (no fb= field)"
        )
    assert guest_agent == []  # nothing was asked of a guest that cannot answer
    bare = Guest(machine("host-a/vm2", "Linux version 6.1\n"))
    assert bare.probe is False
    assert "no MDT-READY line on its console" in bare.no_probe_reason


def outcome_for(
    guest: Guest, checks: list[Check], *, required: tuple[str, ...] = ()
) -> MigrationOutcome:
    """What the migrate fixture holds after a completed migration, before verify()."""
    src = guest.machine
    dst = machine("host-b/in1", beats(range(50, 60)))
    ctx = context(guest, src)
    early = run_before(checks, ctx)
    ctx.destination = dst
    guest.moved_to(dst)
    pair = cast(Any, SimpleNamespace(id="host-a->host-b"))
    outcome = MigrationOutcome(pair, src, dst, completed(), ctx, check_results=early)
    outcome.planned = [c.name for c in checks]
    outcome.required_checks = required
    outcome._pending = list(checks)
    return outcome


def completed() -> MigrationResult:
    return MigrationResult(
        "host-a/vm1", "host-b/in1", "tcp:198.18.1.12:4444", "completed",
        800, 10, 50, 1 << 20, 1 << 30, None, 3, 820.0, None, {}, (), (),
    )  # fmt: skip


def test_a_required_check_that_was_skipped_fails_naming_why(
    guest_agent: list[tuple[str, str]],
) -> None:
    guest = Guest(machine("host-a/vm1", BOOT + MTTY_READY))
    outcome = outcome_for(guest, probe_checks(), required=("ram-integrity", "device-state"))
    with pytest.raises(CheckFailed) as info:
        outcome.raise_for_checks()
    message = str(info.value)
    assert message.splitlines() == [
        "required check ram-integrity was skipped: no synthetic workload in this guest: "
        "its MDT-READY line is another workload's (no fb= field)",
        "required check device-state was skipped: no synthetic workload in this guest: "
        "its MDT-READY line is another workload's (no fb= field)",
    ]
    assert set(info.value.values["missing_required"]) == {"ram-integrity", "device-state"}
    coverage = outcome.coverage().to_json()
    assert coverage["ran"] == []
    assert coverage["required"] == ["ram-integrity", "device-state"]
    assert coverage["missing_required"] == ["ram-integrity", "device-state"]
    assert set(coverage["skipped"]) == set(PROBES)
    # allure-pytest records "<exception class>: <message>"; Allure files it here
    recorded = f"mdevtest.errors.CheckFailed: {message}"
    assert categorize("broken", recorded) == "Required check skipped"


def test_skipped_checks_that_are_not_required_do_not_fail() -> None:
    guest = Guest(machine("host-a/vm1", BOOT + MTTY_READY))
    outcome = outcome_for(guest, probe_checks(), required=())
    outcome.raise_for_checks()
    assert outcome.coverage().missing_required == ()


def test_a_required_check_that_ran_passes(guest_agent: list[tuple[str, str]]) -> None:
    guest = Guest(machine("host-a/vm1", BOOT + READY))
    outcome = outcome_for(guest, probe_checks(), required=("ram-integrity",))
    outcome.raise_for_checks()
    coverage = outcome.coverage()
    assert coverage.ran == PROBES
    assert coverage.skipped == {}
    assert coverage.line() == "all 4 checks ran"


def test_a_known_issue_does_not_hide_a_skipped_required_check() -> None:
    res = {
        "heartbeat": CheckResult("heartbeat", "failed", {}, "m", "heartbeat: only 0 heartbeat(s)"),
        "ram-integrity": CheckResult("ram-integrity", "skipped", {}, "m", "no synthetic workload"),
    }
    stub: Any = None
    outcome = MigrationOutcome(stub, stub, stub, None, check_results=res)
    outcome.known_issue = KnownIssue(TCG_INTX, TCG_INTX_TITLE, "evidence", ("heartbeat",))
    outcome.required_checks = ("ram-integrity",)
    with pytest.raises(CheckFailed) as info:
        outcome.raise_for_checks()  # xfail mode, yet it fails
    assert str(info.value).splitlines() == [
        "heartbeat: only 0 heartbeat(s)",
        f"(matches {outcome.known_issue.describe()})",
        "required check ram-integrity was skipped: no synthetic workload",
    ]
    outcome.required_checks = ()
    with pytest.raises(pytest.xfail.Exception):
        outcome.raise_for_checks()


def test_coverage_names_checks_not_judged_and_required_checks_not_chosen() -> None:
    ran = {"downtime": CheckResult("downtime", "failed", {}, "m", "downtime: too long")}
    cov = coverage_of(
        ran,
        planned=["downtime", "heartbeat"],
        required=["mtty-device-state", "downtime", "downtime"],
        not_judged="the migration did not complete",
    )
    assert cov.to_json() == {
        "ran": ["downtime"],  # a failed check ran: it judged
        "skipped": {"heartbeat": "the migration did not complete", "mtty-device-state": NOT_CHOSEN},
        "required": ["mtty-device-state", "downtime"],
        "missing_required": ["mtty-device-state"],
    }
    assert cov.line() == (
        "checks skipped: heartbeat (the migration did not complete); "
        f"mtty-device-state ({NOT_CHOSEN}); ran 1; REQUIRED but not run: mtty-device-state"
    )


def test_checks_sharing_a_reason_are_one_group_in_the_allure_description() -> None:
    why = "no synthetic workload in this guest: its MDT-READY line is another workload's"
    results = {n: CheckResult(n, "skipped", {}, "m", why) for n in PROBES}
    results["downtime"] = CheckResult("downtime", "passed", {}, "m")
    line = coverage_of(results).line()
    assert line == f"checks skipped: {', '.join(PROBES)} ({why}); ran 1"
    text = coverage_description("Migrate once.\n\n    Every check.\n    ", [f"host-a->host-b: {line}"])
    assert text == f"Migrate once.\n\nEvery check.\n\n**Check coverage**\n\n- host-a->host-b: {line}"
    assert coverage_description(None, ["x"]) == "**Check coverage**\n\n- x"


def test_every_summary_entry_has_its_coverage(tmp_path: Path) -> None:
    results = {
        "downtime": CheckResult("downtime", "passed", {}, "m"),
        "ram-integrity": CheckResult("ram-integrity", "skipped", {}, "m", "no synthetic workload"),
    }
    cov = coverage_of(results, required=["ram-integrity"])
    writer = SummaryWriter(tmp_path)
    writer.add(migration_entry("t.py::test_a", completed(), coverage=cov))
    writer.add(migration_entry("t.py::test_b", completed()))
    path = writer.merge()
    assert path is not None
    entries = {e["test_id"]: e for e in json.loads(path.read_text())["migrations"]}
    assert entries["t.py::test_a"]["coverage"] == {
        "ran": ["downtime"],
        "skipped": {"ram-integrity": "no synthetic workload"},
        "required": ["ram-integrity"],
        "missing_required": ["ram-integrity"],
    }
    assert entries["t.py::test_b"]["coverage"] == {
        "ran": [],
        "skipped": {},
        "required": [],
        "missing_required": [],
    }


ALLURE_TEST = '''
import pytest
from mdevtest.report.allure_meta import describe_coverage


@pytest.fixture
def migrated(request):
    yield
    describe_coverage(request.node, ["host-a->host-b: checks skipped: ram-integrity (why); ran 8"])


def test_migrate(migrated):
    """Migrate once."""
'''


def test_the_coverage_line_reaches_the_allure_description(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(ALLURE_TEST)
    results = pytester.path / "allure-results"
    pytester.runpytest_subprocess(f"--alluredir={results}").assert_outcomes(passed=1)
    (doc,) = [json.loads(p.read_text()) for p in results.glob("*-result.json")]
    assert doc["description"] == (
        "Migrate once.\n\n**Check coverage**\n\n"
        "- host-a->host-b: checks skipped: ram-integrity (why); ran 8"
    )


def test_the_probe_runs_beside_another_workload_on_one_console() -> None:
    """The nested lab's UEFI disk guest: mtty's READY first, then the deployed probe's."""
    a = FakeMachine("host-a/vm1", BOOT + MTTY_READY + READY)
    assert Guest(cast(RemoteMachine, a)).probe is True
