"""Pre-merge validation of an mtty driver change on the nested lab (``mdevtest premerge``).

A workflow that uses a lab, not a lab: it brings the nested lab up through :mod:`mdevtest.lab`
and runs the suites against it, twice.

A change to the driver (a patch to ``samples/vfio-mdev/mtty.c``, or a module built elsewhere)
is judged the way a vendor's pre-merge job would judge a vGPU driver change:

1. the nested lab comes up (or is found up), its images built or taken from the cache;
2. the baseline: a ``summary.json`` given by the caller, or the suite run now with the image's
   own ``mtty.ko`` loaded on every host;
3. the change is built for the hosts' kernel (:func:`~mdevtest.lab.nested_image.build_mtty_module`)
   and deployed to every host: the lab's mdevs reaped, ``rmmod mtty``, ``insmod`` of the build,
   and ``/sys/module/mtty/srcversion`` must then be the build's (so the run provably tested it);
4. the suite runs again; the verdict is its outcome (each failed test with what its failed checks
   found, e.g. ``mtty-device-state: ... SCR 0x00 after the migration ...``) plus the baseline
   gate's regressions (:func:`mdevtest.report.baseline.gate`);
5. the image's own module is deployed back whatever happened, so the lab is left as booted.

Each suite run is a pytest of its own (``sys.executable -m pytest``) writing its reports under
the run's report dir: ``baseline/`` and ``patched/`` (``summary.json``, ``allure-results/``,
``pytest.log``).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mdevtest.errors import LabError, MdevtestError
from mdevtest.inventory import Inventory
from mdevtest.lab.common import Progress, quiet
from mdevtest.lab.nested_image import ModuleInfo, module_info

if TYPE_CHECKING:
    from mdevtest.report.summary import SummaryEntry

DEFAULT_SUITE = "suites/test_migration_basic.py"

#: The baseline gate's tolerance on the nested lab. Its hosts run under TCG on a shared machine
#: and its guests under TCG inside TCG: identical runs differ by up to ~3x in total time (seen
#: 4.4-12.4 s for the same migration), so only gross regressions count here (twice as slow and
#: 10 s more, twice the bytes and 64 MiB more); the device state is judged by the checks.
NESTED_TOLERANCE = "relative=1.0,absolute_ms=10000,absolute_bytes=67108864"
SUITE_TIMEOUT_S = 3600.0
_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Deployed:
    """The mtty module loaded on one host, as the host reports it."""

    host: str
    srcversion: str
    version: str
    types: tuple[str, ...]


@dataclass(frozen=True)
class SuiteRun:
    """One run of the suite: its pytest exit code and where its reports are."""

    label: str
    returncode: int
    report_dir: Path
    seconds: float

    @property
    def summary(self) -> Path:
        return self.report_dir / "summary.json"

    def failures(self) -> list[str]:
        """One line per migration whose test did not pass: the test, and what failed."""
        from mdevtest.report.summary import SummaryError, read_summary

        if not self.summary.exists():
            return [f"{self.label}: no summary.json (pytest exited {self.returncode})"]
        try:
            entries = read_summary(self.summary).migrations
        except SummaryError as exc:  # unreadable, or not one this mdevtest reads
            return [f"{self.label}: {exc} (pytest exited {self.returncode})"]
        lines = []
        for e in entries:
            if e.verdict == "passed":
                continue
            failed = [c.message or name for name, c in (e.checks or {}).items() if c.status == "failed"]
            what = "; ".join(failed) or e.error or f"status {e.status}"
            lines.append(f"{e.test_id} [{e.pair}]: {what}")
        return lines

    def known_issues(self) -> list[str]:
        """One line per migration reported as an expected failure: its known issue."""
        return [
            f"{e.test_id} [{e.pair}]: known issue {e.known_issue.id} ({e.known_issue.evidence})"
            for e in self._entries()
            if e.known_issue is not None
        ]

    def _entries(self) -> list[SummaryEntry]:
        """The summary's migrations; none without a readable, valid summary.json (which
        :meth:`failures` reports)."""
        from mdevtest.report.summary import SummaryError, read_summary

        try:
            return read_summary(self.summary).migrations
        except SummaryError:
            return []


@dataclass
class PremergeResult:
    """What a pre-merge run found."""

    module: ModuleInfo | None
    build: str = ""
    deployed: list[Deployed] = field(default_factory=list)
    baseline: Path | None = None
    baseline_run: SuiteRun | None = None
    patched_run: SuiteRun | None = None
    gate: str = ""
    gate_passed: bool = True

    @property
    def passed(self) -> bool:
        run = self.patched_run
        return run is not None and run.returncode == 0 and self.gate_passed

    def render(self) -> str:
        m = self.module
        lines = (
            [
                f"pre-merge: mtty srcversion {m.srcversion} (version {m.version or '-'}) "
                f"for {m.kernel_version}"
            ]
            if m is not None
            else [f"pre-merge: build {self.build}"]
        )
        lines += [f"  {d.host}: loaded srcversion {d.srcversion}, types {','.join(d.types)}"
                  for d in self.deployed]  # fmt: skip
        for run in (self.baseline_run, self.patched_run):
            if run is not None:
                outcome = "passed" if run.returncode == 0 else f"failed (pytest exit {run.returncode})"
                lines.append(f"  {run.label} suite: {outcome} in {run.seconds:.0f} s -> {run.summary}")
                lines += [f"    {f}" for f in run.failures()] if run.returncode else []
                lines += [f"    {k}" for k in run.known_issues()]
        if self.baseline is not None:
            lines.append(f"  baseline: {self.baseline}")
        if self.gate:
            lines += [f"  {line}" for line in self.gate.splitlines()]
        lines.append(f"pre-merge verdict: {'PASS' if self.passed else 'REJECT'}")
        return "\n".join(lines)


def deploy_mtty(
    inventory: Inventory, module: Path, *, progress: Progress = quiet, timeout: float = 300.0
) -> list[Deployed]:
    """Load ``module`` as mtty on every host of ``inventory``; return what each host then runs.

    The module is copied to ``<host state>/modules/``; the host's mdevs that mdevtest runs left
    are reaped (``rmmod`` fails while an mdev exists); a host already running this srcversion
    keeps it. Raises :class:`LabError` when the loaded srcversion is not the module's.
    """
    from mdevtest.testbed import Testbed

    info = module_info(module)
    found: list[Deployed] = []
    with Testbed(inventory, run_id="premerge") as testbed:
        testbed.reap()
        for host in inventory.hosts:
            remote = testbed.remote(host.name)
            target = f"{host.state_dir}/modules/mtty-{info.srcversion}.ko"
            remote.check(["mkdir", "-p", f"{host.state_dir}/modules"], timeout=30)
            remote.put(module, target, timeout=timeout)
            q = shlex.quote(target)
            want = shlex.quote(info.srcversion)
            script = f"""
