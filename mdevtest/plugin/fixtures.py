"""Fixtures of the mdevtest pytest plugin: ``lab``, ``pair``, ``guest``, ``migrate``.

``lab`` (session) gives a :class:`~mdevtest.testbed.Testbed`; with the local-lab inventory it brings the
embedded lab up when it is not up and takes down, at the end, what it brought up. ``pair`` is
parametrised over the inventory's host pairs (ids like ``host-a->host-b``). ``guest`` boots the guest
on the pair's source. ``migrate(guest)`` starts the destination, migrates, records the result for the
summary and Allure, and shuts the source down once the destination runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import allure
import pytest

from mdevtest.errors import CheckFailed, MdevtestError
from mdevtest.plugin.hooks import CALL_REPORT, pair_simulated, state_of
from mdevtest.plugin.markers import pair_of
from mdevtest.plugin.progress import progress_writer

if TYPE_CHECKING:
    from mdevtest.checks.base import Check, CheckContext, CheckResult, Coverage
    from mdevtest.checks.known_issues import KnownIssue
    from mdevtest.guest import Guest
    from mdevtest.host import HostFacts
    from mdevtest.inventory import HostPair, Limits
    from mdevtest.migration import MigrationPolicy, MigrationResult, TimelinePoint
    from mdevtest.plugin.lease import LeaseManager
    from mdevtest.preflight import PreflightReport
    from mdevtest.qemu.machine import RemoteMachine
    from mdevtest.report.allure_steps import StepHandle
    from mdevtest.report.headline import MigrationHeadline
    from mdevtest.report.summary import SummaryEntry
    from mdevtest.testbed import Testbed, VgpuAllocation


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Iterator[Testbed]:
    """The lab of the inventory, connected; an embedded lab (netns or nested) is brought up on
    demand."""
    from mdevtest.lab import make_lab
    from mdevtest.lab.local import record_started_by
    from mdevtest.testbed import Testbed

    state = state_of(request.config)
    if state.inventory is None:
        pytest.fail(state.inventory_problem or "no inventory", pytrace=False)
    inventory = state.inventory
    progress = progress_writer(request.config)  # long lab steps, as they happen

    with contextlib.ExitStack() as stack:
        if inventory.local_lab is not None:
            try:
                local = make_lab(inventory)
                started = local.up(progress)
            except MdevtestError as exc:
                pytest.fail(f"{inventory.local_lab.flavor} lab: {exc}", pytrace=False)
            if started:
                record_started_by(local, state.run_id)  # under xdist the controller takes it down
                if not state.keep_lab and state.is_controller:
                    stack.callback(local.down, progress)
        testbed = stack.enter_context(Testbed(inventory, run_id=state.run_id))
        alluredir = getattr(request.config.option, "allure_report_dir", None)
        if alluredir:

            def _environment() -> None:
                """Hosts' kernels, QEMU and driver versions, the guest image: for the dashboard."""
                from mdevtest.report.allure_meta import (
                    environment_facts,
                    vgpu_facts,
                    write_environment,
                )

                with contextlib.suppress(MdevtestError):
                    facts = [testbed.facts(h.name) for h in inventory.hosts]
                    extra = {"inventory": str(state.inventory_path)}
                    extra |= vgpu_facts((p.id, p.vgpu.type, pair_simulated(p))
                                        for p in inventory.pairs if p.vgpu is not None)  # fmt: skip
                    image = testbed.image().description
                    write_environment(
                        alluredir, environment_facts(facts, guest_image=image, extra=extra)
                    )

            stack.callback(_environment)  # at the end, while the Testbed is still connected
        yield testbed


@pytest.fixture(scope="session")
def leases(request: pytest.FixtureRequest, lab: Testbed) -> Iterator[LeaseManager]:
    """This test process's host leases (released at the end, or taken over after a crash)."""
    from mdevtest.plugin.lease import LeaseManager

    state = state_of(request.config)

    def reap(host: str) -> None:
        """Holding the lease, whatever another run left on the host is from a dead run."""
        left = lab.reap_host(host)
        if left:
            allure.attach(
                "\n".join(left), name=f"reaped on {host}", attachment_type=allure.attachment_type.TEXT
            )

    with LeaseManager(lab.pool, run_id=state.run_id, worker=state.worker, on_acquire=reap) as manager:
        yield manager


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> HostPair:
    """The host pair of this test: the plugin parametrises it by pair id (what Allure shows and
    keeps the history by), resolved here to the inventory's :class:`HostPair`."""
    found = pair_of(state_of(request.config).inventory, request.param)
    if found is None:
        pytest.fail(f"pair {request.param!r} is not a pair of the inventory", pytrace=False)
    return found


