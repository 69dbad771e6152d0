"""``mdevtest report``: the real Allure 2 generator from npm, the report opened in headless Chromium.

Needs node, npm and java (the generator) and chromium (installed with apt-get when missing and
root); each test skips naming what is missing. No lab hosts are involved: the Allure results come
from a tiny test file run through pytester that attaches what the migrate fixture attaches.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mdevtest.cli import EXIT_LAB, EXIT_OK, EXIT_USAGE, main
from mdevtest.report.allure_meta import categorize, write_environment, write_executor
from mdevtest.report.html import ReportError, check_tools

pytestmark = pytest.mark.lab

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
CHROMIUM_TIMEOUT_S = 120

# What the migrate fixture attaches, by the same helpers and names.
MIGRATION_TESTS = """
import uuid
from types import SimpleNamespace

import allure

from mdevtest.checks.base import CheckResult
from mdevtest.errors import CheckFailed, MigrationFailed
from mdevtest.migration import TimelinePoint
from mdevtest.report.allure_steps import check_step
from mdevtest.report.allure_meta import history_safe_parameter
from mdevtest.report.attach import attach_json, attach_png, attach_text
from mdevtest.report.plot import timeline_png


@allure.feature("live migration")
def test_live_migration():
    allure.dynamic.parameter("pair", "host-a->host-b")
    history_safe_parameter("mdev uuid", str(uuid.uuid4()))
    with allure.step("migrate host-a->host-b over tcp:198.18.1.12:4444"):
        attach_json("QMP events", [{"event": "STOP", "data": {}}])
    attach_json("query-migrate (final)", {"status": "completed", "downtime": 59, "total-time": 764})
    attach_text("console host-a/vm1", "MDT-HB seq=1 t=20000000\\nMDT-HB seq=2 t=40000000\\n")
    points = [TimelinePoint(t * 50.0, "active", None, (250 - t * 20) << 20, 1073.9, 0, 300)
              for t in range(12)]
    attach_png("migration timeline", timeline_png(points, downtime_window=(540, 600),
                                                  title="host-a -> host-b"))


def test_migration_refused():
    raise MigrationFailed("host-a/vm1 -> host-b/vm1: migration failed: mtty: port count mismatch")


def test_downtime_limit():
    assert 612 <= 500, "host-a->host-b: downtime 612 ms > limit 500 ms"


def test_checks_failed():
    # what MigrationOutcome.verify() records: a step per check, coloured by its result
    with allure.step("verify host-a->host-b"):
        check_step(CheckResult("downtime", "failed", {"downtime_ms": 612, "limit_ms": 500},
                               "QEMU's downtime", "downtime: QEMU downtime 612 ms > limit 500 ms"))
        check_step(CheckResult("heartbeat", "failed", {"missing": 3}, "serial heartbeats",
                               "heartbeat: heartbeat sequence numbers missing: 101..103"))
        check_step(CheckResult("host-logs", "failed", {"infrastructure": True}, "dmesg",
                               "host-logs: host-b: command timed out after 30 s: dmesg | tail -n +12"))
        check_step(CheckResult("guest-logs", "passed", {"lines": 812}, "guest console"))
    raise CheckFailed(
        "downtime: QEMU downtime 612 ms > limit 500 ms\\n"
        "heartbeat: heartbeat sequence numbers missing: 101..103\\n"
        "host-logs: host-b: command timed out after 30 s: dmesg | tail -n +12"
    )


def test_unexpected_error_inside_the_ssh_layer(monkeypatch):
    import mdevtest.remote

    def config(*args, **kwargs):
        raise ValueError("unexpected SSH banner")

    monkeypatch.setattr(mdevtest.remote, "Config", config)
    mdevtest.remote.Remote(SimpleNamespace(name="host-a", ssh=None)).connect()


def test_plain_assertion():
    assert 1 + 1 == 3
