"""Reports people read: Allure colours by failure class, a step per check, the figures in the
migrate step's title, stable parameters, "simulated" where a reader looks, one terminal line per
migration.

The Allure side runs tests in a pytester subprocess with allure-pytest recording, through the same
helpers the migrate fixture uses, and reads the ``*-result.json`` files Allure's generator reads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mdevtest.checks.base import CheckResult
from mdevtest.checks.standard import standard_checks
from mdevtest.migration import MigrationResult
from mdevtest.migration_run import MigrationOutcome
from mdevtest.report.allure_meta import SIMULATED_NOTE, vgpu_facts
from mdevtest.report.headline import MigrationHeadline, duration, milliseconds
from mdevtest.report.terminal import progress_line

REPO = Path(__file__).resolve().parents[2]
LOCAL_LAB = REPO / "inventory" / "local-lab.yaml"
NESTED_LAB = REPO / "inventory" / "nested-mtty.yaml"


def allure_results(results: Path) -> dict[str, dict[str, Any]]:
    """The ``*-result.json`` files of a run, by the test's function name (titles may differ)."""
    out = {}
    for path in results.glob("*-result.json"):
        doc = json.loads(path.read_text())
        out[doc["fullName"].split("#")[-1] + _param_id(doc["name"])] = doc
    return out


def _param_id(name: str) -> str:
    found = re.search(r"\[.*\]", name)
    return found.group(0) if found else ""


def run_allure(pytester: pytest.Pytester, *args: str, **outcomes: int) -> dict[str, dict[str, Any]]:
    results = pytester.path / "allure-results"
    run = pytester.runpytest_subprocess(f"--alluredir={results}", "-p", "no:cacheprovider", *args)
    run.assert_outcomes(**outcomes)
    return allure_results(results)


