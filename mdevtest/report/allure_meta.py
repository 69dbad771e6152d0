"""What the Allure report needs besides the test results: environment, categories, executor, history.

Allure 2 reads these files from the results directory when it generates the report:

- ``environment.properties``: the *Environment* widget (host kernels, QEMU, driver versions, guest
  image, mdevtest's own version and commit), in Java properties format (:func:`write_environment`);
- ``categories.json``: the *Categories* tab, which sorts failures by what went wrong
  (:data:`CATEGORIES`, :func:`write_categories`);
- ``executor.json``: the *Executors* widget and the build labels of the trend graphs
  (:func:`write_executor`);
- ``history/``: the trends, carried over from the previous report (:func:`copy_history`).

A test's description ends with the check coverage of its migrations (:func:`coverage_description`),
so a reader sees which checks were skipped, and why, without opening an attachment.

Allure matches a category when the test's status is one of ``matchedStatuses`` and the whole
status message matches ``messageRegex`` and the whole trace ``traceRegex`` (Java regex, full match,
``DOTALL``). Allure 2.46 files a result under the first category it matches (older 2.x releases
under every one), so :data:`CATEGORIES` is ordered by how serious a failure is. The
message is what allure-pytest records: ``ExceptionInfo.exconly()``, e.g.
``mdevtest.errors.MigrationFailed: host-a/vm1 -> host-b/vm1: migration failed: ...``,
``AssertionError: host-a->host-b: downtime 612 ms > limit 500 ms`` or, for ``pytest.fail``,
``Failed: host-a->host-b: preflight failed: ...``. The status is by failure class
(:mod:`mdevtest.report.allure_steps`): a product failure ``failed``, an infrastructure one
``broken``, so the categories match both. Tests nothing matches keep Allure's defaults
("Product defects" for failed, "Test defects" for broken).

History ids: allure-pytest hashes the test's full name with every parameter not marked
``excluded``. A per-run value attached as a parameter (an mdev UUID, a timestamp, a port) would give
each run a new history id and break the trends, so attach such values with
:func:`history_safe_parameter`.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mdevtest.version import package_version, source_commit

if TYPE_CHECKING:
    import pytest

Status = Literal["failed", "broken", "passed", "skipped", "unknown"]

ENVIRONMENT = "environment.properties"
CATEGORIES_FILE = "categories.json"
EXECUTOR = "executor.json"
HISTORY = "history"


# -- environment.properties --------------------------------------------------------------------


def write_environment(results_dir: str | Path, facts: Mapping[str, str]) -> Path:
    """Write ``environment.properties`` (keys in the given order); return its path."""
    lines = [f"{_escape(k, key=True)}={_escape(str(v), key=False)}" for k, v in facts.items()]
    return _write(Path(results_dir) / ENVIRONMENT, "\n".join(lines) + "\n" if lines else "")


def _escape(text: str, *, key: bool) -> str:
    """Escape like ``java.util.Properties.store``: the file is read as ISO-8859-1, so every
    character outside printable ASCII becomes ``\\uXXXX`` (UTF-16 units)."""
    out = []
    for i, ch in enumerate(text):
        if ch == " ":
            out.append("\\ " if key or i == 0 else " ")
        elif ch in "\\=:#!":
            out.append("\\" + ch)
        elif ch in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[ch])
        elif " " < ch <= "~":
            out.append(ch)
        else:
            data = ch.encode("utf-16-be")  # two bytes, or four for a surrogate pair
            out += [f"\\u{data[j] << 8 | data[j + 1]:04X}" for j in range(0, len(data), 2)]
    return "".join(out)


class _HostFactsLike(Protocol):
    """What :class:`mdevtest.host.HostFacts` offers (read-only, so frozen dataclasses fit)."""

    @property
    def name(self) -> str: ...
    @property
    def kernel(self) -> str: ...
    @property
    def qemu_version(self) -> str: ...
    @property
    def accel(self) -> str: ...


def environment_facts(
    hosts: Iterable[_HostFactsLike],
    *,
    guest_image: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a run: per host ``<host>.kernel``, ``<host>.qemu``, ``<host>.accel``,
    then ``guest.image``, what measured it (``mdevtest.version``, and ``mdevtest.commit`` when
    running from a source checkout: ``abc1234`` or ``abc1234 dirty``; see :mod:`mdevtest.version`)
    and whatever ``extra`` adds (vendor driver versions, the inventory)."""
    facts: dict[str, str] = {}
    for h in sorted(hosts, key=lambda h: h.name):
        facts[f"{h.name}.kernel"] = h.kernel
        facts[f"{h.name}.qemu"] = h.qemu_version
        facts[f"{h.name}.accel"] = str(h.accel)
        build = getattr(h, "build", None)
        if build:
            facts[f"{h.name}.build"] = str(build)
    if guest_image is not None:
        facts["guest.image"] = guest_image
    facts["mdevtest.version"] = package_version()
    commit = source_commit()
    if commit is not None:
        facts["mdevtest.commit"] = commit
    facts.update(extra or {})
    return facts