@pytest.fixture
def preflight(
    request: pytest.FixtureRequest, lab: Testbed, leases: LeaseManager, pair: HostPair
) -> Iterator[PreflightReport]:
    """The pair's preflight; a failure fails (or, with --mdevtest-preflight=skip, skips) the test.

    The pair's hosts are leased first and released after the test: no other test process
    (an xdist worker, another run) uses them meanwhile.
    """
    from mdevtest.preflight import preflight_pair
    from mdevtest.report.attach import attach_json

    with allure.step(f"lease {pair.source}, {pair.destination}"):
        try:
            leases.hold([pair.source, pair.destination])
        except MdevtestError as exc:
            pytest.fail(str(exc), pytrace=False)

    try:
        cross = request.node.get_closest_marker("cross_version") is not None
        with allure.step(f"preflight {pair.id}"):
            report = preflight_pair(lab, pair, cross_version=cross)
            attach_json("preflight", report.to_json())
        if not report.passed:
            reasons = "; ".join(c.line() for c in report.failures)
            message = f"{pair.id}: preflight failed: {reasons}"
            if state_of(request.config).preflight == "skip":
                pytest.skip(message)
            pytest.fail(message, pytrace=False)
        yield report
    finally:
        leases.hold([])  # after the guest's teardown: the hosts are free again


@pytest.fixture
def guest(
    request: pytest.FixtureRequest, lab: Testbed, pair: HostPair, preflight: PreflightReport
) -> Iterator[Guest]:
    """The guest, booted on the pair's source (after preflight) and running its workload.

    Its UDP heartbeat goes to an observer on the controller (the guest-observed downtime).
    ``@pytest.mark.qemu_args(...)`` adds QEMU arguments (on the source and every destination).
    """
    from mdevtest.checks.observer import HeartbeatObserver
    from mdevtest.guest import Guest
    from mdevtest.report.attach import attach_text

    allure.dynamic.parameter("pair", pair.id)
    with contextlib.ExitStack() as stack:
        observer = stack.enter_context(HeartbeatObserver())
        with allure.step(f"boot guest on {pair.source}"):
            try:
                address = lab.controller_address(pair.source)
                qemu_mark = request.node.get_closest_marker("qemu_args")
                machine = lab.start_source(
                    pair,
                    probe_options={"udp": f"{address}:{observer.port}"},
                    qemu_args=tuple(qemu_mark.args) if qemu_mark else (),
                )
            except MdevtestError as exc:
                pytest.fail(f"boot on {pair.source}: {exc}", pytrace=False)
        guest = Guest(machine, observer, has_agent=lab.image().agent)
        try:
            yield guest
        finally:
            with allure.step(f"teardown guest on {pair.source}"):
                with contextlib.suppress(MdevtestError):
                    attach_text(f"console {machine.label}", machine.serial_log())
                    attach_text(f"qemu log {machine.label}", machine.log_tail(200))
                lab.release(machine)


@pytest.fixture
def migration_limits(request: pytest.FixtureRequest, lab: Testbed, pair: HostPair) -> Limits:
    """Limits: `@pytest.mark.limits(...)`, else the vGPU profile's, else the inventory's."""
    limits = lab.inventory.limits
    if pair.vgpu is not None and pair.vgpu.limits is not None:
        limits = pair.vgpu.limits
    marker = request.node.get_closest_marker("limits")
    if marker is not None:
        limits = limits.model_copy(update=dict(marker.kwargs))
    return limits


def last_outcome(node: pytest.Item) -> MigrationOutcome | None:
    """The latest migration the ``migrate`` fixture started for this test (also when it raised)."""
    return node.stash.get(LAST_OUTCOME, None)


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


@pytest.fixture
def migration_policy(request: pytest.FixtureRequest, lab: Testbed, pair: HostPair) -> MigrationPolicy:
    """The test's policy: ``@pytest.mark.policy(...)`` over the inventory's limits.

    A capability the source's QEMU lacks skips the test, naming the QEMU version.
    """
    from mdevtest.migration import MigrationPolicy

    marker = request.node.get_closest_marker("policy")
    options = dict(marker.kwargs) if marker else {}
    options.setdefault("timeout_s", lab.inventory.limits.migration_timeout_s)
    policy = MigrationPolicy.from_options(**options)  # validated at collection already
    caps = lab.facts(pair.source).qemu_caps
    missing = policy.unsupported(caps.migration_capabilities)
    if missing:
        pytest.skip(
            f"{pair.source}: QEMU {caps.version_text} has no migration capability {', '.join(missing)}"
        )
    return policy