"""

INFRA = "Infrastructure (SSH, QEMU, lab)"

ENVIRONMENT = {
    "host-a.kernel": "6.12.48+deb13-amd64",
    "host-a.qemu": "10.0.0",
    "guest image": "mdevtest synthetic image 2db6 (kernel 6.1.0-56-amd64)",
    "uri": "tcp:198.18.1.12:4444 # not a comment",
    "vgpu": "i915-GVTg_V5_4 größe 1\u00d72",
}


@pytest.fixture(scope="module")
def tools() -> None:
    try:
        check_tools()
    except ReportError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium binary; installed from Debian (chromium, chromium-driver) when missing."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and installing it needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium",
               "chromium-driver"]  # fmt: skip
    for argv in (install, ["apt-get", "update", "-qq"], install):
        try:
            proc = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=900, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"chromium could not be installed: {' '.join(argv)} took over 900 s")
        if argv is install and proc.returncode == 0:
            break
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"chromium could not be installed with apt-get: {proc.stderr.strip()[-500:]}")
    return found


def record_run(pytester: pytest.Pytester, name: str) -> Path:
    """Run MIGRATION_TESTS with allure-pytest recording into ``name``; return the results dir."""
    results = pytester.path / name
    run = pytester.runpytest_subprocess(f"--alluredir={results}", "-p", "no:cacheprovider")
    run.assert_outcomes(passed=1, failed=5)
    return results


def report(results: Path, out: Path, *args: str) -> None:
    assert main(["report", "--results", str(results), "--out", str(out), *args]) == EXIT_OK


def find_case(out: Path, name: str) -> dict[str, Any]:
    for path in (out / "data" / "test-cases").glob("*.json"):
        doc: dict[str, Any] = json.loads(path.read_text())
        if doc["name"] == name:
            return doc
    raise AssertionError(f"no test case {name} in {out}")


@pytest.mark.usefixtures("tools")
def test_report_keeps_history_environment_and_categories(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_migration=MIGRATION_TESTS)
    out = pytester.path / "allure-report"
    for build in (1, 2):
        results = record_run(pytester, f"results-{build}")
        write_environment(results, ENVIRONMENT)
        write_executor(results, "mdevtest CI", f"nightly #{build}", build_order=build)
        report(results, out)

    # trends: the second report carries the first run
    trend = json.loads((out / "history" / "history-trend.json").read_text())
    assert len(trend) == 2
    assert trend[0]["buildOrder"] == 2
    assert trend[0]["data"]["passed"] == 1
    # the per-run mdev UUID is excluded, so the test keeps one history across both runs
    live = find_case(out, "test_live_migration")
    assert len(live["extra"]["history"]["items"]) == 1
    assert {p["name"] for p in live["parameters"]} == {"pair", "mdev uuid"}  # still shown

    # environment.properties as Java's Properties read it
    env = {e["name"]: e["values"] for e in json.loads((out / "widgets/environment.json").read_text())}
    assert env == {k: [v] for k, v in ENVIRONMENT.items()}
    executors = json.loads((out / "widgets" / "executors.json").read_text())
    assert executors[0]["buildName"] == "nightly #2"

    # categories.json (written by `mdevtest report` when missing) as Allure's Java regexes apply it
    tree = json.loads((out / "data" / "categories.json").read_text())
    by_allure: dict[str, set[str]] = {}
    for group in tree["children"]:
        for leaf in _leaves(group):
            by_allure.setdefault(leaf, set()).add(group["name"])
    by_us = {}
    for path in results.glob("*-result.json"):
        doc = json.loads(path.read_text())
        details = doc.get("statusDetails") or {}
        name = categorize(doc["status"], details.get("message"), details.get("trace"))
        default = {"failed": "Product defects", "broken": "Test defects"}.get(doc["status"])
        if name or default:
            by_us[doc["name"]] = {name or default}
    assert by_us == {
        "test_migration_refused": {"Migration failed"},
        "test_downtime_limit": {"Downtime exceeded"},
        "test_checks_failed": {"Device-state mismatch"},  # the most serious of its failures
        "test_unexpected_error_inside_the_ssh_layer": {INFRA},
        "test_plain_assertion": {"Product defects"},
    }
    assert by_allure == by_us


def _leaves(node: dict[str, Any]) -> list[str]:
    """Test names under a node of Allure's tree (category -> status message -> test)."""
    if "children" not in node:
        return [str(node["name"])]
    return [name for child in node["children"] for name in _leaves(child)]


