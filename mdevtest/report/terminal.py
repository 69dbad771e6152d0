"""The ``mdevtest migrations`` table a pytest run ends with: one line per entry of ``summary.json``.

Columns are as wide as their longest cell, so a long test name is shown whole. A value the entry
lacks (a figure QEMU did not report, a test without a workload) reads ``-``. A migration whose vGPU
was the local lab's simulated parent is marked ``(sim)`` in the ``vgpu`` column, with one line
under the table saying what that means (:data:`SIM_NOTE`): such a run proves the framework, not a
driver. Under those come the red lines naming each required check a migration skipped.

The plugin's ``pytest_terminal_summary`` writes :func:`migrations_table`'s lines as they come.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


def migrations_table(entries: Sequence[Mapping[str, Any]], prefixes: Sequence[str]) -> list[Line]:
    """The table of ``entries`` (``summary.json``'s ``migrations``), its ``(sim)`` note when a
    row has the mark, then a red line per required check a migration skipped. ``prefixes`` are
    the pair ids test ids may start their parameters with (see :func:`short_test_name`); each
    entry's own pair, with and without its vGPU type, is one too."""
    prefixes = [*prefixes, *(p for e in entries for p in _own_prefixes(e))]
    rows = [_row(e, prefixes) for e in entries]
    header = [name for name, _ in COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(COLUMNS))]
    lines = [Line(_format(r, widths)) for r in [header, *rows]]
    if any(is_simulated(e.get("vgpu")) for e in entries):
        lines.append(Line(SIM_NOTE))
    lines += [Line(text, red=True) for text in required_checks_skipped(entries)]
    return lines


def required_checks_skipped(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """``<test id> (<pair>): required check <name> skipped: <why>`` for every required check
    (``--mdevtest-require-checks``) a migration did not run."""
    lost = []
    for e in entries:
        coverage = e.get("coverage") or {}
        for name in coverage.get("missing_required") or ():
            why = (coverage.get("skipped") or {}).get(name, "?")
            lost.append(f"{e.get('test_id')} ({e.get('pair')}): required check {name} skipped: {why}")
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


def vgpu_label(vgpu: object) -> str:
    """A summary entry's vGPU type as test ids show it (``GVTg_V5_4``), ``GVTg_V5_4 (sim)`` when
    it was simulated; ``-`` without one."""
    label = _type_label(vgpu)
    if label is None:
        return MISSING
    return f"{label} {SIM_MARK}" if is_simulated(vgpu) else label


def _type_label(vgpu: object) -> str | None:
    """The vGPU type as the vendor names it in test ids; None without one."""
    from mdevtest.vendors import UnknownVendorError, get_profile

    if not isinstance(vgpu, Mapping) or not vgpu.get("type"):
        return None
    try:
        return get_profile(str(vgpu.get("vendor"))).type_label(str(vgpu["type"]))
    except UnknownVendorError:  # a vendor this version does not know (another version's summary)
        return str(vgpu["type"])


def is_simulated(vgpu: object) -> bool:
    """Whether a summary entry's ``vgpu`` says the lab simulated it (``simulated: true``)."""
    return isinstance(vgpu, Mapping) and vgpu.get("simulated") is True


def checks_ran(coverage: object) -> str:
    """``ran/all`` of a summary entry's checks (``7/9``: two were skipped); ``-`` without."""
    if not isinstance(coverage, Mapping):
        return MISSING
    ran = len(coverage.get("ran") or ())
    return f"{ran}/{ran + len(coverage.get('skipped') or {})}"


def _own_prefixes(e: Mapping[str, Any]) -> list[str]:
    """``host-a->host-b`` and ``host-a->host-b-GVTg_V5_4``: how the entry's test id may start."""
    pair = str(e.get("pair") or "")
    if not pair:
        return []
    label = _type_label(e.get("vgpu"))
    return [pair, f"{pair}-{label}"] if label else [pair]


def _row(e: Mapping[str, Any], prefixes: Sequence[str]) -> list[str]:
    test = short_test_name(str(e.get("test_id") or ""), prefixes)
    return [
        _cell(e.get("pair")),
        vgpu_label(e.get("vgpu")),
        _cell(e.get("workload")),
        test or MISSING,
        _cell(e.get("status")),
        _cell(e.get("total_time_ms")),
        _cell(e.get("downtime_ms")),
        checks_ran(e.get("coverage")),
        _cell(e.get("verdict")),
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