if [ "$(cat /sys/module/mtty/srcversion 2>/dev/null)" != {want} ]; then
  if [ -d /sys/module/mtty ]; then
    rmmod mtty || {{ echo "rmmod failed; mdevs: $(ls /sys/bus/mdev/devices)" >&2; exit 3; }}
  fi
  insmod {q} || exit 4
fi
echo "srcversion $(cat /sys/module/mtty/srcversion)"
echo "version $(cat /sys/module/mtty/version 2>/dev/null)"
echo "types $(ls /sys/class/mdev_bus/mtty/mdev_supported_types | tr '\\n' ',')"
"""
            try:
                out = remote.check_shell(script, timeout=timeout).stdout
            except MdevtestError as exc:
                raise LabError(f"{host.name}: cannot load {module.name}: {exc}") from exc
            fields = dict(line.partition(" ")[::2] for line in out.splitlines() if " " in line)
            deployed = Deployed(
                host=host.name,
                srcversion=fields.get("srcversion", "").strip(),
                version=fields.get("version", "").strip(),
                types=tuple(t for t in fields.get("types", "").strip().split(",") if t),
            )
            if deployed.srcversion != info.srcversion:
                raise LabError(
                    f"{host.name}: loaded mtty has srcversion {deployed.srcversion or '?'}, not "
                    f"{info.srcversion} of {module}"
                )
            progress(
                f"{host.name}: mtty srcversion {deployed.srcversion} loaded "
                f"(types {', '.join(deployed.types) or 'none'})"
            )
            found.append(deployed)
    return found


def run_suite(
    label: str,
    inventory_path: Path,
    suite: str,
    report_dir: Path,
    extra_args: Sequence[str] = (),
    *,
    progress: Progress = quiet,
) -> SuiteRun:
    """Run ``suite`` on the inventory's lab in a pytest of its own; its log in the report dir."""
    report_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "pytest", suite, "-p", "no:cacheprovider", "-q",
        "--inventory", str(inventory_path), "--mdevtest-report-dir", str(report_dir), *extra_args,
    ]  # fmt: skip
    progress(f"{label} suite: {shlex.join(argv[2:])}")
    started = time.monotonic()
    with (report_dir / "pytest.log").open("w") as log:
        try:
            proc = subprocess.run(
                argv, cwd=_REPO, stdout=log, stderr=subprocess.STDOUT,
                timeout=SUITE_TIMEOUT_S, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise LabError(
                f"{label} suite did not finish within {SUITE_TIMEOUT_S:g} s; see "
                f"{report_dir / 'pytest.log'}"
            ) from exc
    run = SuiteRun(label, proc.returncode, report_dir, time.monotonic() - started)
    progress(f"{label} suite: pytest exit {proc.returncode} in {run.seconds:.0f} s")
    return run


def _baseline_run(
    inventory_path: Path,
    suite: str,
    report_dir: Path,
    pytest_args: Sequence[str],
    progress: Progress,
) -> SuiteRun:
    """The suite on what the hosts run now, into ``report_dir/baseline``; it must write a summary."""
    run = run_suite("baseline", inventory_path, suite, report_dir / "baseline", pytest_args,
                    progress=progress)  # fmt: skip
    if not run.summary.exists():
        raise LabError(
            f"pre-merge: the baseline run wrote no summary; see {run.report_dir / 'pytest.log'}"
        )
    return run


def premerge(
    inventory_path: Path,
    *,
    patch: Path | None = None,
    module: Path | None = None,
    baseline: Path | None = None,
    suite: str = DEFAULT_SUITE,
    report_dir: Path = Path("reports/premerge"),
    pytest_args: Sequence[str] = (),
    tolerance: str = NESTED_TOLERANCE,
    keep_lab: bool = False,
    progress: Progress = quiet,
) -> PremergeResult:
    """Judge one mtty change (``patch`` or a built ``module``) on the nested lab; see the module doc."""
    from mdevtest.inventory import load_inventory
    from mdevtest.lab import make_lab
    from mdevtest.lab.nested_image import build_mtty_module, build_nested_images
    from mdevtest.report.baseline import Tolerance, gate

    if (patch is None) == (module is None):
        raise LabError("pre-merge: give exactly one of a patch and a built module")
    limits = Tolerance.parse(tolerance)
    inventory = load_inventory(inventory_path)
    if inventory.local_lab is None or inventory.local_lab.flavor != "nested":
        raise LabError(f"pre-merge: {inventory_path} is not a nested-lab inventory")
    images = build_nested_images(progress=progress)
    pristine = images.host.mtty.path
    if patch is not None:
        module = build_mtty_module(images.host.chroot, images.host.mtty_source, patch, progress=progress)
    assert module is not None
    info = module_info(module)
    if info.kernel_version != images.host.kernel_version:
        raise LabError(
            f"pre-merge: {module} is built for {info.kernel_version}, the hosts run "
            f"{images.host.kernel_version}"
        )
    result = PremergeResult(module=info, baseline=baseline)
    report_dir = report_dir.resolve()
    lab = make_lab(inventory)
    started = lab.up(progress)
    try:
        if baseline is None:
            deploy_mtty(inventory, pristine, progress=progress)
            result.baseline_run = _baseline_run(inventory_path, suite, report_dir, pytest_args, progress)
            result.baseline = result.baseline_run.summary
        try:
            result.deployed = deploy_mtty(inventory, module, progress=progress)
            result.patched_run = run_suite(
                "patched", inventory_path, suite, report_dir / "patched", pytest_args,
                progress=progress,
            )  # fmt: skip
        finally:
            deploy_mtty(inventory, pristine, progress=progress)
        if result.patched_run.summary.exists() and result.baseline is not None:
            report = gate(result.baseline, result.patched_run.summary, tolerance=limits)
            result.gate, result.gate_passed = report.render(), report.passed
    finally:
        if started and not keep_lab:
            lab.down(progress)
    (report_dir / "premerge.txt").write_text(result.render() + "\n")
    return result


def mtty_module_spec(module: Path, out: Path) -> Path:
    """Write the provision spec that puts ``module`` on the nested lab's hosts in place of the
    image's mtty.ko (``premerge --deploy``'s module case): the file replaces
    :data:`~mdevtest.lab.nested_image.MTTY_MODULE_PATH` (the rollback restores the image's from
    its backup) and is loaded there; its srcversion is verified."""
    from mdevtest.lab.nested_image import MTTY_MODULE_PATH

    out.write_text(
        f"# mtty {module_info(module).srcversion} in place of the image's (mdevtest premerge)\n"
        "artifacts:\n"
        f"  - {{kind: file, source: {json.dumps(str(module.resolve()))}, dest: {MTTY_MODULE_PATH}}}\n"
        "modules:\n"
        f"  - {{name: mtty, path: {MTTY_MODULE_PATH}}}\n"
    )
    return out


def premerge_deploy(
    inventory_path: Path,
    spec_path: Path,
    *,
    baseline: Path | None = None,
    suite: str = DEFAULT_SUITE,
    report_dir: Path = Path("reports/premerge"),
    pytest_args: Sequence[str] = (),
    tolerance: str | None = None,
    keep_lab: bool = False,
    progress: Progress = quiet,
) -> PremergeResult:
    """Judge a build on any lab: the baseline (the suite on what the hosts run now, unless
    ``baseline`` names its summary), ``mdevtest provision`` of the build in ``spec_path`` on
    every host, the suite again, the baseline gate, and the rollback whatever happened. A build
    that fails to provision or verify raises :class:`~mdevtest.errors.ProvisionError` (the hosts
    are rolled back by then)."""
    from mdevtest.inventory import load_inventory, load_provision_spec
    from mdevtest.lab import make_lab
    from mdevtest.provision import build_id, provision_hosts, rollback_hosts
    from mdevtest.report.baseline import Tolerance, gate

    inventory = load_inventory(inventory_path)
    spec = load_provision_spec(spec_path)
    nested = inventory.local_lab is not None and inventory.local_lab.flavor == "nested"
    limits = Tolerance.parse(
        tolerance if tolerance is not None else (NESTED_TOLERANCE if nested else "")
    )
    hosts = [h.name for h in inventory.hosts]
    result = PremergeResult(module=None, build=f"{spec_path} (id {build_id([spec] * len(hosts))})")
    result.baseline = baseline
    report_dir = report_dir.resolve()
    lab = make_lab(inventory) if inventory.local_lab is not None else None
    started = lab.up(progress) if lab is not None else False
    try:
        if baseline is None:
            result.baseline_run = _baseline_run(inventory_path, suite, report_dir, pytest_args, progress)
            result.baseline = result.baseline_run.summary
        provisioned = False
        try:
            provision_hosts(inventory, hosts, spec=spec, progress=progress)
            provisioned = True
            result.patched_run = run_suite(
                "patched", inventory_path, suite, report_dir / "patched", pytest_args,
                progress=progress,
            )  # fmt: skip
        finally:
            if provisioned:
                rollback_hosts(inventory, hosts, progress=progress)
        if result.patched_run.summary.exists() and result.baseline is not None:
            report = gate(result.baseline, result.patched_run.summary, tolerance=limits)
            result.gate, result.gate_passed = report.render(), report.passed
    finally:
        if started and lab is not None and not keep_lab:
            lab.down(progress)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "premerge.txt").write_text(result.render() + "\n")
    return result


__all__ = [
    "DEFAULT_SUITE",
    "Deployed",
    "PremergeResult",
    "SuiteRun",
    "deploy_mtty",
    "mtty_module_spec",
    "premerge",
    "premerge_deploy",
    "run_suite",
]
