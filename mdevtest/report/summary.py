"""``reports/summary.json``: one entry per migration, with how every figure was measured.

The file is typed: :class:`SummaryFile` (``schema_version``, ``generated_at``, ``inventory``,
``migrations``) holds one :class:`SummaryEntry` per migration. Both forbid keys they do not
declare, so a key a writer adds must be added to the model first (and ``SCHEMA_VERSION`` raised,
see below); the entry is validated when it is built (:func:`migration_entry`,
:meth:`SummaryWriter.add`), so a bad value fails the test that made it, not a reader later.
Readers (the terminal table, the baseline gate, ``mdevtest premerge``, ``mdevtest export``)
parse with :func:`read_summary` / :func:`parse_summary` and use attributes, not dict keys.

``schema_version`` is 4 (``backend`` and ``libvirt_mode``: who ran the guest and migrated it).
Version 3 added ``builds``: each host's kernel, QEMU and provisioned build. Version 2
added ``vgpu.kind``, ``vgpu.devices`` and ``vgpu.kernel_migration``, and the ``aborted`` status: a
migration that ended without a final QEMU status now has an entry; version 1 has the same shape
without them. A file without it (written before it existed) is version 0, of
version 1's shape; a file of a newer version is refused with a message naming both versions.
Adding a key, or changing a key's type or meaning, raises the version.

An entry is dumped with the keys it was built with and no others (``exclude_unset``): an entry
of the ``migrate`` fixture has every key but ``workload_run`` when the test set none; a file
written before a key existed simply lacks it, and the model reads that as None (or empty).

Every entry has ``coverage``: the checks that ran, those skipped with why, the run's required
checks (``--mdevtest-require-checks``) and those of them that did not run; ``checks`` has each
check's full result.

Each test process (each xdist worker) appends its entries to its own JSON-lines fragment under
``summary.d/``; the controlling process merges them into ``summary.json`` at the end of the
session, so parallel workers never write the same file.

:func:`export_csv` and :func:`export_influx` turn the entries into one line per migration
(``mdevtest export``).
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictFloat,
    StrictInt,
    ValidationError,
    WithJsonSchema,
)

from mdevtest.credentials import mask_data
from mdevtest.errors import MdevtestError
from mdevtest.migration import METHODS, MigrationResult

if TYPE_CHECKING:
    from mdevtest.checks.base import Coverage

FRAGMENTS = "summary.d"
SUMMARY = "summary.json"
#: The version this mdevtest writes; it reads this one and every older one.
SCHEMA_VERSION = 4
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class SummaryError(MdevtestError):
    """A summary file is missing, not JSON, not a summary, or of a newer schema version."""


# -- the model ------------------------------------------------------------------------------------

#: A measured figure: an integer or a float, kept as it was written (57 stays 57, not 57.0).
Number = Annotated[StrictInt | StrictFloat, WithJsonSchema({"type": "number"})]
#: A count QEMU reports (bytes, ms, passes): an integer, never a bool or a string.
Count = Annotated[int, Strict(), Field(ge=0)]
#: A UTC time as ``2026-11-26T10:11:54Z``.
UtcTime = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")]
#: QEMU's final migration status (``query-migrate``), or ``aborted``: the migration ended before
#: QEMU reported a final status mdevtest saw (QMP or SSH lost, the controller interrupted; the
#: entry's ``error`` says why, its timeline holds what was seen until then).
MigrationStatus = Literal["completed", "failed", "cancelled", "aborted"]
#: The test's outcome as pytest reported it; ``xfailed`` for a known issue, ``error`` when the
#: test has no report (it did not get to run its body).
Verdict = Literal["passed", "failed", "skipped", "xfailed", "error"]
FailureClass = Literal["infrastructure", "product"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CoverageEntry(_Model):
    """Which checks ran and which did not (``coverage``; see docs/checks.md)."""

    ran: list[str] = Field(default_factory=list, description="Checks that judged (passed or failed).")
    skipped: dict[str, str] = Field(
        default_factory=dict, description="Checks that did not judge, each with why."
    )
    required: list[str] = Field(
        default_factory=list, description="The run's required checks (``--mdevtest-require-checks``)."
    )
    missing_required: list[str] = Field(
        default_factory=list, description="Required checks that did not run (each also in ``skipped``)."
    )


class CheckEntry(_Model):
    """One check's result (``checks.<name>``)."""

    status: Literal["passed", "failed", "skipped"]
    values: dict[str, Any] = Field(description="What the check measured; free-form, each check its own.")
    method: str = Field(description="How the check measured it.")
    message: str = Field(default="", description="Why it failed or was skipped; empty when it passed.")
    seconds: Number = Field(
        default=0.0, description="Time the check took, before and after the migration together."
    )


