"""Known issues: which failures the stuck-INTx signature explains, and which it must not.

The consoles are the nested lab's, as CI recorded them when the issue first showed (leg 2 of the
A->B->A round trip): the source's heartbeats stop at the switchover, the destination's console
starts with the guest kernel disabling the mtty IRQ after the storm, and heartbeats resume.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mdevtest.checks.base import Check, CheckContext, CheckResult, run_after
from mdevtest.checks.heartbeat import check_heartbeat_continuity
from mdevtest.checks.known_issues import TCG_INTX, match_known_issue
from mdevtest.errors import CheckFailed, CommandTimedOut, MdevtestError
from mdevtest.report.allure_meta import categorize

SOURCE = "".join(f"MDT-HB seq={n} t={108_000_000_000 + n}\n" for n in range(400, 416))
# What the heartbeat check saw within its 10 s: nothing yet on the destination.
DESTINATION_EARLY = ""
# What the destination console held once every check had run.
DESTINATION = "[  122.084111] Disabling IRQ #23\n" + "\n".join(
    f"MDT-HB seq={n} t={122_819_387_170 + n}" for n in range(416, 430)
)


class Raises(Check):
    category = "workload"
    method = "test"

    def __init__(self, name: str, exc: BaseException | None) -> None:
        self.name = name  # type: ignore[misc]
        self.exc = exc

    def after(self, ctx: CheckContext) -> dict[str, Any]:
        if self.exc is not None:
            raise self.exc
        return {}


def heartbeat_failure(destination: str = DESTINATION_EARLY) -> CheckFailed:
    with pytest.raises(CheckFailed) as info:
        check_heartbeat_continuity(SOURCE, destination)
    return info.value


def guest_logs_failure(*lines: str) -> CheckFailed:
    return CheckFailed(f"guest-logs: {' | '.join(lines)}", {"trouble": list(lines)})


def results(*checks: Check) -> dict[str, CheckResult]:
    ctx: Any = SimpleNamespace(profile=None, scratch={})
    return run_after(list(checks), ctx)


def match(res: dict[str, CheckResult], **kw: Any) -> Any:
    args: dict[str, Any] = {"accel": "tcg", "real_vfio": True, "destination_console": DESTINATION}
    return match_known_issue(res, **{**args, **kw})


STALL_AND_STORM = (
    Raises("heartbeat", heartbeat_failure()),
    Raises("mtty-device-state", None),
    Raises("guest-logs", guest_logs_failure("[  122.084111] Disabling IRQ #23")),
)


def test_the_ci_failure_is_the_stuck_intx() -> None:
    issue = match(results(*STALL_AND_STORM))
    assert issue is not None
    assert issue.id == TCG_INTX
    assert issue.explains == ("guest-logs", "heartbeat")
    assert "Disabling IRQ #23" in issue.evidence
    assert "0 heartbeat(s) after the switchover" in issue.evidence
    assert issue.to_json()["id"] == TCG_INTX


def test_only_the_stall_is_enough() -> None:
    assert match(results(Raises("heartbeat", heartbeat_failure()))) is not None


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"accel": "kvm"}, "with KVM the resampler deasserts the line: not this issue"),
        ({"real_vfio": False}, "a simulated vGPU has no VFIO INTx"),
        ({"destination_console": DESTINATION.split("\n", 1)[1]}, "no storm on the destination"),
    ],
)
def test_the_signature_needs_tcg_a_real_device_and_the_storm(kw: dict[str, Any], why: str) -> None:
    assert match(results(*STALL_AND_STORM), **kw) is None, why


@pytest.mark.parametrize(
    "other",
    [
        Raises("mtty-device-state", CheckFailed("mtty-device-state on host-a/in2: ttyS4: SCR 0x00")),
        Raises("guest-logs", guest_logs_failure("[  1.0] Disabling IRQ #23", "[  2.0] Call Trace:")),
        Raises("downtime", CheckFailed("downtime: QEMU downtime 612 ms > limit 500 ms")),
        Raises("host-logs", CommandTimedOut("host-a", "dmesg", 30)),
    ],
    ids=["device-state", "call-trace", "downtime", "infrastructure"],
)
def test_a_failure_the_storm_does_not_explain_stays_a_failure(other: Check) -> None:
    res = results(Raises("heartbeat", heartbeat_failure()), other)
    assert match(res) is None


def test_lost_or_repeated_heartbeats_are_not_a_stall() -> None:
    # seq 416-419 lost: state was lost, whatever the IRQ did afterwards
    lost = "\n".join(f"MDT-HB seq={n} t={n}" for n in range(420, 440))
    res = results(Raises("heartbeat", heartbeat_failure(lost)))
    assert res["heartbeat"].status == "failed"
    assert match(res) is None


def test_nothing_failed_nothing_known() -> None:
    assert match(results(Raises("heartbeat", None))) is None


def test_the_heartbeat_failure_carries_its_measurements() -> None:
    exc = heartbeat_failure()
    assert exc.values["last_source_seq"] == 415
    assert exc.values["beats_after_switchover"] == 0
    assert "stopped or stalled" in str(exc)
    assert isinstance(exc, MdevtestError)


def test_an_xfail_naming_a_known_issue_is_filed_under_known_issues() -> None:
    issue = match(results(*STALL_AND_STORM))
    message = f"XFAIL {issue.describe()}\n\n_pytest.outcomes.XFailed: {issue.describe()}"
    assert categorize("skipped", message) == "Known issues"
    assert categorize("failed", message) is None


def outcome_with(res: dict[str, CheckResult], mode: str) -> Any:
    from mdevtest.migration_run import MigrationOutcome

    stub: Any = None
    outcome = MigrationOutcome(stub, stub, stub, None, check_results=res)
    outcome.known_issue = match(res)
    outcome.known_issues = mode
    return outcome


def test_raise_for_checks_makes_a_known_issue_an_expected_failure() -> None:
    outcome = outcome_with(results(*STALL_AND_STORM), "xfail")
    with pytest.raises(pytest.xfail.Exception, match=r"^known issue qemu-tcg-vfio-intx: QEMU"):
        outcome.raise_for_checks()


def test_raise_for_checks_fails_a_known_issue_when_asked_and_names_it() -> None:
    outcome = outcome_with(results(*STALL_AND_STORM), "fail")
    with pytest.raises(CheckFailed, match=r"(?s)^heartbeat: only 0 .*\(matches known issue qemu-tcg"):
        outcome.raise_for_checks()


def test_raise_for_checks_without_a_known_issue_fails_as_before() -> None:
    res = results(
        Raises("heartbeat", heartbeat_failure()), Raises("downtime", CheckFailed("downtime: x"))
    )
    outcome = outcome_with(res, "xfail")
    assert outcome.known_issue is None
    with pytest.raises(CheckFailed) as info:
        outcome.raise_for_checks()
    assert "matches known issue" not in str(info.value)