#: What the environment says of a simulated vGPU (the terminal table's ``(sim)``).
SIMULATED_NOTE = "simulated: the local lab's parent, no real device state is migrated"


def vgpu_facts(pairs: Iterable[tuple[str, str, bool]]) -> dict[str, str]:
    """``<pair>.vgpu`` per ``(pair id, vGPU type, simulated)``: the type, and for a simulated
    vGPU that it is one (:data:`SIMULATED_NOTE`), so the dashboard says what a run proves."""
    return {
        f"{pair}.vgpu": f"{vgpu_type} ({SIMULATED_NOTE})" if simulated else vgpu_type
        for pair, vgpu_type, simulated in pairs
    }


# -- categories.json ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    """One Allure category. Regexes are Java regexes matched against the whole text (DOTALL)."""

    name: str
    matched_statuses: tuple[Status, ...]
    message_regex: str | None = None
    trace_regex: str | None = None
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "matchedStatuses": list(self.matched_statuses)}
        if self.message_regex is not None:
            doc["messageRegex"] = self.message_regex
        if self.trace_regex is not None:
            doc["traceRegex"] = self.trace_regex
        if self.description:
            doc["description"] = self.description
        return doc

    def matches(self, status: str, message: str | None, trace: str | None = None) -> bool:
        """Allure 2's rule (``CategoriesPlugin.matches``), for tests and terminal summaries."""
        if self.matched_statuses and status not in self.matched_statuses:
            return False
        for regex, text in ((self.message_regex, message), (self.trace_regex, trace)):
            if regex is not None and (
                text is None or re.fullmatch(regex, text, re.DOTALL | re.ASCII) is None
            ):
                return False
        return True


_FAIL: tuple[Status, ...] = ("failed", "broken")
_E = r"mdevtest\.errors\."  # how allure-pytest names our exceptions in a message
# Any line of a CheckFailed: the migrate fixture raises one naming every failed check, a line each
# ("downtime: ...", "graphics: ...", "device-state on host-b/vm1: ..."; an infrastructure error met
# while checking reads "<check>: <error>").
_CHECK = rf"{_E}CheckFailed: (?:.*\n)?"
# The first line of an assertion or pytest.fail() message.
_ASSERT = r"(?:AssertionError|Failed): [^\n]*"
_INFRA = "Infrastructure (SSH, QEMU, lab)"
_INFRA_TEXT = (
    r"(?:command failed \(rc=-?\d+\)|command timed out after |cannot reach |SSH to "
    r"|SSH session lost|authentication as |host key of |QMP [\w-]+: |QMP is not connected"
    r"|cannot talk QMP|cannot open SFTP|cannot open a channel)"
)
_STATE_TEXT = (
    r"(?:display mode changed: "
    r"|PCI \S+ (?:\([^)]*\) )?(?:appeared|disappeared|changed identity|config space changed)"
    r"|interrupt counter \S+ \(irq [^)]*\) went backwards"
    r"|interrupts stopped: "
    r"|interrupt \S+ \(irq [^)]*\) is gone)"
)