class KnownIssueEntry(_Model):
    """The known issue that explains every failed check of the migration (``known_issue``)."""

    id: str
    title: str
    evidence: str
    explains: list[str] = Field(description="The failed checks it accounts for.")


class HostBuildEntry(_Model):
    """What one host of the pair ran: its kernel, its QEMU, the build ``mdevtest provision`` put
    on it (None: none recorded)."""

    kernel: str = Field(description="``uname -r``.")
    qemu: str = Field(description="The first line of ``qemu --version``.")
    provision: str | None = Field(
        default=None,
        description="The host's provisioning record, in one line (status, id, kernel, artifacts).",
    )


class VgpuEntry(_Model):
    """The pair's vGPU (``vgpu``)."""

    vendor: str
    type: str = Field(description="The mdev type as sysfs names it, e.g. ``i915-GVTg_V5_4``.")
    parent: str | None = Field(
        default=None,
        description="The parent device the mdevs were created on (the inventory's, when none "
        "was created).",
    )
    simulated: Annotated[bool, Strict()] = Field(
        default=False, description="The local lab's simulated parent: no real device state was migrated."
    )
    mdev_uuids: dict[Literal["source", "destination"], str | None] = Field(
        default_factory=dict,
        description="The mdev instance on each side; None where none was allocated; empty for a VF.",
    )
    kind: Literal["mdev", "vf"] | None = Field(
        default=None,
        description="``mdev`` (a mediated device) or ``vf`` (an SR-IOV VF bound to a vfio-pci "
        "variant driver); None in files of schema version 1 and older (mdev).",
    )
    devices: dict[Literal["source", "destination"], str | None] = Field(
        default_factory=dict,
        description="The VFIO device on each side: the mdev's UUID or the VF's PCI address.",
    )
    kernel_migration: dict[Literal["source", "destination"], str | None] = Field(
        default_factory=dict,
        description="What each side's kernel said of the device's migration support (VFIO "
        "debugfs, Linux 6.8+): ``yes: ...`` or ``unknown: ...`` with why; None for a simulated "
        "device (not asked).",
    )


