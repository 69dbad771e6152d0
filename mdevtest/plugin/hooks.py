"""Options, session state and reporting hooks of the mdevtest pytest plugin."""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mdevtest.errors import InventoryError
from mdevtest.report.baseline import BaselineReport, Tolerance

if TYPE_CHECKING:
    from mdevtest.inventory import HostPair, Inventory

DEFAULT_INVENTORY = Path("inventory/local-lab.yaml")


@dataclass
class SessionState:
    """What the plugin knows about this session, kept in ``config.stash``."""

    inventory: Inventory | None
    inventory_path: Path | None
    inventory_problem: str | None
    report_dir: Path | None
    keep_lab: bool
    preflight: str
    pair_filter: tuple[str, ...]
    worker: str
    is_controller: bool
    run_id: str
    allow_destructive: bool
    required_checks: tuple[str, ...] = ()  # --mdevtest-require-checks
    started: float = field(default_factory=time.monotonic)  # progress lines count from here


STATE = pytest.StashKey[SessionState]()
CALL_REPORT = pytest.StashKey[pytest.TestReport]()
BASELINE = pytest.StashKey[tuple[dict[str, Any], Tolerance]]()
BASELINE_RESULT = pytest.StashKey[BaselineReport]()


def state_of(config: pytest.Config) -> SessionState:
    return config.stash[STATE]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mdevtest", "mdevtest: live migration of mediated devices")
    group.addoption(
        "--mdevtest-inventory",
        "--inventory",
        dest="mdevtest_inventory",
        metavar="PATH",
        default=None,
        help=f"lab inventory (YAML); default: {DEFAULT_INVENTORY} under the rootdir",
    )
    group.addoption(
        "--mdevtest-report-dir",
        dest="mdevtest_report_dir",
        metavar="DIR",
        default=None,
        help="write summary.json (and, unless --alluredir is given, allure-results/) here",
    )
    group.addoption(
        "--mdevtest-pairs",
        dest="mdevtest_pairs",
        metavar="IDS",
        default="",
        help="comma-separated host pair ids to run on, e.g. 'host-a->host-b' (default: all)",
    )
    group.addoption(
        "--mdevtest-preflight",
        dest="mdevtest_preflight",
        choices=["fail", "skip"],
        default="fail",
        help="what a failed pair preflight does to a test (default: fail)",
    )
    group.addoption(
        "--mdevtest-round-trips",
        dest="mdevtest_round_trips",
        type=int,
        default=2,
        metavar="N",
        help="round trips of the ping-pong suite (2 migrations each; default 2)",
    )
    group.addoption(
        "--mdevtest-baseline",
        dest="mdevtest_baseline",
        metavar="PATH",
        default=None,
        help="fail the run when its summary.json regresses against PATH (an earlier run's)",
    )
    group.addoption(
        "--mdevtest-baseline-tolerance",
        dest="mdevtest_baseline_tolerance",
        metavar="SPEC",
        default="",
        help="relative=0.2,absolute_ms=20,absolute_bytes=1048576 (the defaults)",
    )
    group.addoption(
        "--mdevtest-allow-destructive",
        dest="mdevtest_allow_destructive",
        action="store_true",
        help="run tests marked destructive (fault injection) on a lab that is not the local lab",
    )
    group.addoption(
        "--mdevtest-deadline",
        dest="mdevtest_deadline",
        type=float,
        default=1800.0,
        metavar="S",
        help="overall deadline of one test (s); the lab state is recorded, then it fails (0: none)",
    )
    group.addoption(
        "--mdevtest-provision",
        dest="mdevtest_provision",
        default=None,
        metavar="SPEC",
        help="before the suites, put a build on every host of the inventory (docs/"
        "provisioning.md): SPEC is a provision spec file, or 'inventory' for the inventory's "
        "provision: sections; rolled back at the end unless --mdevtest-keep-build",
    )
    group.addoption(
        "--mdevtest-keep-build",
        dest="mdevtest_keep_build",
        action="store_true",
        help="leave the build of --mdevtest-provision on the hosts at the end",
    )
    group.addoption(
        "--mdevtest-keep-lab",
        dest="mdevtest_keep_lab",
        action="store_true",
        help="leave the local lab up at the end even if this session brought it up",
    )
    group.addoption(
        "--mdevtest-known-issues",
        dest="mdevtest_known_issues",
        choices=("xfail", "fail"),
        default="xfail",
        help="a migration whose every failed check a known issue explains (docs/reports.md): "
        "an expected failure naming the issue (xfail, the default), or a failure (fail)",
    )
    group.addoption(
        "--mdevtest-require-checks",
        dest="mdevtest_require_checks",
        metavar="NAMES",
        default="",
        help="comma-separated checks every migration must run, e.g. 'ram-integrity,device-state': "
        "one that is skipped fails the test naming why (default: none required)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    from mdevtest.inventory import load_inventory

    explicit = config.getoption("mdevtest_inventory")
    path = Path(explicit) if explicit else config.rootpath / DEFAULT_INVENTORY
    inventory = None
    problem = None
    if explicit or path.exists():
        try:
            inventory = load_inventory(path)
        except InventoryError as exc:
            if explicit:
                raise pytest.UsageError(str(exc)) from None
            problem = str(exc)
    else:
        problem = f"no inventory: {path} does not exist; pass --inventory PATH"
    report_dir = config.getoption("mdevtest_report_dir")
    # xdist's own word on which process this is (not the environment: a pytest run started
    # from inside a worker, e.g. by pytester, is a controller of its own)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    worker = str(workerinput["workerid"]) if workerinput else "main"
    xdist_controller = worker == "main" and getattr(config.option, "numprocesses", None)
    if xdist_controller and getattr(config.option, "testrunuid", None) is None:
        # Give xdist our run id, so the controller knows the id its workers will run under.
        config.option.testrunuid = uuid.uuid4().hex
    run_id = (
        (str(workerinput.get("testrunuid") or "") if workerinput else "")
        or getattr(config.option, "testrunuid", None)
        or uuid.uuid4().hex
    )[:12]
    state = SessionState(
        inventory=inventory,
        inventory_path=path,
        inventory_problem=problem,
        report_dir=Path(report_dir).resolve() if report_dir else None,
        keep_lab=bool(config.getoption("mdevtest_keep_lab")),
        preflight=str(config.getoption("mdevtest_preflight")),
        pair_filter=tuple(p.strip() for p in config.getoption("mdevtest_pairs").split(",") if p),
        worker=worker,
        is_controller=worker == "main",
        run_id=run_id,
        allow_destructive=bool(config.getoption("mdevtest_allow_destructive")),
        required_checks=_required_checks(config.getoption("mdevtest_require_checks")),
    )
    config.stash[STATE] = state
    from mdevtest.plugin.progress import STARTED

    config.stash[STARTED] = state.started
    baseline = config.getoption("mdevtest_baseline")
    if baseline and state.is_controller:
        from mdevtest.report.baseline import BaselineError, load_summary

        if state.report_dir is None:
            raise pytest.UsageError(
                "--mdevtest-baseline needs --mdevtest-report-dir (this run's summary.json is compared)"
            )
        try:  # loaded now: sessionstart replaces the report dir's summary.json
            config.stash[BASELINE] = (
                load_summary(baseline),
                Tolerance.parse(config.getoption("mdevtest_baseline_tolerance")),
            )
        except (BaselineError, ValueError) as exc:
            raise pytest.UsageError(f"--mdevtest-baseline: {exc}") from None
    if state.report_dir is not None and getattr(config.option, "allure_report_dir", None) is None:
        config.option.allure_report_dir = str(state.report_dir / "allure-results")
        config.option.clean_alluredir = state.is_controller
    config.addinivalue_line("markers", "lab: needs the embedded local lab (root, namespaces)")
    config.addinivalue_line(
        "markers", "nested: needs the nested lab (root; host VMs with a real mtty mdev; slow)"
    )
    config.addinivalue_line(
        "markers", "cross_version: the pair may run different QEMU / vendor-driver versions"
    )
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    # Allure steps that end in an mdevtest error: failed (product) or broken (infrastructure)
    from mdevtest.report.allure_steps import StatusPlugin, register

    config.add_cleanup(register(StatusPlugin()))


def _required_checks(option: str | None) -> tuple[str, ...]:
    """The names of ``--mdevtest-require-checks``, in order, once each; an unknown name is a
    usage error listing the known ones."""
    names = tuple(dict.fromkeys(n.strip() for n in (option or "").split(",") if n.strip()))
    if not names:
        return ()
    from mdevtest.checks.standard import known_check_names

    known = known_check_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise pytest.UsageError(
            f"--mdevtest-require-checks: unknown check(s) {', '.join(unknown)}; "
            f"known checks: {', '.join(known)}"
        )
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``pair`` over the inventory's host pairs; ids read like the lab."""
    if "pair" not in metafunc.fixturenames:
        return
    state = state_of(metafunc.config)
    if state.inventory is None:
        reason = state.inventory_problem or "no inventory"
        metafunc.parametrize("pair", [pytest.param(None, marks=pytest.mark.skip(reason=reason))],
                             ids=["no-inventory"])  # fmt: skip
        return
    pairs = [p for p in state.inventory.pairs if not state.pair_filter or p.id in state.pair_filter]
    marker = metafunc.definition.get_closest_marker("pairs")
    if marker is not None:  # the test limits itself to some pairs (by id), or to the first N
        wanted = marker.args
        if len(wanted) == 1 and isinstance(wanted[0], int):
            pairs = pairs[: wanted[0]]
        else:
            pairs = [p for p in pairs if p.id in wanted]
    if state.pair_filter and not pairs:
        known = ", ".join(p.id for p in state.inventory.pairs)
        raise pytest.UsageError(f"--mdevtest-pairs matches no pair of the inventory; known: {known}")
    # By id, resolved by the ``pair`` fixture: the parameter's value (Allure shows it and hashes
    # it into the history id) is ``host-a->host-b``, not a HostPair whose addresses may change.
    metafunc.parametrize(
        "pair", [p.id for p in pairs], ids=[pair_param_id(p) for p in pairs], indirect=True
    )


def pair_simulated(pair: HostPair) -> bool:
    """Whether the pair's vGPU is simulated (the local lab's parent; no real device state is
    migrated): its vendor profile says so, as for the summary's ``vgpu.simulated``."""
    from mdevtest.vendors import get_profile

    return pair.vgpu is not None and get_profile(pair.vgpu.vendor).simulated


def pair_param_id(pair: HostPair) -> str:
    """The pair's part of a test id: ``host-a->host-b-GVTg_V5_4`` (the pair, then its vGPU type
    as the vendor profile shows it); just the pair without a vGPU."""
    from mdevtest.vendors import get_profile

    if pair.vgpu is None:
        return pair.id
    return f"{pair.id}-{get_profile(pair.vgpu.vendor).type_label(pair.vgpu.type)}"


MARKERS = (
    "pairs(*ids | n): run only on these pair ids, or on the first n pairs",
    "policy(**options): the migration policy (downtime_limit_ms, max_bandwidth_mib, multifd, ...)",
    "limits(downtime_ms=, total_time_s=, migration_timeout_s=): limits for this test",
    "vgpu_type(*types): run only on pairs whose vGPU type is one of these",
    "vendor(*names): run only on pairs whose vGPU vendor is one of these",
    "workload(name): the workload the test runs in the guest",
    "destructive: injects faults; on the local lab, elsewhere only with --mdevtest-allow-destructive",
    "qemu_args(*args): extra QEMU arguments for the guest (source and every destination)",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate our markers (a bad one is a usage error) and skip what a pair cannot run.

    First among the plugins: the ``xdist_group`` markers added here must exist before
    pytest-xdist's worker turns them into ``--dist loadgroup`` groups (it registers later, so
    its hook would otherwise run first and see none)."""
    from mdevtest.plugin.markers import apply_markers

    problems = apply_markers(state_of(config), items)
    if problems:
        raise pytest.UsageError("invalid mdevtest markers:\n  " + "\n  ".join(problems))


def pytest_sessionstart(session: pytest.Session) -> None:
    state = state_of(session.config)
    if state.report_dir is not None and state.is_controller:
        from mdevtest.report.summary import SummaryWriter

        SummaryWriter(state.report_dir).reset()
    spec = session.config.getoption("mdevtest_provision")
    if spec and state.is_controller and state.inventory is not None:
        _provision_before_the_suites(session.config, state, str(spec))


#: The hosts ``--mdevtest-provision`` provisioned (rolled back at the session's end).
PROVISIONED = pytest.StashKey[list[str]]()


def _provision_before_the_suites(config: pytest.Config, state: SessionState, spec_arg: str) -> None:
    """``--mdevtest-provision``: the local lab up first (if the inventory has one), then the
    build on every host, under their leases; a build that fails is rolled back and ends the
    session (exit 4: the lab, not the product)."""
    from mdevtest.errors import MdevtestError
    from mdevtest.inventory import load_provision_spec
    from mdevtest.lab import make_lab
    from mdevtest.lab.local import record_started_by
    from mdevtest.plugin.progress import progress_writer
    from mdevtest.provision import provision_hosts

    inventory = state.inventory
    assert inventory is not None
    progress = progress_writer(config)
    try:
        spec = None if spec_arg == "inventory" else load_provision_spec(spec_arg)
        if inventory.local_lab is not None:
            lab = make_lab(inventory)
            if lab.up(progress):
                record_started_by(lab, state.run_id)  # taken down at the session's end
        hosts = [h.name for h in inventory.hosts]
        provision_hosts(inventory, hosts, spec=spec, progress=progress, run_id=state.run_id)
    except MdevtestError as exc:
        pytest.exit(f"--mdevtest-provision: {exc}", returncode=4)
    config.stash[PROVISIONED] = hosts


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """The test body runs under the watchdog's deadline (fixtures have their own bounds).

    A test on a simulated vGPU says so in Allure: its title ends with ``(simulated vGPU)`` and it
    has the tag ``simulated-vgpu`` (set here: allure-pytest names the test after its setup)."""
    from mdevtest.inventory import HostPair
    from mdevtest.plugin.watchdog import deadline

    pair = item.funcargs.get("pair") if isinstance(item, pytest.Function) else None
    if isinstance(pair, HostPair) and pair_simulated(pair):
        import allure

        allure.dynamic.title(f"{item.name} {SIMULATED_TITLE}")  # type: ignore[no-untyped-call]
        allure.dynamic.tag(SIMULATED_TAG)  # type: ignore[no-untyped-call]
    seconds = float(item.config.getoption("mdevtest_deadline"))
    testbed = item.funcargs.get("lab") if isinstance(item, pytest.Function) else None
    if testbed is None:
        return (yield)

    def machines() -> list[Any]:
        return list(getattr(testbed, "live_machines", lambda: [])())

    def record(text: str) -> None:
        import allure

        allure.attach(
            text, name="watchdog: lab state at the deadline", attachment_type=allure.attachment_type.JSON
        )
        item.add_report_section("call", "watchdog", text)

    with deadline(seconds, machines, record, what=item.nodeid):
        return (yield)


SIMULATED_TITLE = "(simulated vGPU)"
SIMULATED_TAG = "simulated-vgpu"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keeps the call's report for the fixtures' teardown. Around allure-pytest's own (first:
    the outermost wrapper), so the test's Allure status is set by failure class after it
    decided by exception type (:mod:`mdevtest.report.allure_steps`)."""
    from mdevtest.report.allure_steps import correct_test_status

    with correct_test_status(call.excinfo):
        report = yield
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        item.stash[CALL_REPORT] = report
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = state_of(session.config)
    provisioned = session.config.stash.get(PROVISIONED, [])
    if provisioned and state.is_controller and state.inventory is not None:
        _roll_back_after_the_suites(session, state, provisioned)
    alluredir = getattr(session.config.option, "allure_report_dir", None)
    if alluredir and state.is_controller:
        from mdevtest.report.allure_meta import write_categories, write_executor_from_env

        write_categories(alluredir)
        write_executor_from_env(alluredir)
    if state.is_controller and session.config.pluginmanager.hasplugin("dsession"):
        _take_down_lab_workers_started(state)
    if state.report_dir is None or not state.is_controller:
        return
    from mdevtest.report.summary import SummaryWriter

    meta: dict[str, Any] = {"inventory": str(state.inventory_path)}
    summary = SummaryWriter(state.report_dir).merge(meta=meta)
    if BASELINE in session.config.stash:
        import json

        from mdevtest.report.baseline import diff, load_summary

        before, tolerance = session.config.stash[BASELINE]
        after = load_summary(summary) if summary else {"migrations": []}
        result = diff(before, after, tolerance=tolerance)
        session.config.stash[BASELINE_RESULT] = result
        (state.report_dir / "baseline.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
        if not result.passed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """A short table of the migrations this run made."""
    state = state_of(config)
    if state.report_dir is None or not state.is_controller:
        return
    result = config.stash.get(BASELINE_RESULT, None)
    if result is not None:
        terminalreporter.section("mdevtest baseline", red=not result.passed, green=result.passed)
        for line in result.render().splitlines():
            terminalreporter.write_line(line, red=line.startswith("REGRESSION"))
    path = state.report_dir / "summary.json"
    if not path.exists():
        return
    from mdevtest.report.summary import SummaryError, read_summary
    from mdevtest.report.terminal import migrations_table

    tr = terminalreporter
    tr.section("mdevtest migrations")
    try:
        entries = read_summary(path).migrations
    except SummaryError as exc:
        tr.write_line(f"summary: {exc}", red=True)
        return
    prefixes = [e.pair or "" for e in entries]
    if state.inventory is not None:
        prefixes += [pair_param_id(p) for p in state.inventory.pairs]
    for row in migrations_table(entries, prefixes):
        tr.write_line(row.text, red=row.red)
    tr.write_line(f"summary: {path}")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``: one worker per host set (:mod:`mdevtest.plugin.scheduling`)."""
    state = state_of(config)
    if config.getvalue("dist") != "loadgroup" or state.inventory is None:
        return None
    from mdevtest.plugin.scheduling import HostSetScheduling

    pairs = [(p.id, p.source, p.destination) for p in state.inventory.pairs]
    return HostSetScheduling(config, log, pairs)


def _roll_back_after_the_suites(session: pytest.Session, state: SessionState, hosts: list[str]) -> None:
    """The end of ``--mdevtest-provision``: roll the build back (unless --mdevtest-keep-build),
    then take down a local lab this session brought up for it."""
    from mdevtest.errors import MdevtestError
    from mdevtest.lab import make_lab
    from mdevtest.lab.local import started_by
    from mdevtest.plugin.progress import progress_writer
    from mdevtest.provision import rollback_hosts

    inventory = state.inventory
    assert inventory is not None
    progress = progress_writer(session.config)
    if not session.config.getoption("mdevtest_keep_build"):
        try:
            rollback_hosts(inventory, hosts, progress=progress, run_id=state.run_id)
        except MdevtestError as exc:
            progress(f"--mdevtest-provision: {exc}")
            session.exitstatus = 4
    if inventory.local_lab is not None and not state.keep_lab:
        lab = make_lab(inventory)
        if started_by(lab) == state.run_id:
            lab.down(progress)


def _take_down_lab_workers_started(state: SessionState) -> None:
    """Under xdist the workers bring the local lab up; the controller takes it down at the end."""
    from mdevtest.lab import make_lab
    from mdevtest.lab.local import started_by

    inventory = state.inventory
    if inventory is None or inventory.local_lab is None or state.keep_lab:
        return
    lab = make_lab(inventory)
    if started_by(lab) == state.run_id:
        lab.down()