@pytest.fixture
def migrate(
    request: pytest.FixtureRequest,
    lab: Testbed,
    pair: HostPair,
    migration_policy: MigrationPolicy,
    migration_limits: Limits,
) -> Iterator[Callable[..., MigrationOutcome]]:
    """``migrate(guest, to=, cancel_when=, verify=True, checks=, policy=, on_point=)``.

    Migrates the guest over the test's pair (or ``to``), with every standard check (or ``checks``):
    snapshots before, judgement after (``verify=False`` leaves that to ``outcome.verify()``, for
    tests that inject a fault first). The guest then runs on ``outcome.destination``. Every
    migration goes into the summary and Allure at teardown, with its checks.
    """
    from mdevtest.checks.base import CheckContext, run_before
    from mdevtest.checks.standard import standard_checks
    from mdevtest.diagnose import diagnose, pin
    from mdevtest.errors import MdevError, MigrationTimedOut, classify
    from mdevtest.migration import Migrator
    from mdevtest.report.allure_meta import describe_coverage, history_safe_parameter
    from mdevtest.report.allure_steps import step
    from mdevtest.report.attach import attach_json, attach_migration, attach_text
    from mdevtest.report.junit import junit_properties
    from mdevtest.report.summary import SummaryWriter, migration_entry
    from mdevtest.vendors import get_profile

    state = state_of(request.config)
    progress = progress_writer(request.config)  # one line per migration, as it ends
    outcomes: list[MigrationOutcome] = []

    def _migrate(
        guest: Guest,
        *,
        to: HostPair | None = None,
        cancel_when: Callable[[TimelinePoint], bool] | None = None,
        verify: bool = True,
        checks: list[Check] | None = None,
        policy: MigrationPolicy | None = None,
        on_point: Callable[[TimelinePoint], None] | None = None,
    ) -> MigrationOutcome:
        route = to or pair
        policy = policy or migration_policy
        source = guest.machine
        profile = get_profile(route.vgpu.vendor) if route.vgpu else None
        ctx = CheckContext(lab, route, guest, source, migration_limits, migration_policy, profile)
        chosen = standard_checks(profile) if checks is None else checks
        started = time.monotonic()
        with allure.step("snapshot before migration"):
            early = run_before(chosen, ctx)
        before_s = time.monotonic() - started
        with allure.step(f"start destination on {route.destination} (-incoming defer)"):
            destination = lab.start_destination(route, source)
        outcome = MigrationOutcome(route, source, destination, None, ctx, check_results=early)
        outcome.known_issues = str(request.config.getoption("mdevtest_known_issues"))
        outcome.planned = [c.name for c in chosen]
        outcome.required_checks = state.required_checks
        outcome.checks_seconds = before_s
        request.node.stash[LAST_OUTCOME] = outcome
        outcome.vgpus = {
            "source": lab.vgpus.get(source.tag),
            "destination": lab.vgpus.get(destination.tag),
        }
        for role, vgpu in outcome.vgpus.items():
            if vgpu is not None:  # per-run values stay out of Allure's history id
                history_safe_parameter(f"mdev uuid ({role})", vgpu.instance.uuid)
        outcomes.append(outcome)
        migrator = Migrator(source, destination, uri=lab.migration_uri(route), policy=policy)
        # titled "migrate host-a->host-b: downtime 45 ms (observed 61 ms), total 2.8 s" once known
        with step(f"migrate {route.id} over {migrator.uri}", {"uri": migrator.uri}) as outcome.step:
            attach_json("migration policy", policy.describe())
            ctx.migrate_started = time.monotonic()
            try:
                lab.verify_vgpus(source, destination)
                outcome.result = migrator.run(cancel_when=cancel_when, on_point=on_point)
            except BaseException as exc:
                # One path for every way a migration can go wrong (QMP, SSH, a machine, a
                # timeout, Ctrl-C): a diagnosis and a failure class where one applies, the
                # timeline kept, the destination (QEMU and mdev) gone before this returns.
                ctx.migrate_finished = time.monotonic()
                if isinstance(exc, MdevtestError):
                    if not isinstance(exc, MdevError):  # the vGPUs did not check out: no run
                        timed_out = isinstance(exc, MigrationTimedOut)
                        with contextlib.suppress(MdevtestError):
                            found = diagnose(
                                route, lab.remote(route.source), destination, cancelled=timed_out
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
                _discard_destination(lab, outcome)
                outcome.show_headline(progress)
                raise
            finally:
                ctx.migrate_finished = time.monotonic()
                ctx.result = outcome.result
                if outcome.result is not None:
                    attach_migration(outcome.result)
        if not outcome.result.completed:  # a deliberate cancel: the guest stays on the source
            _discard_destination(lab, outcome)
            outcome.show_headline(progress)
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
        outcome.show_headline(progress)
        return outcome

    yield _migrate

    report = request.node.stash.get(CALL_REPORT, None)
    verdict = report.outcome if report is not None else "error"
    if report is not None and report.skipped and hasattr(report, "wasxfail"):
        verdict = "xfailed"
    workload_mark = request.node.get_closest_marker("workload")
    workload = str(workload_mark.args[0]) if workload_mark else _image_workload(lab)
    if outcomes:  # which checks each migration ran, on the test's page without opening JSON
        lines = [
            (f"{o.pair.id} (migration {i}): " if len(outcomes) > 1 else f"{o.pair.id}: ")
            + o.coverage().line()
            for i, o in enumerate(outcomes, 1)
        ]
        describe_coverage(request.node, lines)
    for i, outcome in enumerate(outcomes, 1):  # the figures where a reader looks first
        outcome.show_headline()  # the checks may have been judged after migrate() returned
        headline = outcome.headline()
        param = "migration" if len(outcomes) == 1 else f"migration {i}"
        history_safe_parameter(param, f"{headline.pair}: {headline.figures()}")
        for label, text in headline.labels():
            allure.dynamic.label(label, text)  # type: ignore[no-untyped-call]
    entries: list[SummaryEntry] = []
    # per migration, for JUnit: its entry, or what is known
    migrations: list[SummaryEntry | dict[str, Any]] = []
    try:
        for outcome in outcomes:
            with contextlib.suppress(MdevtestError):
                attach_text(f"console {outcome.destination.label}", outcome.destination.serial_log())
                attach_text(f"qemu log {outcome.destination.label}", outcome.destination.log_tail(200))
            if outcome.result is not None:
                extra = {**_summary_extra(lab, outcome, verdict), "workload": workload}
                if outcome.workload_run is not None:
                    extra["workload_run"] = outcome.workload_run
                # validated here: a key SummaryEntry lacks or a bad value fails this test
                entry = migration_entry(
                    request.node.nodeid, outcome.result, coverage=outcome.coverage(), extra=extra
                )
                entries.append(entry)
                migrations.append(entry)
            else:  # failed before QEMU migrated anything (the vGPUs did not check out)
                migrations.append({"pair": outcome.pair.id, "failure_class": outcome.failure_class})
        for name, value in junit_properties(migrations):
            request.node.user_properties.append((name, value))  # = record_property: JUnit <property>
    finally:  # an entry that fails validation must not leave destinations running
        for outcome in outcomes:
            lab.release(outcome.destination)
    if state.report_dir is not None:
        writer = SummaryWriter(state.report_dir, state.worker)
        for entry in entries:
            writer.add(entry)


def _discard_destination(lab: Testbed, outcome: MigrationOutcome) -> None:
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


def _image_workload(lab: Testbed) -> str | None:
    """The workload the guest image runs by itself (the labs' images), for the summary."""
    return lab.image().workload


def _summary_extra(lab: Testbed, outcome: MigrationOutcome, verdict: str) -> dict[str, Any]:
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
        "guest_image": lab.image().description,
        "vgpu": _vgpu_entry(route, vgpus),
        "dirty_tracking_mode": _dirty_tracking_mode(route, src_facts),
        "checks": outcome.checks,
    }


def _dirty_tracking_mode(pair: HostPair, facts: HostFacts) -> str | None:
    """How QEMU tracked the VFIO device's dirty pages (``device`` or ``off``; see
    :class:`~mdevtest.host.DirtyTracking`); None without a real VFIO device."""
    from mdevtest.vendors import get_profile

    if pair.vgpu is None or get_profile(pair.vgpu.vendor).simulated:
        return None
    return facts.dirty_tracking.mode if facts.dirty_tracking is not None else None


def _vgpu_entry(pair: HostPair, vgpus: dict[str, VgpuAllocation | None]) -> dict[str, Any] | None:
    """What the summary says about the vGPU: vendor, type, both UUIDs, simulated or real."""
    if pair.vgpu is None:
        return None
    present = [v for v in vgpus.values() if v is not None]
    return {
        "vendor": pair.vgpu.vendor,
        "type": pair.vgpu.type,
        "parent": next((v.instance.parent for v in present), pair.vgpu.parent),
        "simulated": any(v.simulated for v in present),
        "mdev_uuids": {role: (v.instance.uuid if v else None) for role, v in vgpus.items()},
    }


LAST_OUTCOME = pytest.StashKey[MigrationOutcome]()