def steps(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every step of a result, nested ones too, by name."""
    out: dict[str, dict[str, Any]] = {}
    todo = list(doc.get("steps", []))
    while todo:
        step = todo.pop(0)
        out[step["name"]] = step
        todo += step.get("steps", [])
    return out


# -- failed (product) or broken (infrastructure) -------------------------------------------------

STATUS_TESTS = """
import pytest

from mdevtest import errors
from mdevtest.checks.base import CheckResult
from mdevtest.report.allure_steps import check_step, step


def test_product_migration_failure_in_a_step():
    with step("migrate host-a->host-b over tcp:198.18.1.12:4444"):
        raise errors.MigrationFailed("host-a/vm1 -> host-b/vm1: migration failed: mtty: bad state")


def test_infrastructure_migration_failure_in_a_step():
    exc = errors.MigrationFailed("host-a/vm1 -> host-b/vm1: migration failed: Connection reset")
    exc.failure_class = "infrastructure"
    with step("migrate host-a->host-b"):
        raise exc


def test_ssh_error_in_a_step():
    with step("shut down source on host-a"):
        raise errors.ConnectFailed("host-a", "cannot reach 198.18.0.11:22: timed out")


def test_checks_as_steps():
    results = [
        CheckResult("downtime", "passed", {"downtime_ms": 45, "observed_downtime_ms": 61.5,
                                           "limit_ms": 500, "samples": [1, 2]}, "QEMU's downtime"),
        CheckResult("heartbeat", "failed", {"phase": "after", "infrastructure": False, "gap": 3},
                    "serial heartbeat", "heartbeat: heartbeat sequence numbers missing: 101..103"),
        CheckResult("host-logs", "failed", {"phase": "after", "infrastructure": True},
                    "dmesg", "host-logs: host-b: command timed out after 30 s: dmesg"),
        CheckResult("ram-integrity", "skipped", {}, "guest RAM", "no synthetic workload"),
    ]
    with step("verify host-a->host-b"):
        for result in results:
            check_step(result)
    raise errors.CheckFailed("heartbeat: heartbeat sequence numbers missing: 101..103")


def test_renamed_after_the_step_ended():
    with step("migrate host-a->host-b over tcp:198.18.1.12:4444", {"uri": "tcp:198.18.1.12:4444"}) as s:
        pass
    s.retitle("migrate host-a->host-b: downtime 45 ms (observed 61.5 ms), total 2.8 s")


def test_a_bug_stays_broken():
    with step("snapshot before migration"):
        {}["missing"]
"""


@pytest.fixture(scope="module")
def status_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    import subprocess
    import sys

    base = tmp_path_factory.mktemp("statuses")
    (base / "test_statuses.py").write_text(STATUS_TESTS)
    results = base / "allure-results"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--alluredir={results}",
         "--rootdir", str(base), str(base / "test_statuses.py")],
        cwd=base, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    return allure_results(results)


def test_a_product_failure_is_red_and_so_is_its_step(status_run: dict[str, dict[str, Any]]) -> None:
    doc = status_run["test_product_migration_failure_in_a_step"]
    assert doc["status"] == "failed"
    (migrate,) = doc["steps"]
    assert migrate["status"] == "failed"
    assert migrate["statusDetails"]["message"].startswith("mdevtest.errors.MigrationFailed: ")


def test_infrastructure_failures_are_broken(status_run: dict[str, dict[str, Any]]) -> None:
    for name in ("test_infrastructure_migration_failure_in_a_step", "test_ssh_error_in_a_step"):
        doc = status_run[name]
        assert doc["status"] == "broken", name
        assert [s["status"] for s in doc["steps"]] == ["broken"], name


def test_a_bug_is_broken_as_allure_has_it(status_run: dict[str, dict[str, Any]]) -> None:
    doc = status_run["test_a_bug_stays_broken"]
    assert doc["status"] == "broken"
    assert doc["steps"][0]["status"] == "broken"


def test_each_check_is_a_step_with_its_status_and_figures(
    status_run: dict[str, dict[str, Any]],
) -> None:
    doc = status_run["test_checks_as_steps"]
    assert doc["status"] == "failed"  # a failed check is the product's: red
    by_name = steps(doc)
    assert by_name["verify host-a->host-b"]["status"] == "passed"
    downtime = by_name["check downtime: passed"]
    assert downtime["status"] == "passed"
    params = {p["name"]: p["value"] for p in downtime["parameters"]}
    assert params["downtime_ms"] == "45"
    assert params["observed_downtime_ms"] == "61.5"
    assert "samples" not in params  # not a scalar: in the attachment only
    assert [a["name"] for a in downtime["attachments"]] == ["check downtime"]
    heartbeat = by_name["check heartbeat: failed"]
    assert heartbeat["status"] == "failed"
    assert "sequence numbers missing" in heartbeat["statusDetails"]["message"]
    assert {p["name"] for p in heartbeat["parameters"]} == {"gap", "seconds"}
    assert by_name["check host-logs: broken"]["status"] == "broken"  # an SSH error while checking
    skipped = by_name["check ram-integrity: skipped"]
    assert skipped["status"] == "skipped"
    assert "no synthetic workload" in skipped["statusDetails"]["message"]


def test_a_step_is_retitled_after_it_ended(status_run: dict[str, dict[str, Any]]) -> None:
    doc = status_run["test_renamed_after_the_step_ended"]
    assert doc["status"] == "passed"
    (migrate,) = doc["steps"]
    assert migrate["name"] == "migrate host-a->host-b: downtime 45 ms (observed 61.5 ms), total 2.8 s"
    assert migrate["parameters"] == [{"name": "uri", "value": "tcp:198.18.1.12:4444"}]


# -- stable parameters, simulated where a reader looks -------------------------------------------


def test_the_pair_parameter_is_its_id_and_keeps_the_history(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_p(pair):\n    assert pair.migration_address\n")
    moved = pytester.path / "moved.yaml"  # the same lab, the migration network renumbered
    moved.write_text(LOCAL_LAB.read_text().replace("198.18.1.", "198.18.9."))
    runs = []
    for inventory in (LOCAL_LAB, moved):
        results = pytester.path / f"results-{inventory.stem}"
        pytester.runpytest_subprocess(
            f"--alluredir={results}", "--inventory", str(inventory), "-p", "no:cacheprovider"
        ).assert_outcomes(passed=2)
        runs.append(allure_results(results))
    assert set(runs[0]) == set(runs[1])
    for key, doc in runs[0].items():
        values = {p["name"]: p["value"] for p in doc["parameters"]}
        assert values["pair"] in ("'host-a->host-b'", "'host-b->host-a'"), values
        assert "HostPair(" not in json.dumps(doc)
        assert runs[1][key]["historyId"] == doc["historyId"], key


def test_a_simulated_vgpu_says_so_in_the_title_and_a_tag(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_p(pair):\n    pass\n")
    docs = run_allure(pytester, "--inventory", str(LOCAL_LAB), passed=2)
    for doc in docs.values():
        assert doc["name"].endswith("] (simulated vGPU)"), doc["name"]
        assert {"name": "tag", "value": "simulated-vgpu"} in doc["labels"]


def test_a_real_vgpu_has_no_simulated_mark(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_p(pair):\n    pass\n")
    docs = run_allure(pytester, "--inventory", str(NESTED_LAB), passed=2)
    for doc in docs.values():
        assert "simulated" not in doc["name"]
        assert {"name": "tag", "value": "simulated-vgpu"} not in doc["labels"]


def test_the_environment_says_which_vgpu_is_simulated() -> None:
    facts = vgpu_facts([("host-a->host-b", "i915-GVTg_V5_4", True), ("a->b", "mtty-2", False)])
    assert facts == {
        "host-a->host-b.vgpu": f"i915-GVTg_V5_4 ({SIMULATED_NOTE})",
        "a->b.vgpu": "mtty-2",
    }


def test_the_graphics_method_text_is_filled_in() -> None:
    (graphics,) = [c for c in standard_checks() if c.name == "graphics"]
    assert not set("{}") & set(graphics.method)
    assert "(>= 0.6)" in graphics.method


# -- one line per migration ----------------------------------------------------------------------


def migration(status: str = "completed", downtime: int | None = 45, total: int | None = 2812) -> Any:
    return MigrationResult("host-a/vm1", "host-b/vm1", "tcp:198.18.1.12:4444", status, total, 1,
                           downtime, 1 << 27, 1 << 28, None, 3, 2900.0, None, {}, (), ())  # fmt: skip


def test_the_headline_of_a_completed_migration() -> None:
    line = MigrationHeadline.of("host-a->host-b", migration(), observed_downtime_ms=120.4)
    assert line.step_title() == "migrate host-a->host-b: downtime 45 ms (observed 120 ms), total 2.8 s"
    assert line.terminal_line("passed") == (
        "host-a->host-b migrated in 2.8 s, downtime 45 ms (observed 120 ms) [passed]"
    )
    assert line.labels() == [
        ("downtime_ms", "45"),
        ("observed_downtime_ms", "120.4"),
        ("total_time_ms", "2812"),
    ]
    bare = MigrationHeadline.of("host-a->host-b", migration(downtime=None, total=None))
    assert bare.step_title() == "migrate host-a->host-b: total 2.9 s"  # the wall time


def test_the_headline_of_a_failed_migration() -> None:
    failed = MigrationHeadline.of(
        "host-a->host-b",
        migration("failed", downtime=None, total=3100),
        failure_class="product",
        error="host-a/vm1 -> host-b/vm1: migration failed: mtty: bad state\n  more detail",
    )
    assert failed.step_title() == "migrate host-a->host-b: failed after 3.1 s (product)"
    assert failed.terminal_line("x") == (
        "host-a->host-b migration failed after 3.1 s [product]: "
        "host-a/vm1 -> host-b/vm1: migration failed: mtty: bad state"
    )
    early = MigrationHeadline.of(
        "host-a->host-b", None, failure_class="infrastructure", error="no mdev", wall_ms=420.0
    )
    assert early.step_title() == "migrate host-a->host-b: failed after 420 ms (infrastructure)"
    cancelled = MigrationHeadline.of("a->b", migration("cancelled", downtime=None, total=None))
    assert cancelled.terminal_line("x") == "a->b migration cancelled after 2.9 s [cancelled]"


def test_units() -> None:
    shown = [milliseconds(v) for v in (45, 61.5, 120.4, 1204)]
    assert shown == ["45 ms", "61.5 ms", "120 ms", "1204 ms"]
    assert [duration(v) for v in (850, 2812, 61_000)] == ["850 ms", "2.8 s", "61.0 s"]


def test_progress_lines_carry_the_elapsed_time() -> None:
    assert progress_line("lab up", 3.21) == "[mdevtest    3.2s] lab up"
    assert progress_line("x", 1234.5) == "[mdevtest 1234.5s] x"


class FakeStep:
    def __init__(self) -> None:
        self.titles: list[str] = []

    def retitle(self, title: str) -> None:
        self.titles.append(title)


def outcome_with(results: dict[str, CheckResult], **kw: Any) -> MigrationOutcome:
    pair: Any = SimpleNamespace(id="host-a->host-b")
    return MigrationOutcome(pair, None, None, migration(), check_results=results, **kw)  # type: ignore[arg-type]


def test_a_migration_says_its_figures_and_verdict_as_it_ends() -> None:
    downtime = CheckResult("downtime", "passed", {"observed_downtime_ms": 61.5}, "m")
    outcome = outcome_with({"downtime": downtime}, planned=["downtime"])
    outcome.checks["downtime"] = downtime.to_json()
    step = FakeStep()
    outcome.step = step  # type: ignore[assignment]
    lines: list[str] = []
    outcome.show_headline(lines.append)
    assert lines == ["host-a->host-b migrated in 2.8 s, downtime 45 ms (observed 61.5 ms) [passed]"]
    assert step.titles == ["migrate host-a->host-b: downtime 45 ms (observed 61.5 ms), total 2.8 s"]


def test_the_verdict_names_failed_checks_and_pending_ones() -> None:
    failed = CheckResult("heartbeat", "failed", {}, "m", "heartbeat: gap")
    graphics = CheckResult("graphics", "failed", {}, "m", "graphics: frozen")
    assert outcome_with({"heartbeat": failed, "graphics": graphics}).verdict() == (
        "failed: heartbeat, graphics"
    )
    pending = outcome_with({})
    pending._pending = list(standard_checks())
    assert pending.verdict() == "checks not run yet"
    required = outcome_with({}, planned=[], required_checks=("ram-integrity",))
    assert required.verdict() == "required check skipped: ram-integrity"