#: Our categories. Allure 2 (2.46) files a failure under the *first* category it matches, so the
#: order is a priority: a test with several failed checks lands under its most serious failure.
CATEGORIES: tuple[Category, ...] = (
    Category(
        "Migration failed",
        _FAIL,
        message_regex=(
            rf"(?:{_E}Migration(?:Failed|TimedOut|Blocked|Error): "
            r"|AssertionError: migration status (?!completed)"
            rf"|{_CHECK}(?:[\w-]+: )?the migration did not produce a running destination).*"
        ),
        description="QEMU reported failed, the migration timed out and was cancelled, was "
        "blocked (blocked-reasons), or the guest did not run on either side afterwards",
    ),
    Category(
        "Device-state mismatch",
        _FAIL,
        message_regex=(
            rf"(?:{_CHECK}(?:heartbeat: (?:heartbeat sequence numbers|only \d+ heartbeat)"
            r"|(?:ram-integrity|device-memory|dma-integrity|device-state) on \S+: "
            r"|guest check [\w-]+ says )"
            rf"|(?:{_CHECK}|{_ASSERT}){_STATE_TEXT}).*"
        ),
        description="the guest or the device did not continue where it stopped: heartbeat "
        "gaps, guest RAM, device memory or DMA contents, PCI config space, interrupts",
    ),
    Category(
        "Graphics corrupted",
        _FAIL,
        message_regex=(
            rf"(?:{_CHECK}(?:graphics: (?:capture #\d+ on |display frozen|black display"
            r"|destination display unlike)"
            r"|cannot decode a frame number|frame \d+: \d+ of \d+ pixels differ)"
            rf"|{_ASSERT}(?:display frozen at frame|cannot decode a frame number"
            r"|pixels differ from the expected frame)).*"
        ),
        description="the display after migration is not the frame the workload drew, is "
        "black or frozen, or unlike the source's",
    ),
    Category(
        "Downtime exceeded",
        _FAIL,
        message_regex=(
            rf"(?:{_CHECK}downtime: [^\n]*(?:downtime \S+ ms[^\n]*> limit"
            r"|no guest heartbeat arrived around the switchover)"
            rf"|{_ASSERT}\bdowntime \S+ ?ms[^\n]*(?:>|exceeds|over)[^\n]*\blimit\b).*"
        ),
        description="the migration completed, but the guest stopped longer than the limit "
        "(QEMU's downtime or the downtime observed from the guest's heartbeats)",
    ),
    Category(
        "Total time exceeded",
        _FAIL,
        message_regex=(
            rf"(?:{_CHECK}downtime: [^\n]*\btotal time \S+ ms > limit"
            rf"|{_ASSERT}\btotal time \S+ ?ms > limit).*"
        ),
        description="the migration completed, but took longer than the total-time limit",
    ),
    Category(
        "Errors in host or guest logs",
        _FAIL,
        message_regex=rf"{_CHECK}(?:host-logs: trouble in host logs: |guest-logs: ).*",
        description="dmesg or the QEMU log of a host (GPU hang, vendor, IOMMU/DMAR, vfio "
        "errors, call traces), or the guest console (oops, BUG, MDT-ERROR) reported trouble",
    ),
    Category(
        "Preflight failed",
        (*_FAIL, "skipped"),
        message_regex=rf"(?:Failed|Skipped|{_E}PreflightFailed): [^\n]*\bpreflight failed: .*",
        description="the host pair is not fit for the test (missing vGPU type, driver or "
        "QEMU feature); skipped with --mdevtest-preflight=skip",
    ),
    Category(
        "Known issues",
        ("skipped",),
        message_regex=r"XFAIL known issue [\w-]+: .*",
        description="every failed check is explained by a known issue outside the product "
        "(docs/reports.md lists them); reported as an expected failure, with its evidence",
    ),
    Category(
        # By failure class, not by a list of class names: an mdevtest error is reported broken
        # exactly when its failure class is infrastructure (allure_steps.allure_status_of).
        # Failed migrations and checks have categories of their own (above and by text below).
        _INFRA,
        ("broken",),
        message_regex=rf"{_E}(?!Migration(?:Failed|TimedOut|Blocked|Error): |CheckFailed: )\w+: .*",
        description="SSH, a remote command, QMP, QEMU start/stop, mdev creation or the local "
        "lab failed (also while a check ran): rerun or fix the lab before reading it as a "
        "product defect",
    ),
    Category(
        _INFRA,
        _FAIL,
        message_regex=(
            r"(?:Failed: (?:local lab: |cannot prepare the lab hosts: |boot on \S+: )"
            r"|(?:paramiko|invoke|qemu\.qmp)(?:\.\w+)+: "
            r"|socket\.\w+: |(?:Connection\w*|BrokenPipe|EOF|Timeout)Error: "
            rf"|{_CHECK}[\w-]+: [^\n]*{_INFRA_TEXT}"
            r").*"
        ),
        description="SSH, a remote command, QMP, QEMU start/stop, mdev creation or the local "
        "lab failed (also while a check ran): rerun or fix the lab before reading it as a "
        "product defect",
    ),
    Category(
        # Last among ours: a test that also failed in another way is filed under that one.
        "Required check skipped",
        _FAIL,
        message_regex=rf"{_CHECK}required check [\w-]+ was skipped: .*",
        description="a check the run requires (--mdevtest-require-checks) did not run for a "
        "migration: the guest lacks what it needs, the vendor has no such check, or the test "
        "chose other checks; the message says why",
    ),
    Category(
        # Same name: Allure merges both into one group. An unexpected exception (not one of
        # ours, not an assertion) whose traceback runs through the SSH/QEMU/lab layers.
        _INFRA,
        ("broken",),
        message_regex=r"(?!mdevtest\.errors\.|AssertionError|Failed: |Skipped: ).*",
        trace_regex=r".*\bmdevtest[/\\](?:remote|host|testbed|qemu[/\\]\w+|lab[/\\]\w+)\.py\b.*",
    ),
)


