"""Fixtures of the mdevtest pytest plugin: ``lab``, ``pair``, ``guest``, ``migrate``.

``lab`` (session) gives a :class:`~mdevtest.testbed.Testbed`; with the local-lab inventory it brings the
embedded lab up when it is not up and takes down, at the end, what it brought up. ``pair`` is
parametrised over the inventory's host pairs (ids like ``host-a->host-b``). ``guest`` boots the guest
on the pair's source. ``migrate(guest)`` starts the destination, migrates, records the result for the
summary and Allure, and shuts the source down once the destination runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import allure
import pytest

from mdevtest.errors import MdevtestError
from mdevtest.migration_run import MigrationOutcome
from mdevtest.plugin.hooks import CALL_REPORT, pair_simulated, state_of
from mdevtest.plugin.markers import pair_of
from mdevtest.plugin.progress import progress_writer

if TYPE_CHECKING:
    from mdevtest.guest import Guest
    from mdevtest.inventory import HostPair, Limits
    from mdevtest.lease import LeaseManager
    from mdevtest.migration import MigrationPolicy
    from mdevtest.preflight import PreflightReport
    from mdevtest.testbed import Testbed

__all__ = ["MigrationOutcome", "last_outcome"]  # MigrationOutcome: for suites' type hints


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
    from mdevtest.lease import LeaseManager

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


@pytest.fixture
def migration_policy(
    request: pytest.FixtureRequest, lab: Testbed, pair: HostPair, migration_limits: Limits
) -> MigrationPolicy:
    """The test's policy: ``@pytest.mark.policy(...)``; its time limit the policy's
    ``timeout_s``, else the test's limits' ``migration_timeout_s`` (``@pytest.mark.limits``, the
    vGPU profile's, the inventory's: :func:`migration_limits`).

    A capability the source's QEMU lacks skips the test, naming the QEMU version.
    """
    from mdevtest.migration import MigrationPolicy

    marker = request.node.get_closest_marker("policy")
    options = dict(marker.kwargs) if marker else {}
    options.setdefault("timeout_s", migration_limits.migration_timeout_s)
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
    migration goes into the summary and Allure at teardown, with its checks. The migration itself
    is the library's (:class:`~mdevtest.migration_run.MigrationRunner`); this adapts it to pytest.
    """
    from mdevtest.migration_run import MigrationRunner
    from mdevtest.report.allure_meta import describe_coverage, history_safe_parameter
    from mdevtest.report.junit import junit_properties
    from mdevtest.report.summary import SummaryWriter

    state = state_of(request.config)

    def remember(outcome: MigrationOutcome) -> None:
        request.node.stash[LAST_OUTCOME] = outcome

    runner = MigrationRunner(
        lab,
        pair,
        migration_policy,
        migration_limits,
        required_checks=state.required_checks,
        known_issues=str(request.config.getoption("mdevtest_known_issues")),
        progress=progress_writer(request.config),  # one line per migration, as it ends
        on_start=remember,
    )
    yield runner.migrate

    report = request.node.stash.get(CALL_REPORT, None)
    verdict = report.outcome if report is not None else "error"
    if report is not None and report.skipped and hasattr(report, "wasxfail"):
        verdict = "xfailed"
    workload_mark = request.node.get_closest_marker("workload")
    workload = str(workload_mark.args[0]) if workload_mark else lab.image().workload
    if runner.outcomes:  # which checks each migration ran, on the test's page without opening JSON
        describe_coverage(request.node, runner.coverage_lines())
    for i, outcome in enumerate(runner.outcomes, 1):  # the figures where a reader looks first
        outcome.show_headline()  # the checks may have been judged after migrate() returned
        headline = outcome.headline()
        param = "migration" if len(runner.outcomes) == 1 else f"migration {i}"
        history_safe_parameter(param, f"{headline.pair}: {headline.figures()}")
        for label, text in headline.labels():
            allure.dynamic.label(label, text)  # type: ignore[no-untyped-call]
    # validated here: a key SummaryEntry lacks or a bad value fails this test (after every
    # destination is released)
    entries, migrations = runner.finish(request.node.nodeid, verdict=verdict, workload=workload)
    for name, value in junit_properties(migrations):
        request.node.user_properties.append((name, value))  # = record_property: JUnit <property>
    if state.report_dir is not None:
        writer = SummaryWriter(state.report_dir, state.worker)
        for entry in entries:
            writer.add(entry)


LAST_OUTCOME = pytest.StashKey[MigrationOutcome]()