class SummaryEntry(_Model):
    """One migration. Only ``test_id`` is required: the others are None (or empty) when an entry
    lacks them; an entry of the ``migrate`` fixture has every key except ``workload_run`` when the
    test set none. Figures are QEMU's unless ``methods`` says otherwise."""

    test_id: str = Field(
        description="The pytest node id of the test that made the migration (a ping-pong test "
        "makes several)."
    )
    pair: str | None = Field(
        default=None, description="The pair id the migration went over, ``host-a->host-b``."
    )
    source: str | None = Field(default=None, description="The source host's name.")
    destination: str | None = Field(default=None, description="The destination host's name.")
    uri: str | None = Field(default=None, description="The migration URI, e.g. ``tcp:10.0.0.2:4444``.")
    vgpu: VgpuEntry | None = Field(
        default=None, description="The pair's vGPU; None for a pair without one."
    )
    workload: str | None = Field(
        default=None,
        description="The test's ``workload`` marker, else what the guest image runs by itself.",
    )
    workload_run: dict[str, Any] | None = Field(
        default=None,
        description="A workload's figures across this migration (set by the test); free-form.",
    )
    guest_image: str | None = Field(
        default=None, description="The guest image, as the lab describes it."
    )
    qemu_version: dict[str, str] | None = Field(
        default=None, description="QEMU's version on each host of the pair, by host name."
    )
    builds: dict[str, HostBuildEntry] | None = Field(
        default=None, description="What each host of the pair ran, by host name."
    )
    accel: Literal["kvm", "tcg"] | None = Field(
        default=None, description="The source host's accelerator."
    )
    accel_reason: str | None = Field(
        default=None, description="Why the source host runs that accelerator."
    )
    dirty_tracking_mode: Literal["device", "off"] | None = Field(
        default=None, description=METHODS["dirty_tracking_mode"]
    )
    backend: Literal["qemu", "libvirt"] | None = Field(
        default=None,
        description="Who ran the guest and migrated it: ``qemu`` (mdevtest over QMP) or "
        "``libvirt`` (a libvirt domain migrated through libvirt's API; the figures are then "
        "libvirt's job statistics, see ``methods``).",
    )
    libvirt_mode: Literal["direct", "p2p"] | None = Field(
        default=None,
        description="With backend libvirt: ``direct`` (the controller drove both daemons, "
        "virDomainMigrate3) or ``p2p`` (the source's libvirtd drove it, virDomainMigrateToURI3 "
        "with VIR_MIGRATE_PEER2PEER); None otherwise.",
    )
    status: MigrationStatus | None = Field(default=None, description="QEMU's final migration status.")
    verdict: Verdict | None = Field(default=None, description="The test's outcome.")
    failure_class: FailureClass | None = Field(
        default=None,
        description="Who should look first at a failed migration; None when it did not fail.",
    )
    error: str | None = Field(
        default=None,
        description="The migration error the test got; None when the migration raised none.",
    )
    error_desc: str | None = Field(
        default=None, description="QEMU's ``error-desc`` of a failed migration."
    )
    known_issue: KnownIssueEntry | None = Field(
        default=None, description="The known issue explaining every failed check, if one does."
    )
    finished_at: UtcTime | None = Field(
        default=None, description="When the entry was made (the test's teardown), UTC."
    )
    total_time_ms: Count | None = Field(default=None, description=METHODS["total_time_ms"])
    setup_time_ms: Count | None = Field(default=None, description=METHODS["setup_time_ms"])
    downtime_ms: Count | None = Field(default=None, description=METHODS["downtime_ms"])
    observed_downtime_ms: Number | None = Field(
        default=None,
        description="The longest gap in the guest's UDP heartbeats around the switchover (ms); "
        "None without heartbeats.",
    )
    wall_time_ms: Number | None = Field(default=None, description=METHODS["wall_time_ms"])
    ram_transferred_bytes: Count | None = Field(
        default=None, description=METHODS["ram_transferred_bytes"]
    )
    ram_total_bytes: Count | None = Field(
        default=None,
        description="QEMU query-migrate 'ram.total' on the source (bytes): the guest's RAM.",
    )
    vfio_transferred_bytes: Count | None = Field(
        default=None, description=METHODS["vfio_transferred_bytes"]
    )
    passes: Count | None = Field(default=None, description=METHODS["passes"])
    checks: dict[str, CheckEntry] | None = Field(
        default=None, description="Each check's result, by check name."
    )
    checks_seconds: Number | None = Field(
        default=None, description="Time all checks took, before and after the migration (s)."
    )
    coverage: CoverageEntry | None = Field(
        default=None, description="Which checks ran, which were skipped and why."
    )
    methods: dict[str, str] | None = Field(
        default=None, description="How each figure is measured, by key."
    )

    def to_json(self) -> dict[str, Any]:
        """The entry as written: the keys it was built with, none added."""
        return self.model_dump(mode="python", exclude_unset=True)


class SummaryFile(_Model):
    """``summary.json``: the run's migrations."""

    schema_version: Annotated[int, Strict(), Field(ge=0, le=SCHEMA_VERSION)] = Field(
        default=0,
        description="The layout of this file; 0 (absent) is a file written before versions, of "
        "the same shape as version 1.",
    )
    generated_at: UtcTime | None = Field(default=None, description="When the file was merged, UTC.")
    inventory: str | None = Field(default=None, description="The inventory the run used.")
    migrations: list[SummaryEntry] = Field(description="One entry per migration of the run.")

    def to_json(self) -> dict[str, Any]:
        """The file as written: the keys it was built with, none added."""
        return self.model_dump(mode="python", exclude_unset=True)