def write_categories(results_dir: str | Path, categories: Sequence[Category] = CATEGORIES) -> Path:
    """Write ``categories.json``; return its path."""
    doc = [c.to_json() for c in categories]
    return _write(Path(results_dir) / CATEGORIES_FILE, json.dumps(doc, indent=2) + "\n")


def categorize(
    status: str,
    message: str | None,
    trace: str | None = None,
    categories: Sequence[Category] = CATEGORIES,
) -> str | None:
    """The category Allure 2 files a result under: the first that matches. None means Allure's
    default ("Product defects" for failed, "Test defects" for broken, nothing otherwise)."""
    return next((c.name for c in categories if c.matches(status, message, trace)), None)


def matching_categories(
    status: str,
    message: str | None,
    trace: str | None = None,
    categories: Sequence[Category] = CATEGORIES,
) -> list[str]:
    """Every category a result matches, most serious first (several checks can fail at once)."""
    names: list[str] = []
    for c in categories:
        if c.name not in names and c.matches(status, message, trace):
            names.append(c.name)
    return names


# -- executor.json -----------------------------------------------------------------------------


def write_executor(
    results_dir: str | Path,
    name: str,
    build_name: str,
    url: str | None = None,
    *,
    build_order: int | None = None,
    report_url: str | None = None,
    executor_type: str = "mdevtest",
) -> Path:
    """Write ``executor.json``: who ran this (a CI job, a developer) and which build.

    ``build_name`` labels this run in the trend graphs; ``build_order`` (increasing per run)
    orders them; ``url`` links the build page, ``report_url`` the published report.
    """
    doc: dict[str, Any] = {"name": name, "type": executor_type, "buildName": build_name}
    if url is not None:
        doc["url"] = url
        doc["buildUrl"] = url
    if build_order is not None:
        doc["buildOrder"] = build_order
    if report_url is not None:
        doc["reportUrl"] = report_url
    return _write(Path(results_dir) / EXECUTOR, json.dumps(doc, indent=2) + "\n")


