"""What a reader of a run's reports relies on: which mdevtest made them (``--version``, Allure's
environment), the JUnit properties of each migration, and the terminal's migration table."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from mdevtest import version as mdv
from mdevtest.report.junit import junit_properties
from mdevtest.report.terminal import SIM_NOTE, migrations_table

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Each test sees its own lookups; the real ones are cached again afterwards."""
    mdv.source_commit.cache_clear()
    mdv.package_version.cache_clear()
    yield
    mdv.source_commit.cache_clear()
    mdv.package_version.cache_clear()


def _git(repo: Path, *args: str) -> str:
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
    proc = subprocess.run(
        ["git", "-C", str(repo), *ident, *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout with one commit, laid out like mdevtest's (the package at its top)."""
    repo = tmp_path / "src"
    (repo / "mdevtest").mkdir(parents=True)
    (repo / "mdevtest" / "__init__.py").write_text('"""x"""\n')
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


# -- version ------------------------------------------------------------------------------------


@needs_git
def test_commit_of_a_checkout_and_dirty_only_for_changed_tracked_files(checkout: Path) -> None:
    head = _git(checkout, "rev-parse", "--short", "HEAD")
    assert mdv._git_commit(checkout) == head
    (checkout / "notes.txt").write_text("untracked\n")  # reports/, scratch files: not a change
    assert mdv._git_commit(checkout) == head
    (checkout / "mdevtest" / "__init__.py").write_text('"""changed"""\n')
    assert mdv._git_commit(checkout) == f"{head} dirty"


@needs_git
def test_no_commit_for_a_package_inside_some_other_repository(checkout: Path) -> None:
    # a virtualenv's site-packages inside a project's checkout is not mdevtest's source
    site = checkout / ".venv" / "lib" / "site-packages"
    (site / "mdevtest").mkdir(parents=True)
    assert mdv._git_commit(site) is None
    assert mdv._git_commit(checkout.parent) is None  # no repository at all


def test_no_commit_without_git_and_the_version_alone(
    checkout: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(mdv, "SOURCE_ROOT", checkout)
    assert mdv.source_commit() is None
    assert mdv.version_string() == f"mdevtest {version('mdevtest')}"


def test_a_hanging_git_is_cut_off(
    checkout: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text("#!/bin/sh\nexec sleep 30\n")
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(mdv, "GIT_TIMEOUT_S", 0.2)
    started = time.monotonic()
    assert mdv._git_commit(checkout) is None
    assert time.monotonic() - started < 5


def test_version_string_names_version_and_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mdv, "package_version", lambda: "1.2.3")
    monkeypatch.setattr(mdv, "source_commit", lambda: "abc1234 dirty")
    assert mdv.version_string() == "mdevtest 1.2.3 (abc1234 dirty)"
    monkeypatch.setattr(mdv, "source_commit", lambda: "abc1234")
    assert mdv.version_string() == "mdevtest 1.2.3 (abc1234)"


def test_the_commit_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake(root: Path) -> str:
        calls.append(root)
        return "abc1234"

    monkeypatch.setattr(mdv, "_git_commit", fake)
    assert [mdv.source_commit() for _ in range(3)] == ["abc1234"] * 3
    assert calls == [mdv.SOURCE_ROOT]


def test_cli_version(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from mdevtest.cli import main

    monkeypatch.setattr(mdv, "source_commit", lambda: "abc1234 dirty")
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"mdevtest {version('mdevtest')} (abc1234 dirty)\n"


# -- JUnit properties ---------------------------------------------------------------------------

ENTRY: dict[str, Any] = {
    "test_id": "suites/b.py::test_live_migration[host-a->host-b-GVTg_V5_4]",
    "pair": "host-a->host-b",
    "downtime_ms": 57,
    "observed_downtime_ms": 61.5,
    "total_time_ms": 758,
    "failure_class": None,
    "status": "completed",
}


def test_one_migration_gives_plain_property_names_and_leaves_out_what_it_lacks() -> None:
    assert junit_properties([ENTRY]) == [
        ("pair", "host-a->host-b"),
        ("downtime_ms", 57),
        ("observed_downtime_ms", 61.5),
        ("total_time_ms", 758),
    ]


def test_several_migrations_are_numbered_in_order() -> None:
    back = {**ENTRY, "pair": "host-b->host-a", "downtime_ms": 70, "observed_downtime_ms": None}
    failed_early = {"pair": "host-a->host-b", "failure_class": "infrastructure"}
    props = junit_properties([ENTRY, back, failed_early])
    assert props == [
        ("m1.pair", "host-a->host-b"),
        ("m1.downtime_ms", 57),
        ("m1.observed_downtime_ms", 61.5),
        ("m1.total_time_ms", 758),
        ("m2.pair", "host-b->host-a"),
        ("m2.downtime_ms", 70),
        ("m2.total_time_ms", 758),
        ("m3.pair", "host-a->host-b"),
        ("m3.failure_class", "infrastructure"),
    ]
    assert junit_properties([]) == []


def test_properties_reach_the_junit_xml(pytester: pytest.Pytester) -> None:
    """What the migrate fixture appends is what pytest writes as <property> elements."""
    pytester.makepyfile(
        "from mdevtest.report.junit import junit_properties\n"
        "def test_two(request):\n"
        "    entries = [{'pair': 'a->b', 'downtime_ms': 5},\n"
        "               {'pair': 'b->a', 'failure_class': 'product'}]\n"
        "    request.node.user_properties.extend(junit_properties(entries))\n"
    )
    result = pytester.runpytest("--junitxml=junit.xml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    xml = (pytester.path / "junit.xml").read_text()
    expected = {"m1.pair": "a-&gt;b", "m1.downtime_ms": "5", "m2.failure_class": "product"}
    for name, value in expected.items():
        assert f'<property name="{name}" value="{value}" />' in xml
    assert 'name="m2.downtime_ms"' not in xml


# -- the terminal table -------------------------------------------------------------------------

LONG_ID = (
    "suites/test_desktop_guest.py::test_desktop_guest_ping_pong_under_a_long_name"
    "[host-a->host-b-GVTg_V5_4-glmark2-round-trips-3]"
)
SHORT_NAME = "test_desktop_guest_ping_pong_under_a_long_name[glmark2-round-trips-3]"
PREFIXES = ["host-a->host-b", "host-a->host-b-GVTg_V5_4"]
SIM_VGPU = {"vendor": "simulated", "type": "i915-GVTg_V5_4", "simulated": True}
REAL_VGPU = {"vendor": "mtty", "type": "mtty-2", "simulated": False}


def _entry(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "test_id": LONG_ID,
        "pair": "host-a->host-b",
        "vgpu": REAL_VGPU,
        "workload": "glmark2",
        "status": "completed",
        "total_time_ms": 758,
        "downtime_ms": 57,
        "coverage": {"ran": ["downtime", "heartbeat"], "skipped": {}},
        "verdict": "passed",
    }
    return {**base, **kw}


def _text(entries: list[dict[str, Any]]) -> list[str]:
    return [line.text for line in migrations_table(entries, PREFIXES)]


def test_the_table_is_as_wide_as_its_content_and_shows_long_names_whole() -> None:
    lines = _text([_entry(), _entry(test_id="s.py::test_x[host-a->host-b]", total_time_ms=12345)])
    header, long_row, short_row = lines
    assert SHORT_NAME in long_row  # no cut at 40 characters
    assert header.split() == ["pair", "vgpu", "workload", "test", "status", "total", "ms",
                              "downtime", "ms", "checks", "verdict"]  # fmt: skip
    # columns line up: every cell starts where its header does
    for row in (long_row, short_row):
        for word in ("completed", "passed"):
            col = row.index(word)
            assert row[col - 2 : col] == "  "
        assert row.index("completed") == header.index("status")
        assert row.index("passed") == header.index("verdict")
    # figures right-aligned under their header
    assert long_row[: header.index("total ms") + len("total ms")].endswith("  758")
    assert short_row[: header.index("total ms") + len("total ms")].endswith("12345")
    assert all(line == line.rstrip() for line in lines)
    assert SIM_NOTE not in lines


def test_missing_values_read_dash_not_none() -> None:
    row = _text([_entry(vgpu=None, workload=None, total_time_ms=None, downtime_ms=None,
                        coverage=None, verdict=None, status="failed")])[1]  # fmt: skip
    assert "None" not in row
    assert row.split() == ["host-a->host-b", "-", "-", SHORT_NAME, "failed", "-", "-", "-", "-"]


def test_the_test_name_leaves_out_the_entrys_own_pair_and_type_without_an_inventory() -> None:
    entry = _entry(test_id="suites/b.py::test_live_migration[host-b->host-a-mtty-2-multifd-2]",
                   pair="host-b->host-a")  # fmt: skip
    row = migrations_table([entry], prefixes=[])[1].text
    assert row.split()[:4] == ["host-b->host-a", "mtty-2", "glmark2", "test_live_migration[multifd-2]"]


def test_a_simulated_vgpu_is_marked_and_explained_once_under_the_table() -> None:
    lines = migrations_table([_entry(vgpu=SIM_VGPU), _entry(vgpu=SIM_VGPU), _entry()], PREFIXES)
    texts = [line.text for line in lines]
    assert "GVTg_V5_4 (sim)" in texts[1]
    assert "GVTg_V5_4 (sim)" in texts[2]
    assert "(sim)" not in texts[3]  # the real mtty one
    assert texts[4:] == [
        "(sim): the vGPU is the local lab's simulated parent; no real device state was migrated"
    ]
    assert not any(line.red for line in lines)


def test_required_checks_skipped_follow_in_red() -> None:
    coverage = {"ran": ["downtime"], "skipped": {"ram-integrity": "no synthetic workload"},
                "missing_required": ["ram-integrity"]}  # fmt: skip
    lines = migrations_table([_entry(vgpu=SIM_VGPU, coverage=coverage)], PREFIXES)
    assert [line.text for line in lines[2:]] == [
        SIM_NOTE,
        f"{LONG_ID} (host-a->host-b): required check ram-integrity skipped: no synthetic workload",
    ]
    assert [line.red for line in lines] == [False, False, False, True]
    assert "1/2" in lines[1].text


SIM_SUMMARY_TEST = """
from mdevtest.plugin.hooks import state_of
from mdevtest.report.summary import SummaryWriter

def test_entry(request):
    SummaryWriter(state_of(request.config).report_dir).add({
        "test_id": "s.py::test_a_test_name_well_beyond_forty_characters_long[host-a->host-b]",
        "pair": "host-a->host-b", "status": "completed", "verdict": "passed",
        "total_time_ms": 758, "downtime_ms": None, "workload": None,
        "vgpu": {"vendor": "simulated", "type": "i915-GVTg_V5_4", "simulated": True},
    })
"""


def test_the_run_ends_with_the_sized_table_and_the_sim_note(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SIM_SUMMARY_TEST)
    result = pytester.runpytest(
        "--mdevtest-report-dir", str(pytester.path / "reports"), "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*mdevtest migrations*",
            "pair  *vgpu  *workload  *test  *status  *total ms  *downtime ms  *checks  *verdict",
            "host-a->host-b  *GVTg_V5_4 (sim)  *-  *test_a_test_name_well_beyond_forty_characters_long"
            "  *completed  *758  *-  *-  *passed",
            SIM_NOTE,
            "summary: *summary.json",
        ]
    )
