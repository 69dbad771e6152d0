"""summary.json is typed: what the migrate fixture writes is exactly the model, byte for byte
as before; readers refuse what is not a summary; the checked-in schemas match the code; the
export formats (CSV, InfluxDB line protocol) escape what they must."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from mdevtest.checks.base import CheckResult, coverage_of
from mdevtest.checks.known_issues import KnownIssue
from mdevtest.cli import EXIT_OK, EXIT_USAGE, main
from mdevtest.migration import METHODS, MigrationResult
from mdevtest.migration_run import MigrationOutcome, summary_extra
from mdevtest.premerge import SuiteRun
from mdevtest.report.baseline import METRICS, BaselineError, diff, load_summary
from mdevtest.report.junit import junit_properties
from mdevtest.report.summary import (
    CSV_COLUMNS,
    SCHEMA_VERSION,
    SummaryEntry,
    SummaryError,
    SummaryWriter,
    export_csv,
    export_influx,
    influx_line,
    migration_entry,
    parse_summary,
    read_summary,
)
from mdevtest.report.terminal import migrations_table

REPO = Path(__file__).resolve().parents[2]
TEST_ID = "suites/test_migration_basic.py::test_live_migration[host-a->host-b-mtty-2]"
FINISHED = "2026-11-26T10:11:54Z"
FINISHED_NS = int(datetime(2026, 11, 26, 10, 11, 54, tzinfo=UTC).timestamp()) * 1_000_000_000


def result(**kw: Any) -> MigrationResult:
    figures: dict[str, Any] = {
        "source": "host-a",
        "destination": "host-b",
        "uri": "tcp:198.18.1.12:4444",
        "status": "completed",
        "total_time_ms": 764,
        "setup_time_ms": 1,
        "downtime_ms": 59,
        "ram_transferred_bytes": 122129141,
        "ram_total_bytes": 286072832,
        "vfio_transferred_bytes": 4096,
        "passes": 3,
        "wall_time_ms": 787.14,
        "error_desc": None,
        "final_stats": {},
        "events": (),
        "timeline": (),
    }
    return MigrationResult(**{**figures, **kw})


class FakeLab:
    """What ``summary_extra`` asks of the Testbed: host facts and the guest image."""

    def facts(self, host: str) -> Any:
        return SimpleNamespace(
            name=host,
            kernel="6.12.117+deb13-amd64",
            accel="tcg",
            accel_reason="/dev/kvm missing",
            qemu_version=f"8.2.2 on {host}",
            dirty_tracking=SimpleNamespace(mode="off"),
            build=None,
        )

    def image(self) -> Any:
        return SimpleNamespace(description="qcow2 disk guest.qcow2 (bios)", workload="mtty")


def fixture_outcome() -> MigrationOutcome:
    """A migration as the migrate fixture holds it at teardown: every optional part present."""
    pair = SimpleNamespace(
        id="host-a->host-b",
        source="host-a",
        destination="host-b",
        vgpu=SimpleNamespace(vendor="mtty", type="mtty-2", parent="mtty", is_vf=False),
        backend="libvirt",
        libvirt_peer_uri="qemu+tcp://198.18.1.12/system",
    )
    vgpu = SimpleNamespace(
        instance=SimpleNamespace(uuid="83b8f4f2", parent="mtty"),
        simulated=False,
        kernel_migration="unknown: no /sys/kernel/debug/vfio",
    )
    outcome = MigrationOutcome(pair, None, None, result())  # type: ignore[arg-type]
    heartbeat = CheckResult("heartbeat", "failed", {"late": 3}, "udp", "late heartbeats", 1.25)
    outcome.check_results = {
        "downtime": CheckResult("downtime", "passed", {"observed_downtime_ms": 61.5}, "udp"),
        "heartbeat": heartbeat,
        "ram-integrity": CheckResult("ram-integrity", "skipped", {}, "probe", "no workload"),
    }
    outcome.checks = {name: r.to_json() for name, r in outcome.check_results.items()}
    outcome.checks_seconds = 2.34567
    outcome.vgpus = {"source": vgpu, "destination": None}  # type: ignore[dict-item]
    outcome.known_issue = KnownIssue("qemu-tcg-vfio-intx", "INTx", "Disabling IRQ #10", ("heartbeat",))
    outcome.error = None
    outcome.failure_class = None
    outcome.workload_run = {"result": {"fps": 59.9}, "samples": [1, 2]}
    outcome.required_checks = ("ram-integrity",)
    return outcome


def fixture_entry() -> tuple[SummaryEntry, dict[str, Any]]:
    """The entry as the migrate fixture builds it, and the dict the code before the model built."""
    outcome = fixture_outcome()
    extra = {**summary_extra(FakeLab(), outcome, "xfailed"), "workload": "mtty"}  # type: ignore[arg-type]
    extra["workload_run"] = outcome.workload_run
    extra["finished_at"] = FINISHED
    coverage = coverage_of(outcome.check_results, required=outcome.required_checks)
    assert outcome.result is not None
    res = outcome.result
    before = {  # migration_entry() before the model, verbatim
        "test_id": TEST_ID,
        "source": res.source,
        "destination": res.destination,
        "uri": res.uri,
        **res.figures(),
        "ram_total_bytes": res.ram_total_bytes,
        "error_desc": res.error_desc,
        "methods": dict(METHODS),
        "coverage": coverage.to_json(),
        **extra,
    }
    return migration_entry(TEST_ID, res, coverage=coverage, extra=extra), before


# -- the model is what is written -------------------------------------------------------------------


def test_the_fixture_writes_every_key_of_the_model_and_no_other() -> None:
    entry, _ = fixture_entry()
    assert set(entry.to_json()) == set(SummaryEntry.model_fields)


def test_an_entry_is_byte_for_byte_what_was_written_before_the_model() -> None:
    entry, before = fixture_entry()
    assert json.dumps(entry.to_json(), sort_keys=True) == json.dumps(before, sort_keys=True)
    written = entry.to_json()
    assert written["downtime_ms"] == 59
    assert isinstance(written["downtime_ms"], int)  # not 59.0
    assert written["observed_downtime_ms"] == 61.5
    assert written["checks_seconds"] == 2.346
    assert written["dirty_tracking_mode"] == "off"
    assert written["vgpu"] == {
        "vendor": "mtty",
        "type": "mtty-2",
        "parent": "mtty",
        "simulated": False,
        "mdev_uuids": {"source": "83b8f4f2", "destination": None},
        # schema version 2: mdev or VF, and the device ids whatever the kind
        "kind": "mdev",
        "devices": {"source": "83b8f4f2", "destination": None},
        "kernel_migration": {"source": "unknown: no /sys/kernel/debug/vfio", "destination": None},
    }


def test_an_entry_without_extra_keeps_its_keys_and_adds_none() -> None:
    entry = migration_entry("t.py::test_a", result())
    assert set(entry.to_json()) == {
        "test_id", "source", "destination", "uri", "status", "total_time_ms", "setup_time_ms",
        "downtime_ms", "ram_transferred_bytes", "vfio_transferred_bytes", "passes",
        "wall_time_ms", "ram_total_bytes", "error_desc", "methods", "coverage",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"downtme_ms": 5}, "downtme_ms"),  # a key the model does not have
        ({"verdict": "green"}, "verdict"),
        ({"observed_downtime_ms": "61.5"}, "observed_downtime_ms"),
        ({"finished_at": "yesterday"}, "finished_at"),
        ({"vgpu": {"vendor": "mtty"}}, "vgpu.type"),
    ],
)
def test_a_bad_entry_fails_where_it_is_made(extra: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        migration_entry("t.py::test_a", result(), extra=extra)
    assert where in str(info.value)


def test_a_bool_or_a_string_is_not_a_figure() -> None:
    with pytest.raises(ValidationError, match="downtime_ms"):
        migration_entry("t", result(downtime_ms=True))
    with pytest.raises(ValidationError, match="passes"):
        SummaryWriter(Path("/nonexistent")).add({"test_id": "t", "passes": "3"})


def test_the_summary_file_has_a_schema_version_and_reads_back(tmp_path: Path) -> None:
    entry, before = fixture_entry()
    writer = SummaryWriter(tmp_path)
    writer.add(entry)
    writer.add({"test_id": "a.py::test_first", "status": "failed", "verdict": "failed"})
    path = writer.merge(meta={"inventory": "inventory/local-lab.yaml"})
    assert path is not None
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION == 4
    assert doc["inventory"] == "inventory/local-lab.yaml"
    assert [e["test_id"] for e in doc["migrations"]] == ["a.py::test_first", TEST_ID]
    assert doc["migrations"][0] == {"test_id": "a.py::test_first", "status": "failed",
                                    "verdict": "failed"}  # fmt: skip
    assert doc["migrations"][1] == json.loads(json.dumps(before))
    summary = read_summary(path)
    assert summary.migrations[1] == entry
    assert summary.migrations[1].known_issue is not None
    assert summary.migrations[1].known_issue.id == "qemu-tcg-vfio-intx"


def test_free_form_values_survive_the_merge_as_json_dumps_writes_them(tmp_path: Path) -> None:
    writer = SummaryWriter(tmp_path)
    values = {"similarity": [float("nan"), 0.5], "7": {"nested": (1, 2)}}
    writer.add({"test_id": "t", "checks": {"graphics": {"status": "passed", "values": values,
                                                        "method": "m"}}})  # fmt: skip
    path = writer.merge()
    assert path is not None
    assert "NaN" in path.read_text()  # as json.dumps writes it; read back as well
    check = read_summary(path).migrations[0].checks
    assert check is not None
    assert check["graphics"].values["7"] == {"nested": [1, 2]}


def test_an_unknown_top_level_key_is_refused_at_merge(tmp_path: Path) -> None:
    writer = SummaryWriter(tmp_path)
    writer.add({"test_id": "t"})
    with pytest.raises(ValidationError, match="invetory"):
        writer.merge(meta={"invetory": "x"})


# -- reading ---------------------------------------------------------------------------------------


def test_a_file_without_schema_version_is_version_0_of_the_same_shape(tmp_path: Path) -> None:
    old = tmp_path / "summary.json"
    old.write_text(json.dumps({"generated_at": FINISHED, "migrations": [
        {"test_id": "t", "status": "completed", "downtime_ms": 57, "pair": "a->b"}]}))  # fmt: skip
    summary = read_summary(old)
    assert summary.schema_version == 0
    assert summary.migrations[0].downtime_ms == 57
    assert summary.migrations[0].coverage is None


def test_readers_say_what_is_wrong_with_a_file(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"schema_version": 5, "migrations": []}))
    with pytest.raises(SummaryError, match="schema_version 5 is newer than this mdevtest reads"):
        read_summary(path)
    path.write_text(json.dumps({"migrations": [{"test_id": "t"}, {"test_id": "u", "downtime": 5}]}))
    with pytest.raises(SummaryError, match=r"migrations\[1\]\.downtime: Extra inputs"):
        read_summary(path)
    with pytest.raises(SummaryError, match="not an mdevtest summary"):
        parse_summary([], "x")
    with pytest.raises(SummaryError, match="does not exist"):
        read_summary(tmp_path / "nope.json")


def test_the_baseline_gate_refuses_a_summary_that_is_not_one() -> None:
    good = {"migrations": [{"test_id": "t", "status": "completed", "downtime_ms": 5}]}
    bad = {"migrations": [{"test_id": "t", "status": "done"}]}
    assert diff(good, good).passed
    with pytest.raises(BaselineError, match=r"summary after: migrations\[0\]\.status"):
        diff(good, bad)


def test_the_baseline_gate_compares_fields_the_model_has() -> None:
    assert {m.field for m in METRICS} <= set(SummaryEntry.model_fields)


def test_load_summary_keeps_the_document(tmp_path: Path) -> None:
    entry, _ = fixture_entry()
    writer = SummaryWriter(tmp_path)
    writer.add(entry)
    path = writer.merge()
    assert path is not None
    assert load_summary(path) == json.loads(path.read_text())


def test_the_table_and_junit_read_parsed_entries() -> None:
    entry, _ = fixture_entry()
    lines = migrations_table([entry], [])
    assert lines[1].text.split()[:6] == ["host-a->host-b", "mtty-2", "mtty", "test_live_migration",
                                         "completed", "764"]  # fmt: skip
    assert lines[1].text.split()[-2:] == ["2/3", "xfailed"]
    assert junit_properties([entry]) == [
        ("pair", "host-a->host-b"),
        ("downtime_ms", 59),
        ("observed_downtime_ms", 61.5),
        ("total_time_ms", 764),
    ]


def test_premerge_reads_failures_and_known_issues_from_the_summary(tmp_path: Path) -> None:
    entry, _ = fixture_entry()
    writer = SummaryWriter(tmp_path)
    writer.add(entry)
    writer.add({"test_id": "s.py::test_b", "pair": "b->a", "verdict": "failed", "status": "failed",
                "error": "migration failed: boom"})  # fmt: skip
    writer.merge()
    run = SuiteRun("patched", 1, tmp_path, 1.0)
    assert run.failures() == [
        "s.py::test_b [b->a]: migration failed: boom",
        f"{TEST_ID} [host-a->host-b]: late heartbeats",
    ]
    assert run.known_issues() == [
        f"{TEST_ID} [host-a->host-b]: known issue qemu-tcg-vfio-intx (Disabling IRQ #10)"
    ]
    assert SuiteRun("x", 2, tmp_path / "none", 1.0).failures() == [
        "x: no summary.json (pytest exited 2)"
    ]


# -- the checked-in schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["summary", "inventory"])
def test_the_checked_in_schema_is_what_the_code_produces(
    which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", which]) == EXIT_OK
    produced = json.loads(capsys.readouterr().out)
    path = REPO / "docs" / "schema" / f"{which}.schema.json"
    checked_in = json.loads(path.read_text()) if path.exists() else None
    assert checked_in == produced, (
        f"{path.relative_to(REPO)} differs from the model; regenerate it with "
        f"`.venv/bin/mdevtest schema {which} > docs/schema/{which}.schema.json` and commit it"
    )


def test_the_summary_schema_forbids_unknown_keys(capsys: pytest.CaptureFixture[str]) -> None:
    main(["schema", "summary"])
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False
    entry = schema["$defs"]["SummaryEntry"]
    assert entry["additionalProperties"] is False
    assert entry["required"] == ["test_id"]
    assert entry["properties"]["downtime_ms"]["description"] == METHODS["downtime_ms"]


# -- export ----------------------------------------------------------------------------------------


def test_csv_has_a_header_and_a_row_per_migration_with_empty_cells_for_missing_values() -> None:
    entry, _ = fixture_entry()
    odd = SummaryEntry.model_validate({"test_id": 's.py::test_x[a,b "c"]', "status": "failed"})
    text = export_csv([entry, odd])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(CSV_COLUMNS)
    assert rows[1] == [TEST_ID, "host-a->host-b", "mtty-2", "completed", "xfailed", "764", "59",
                       "61.5", "122129141", "4096", "", FINISHED]  # fmt: skip
    assert rows[2] == ['s.py::test_x[a,b "c"]', "", "", "failed", "", "", "", "", "", "", "", ""]
    assert text.splitlines()[2].startswith('"s.py::test_x[a,b ""c""]",')
    assert len(rows) == 3


def test_influx_line_has_sorted_tags_typed_fields_and_a_ns_timestamp() -> None:
    entry, _ = fixture_entry()
    assert influx_line(entry) == (
        "mdevtest_migration,pair=host-a->host-b,status=completed,"
        f"test={TEST_ID},vgpu=mtty-2 "
        "total_time_ms=764i,downtime_ms=59i,ram_transferred_bytes=122129141i,"
        'vfio_transferred_bytes=4096i,observed_downtime_ms=61.5,verdict="xfailed" '
        f"{FINISHED_NS}"
    )


def test_influx_escapes_tag_values_and_string_fields() -> None:
    entry = SummaryEntry.model_validate(
        {
            "test_id": r"s.py::test_x[a b,c=d\e]",
            "pair": "a->b",
            "vgpu": {"vendor": "acme", "type": "acme 1,=x"},
            "downtime_ms": 7,
            "observed_downtime_ms": 12,
            "verdict": "failed",
            "failure_class": "product",
            "error": 'not exported "at all"',
        }
    )
    line = influx_line(entry)
    assert line == (
        r"mdevtest_migration,pair=a->b,test=s.py::test_x[a\ b\,c\=d\e],vgpu=acme\ 1\,\=x "
        'downtime_ms=7i,observed_downtime_ms=12.0,verdict="failed",failure_class="product"'
    )  # no status: no tag; no finished_at: no timestamp (InfluxDB stamps it)
    from mdevtest.report.summary import influx_string, influx_tag

    assert influx_string('say "hi" \\ bye') == r"say \"hi\" \\ bye"
    assert influx_tag("two\nlines") == r"two\ lines"  # no newline inside a point


def test_an_entry_without_any_field_is_no_point() -> None:
    entry = SummaryEntry.model_validate({"test_id": "t", "status": "failed"})
    assert influx_line(entry) is None
    assert export_influx([entry]) == ""


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry, _ = fixture_entry()
    writer = SummaryWriter(tmp_path)
    writer.add(entry)
    path = writer.merge()
    assert main(["export", "--format", "influx", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("mdevtest_migration,pair=host-a->host-b,")
    assert out.endswith(f" {FINISHED_NS}\n")
    assert main(["export", "--format", "csv", str(path)]) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert main(["export", "--format", "csv", str(tmp_path / "missing.json")]) == EXIT_USAGE
    assert "missing.json does not exist" in capsys.readouterr().err
