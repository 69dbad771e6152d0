"""Checks: named, reusable verifications of one migration, each saying how it measured.

A :class:`Check` may take a snapshot before the migration (:meth:`Check.before`) and judges after it
(:meth:`Check.after`), reading and writing its own slot in the shared :class:`CheckContext`. The
runner turns every outcome into a :class:`CheckResult` (passed / failed / skipped, measured values,
method) that goes into Allure and into the migration's ``checks`` map in ``summary.json``. A
product problem is a :class:`~mdevtest.errors.CheckFailed`; an infrastructure problem met while
checking (SSH, QMP) also fails the check, marked ``infrastructure`` in its values.

:class:`Coverage` is the at-a-glance form of one migration's results: which checks ran, which
were skipped and why, and which of the run's required checks (``--mdevtest-require-checks``)
did not run. A required check that did not run fails the test like a failed check does
(:func:`raise_for_failures`): no coverage is lost without a failure naming why.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mdevtest.errors import INFRASTRUCTURE, CheckFailed, MdevtestError

if TYPE_CHECKING:
    from mdevtest.guest import Guest
    from mdevtest.inventory import HostPair, Limits
    from mdevtest.migration import MigrationPolicy, MigrationResult
    from mdevtest.qemu.machine import RemoteMachine
    from mdevtest.testbed import Testbed
    from mdevtest.vendors import VendorProfile

Status = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    values: dict[str, Any]
    method: str
    message: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "values": self.values,
            "method": self.method,
            "message": self.message,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class CheckContext:
    """Everything a check may look at for one migration of one guest."""

    testbed: Testbed
    route: HostPair
    guest: Guest
    source: RemoteMachine
    limits: Limits
    policy: MigrationPolicy
    profile: VendorProfile | None
    destination: RemoteMachine | None = None
    result: MigrationResult | None = None
    migrate_started: float | None = None  # controller monotonic
    migrate_finished: float | None = None
    scratch: dict[str, Any] = field(default_factory=dict)  # per-check state, keyed by check name

    def require_destination(self) -> RemoteMachine:
        if self.destination is None:
            raise CheckFailed("the migration did not produce a running destination")
        return self.destination


class Skip(Exception):
    """Raised by a check that cannot run here; the message says why."""


class Check(ABC):
    """One named verification. Subclasses set ``name``, ``category`` and ``method``."""

    name: ClassVar[str]
    category: ClassVar[str]  # the vendor profile's applicable_checks entry this belongs to
    method: ClassVar[str]

    def applies(self, ctx: CheckContext) -> str | None:
        """None when the check applies; otherwise why it is skipped."""
        if ctx.profile is not None and not ctx.profile.applies(self.category):
            return f"not applicable to vendor {ctx.profile.name}"
        return None

    def before(self, ctx: CheckContext) -> None:  # noqa: B027 - optional hook
        """Snapshot before the migration (default: nothing)."""

    @abstractmethod
    def after(self, ctx: CheckContext) -> dict[str, Any]:
        """Judge after the migration: return measured values, raise CheckFailed or Skip."""


def run_before(checks: Iterable[Check], ctx: CheckContext) -> dict[str, CheckResult]:
    """Snapshots; a check whose snapshot fails is reported failed now and not run after."""
    failed: dict[str, CheckResult] = {}
    for check in checks:
        if check.applies(ctx) is not None:
            continue
        started = time.monotonic()
        try:
            check.before(ctx)
        except Skip as exc:
            ctx.scratch[f"{check.name}:skip"] = str(exc)
        except (CheckFailed, MdevtestError) as exc:
            failed[check.name] = _failure(check, exc, started, phase="before")
        ctx.scratch[f"{check.name}:seconds"] = time.monotonic() - started
    return failed


def run_after(
    checks: Sequence[Check], ctx: CheckContext, *, already: dict[str, CheckResult] | None = None
) -> dict[str, CheckResult]:
    """Run every check's judgement; return all results (never raises for a check's verdict)."""
    results: dict[str, CheckResult] = dict(already or {})
    for check in checks:
        if check.name in results:
            continue
        reason = check.applies(ctx) or ctx.scratch.get(f"{check.name}:skip")
        before_s = float(ctx.scratch.get(f"{check.name}:seconds", 0.0))
        if reason:
            results[check.name] = CheckResult(check.name, "skipped", {}, check.method, str(reason))
            continue
        started = time.monotonic()
        try:
            values = check.after(ctx)
        except Skip as exc:
            results[check.name] = CheckResult(check.name, "skipped", {}, check.method, str(exc))
            continue
        except (CheckFailed, MdevtestError) as exc:
            results[check.name] = _failure(check, exc, started, phase="after", extra_s=before_s)
            continue
        results[check.name] = CheckResult(
            check.name, "passed", values, check.method, "", time.monotonic() - started + before_s
        )
    return results


def _failure(
    check: Check, exc: Exception, started: float, *, phase: str, extra_s: float = 0.0
) -> CheckResult:
    infra = not isinstance(exc, CheckFailed)
    values: dict[str, Any] = {"phase": phase, "infrastructure": infra}
    values.update(getattr(exc, "values", {}) or {})
    message = f"{check.name}: {exc}" if infra else str(exc)
    return CheckResult(
        check.name, "failed", values, check.method, message, time.monotonic() - started + extra_s
    )


def failures(results: Mapping[str, CheckResult]) -> list[CheckResult]:
    return [r for r in results.values() if r.status == "failed"]


#: Why a required check that was not among a migration's checks did not run.
NOT_CHOSEN = "not among this migration's checks (the test chose its own)"


@dataclass(frozen=True)
class Coverage:
    """Which checks of one migration ran (passed or failed: they judged), which were skipped and
    why, and which required checks did not run (each also in ``skipped``, with its reason)."""

    ran: tuple[str, ...]
    skipped: Mapping[str, str]
    required: tuple[str, ...] = ()
    missing_required: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "ran": list(self.ran),
            "skipped": dict(self.skipped),
            "required": list(self.required),
            "missing_required": list(self.missing_required),
        }

    def problems(self) -> list[str]:
        """One line per required check that did not run, naming why (what fails the test)."""
        return [f"required check {n} was skipped: {self.skipped[n]}" for n in self.missing_required]

    def line(self) -> str:
        """One line for a reader: ``checks skipped: ram-integrity, dma-integrity (why)``, checks
        that share a reason together; ``all N checks ran`` when none was skipped."""
        if not self.skipped:
            return f"all {len(self.ran)} checks ran"
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.skipped.items():
            by_reason.setdefault(reason, []).append(name)
        groups = "; ".join(f"{', '.join(names)} ({reason})" for reason, names in by_reason.items())
        text = f"checks skipped: {groups}; ran {len(self.ran)}"
        if self.missing_required:
            text += f"; REQUIRED but not run: {', '.join(self.missing_required)}"
        return text


def coverage_of(
    results: Mapping[str, CheckResult],
    *,
    planned: Sequence[str] = (),
    required: Sequence[str] = (),
    not_judged: str = "not judged",
) -> Coverage:
    """The coverage of one migration: ``results`` are its checks' results, ``planned`` the
    names of the checks it was to run (one without a result is skipped with ``not_judged``),
    ``required`` the names that must run."""
    ran: list[str] = []
    skipped: dict[str, str] = {}
    for name in dict.fromkeys([*planned, *results]):
        result = results.get(name)
        if result is None:
            skipped[name] = not_judged
        elif result.status == "skipped":
            skipped[name] = result.message or "no reason given"
        else:
            ran.append(name)
    for name in required:
        if name not in ran:
            skipped.setdefault(name, NOT_CHOSEN)
    missing = tuple(n for n in dict.fromkeys(required) if n not in ran)
    return Coverage(tuple(ran), skipped, tuple(dict.fromkeys(required)), missing)


def raise_for_failures(results: Mapping[str, CheckResult], coverage: Coverage | None = None) -> None:
    """One CheckFailed naming every failed check and what differed, then every required check
    that did not run and why (with ``coverage``). When every failure is an infrastructure error
    met while checking (SSH, QMP), its ``failure_class`` is ``infrastructure``: Allure shows the
    test broken, not failed."""
    __tracebackhide__ = True
    failed = failures(results)
    lines = [r.message for r in failed]
    values: dict[str, object] = {}
    missing = coverage is not None and bool(coverage.missing_required)
    if coverage is not None and coverage.missing_required:
        lines += coverage.problems()
        values["missing_required"] = {n: coverage.skipped[n] for n in coverage.missing_required}
    if lines:
        exc = CheckFailed("\n".join(lines), values)
        if not missing and all(r.values.get("infrastructure") is True for r in failed):
            exc.failure_class = INFRASTRUCTURE  # only SSH/QMP errors met while checking
        raise exc
