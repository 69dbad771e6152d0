"""One migration with its checks, as the library runs it: :class:`MigrationRunner` and the
:class:`MigrationOutcome` it returns.

The ``migrate`` fixture of the pytest plugin only adapts this to pytest (options, the test's
node, its verdict); a script or another runner can migrate a guest the same way::

    runner = MigrationRunner(lab, pair, policy, limits)
    outcome = runner.migrate(guest)
    outcome.raise_for_checks()
    entries = runner.finish("my-run", verdict="passed", workload=None)

A migration that goes wrong in any way (QMP, SSH, a machine, a timeout, Ctrl-C) takes one path:
a diagnosis and a failure class where one applies, the timeline kept, the destination (QEMU and
mdev) gone before :meth:`MigrationRunner.migrate` raises.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import allure

from mdevtest.errors import CheckFailed, MdevtestError

if TYPE_CHECKING:
    from mdevtest.checks.base import Check, CheckContext, CheckResult, Coverage
    from mdevtest.checks.known_issues import KnownIssue
    from mdevtest.guest import Guest
    from mdevtest.host import HostFacts
    from mdevtest.inventory import HostPair, Limits
    from mdevtest.migration import MigrationPolicy, MigrationResult, TimelinePoint
    from mdevtest.qemu.machine import RemoteMachine
    from mdevtest.report.allure_steps import StepHandle
    from mdevtest.report.headline import MigrationHeadline
    from mdevtest.report.summary import SummaryEntry
    from mdevtest.testbed import Testbed, VgpuAllocation
    from mdevtest.virt.migration import LibvirtMigrator


@dataclass
class MigrationOutcome:
    """A migration made by the ``migrate`` fixture, with its checks' results.

    ``planned`` names the checks it was to run, ``required_checks`` those the run requires
    (``--mdevtest-require-checks``); :meth:`coverage` says which ran and why the others did not.
    """

    pair: HostPair
    source: RemoteMachine
    destination: RemoteMachine
    result: MigrationResult | None
    context: CheckContext | None = None
    error: str | None = None
    failure_class: str | None = None  # infrastructure or product, when the migration failed
    source_console: str = ""
    source_status_after: str | None = None
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    check_results: dict[str, CheckResult] = field(default_factory=dict)
    checks_seconds: float = 0.0
    vgpus: dict[str, VgpuAllocation | None] = field(default_factory=dict)
    known_issue: KnownIssue | None = None  # explains every failed check (set by verify)
    known_issues: str = "xfail"  # --mdevtest-known-issues: what raise_for_checks does with one
    workload_run: dict[str, Any] | None = None
    """A workload's figures across this migration (results, samples, dip), set by the test;
    goes into the summary entry as ``workload_run``."""
    planned: list[str] = field(default_factory=list)
    required_checks: tuple[str, ...] = ()
    step: StepHandle | None = None  # the migrate step, titled with the figures once known
    _pending: list[Check] = field(default_factory=list)

    def observed_downtime_ms(self) -> float | None:
        """The downtime the guest's heartbeats showed (the downtime check's), when it ran."""
        value = self.checks.get("downtime", {}).get("values", {}).get("observed_downtime_ms")
        return value if isinstance(value, (int, float)) else None

    def headline(self) -> MigrationHeadline:
        """This migration in one line: downtimes and total time, or how it failed."""
        from mdevtest.report.headline import MigrationHeadline

        ctx = self.context
        wall_ms = None
        if ctx is not None and ctx.migrate_started is not None and ctx.migrate_finished is not None:
            wall_ms = (ctx.migrate_finished - ctx.migrate_started) * 1000
        return MigrationHeadline.of(
            self.pair.id,
            self.result,
            observed_downtime_ms=self.observed_downtime_ms(),
            failure_class=self.failure_class,
            error=self.error,
            wall_ms=wall_ms,
        )

    def verdict(self) -> str:
        """What the checks said so far: ``passed``, ``failed: heartbeat, graphics``, ``known
        issue <id>``, ``required check skipped: ...``, or that they have not run yet."""
        if self._pending:
            return "checks not run yet"
        failed = [name for name, r in self.check_results.items() if r.status == "failed"]
        if self.known_issue is not None:
            return f"known issue {self.known_issue.id}"
        if failed:
            return "failed: " + ", ".join(failed)
        missing = self.coverage().missing_required if self.result is not None else ()
        return "required check skipped: " + ", ".join(missing) if missing else "passed"

    def show_headline(self, progress: Callable[[str], None] | None = None) -> None:
        """Title the migrate step with the figures; with ``progress``, say it on the terminal."""
        headline = self.headline()
        if self.step is not None:
            self.step.retitle(headline.step_title())
        if progress is not None:
            progress(headline.terminal_line(self.verdict()))

    def record_check(self, name: str, status: str, values: dict[str, Any], method: str) -> None:
        self.checks[name] = {"status": status, "values": values, "method": method}

    def verify(self) -> dict[str, CheckResult]:
        """Run the checks' after-phase (once); record results for Allure and the summary.

        In Allure each check is a step of the ``verify`` step, coloured by its result."""
        from mdevtest.checks.base import run_after
        from mdevtest.report.allure_steps import check_step
        from mdevtest.report.attach import attach_json

        if self._pending and self.context is not None:
            started = time.monotonic()
            with allure.step(f"verify {self.pair.id}"):
                self.check_results = run_after(self._pending, self.context, already=self.check_results)
                for name, res in self.check_results.items():
                    self.checks[name] = res.to_json()
                    check_step(res)
                attach_json("checks", self.checks)
                attach_json("check coverage", self.coverage().to_json())
                self.known_issue = self._match_known_issue()
                if self.known_issue is not None:
                    attach_json("known issue", self.known_issue.to_json())
            self.checks_seconds += time.monotonic() - started
            self._pending = []
        return self.check_results

    def coverage(self) -> Coverage:
        """Which checks ran, which were skipped and why, which required ones did not run.

        A planned check without a result was not judged: the migration did not complete, or
        the test asked for ``verify=False`` and never called :meth:`verify`.
        """
        from mdevtest.checks.base import coverage_of

        if self.result is None or not self.result.completed:
            not_judged = "the migration did not complete"
        elif self._pending:
            not_judged = "not judged: the test did not call outcome.verify()"
        else:
            not_judged = "not judged"
        return coverage_of(
            self.check_results,
            planned=self.planned,
            required=self.required_checks,
            not_judged=not_judged,
        )

    def raise_for_checks(self) -> None:
        """Fail naming every failed check and what differed, and every required check that was
        skipped and why; an expected failure (xfail) naming the known issue instead when one
        explains every failed check and no required check was skipped (--mdevtest-known-issues)."""
        __tracebackhide__ = True
        from mdevtest.checks.base import raise_for_failures

        results = self.verify()
        coverage = self.coverage()
        issue = self.known_issue
        if issue is None:
            raise_for_failures(results, coverage)
            return
        if self.known_issues == "xfail" and not coverage.missing_required:
            import pytest  # an expected failure is pytest's own outcome

            pytest.xfail(issue.describe())
        try:
            raise_for_failures(results)
        except CheckFailed as exc:
            lines = [str(exc), f"(matches {issue.describe()})", *coverage.problems()]
            raise CheckFailed("\n".join(lines), exc.values) from None
        raise_for_failures({}, coverage)  # nothing failed, yet a required check did not run

    def _match_known_issue(self) -> KnownIssue | None:
        from mdevtest.checks.known_issues import match_known_issue

        ctx = self.context
        if ctx is None or not any(r.status == "failed" for r in self.check_results.values()):
            return None
        real_vfio = any(v is not None and not v.simulated for v in self.vgpus.values())
        try:
            accel = ctx.testbed.facts(self.pair.destination).accel  # probed by the preflight
            if accel != "tcg" or not real_vfio:  # the only signatures known need both
                return None
            console = self.destination.serial_log()
        except MdevtestError:  # the checks' failures stand as they are
            return None
        return match_known_issue(
            self.check_results, accel=accel, real_vfio=real_vfio, destination_console=console
        )


class MigrationRunner:
    """Migrations of one test over ``pair`` (or another route), each with its checks.

    ``migrate(guest, ...)`` returns a :class:`MigrationOutcome` (the guest then runs on its
    ``destination``); :meth:`finish` makes their summary entries and releases every destination.
    ``progress`` gets one line per migration as it ends; ``on_start`` each outcome as soon as its
    destination runs (the plugin keeps the latest for the test, also when migrate() raises).
    """

    def __init__(
        self,
        lab: Testbed,
        pair: HostPair,
        policy: MigrationPolicy,
        limits: Limits,
        *,
        required_checks: tuple[str, ...] = (),
        known_issues: str = "xfail",
        progress: Callable[[str], None] | None = None,
        on_start: Callable[[MigrationOutcome], None] | None = None,
    ) -> None:
        self.lab = lab
        self.pair = pair
        self.policy = policy
        self.limits = limits
        self.required_checks = required_checks
        self.known_issues = known_issues
        self.progress = progress
        self.on_start = on_start
        self.outcomes: list[MigrationOutcome] = []

    def migrate(
        self,
        guest: Guest,
        *,
        to: HostPair | None = None,
        cancel_when: Callable[[TimelinePoint], bool] | None = None,
        verify: bool = True,
        checks: list[Check] | None = None,
        policy: MigrationPolicy | None = None,
        on_point: Callable[[TimelinePoint], None] | None = None,
    ) -> MigrationOutcome:
        """Migrate ``guest`` over the pair (or ``to``) with every standard check (or ``checks``):
        snapshots before, judgement after (``verify=False`` leaves that to ``outcome.verify()``,
        for tests that inject a fault first)."""
        from mdevtest.checks.base import CheckContext, run_before
        from mdevtest.checks.standard import standard_checks
        from mdevtest.migration import Migrator
        from mdevtest.report.allure_meta import history_safe_parameter
        from mdevtest.report.allure_steps import step
        from mdevtest.report.attach import attach_json, attach_migration
        from mdevtest.vendors import get_profile

        lab = self.lab
        route = to or self.pair
        policy = policy or self.policy
        source = guest.machine
        profile = get_profile(route.vgpu.vendor) if route.vgpu else None
        ctx = CheckContext(lab, route, guest, source, self.limits, policy, profile)
        chosen = standard_checks(profile) if checks is None else checks
        started = time.monotonic()
        with allure.step("snapshot before migration"):
            early = run_before(chosen, ctx)
        before_s = time.monotonic() - started
        with allure.step(f"start destination on {route.destination} (-incoming defer)"):
            destination = lab.start_destination(route, source)
        outcome = MigrationOutcome(route, source, destination, None, ctx, check_results=early)
        outcome.known_issues = self.known_issues
        outcome.planned = [c.name for c in chosen]
        outcome.required_checks = self.required_checks
        outcome.checks_seconds = before_s
        if self.on_start is not None:
            self.on_start(outcome)
        outcome.vgpus = {
            "source": lab.vgpus.get(source.tag),
            "destination": lab.vgpus.get(destination.tag),
        }
        for role, vgpu in outcome.vgpus.items():
            if vgpu is not None:  # per-run values stay out of Allure's history id
                name = "VF" if vgpu.kind == "vf" else "mdev uuid"
                history_safe_parameter(f"{name} ({role})", vgpu.instance.uuid)
        self.outcomes.append(outcome)
        migrator: Migrator | LibvirtMigrator
        if route.backend == "libvirt":
            from mdevtest.virt.machine import LibvirtMachine
            from mdevtest.virt.migration import LibvirtMigrator

            assert isinstance(source, LibvirtMachine)
            assert isinstance(destination, LibvirtMachine)
            migrator = LibvirtMigrator(
                source,
                destination,
                uri=lab.migration_uri(route),
                policy=policy,
                peer_uri=route.libvirt_peer_uri,
            )
        else:
            migrator = Migrator(
                source,
                destination,
                uri=lab.migration_uri(route),
                policy=policy,
                # QEMU 9.1+: a destination that fails to load stays up and says why (diagnose)
                keep_failed_destination=lab.facts(route.destination).qemu_caps.incoming_exit_on_error,
            )
        # titled "migrate host-a->host-b: downtime 45 ms (observed 61 ms), total 2.8 s" once known
        with step(f"migrate {route.id} over {migrator.uri}", {"uri": migrator.uri}) as outcome.step:
            attach_json("migration policy", policy.describe())
            ctx.migrate_started = time.monotonic()
            try:
                lab.verify_vgpus(source, destination)
                outcome.result = migrator.run(cancel_when=cancel_when, on_point=on_point)
            except BaseException as exc:
                ctx.migrate_finished = time.monotonic()
                self._failed(outcome, migrator, exc)
                raise
            finally:
                ctx.migrate_finished = time.monotonic()
                ctx.result = outcome.result
                if outcome.result is not None:
                    attach_migration(outcome.result)
        if not outcome.result.completed:  # a deliberate cancel: the guest stays on the source
            discard_destination(lab, outcome)
            outcome.show_headline(self.progress)
            return outcome
        ctx.destination = destination
        guest.moved_to(destination)
        # The guest runs on the destination now: keep the source's console, then stop it.
        with allure.step(f"shut down source on {route.source}"):
            outcome.source_status_after = source.status()
            outcome.source_console = source.serial_log()
            source.shutdown()
            lab.release_vgpu_of(source)  # its mdev is free again (a round trip comes back to it)
        outcome._pending = list(chosen)
        if verify:
            outcome.verify()
        outcome.show_headline(self.progress)
        return outcome

    def _failed(self, outcome: MigrationOutcome, migrator: Any, exc: BaseException) -> None:
        """The one path for a migration gone wrong: a diagnosis and a failure class where one
        applies, the timeline kept, the destination (QEMU and mdev) discarded."""
        from mdevtest.diagnose import diagnose, pin
        from mdevtest.errors import MdevError, MigrationTimedOut, classify

        route = outcome.pair
        if isinstance(exc, MdevtestError):
            if not isinstance(exc, MdevError):  # the vGPUs did not check out: no run
                timed_out = isinstance(exc, MigrationTimedOut)
                with contextlib.suppress(MdevtestError):
                    found = diagnose(
                        route, self.lab.remote(route.source), outcome.destination, cancelled=timed_out
                    )
                    pin(exc, found)
            outcome.failure_class = classify(exc)
            text = str(exc)
            prefix = f"[{outcome.failure_class}]"
            outcome.error = text if text.startswith(prefix) else f"{prefix} {text}"
        else:
            outcome.error = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(MdevtestError):
            outcome.result = migrator.result
        discard_destination(self.lab, outcome)
        outcome.show_headline(self.progress)

    def coverage_lines(self) -> list[str]:
        """Which checks each migration ran, one line each (the test's description)."""
        many = len(self.outcomes) > 1
        return [
            (f"{o.pair.id} (migration {i}): " if many else f"{o.pair.id}: ") + o.coverage().line()
            for i, o in enumerate(self.outcomes, 1)
        ]

    def finish(
        self, test_id: str, *, verdict: str, workload: str | None
    ) -> tuple[list[SummaryEntry], list[SummaryEntry | dict[str, Any]]]:
        """Summary entries of the migrations that ran (validated: a bad value raises) and, per
        migration, its entry or what is known (for JUnit); every destination released, also
        when an entry fails validation. The destinations' consoles and logs go to Allure."""
        from mdevtest.report.attach import attach_text
        from mdevtest.report.summary import migration_entry

        entries: list[SummaryEntry] = []
        migrations: list[SummaryEntry | dict[str, Any]] = []
        try:
            for outcome in self.outcomes:
                dst = outcome.destination
                with contextlib.suppress(MdevtestError):
                    attach_text(f"console {dst.label}", dst.serial_log())
                    attach_text(f"qemu log {dst.label}", dst.log_tail(200))
                if outcome.result is not None:
                    extra = {**summary_extra(self.lab, outcome, verdict), "workload": workload}
                    if outcome.workload_run is not None:
                        extra["workload_run"] = outcome.workload_run
                    entry = migration_entry(
                        test_id, outcome.result, coverage=outcome.coverage(), extra=extra
                    )
                    entries.append(entry)
                    migrations.append(entry)
                else:  # failed before QEMU migrated anything (the vGPUs did not check out)
                    migrations.append({"pair": outcome.pair.id, "failure_class": outcome.failure_class})
        finally:
            for outcome in self.outcomes:
                self.lab.release(outcome.destination)
        return entries, migrations


def discard_destination(lab: Testbed, outcome: MigrationOutcome) -> None:
    """The guest stayed on the source: stop the destination and free its mdev now, so the pair
    can be migrated over again; its console and log go to the report first."""
    from mdevtest.report.attach import attach_text

    dst = outcome.destination
    with contextlib.suppress(MdevtestError):
        attach_text(f"console {dst.label} (discarded)", dst.serial_log())
        attach_text(f"qemu log {dst.label} (discarded)", dst.log_tail(200))
    lab.release(dst)  # on an unreachable host: pending, done once it answers again
    waiting = lab.pending().get(outcome.pair.destination)
    if waiting:
        note = f"destination cleanup pending on {outcome.pair.destination}: {', '.join(waiting)}"
        outcome.error = f"{outcome.error}; {note}" if outcome.error else note
        attach_text("cleanup pending", note)


def summary_extra(lab: Testbed, outcome: MigrationOutcome, verdict: str) -> dict[str, Any]:
    route = outcome.pair
    src_facts, dst_facts = lab.facts(route.source), lab.facts(route.destination)
    vgpus = outcome.vgpus
    return {
        "pair": route.id,
        "checks_seconds": round(outcome.checks_seconds, 3),
        "observed_downtime_ms": outcome.observed_downtime_ms(),
        "verdict": verdict,
        "error": outcome.error,
        "failure_class": outcome.failure_class,
        "known_issue": outcome.known_issue.to_json() if outcome.known_issue else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "accel": src_facts.accel,
        "accel_reason": src_facts.accel_reason,
        "qemu_version": {
            route.source: src_facts.qemu_version,
            route.destination: dst_facts.qemu_version,
        },
        "builds": {
            f.name: {"kernel": f.kernel, "qemu": f.qemu_version, "provision": f.build}
            for f in (src_facts, dst_facts)
        },
        "guest_image": lab.image().description,
        "vgpu": vgpu_entry(route, vgpus),
        "dirty_tracking_mode": dirty_tracking_mode(route, src_facts),
        "backend": route.backend,
        "libvirt_mode": (
            ("p2p" if route.libvirt_peer_uri else "direct") if route.backend == "libvirt" else None
        ),
        "checks": outcome.checks,
    }


def dirty_tracking_mode(pair: HostPair, facts: HostFacts) -> str | None:
    """How QEMU tracked the VFIO device's dirty pages (``device`` or ``off``; see
    :class:`~mdevtest.host.DirtyTracking`); None without a real VFIO device."""
    from mdevtest.vendors import get_profile

    if pair.vgpu is None or get_profile(pair.vgpu.vendor).simulated:
        return None
    return facts.dirty_tracking.mode if facts.dirty_tracking is not None else None


def vgpu_entry(pair: HostPair, vgpus: dict[str, VgpuAllocation | None]) -> dict[str, Any] | None:
    """What the summary says about the vGPU: vendor, type, mdev or VF, both devices' ids,
    simulated or real."""
    if pair.vgpu is None:
        return None
    present = [v for v in vgpus.values() if v is not None]
    kind = "vf" if pair.vgpu.is_vf else "mdev"
    ids = {role: (v.instance.uuid if v else None) for role, v in vgpus.items()}
    return {
        "vendor": pair.vgpu.vendor,
        "type": pair.vgpu.type,
        "kind": kind,
        "parent": next((v.instance.parent for v in present), pair.vgpu.parent),
        "simulated": any(v.simulated for v in present),
        "mdev_uuids": ids if kind == "mdev" else {},
        "devices": ids,
        "kernel_migration": {role: (v.kernel_migration if v else None) for role, v in vgpus.items()},
    }