def summary_json_schema() -> dict[str, Any]:
    """The JSON Schema of ``summary.json`` (what ``mdevtest schema summary`` prints)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **SummaryFile.model_json_schema(),
    }


def as_entry(entry: SummaryEntry | Mapping[str, Any]) -> SummaryEntry:
    """``entry`` as a :class:`SummaryEntry`, validating a mapping (pydantic's ValidationError)."""
    if isinstance(entry, SummaryEntry):
        return entry
    return SummaryEntry.model_validate(dict(entry))


# -- writing --------------------------------------------------------------------------------------


def migration_entry(
    test_id: str,
    result: MigrationResult,
    *,
    coverage: Coverage | None = None,
    extra: Mapping[str, Any] | None = None,
) -> SummaryEntry:
    """The summary entry of one migration (figures are QEMU's; see ``methods``); ``coverage``
    None means no check was run for it (every list empty). ``extra`` adds keys of
    :class:`SummaryEntry`; a key it does not declare, or a value of the wrong type, raises
    pydantic's ``ValidationError`` here."""
    entry: dict[str, Any] = {
        "test_id": test_id,
        "source": result.source,
        "destination": result.destination,
        "uri": result.uri,
        **result.figures(),
        "ram_total_bytes": result.ram_total_bytes,
        "error_desc": result.error_desc,
        "methods": dict(result.methods),
        "coverage": (
            coverage.to_json()
            if coverage is not None
            else {"ran": [], "skipped": {}, "required": [], "missing_required": []}
        ),
    }
    if extra:
        entry.update(extra)
    return SummaryEntry.model_validate(entry)


class SummaryWriter:
    """Appends entries for this process; :meth:`merge` builds ``summary.json``."""

    def __init__(self, report_dir: Path, worker: str = "main") -> None:
        self.report_dir = report_dir
        self.fragment = report_dir / FRAGMENTS / f"{worker}.jsonl"

    def reset(self) -> None:
        """Start a run: drop fragments and the summary of the previous run."""
        shutil.rmtree(self.report_dir / FRAGMENTS, ignore_errors=True)
        (self.report_dir / SUMMARY).unlink(missing_ok=True)

    def add(self, entry: SummaryEntry | Mapping[str, Any]) -> None:
        """Append one entry; a mapping is validated first (pydantic's ValidationError)."""
        data = as_entry(entry).to_json()
        self.fragment.parent.mkdir(parents=True, exist_ok=True)
        with self.fragment.open("a") as fh:
            fh.write(json.dumps(mask_data(data), sort_keys=True) + "\n")

    def merge(self, *, meta: Mapping[str, Any] | None = None) -> Path | None:
        """Merge every fragment into ``summary.json`` (atomically). None when nothing migrated.

        ``meta`` adds top-level keys of :class:`SummaryFile` (``inventory``)."""
        entries: list[SummaryEntry] = []
        for frag in sorted((self.report_dir / FRAGMENTS).glob("*.jsonl")):
            # json.loads, not pydantic's parser: a check's free-form values may hold NaN
            lines = [json.loads(line) for line in frag.read_text().splitlines() if line]
            entries += [SummaryEntry.model_validate(data) for data in lines]
        if not entries:
            return None
        entries.sort(key=lambda e: (e.test_id, e.finished_at or ""))
        doc = SummaryFile.model_validate(
            {
                "schema_version": SCHEMA_VERSION,
                "generated_at": time.strftime(TIME_FORMAT, time.gmtime()),
                **(meta or {}),
                "migrations": entries,
            }
        )
        path = self.report_dir / SUMMARY
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(mask_data(doc.to_json()), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path


# -- reading --------------------------------------------------------------------------------------


def read_summary(path: str | os.PathLike[str]) -> SummaryFile:
    """Read and validate a ``summary.json``; :class:`SummaryError` says what is wrong with it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SummaryError(
            f"summary {path} does not exist; pass the summary.json of a run "
            "(written under --mdevtest-report-dir)"
        ) from None
    except OSError as exc:
        raise SummaryError(f"cannot read summary {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SummaryError(
            f"summary {path} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    return parse_summary(doc, str(path))


def parse_summary(doc: object, where: str = "summary.json") -> SummaryFile:
    """Validate a loaded summary document (any version up to :data:`SCHEMA_VERSION`)."""
    if isinstance(doc, SummaryFile):
        return doc
    if not isinstance(doc, Mapping) or not isinstance(doc.get("migrations"), list):
        raise SummaryError(f"summary {where}: not an mdevtest summary (no 'migrations' list)")
    version = doc.get("schema_version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise SummaryError(
            f"summary {where}: schema_version {version} is newer than this mdevtest reads "
            f"(up to {SCHEMA_VERSION}); use the mdevtest that wrote it, or a newer one"
        )
    for i, entry in enumerate(doc["migrations"]):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("test_id"), str):
            raise SummaryError(f"summary {where}: migrations[{i}] has no test_id")
    try:
        return SummaryFile.model_validate(dict(doc))
    except ValidationError as exc:
        problems = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise SummaryError(f"summary {where}: {problems}{more}") from None


def _loc(loc: tuple[int | str, ...]) -> str:
    """``('migrations', 0, 'downtime_ms')`` -> ``migrations[0].downtime_ms``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


# -- export ---------------------------------------------------------------------------------------

#: The CSV columns of ``mdevtest export --format csv``, in order.
CSV_COLUMNS = (
    "test_id",
    "pair",
    "vgpu_type",
    "status",
    "verdict",
    "total_time_ms",
    "downtime_ms",
    "observed_downtime_ms",
    "ram_transferred_bytes",
    "vfio_transferred_bytes",
    "failure_class",
    "finished_at",
)
INFLUX_MEASUREMENT = "mdevtest_migration"
#: Integer fields of the line protocol (``57i``); ``observed_downtime_ms`` is always a float, so a
#: field keeps one type across points (InfluxDB refuses a point that changes it).
_INFLUX_INT_FIELDS = (
    "total_time_ms",
    "downtime_ms",
    "ram_transferred_bytes",
    "vfio_transferred_bytes",
)


def _csv_row(e: SummaryEntry) -> list[object]:
    return [
        e.test_id,
        e.pair,
        e.vgpu.type if e.vgpu else None,
        e.status,
        e.verdict,
        e.total_time_ms,
        e.downtime_ms,
        e.observed_downtime_ms,
        e.ram_transferred_bytes,
        e.vfio_transferred_bytes,
        e.failure_class,
        e.finished_at,
    ]


def export_csv(entries: Iterable[SummaryEntry]) -> str:
    """A header, then one row per migration (:data:`CSV_COLUMNS`); a missing value is empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for e in entries:
        writer.writerow(["" if v is None else v for v in _csv_row(e)])
    return out.getvalue()


def export_influx(entries: Iterable[SummaryEntry]) -> str:
    """One InfluxDB line-protocol point per migration; see :func:`influx_line`."""
    return "".join(f"{line}\n" for line in map(influx_line, entries) if line is not None)


def influx_line(e: SummaryEntry) -> str | None:
    """``mdevtest_migration,pair=..,status=..,test=..,vgpu=.. <fields> [<ns>]``.

    Tags (sorted by key, as InfluxDB prefers): ``pair``, ``status``, ``test``, ``vgpu`` (the mdev
    type), each left out when the entry has no value (a tag value cannot be empty). Fields: the
    figures present (integers as ``57i``, ``observed_downtime_ms`` as a float), then
    ``verdict`` and ``failure_class`` as strings. The timestamp is ``finished_at`` in ns, left
    out without one. None when the entry has no field at all (a point needs one).
    """
    tags = {
        "pair": e.pair,
        "status": e.status,
        "test": e.test_id,
        "vgpu": e.vgpu.type if e.vgpu else None,
    }
    fields: list[str] = []
    for name in _INFLUX_INT_FIELDS:
        value = getattr(e, name)
        if value is not None:
            fields.append(f"{name}={int(value)}i")
    if e.observed_downtime_ms is not None and math.isfinite(e.observed_downtime_ms):
        fields.append(f"observed_downtime_ms={float(e.observed_downtime_ms)!r}")
    for name, text in (("verdict", e.verdict), ("failure_class", e.failure_class)):
        if text is not None:
            fields.append(f'{name}="{influx_string(text)}"')
    if not fields:
        return None
    tagset = "".join(f",{k}={influx_tag(v)}" for k, v in sorted(tags.items()) if v)
    line = f"{INFLUX_MEASUREMENT}{tagset} {','.join(fields)}"
    if e.finished_at is not None:
        seconds = calendar.timegm(time.strptime(e.finished_at, TIME_FORMAT))
        line += f" {seconds * 1_000_000_000}"
    return line


def _one_line(text: str) -> str:
    """Line protocol has no newline in a value: CR and LF become spaces."""
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def influx_tag(text: str) -> str:
    """A tag key or value (or field key): comma, equals sign and space escaped with a backslash.

    A backslash is written as it is: InfluxDB's parser (1.x, 2.x, Telegraf) reads a backslash
    that does not precede one of those three as a literal one."""
    text = _one_line(text)
    return text.replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def influx_string(text: str) -> str:
    """A string field value, without its quotes: backslash and double quote escaped."""
    return _one_line(text).replace("\\", "\\\\").replace('"', '\\"')