@pytest.fixture
def served(pytester: pytest.Pytester) -> Iterator[tuple[str, Path]]:
    """A generated report served on 127.0.0.1 (static files; the report's JS loads data/)."""
    pytester.makepyfile(test_migration=MIGRATION_TESTS)
    out = pytester.path / "allure-report"
    report(record_run(pytester, "results"), out)
    handler = functools.partial(_QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", out
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def run_chromium(binary: str, url: str, *args: str) -> bytes:
    """Run headless chromium once (fresh profile, own process group); return its stdout."""
    with (
        tempfile.TemporaryDirectory(prefix="mdevtest-chromium-") as profile,
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
    ):
        argv = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                start_new_session=True)  # fmt: skip
        try:
            rc = proc.wait(timeout=CHROMIUM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            with contextlib.suppress(ProcessLookupError):  # renderer and helper processes
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        stderr.seek(0)
        if rc is None:
            pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s: {url}")
        assert rc == 0, stderr.read().decode(errors="replace")[-2000:]
        stdout.seek(0)
        return stdout.read()


@pytest.mark.usefixtures("tools")
def test_migration_test_page_shows_its_attachments(
    chromium: str, served: tuple[str, Path], tmp_path: Path
) -> None:
    base, out = served
    uid = find_case(out, "test_live_migration")["uid"]
    page = f"{base}/index.html#testresult/{uid}"
    dom = run_chromium(chromium, page, "--virtual-time-budget=15000", "--dump-dom").decode()
    shown = set(re.findall(r'class="attachment-row__name[^"]*">([^<]+)<', dom))
    assert {
        "query-migrate (final)",
        "console host-a/vm1",
        "migration timeline",
        "QMP events",
    } <= shown, f"attachments on {page}: {sorted(shown)}"
    assert "test_live_migration" in dom

    shot = tmp_path / "allure-test-page.png"
    run_chromium(chromium, page, "--virtual-time-budget=15000", "--window-size=1400,1000",
                 f"--screenshot={shot}")  # fmt: skip
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape == (1000, 1400, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # rendered, not a blank page
    print(f"screenshot: {shot}")


@pytest.mark.usefixtures("tools")
def test_a_product_failure_is_red_and_its_failed_checks_are_red_steps(
    chromium: str, served: tuple[str, Path]
) -> None:
    """A failed check is the product's: the test is failed (red, not broken), each failed check
    a failed step, a check that met only an SSH error a broken one, a passed check a passed one
    (statuses from the generated report's data; the page rendered in headless Chromium)."""
    base, out = served
    case = find_case(out, "test_checks_failed")
    assert case["status"] == "failed"
    page = f"{base}/index.html#testresult/{case['uid']}"
    # The step statuses as the generated report holds them (what its page colours them by)...
    data = json.loads((out / "data" / "test-cases" / f"{case['uid']}.json").read_text())

    def steps(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for step in node.get("steps", []):
            yield step
            yield from steps(step)

    stages = [data.get("testStage", {}), *(f for f in data.get("beforeStages", [])),
              *(f for f in data.get("afterStages", []))]  # fmt: skip
    shown = {st["name"]: st["status"] for stage in stages for st in steps(stage)}
    want = {
        "check downtime: failed": "failed",
        "check heartbeat: failed": "failed",
        "check host-logs: broken": "broken",
        "check guest-logs: passed": "passed",
    }
    assert want.items() <= shown.items(), f"steps of {case['uid']}: {shown}"
    # ...and the page Chromium renders shows them
    dom = run_chromium(chromium, page, "--virtual-time-budget=15000", "--dump-dom").decode()
    assert "test_checks_failed" in dom, page


def test_report_without_results_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == (
        EXIT_USAGE
    )
    assert "no Allure results: " in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", "--results", str(tmp_path / "empty")]) == EXIT_USAGE
    assert "no *-result.json" in capsys.readouterr().err


def test_report_refuses_to_wipe_a_directory_that_is_not_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "x-result.json").write_text("{}")
    precious = tmp_path / "src"
    precious.mkdir()
    (precious / "main.c").write_text("int main(void) { return 0; }\n")
    assert main(["report", "--results", str(results), "--out", str(precious)]) == EXIT_LAB
    assert "is not an Allure report; generating would delete it" in capsys.readouterr().err
    assert (precious / "main.c").exists()
    assert main(["report", "--results", str(results), "--out", str(tmp_path)]) == EXIT_LAB
    assert "would delete the results" in capsys.readouterr().err


def test_missing_tools_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ReportError, match=r"needs node, npm, java on PATH, which are missing"):
        check_tools()
