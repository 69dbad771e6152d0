"""The ``mdevtest migrations`` table a pytest run ends with: one line per entry of ``summary.json``.

Columns are as wide as their longest cell, so a long test name is shown whole. A value the entry
lacks (a figure QEMU did not report, a test without a workload) reads ``-``. A migration whose vGPU
was the local lab's simulated parent is marked ``(sim)`` in the ``vgpu`` column, with one line
under the table saying what that means (:data:`SIM_NOTE`): such a run proves the framework, not a
driver. Under those come the red lines naming each required check a migration skipped.

The plugin's ``pytest_terminal_summary`` reads ``summary.json`` with
:func:`~mdevtest.report.summary.read_summary` and writes :func:`migrations_table`'s lines as they
come.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mdevtest.report.summary import CoverageEntry, SummaryEntry, VgpuEntry

SIM_MARK = "(sim)"
SIM_NOTE = f"{SIM_MARK}: the vGPU is the local lab's simulated parent; no real device state was migrated"
MISSING = "-"
_GAP = "  "

#: (header, right-aligned): figures right-aligned so their digits line up.
COLUMNS: tuple[tuple[str, bool], ...] = (
    ("pair", False),
    ("vgpu", False),
    ("workload", False),
    ("test", False),
    ("status", False),
    ("total ms", True),
    ("downtime ms", True),
    ("checks", True),
    ("verdict", False),
)


@dataclass(frozen=True)
class Line:
    """One line of the terminal summary; ``red`` for what needs attention."""

    text: str
    red: bool = False


def progress_line(message: str, elapsed_s: float) -> str:
    """A progress line (lab up, image builds, each migration as it ends): ``[mdevtest  41.7s]
    message``, with the time since the run started, right-aligned so the messages line up."""
    return f"[mdevtest {elapsed_s:6.1f}s] {message}"


def migrations_table(
    entries: Sequence[SummaryEntry | Mapping[str, Any]], prefixes: Sequence[str]
) -> list[Line]:
    """The table of ``entries`` (``summary.json``'s ``migrations``; a mapping is parsed as a
    :class:`~mdevtest.report.summary.SummaryEntry`), its ``(sim)`` note when a row has the mark,
    then a red line per required check a migration skipped. ``prefixes`` are the pair ids test
    ids may start their parameters with (see :func:`short_test_name`); each entry's own pair,
    with and without its vGPU type, is one too."""
    from mdevtest.report.summary import as_entry

    parsed = [as_entry(e) for e in entries]
    prefixes = [*prefixes, *(p for e in parsed for p in _own_prefixes(e))]
    rows = [_row(e, prefixes) for e in parsed]
    header = [name for name, _ in COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(COLUMNS))]
    lines = [Line(_format(r, widths)) for r in [header, *rows]]
    if any(is_simulated(e.vgpu) for e in parsed):
        lines.append(Line(SIM_NOTE))
    lines += [Line(text, red=True) for text in required_checks_skipped(parsed)]
    return lines


def required_checks_skipped(entries: Sequence[SummaryEntry]) -> list[str]:
    """``<test id> (<pair>): required check <name> skipped: <why>`` for every required check
    (``--mdevtest-require-checks``) a migration did not run."""
    lost = []
    for e in entries:
        if e.coverage is None:
            continue
        for name in e.coverage.missing_required:
            why = e.coverage.skipped.get(name, "?")
            lost.append(f"{e.test_id} ({e.pair}): required check {name} skipped: {why}")
    return lost


def short_test_name(test_id: str, prefixes: Sequence[str]) -> str:
    """``suites/x.py::test_y[host-a->host-b-GVTg_V5_4-multifd-2]`` -> ``test_y[multifd-2]``: the
    longest of ``prefixes`` (pair ids, with or without the vGPU type) the parameters start with
    goes, as pair and vGPU have their own columns."""
    name = test_id.rsplit("::", maxsplit=1)[-1]
    base, _, params = name.partition("[")
    params = params.removesuffix("]")
    for prefix in sorted({p for p in prefixes if p}, key=len, reverse=True):
        if params == prefix or params.startswith(f"{prefix}-"):
            params = params[len(prefix) :].lstrip("-")
            break
    return f"{base}[{params}]" if params else base


def vgpu_label(vgpu: VgpuEntry | Mapping[str, Any] | None) -> str:
    """A summary entry's vGPU type as test ids show it (``GVTg_V5_4``), ``GVTg_V5_4 (sim)`` when
    it was simulated; ``-`` without one."""
    vgpu = _as_vgpu(vgpu)
    label = _type_label(vgpu)
    if label is None:
        return MISSING
    return f"{label} {SIM_MARK}" if is_simulated(vgpu) else label


def _as_vgpu(vgpu: VgpuEntry | Mapping[str, Any] | None) -> VgpuEntry | None:
    from mdevtest.report.summary import VgpuEntry

    if vgpu is None or isinstance(vgpu, VgpuEntry):
        return vgpu
    return VgpuEntry.model_validate(dict(vgpu))


def _type_label(vgpu: VgpuEntry | None) -> str | None:
    """The vGPU type as the vendor names it in test ids; None without one."""
    from mdevtest.vendors import UnknownVendorError, get_profile

    if vgpu is None or not vgpu.type:
        return None
    try:
        return get_profile(vgpu.vendor).type_label(vgpu.type)
    except UnknownVendorError:  # a vendor this version does not know (another version's summary)
        return vgpu.type


def is_simulated(vgpu: VgpuEntry | None) -> bool:
    """Whether a summary entry's ``vgpu`` says the lab simulated it (``simulated: true``)."""
    return vgpu is not None and vgpu.simulated


def checks_ran(coverage: CoverageEntry | None) -> str:
    """``ran/all`` of a summary entry's checks (``7/9``: two were skipped); ``-`` without."""
    if coverage is None:
        return MISSING
    ran = len(coverage.ran)
    return f"{ran}/{ran + len(coverage.skipped)}"


def _own_prefixes(e: SummaryEntry) -> list[str]:
    """``host-a->host-b`` and ``host-a->host-b-GVTg_V5_4``: how the entry's test id may start."""
    if not e.pair:
        return []
    label = _type_label(e.vgpu)
    return [e.pair, f"{e.pair}-{label}"] if label else [e.pair]


def _row(e: SummaryEntry, prefixes: Sequence[str]) -> list[str]:
    test = short_test_name(e.test_id, prefixes)
    return [
        _cell(e.pair),
        vgpu_label(e.vgpu),
        _cell(e.workload),
        test or MISSING,
        _cell(e.status),
        _cell(e.total_time_ms),
        _cell(e.downtime_ms),
        checks_ran(e.coverage),
        _cell(e.verdict),
    ]


def _cell(value: object) -> str:
    """``-`` for a missing value (None, absent, empty); a float to one decimal, none if whole."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.1f}"
    return str(value)


def _format(cells: Sequence[str], widths: Sequence[int]) -> str:
    parts = [
        cell.rjust(width) if right else cell.ljust(width)
        for cell, width, (_, right) in zip(cells, widths, COLUMNS, strict=True)
    ]
    return _GAP.join(parts).rstrip()