def write_executor_from_env(results_dir: str | Path, environ: Mapping[str, str] | None = None) -> Path:
    """:func:`write_executor` with what the environment says about the build.

    ``MDEVTEST_EXECUTOR``, ``MDEVTEST_BUILD_NAME``, ``MDEVTEST_BUILD_ORDER`` and
    ``MDEVTEST_BUILD_URL`` win; otherwise Jenkins (``BUILD_NUMBER``, ``BUILD_URL``), GitLab CI
    (``CI_PIPELINE_IID``, ``CI_PIPELINE_URL``) and GitHub Actions (``GITHUB_RUN_NUMBER``) are
    recognised; a developer's run is named after the host and the time.
    """
    env = os.environ if environ is None else environ
    if env.get("GITHUB_ACTIONS") == "true":
        ci, order, url = "GitHub Actions", env.get("GITHUB_RUN_NUMBER"), None
        if env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID"):
            server = env.get("GITHUB_SERVER_URL", "https://github.com")
            url = f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    elif env.get("GITLAB_CI") == "true":
        ci, order, url = "GitLab CI", env.get("CI_PIPELINE_IID"), env.get("CI_PIPELINE_URL")
    elif env.get("JENKINS_URL"):
        ci, order, url = "Jenkins", env.get("BUILD_NUMBER"), env.get("BUILD_URL")
    else:
        ci, order, url = f"mdevtest on {os.uname().nodename}", None, None
    order = env.get("MDEVTEST_BUILD_ORDER", order)
    build_order = int(order) if order and order.strip().isdigit() else None
    default_name = f"#{build_order}" if build_order is not None else time.strftime("%Y-%m-%d %H:%M")
    return write_executor(
        results_dir,
        env.get("MDEVTEST_EXECUTOR", ci),
        env.get("MDEVTEST_BUILD_NAME", default_name),
        env.get("MDEVTEST_BUILD_URL", url),
        build_order=build_order,
    )


# -- history -----------------------------------------------------------------------------------


def copy_history(previous_report_dir: str | Path, results_dir: str | Path) -> int:
    """Copy ``<previous report>/history/*`` into ``<results>/history/`` (Allure 2 trends).

    Returns the number of files copied: 0 when there is no previous report (a first run).
    """
    source = Path(previous_report_dir) / HISTORY
    if not source.is_dir():
        return 0
    target = Path(results_dir) / HISTORY
    target.mkdir(parents=True, exist_ok=True)
    copied = 0
    for item in sorted(source.iterdir()):
        if item.is_file():
            shutil.copyfile(item, target / item.name)
            copied += 1
    return copied


def history_safe_parameter(name: str, value: object) -> None:
    """Show a per-run value (mdev UUID, start time, port) as a test parameter without changing
    the test's history id, so its trend stays one line across runs.

    Same as ``allure.dynamic.parameter(name, value, excluded=True)``: use it for every value
    that differs between two runs of the same test; stable values (pair, vGPU type, workload,
    policy) stay ordinary parameters so that different configurations keep separate histories.
    No-op when Allure is not recording.
    """
    import allure

    allure.dynamic.parameter(name, value, excluded=True)


# -- description ---------------------------------------------------------------------------------


def allure_description(item: pytest.Item) -> str | None:
    """The description allure-pytest gives a test: its ``@allure.description`` text, else the
    test function's docstring."""
    marker = item.get_closest_marker("allure_description")
    if marker is not None and marker.args:
        return str(marker.args[0])
    doc = getattr(getattr(item, "function", None), "__doc__", None)
    return doc if isinstance(doc, str) else None


def coverage_description(base: str | None, lines: Sequence[str]) -> str:
    """``base`` (the test's description) followed by a *Check coverage* list, one line per
    migration (Allure renders descriptions as Markdown)."""
    parts = [inspect.cleandoc(base)] if base and base.strip() else []
    parts.append("**Check coverage**\n\n" + "\n".join(f"- {line}" for line in lines))
    return "\n\n".join(parts)


def describe_coverage(item: pytest.Item, lines: Sequence[str]) -> None:
    """Set the test's Allure description to its own followed by the check coverage ``lines``
    (allure-pytest keeps one description, so the test's is repeated). No-op when Allure is not
    recording."""
    import allure

    text = coverage_description(allure_description(item), lines)
    allure.dynamic.description(text)  # type: ignore[no-untyped-call]  # unannotated in allure


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
