"""Checks: named, reusable verifications of one migration, each saying how it measured.

A :class:`Check` may take a snapshot before the migration (:meth:`Check.before`) and judges after it
(:meth:`Check.after`), reading and writing its own slot in the shared :class:`CheckContext`. The
runner turns every outcome into a :class:`CheckResult` (passed / failed / skipped, measured values,
method) that goes into Allure and into the migration's ``checks`` map in ``summary.json``. A
product problem is a :class:`~mdevtest.errors.CheckFailed`; an infrastructure problem met while
checking (SSH, QMP) also fails the check, marked ``infrastructure`` in its values.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mdevtest.errors import CheckFailed, MdevtestError

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


def failures(results: dict[str, CheckResult]) -> list[CheckResult]:
    return [r for r in results.values() if r.status == "failed"]


def raise_for_failures(results: dict[str, CheckResult]) -> None:
    """One CheckFailed naming every failed check and what differed."""
    __tracebackhide__ = True
    bad = failures(results)
    if bad:
        raise CheckFailed("\n".join(r.message for r in bad))
