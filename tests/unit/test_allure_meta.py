"""Allure metadata: environment.properties, categories.json, executor.json, history.

The categories are checked against the messages our code really produces: a pytester run raises
them through the real code paths (heartbeat check, frame decoder, SSH connect, ...) with
allure-pytest recording, and every result must land in exactly the category a QA engineer would
file it under. (The lab test ``test_report_html`` checks that Allure's own Java matcher agrees.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mdevtest.report.allure_meta import (
    CATEGORIES,
    Category,
    categorize,
    copy_history,
    environment_facts,
    matching_categories,
    write_categories,
    write_environment,
    write_executor,
    write_executor_from_env,
)
from mdevtest.workloads.synthetic import GuestState, IrqCount, PciFunction, compare_states

REPO = Path(__file__).resolve().parents[2]

FAILING_TESTS = r"""
from types import SimpleNamespace

import pytest
from PIL import Image

from mdevtest import errors
from mdevtest.checks.base import Check, Skip, raise_for_failures, run_after
from mdevtest.checks.standard import DowntimeCheck
from mdevtest.migration import MigrationResult
from mdevtest.checks.heartbeat import check_heartbeat_continuity
from mdevtest.inventory import load_inventory
from mdevtest.remote import Remote
from mdevtest.workloads.synthetic import (GuestReply, GuestState, PciFunction, compare_states,
    decode_frame_number, render_expected_frame, verify_frame)

LAB = load_inventory(r"{inventory}")


def hb(seqs):
    return "".join(f"MDT-HB seq={{n}} t={{n * 20_000_000}}\n" for n in seqs)


def test_migration_failed():
    raise errors.MigrationFailed(
        "host-a/vm1 -> host-b/vm1: migration failed: ram_save_setup failed: Operation not supported"
    )


def test_migration_timed_out():
    raise errors.MigrationTimedOut(
        "host-a/vm1 -> host-b/vm1: not completed within 120 s (last status active, remaining "
        "3000000 bytes); cancelled, source is running again"
    )


def test_migration_blocked():
    raise errors.MigrationBlocked(
        "host-a/vm1: migration is blocked: VFIO device doesn't support device and IOMMU dirty tracking"
    )


def test_downtime_over_limit():
    downtime, limit = 612, 500.0
    assert downtime <= limit, f"host-a->host-b: downtime {{downtime}} ms > limit {{limit:g}} ms"


def test_heartbeat_gap():
    check_heartbeat_continuity(hb(range(1, 101)), hb(range(104, 200)))


def test_guest_ram_check():
    GuestReply("VERIFY-RAM", "fail", {{"pages": "1"}}, ("page=12 offset=0x40",)).require_ok()


def test_black_screen():
    decode_frame_number(Image.new("RGB", (640, 480)))


def test_torn_frame():
    img = render_expected_frame(42, 640, 480)
    img.putpixel((300, 300), (1, 2, 3))
    verify_frame(img)


def test_display_frozen():
    pytest.fail("host-b/vm1: display frozen at frame 58 after migration")


def test_preflight_failed():
    pytest.fail("host-a->host-b: preflight failed: host-b: no i915-GVTg_V5_4", pytrace=False)


def test_preflight_skipped():
    pytest.skip("host-a->host-b: preflight failed: host-b: no i915-GVTg_V5_4")


def test_ssh_unreachable(tmp_path):
    import paramiko

    key = tmp_path / "id_rsa"  # a real key of its own: the lab's may not exist on this machine
    paramiko.RSAKey.generate(1024).write_private_key_file(str(key))
    host = LAB.hosts[0]
    ssh = host.ssh.model_copy(update={{"port": 1, "connect_timeout_s": 5, "key_file": key}})
    Remote(host.model_copy(update={{"address": "127.0.0.1", "ssh": ssh}})).connect()


def test_remote_command_timed_out():
    raise errors.CommandTimedOut("host-a", "cat /sys/kernel/debug/vfio/x/migration/state", 30)


def test_qemu_would_not_start():
    raise errors.MachineError("host-b/vm1: QEMU exited at start (rc=1): vfio: error getting device")


def test_boot_failure_in_fixture():
    # the guest fixture's path: pytest.fail() while handling the lab's error
    try:
        raise errors.CommandFailed("host-a", "qemu-system-x86_64 ...", 1, "")
    except errors.MdevtestError as exc:
        pytest.fail(f"boot on host-a: {{exc}}", pytrace=False)


def test_migration_failure_pinned_on_the_infrastructure():
    exc = errors.MigrationFailed("host-a/vm1 -> host-b/vm1: migration failed: Connection reset")
    exc.failure_class = "infrastructure"  # what a diagnosis pins (the destination host died)
    raise exc


def test_unexpected_error_inside_the_ssh_layer(monkeypatch):
    import mdevtest.remote

    def config(*a, **k):
        raise ValueError("unexpected SSH banner")

    monkeypatch.setattr(mdevtest.remote, "Config", config)
    Remote(LAB.hosts[0]).connect()


def migration(downtime, total):
    return MigrationResult("host-a", "host-b", "tcp:198.18.1.12:4444", "completed", total, 1,
                           downtime, 122129141, 286072832, None, 3, total + 20.0, None, {{}}, (), ())


class Raises(Check):
    category = "workload"
    method = "raises what it is given"

    def __init__(self, name, exc):
        self.name = name
        self.exc = exc

    def after(self, ctx):
        raise self.exc


class HeartbeatGap(Check):
    name = "heartbeat"
    category = "workload"
    method = "serial heartbeat"

    def after(self, ctx):
        return check_heartbeat_continuity(hb(range(1, 101)), hb(range(104, 200))).to_json()


def judged(checks, downtime, total):
    ctx = SimpleNamespace(result=migration(downtime, total), limits=LAB.limits, profile=None,
                          guest=SimpleNamespace(observer=None), migrate_started=None,
                          migrate_finished=None, scratch={{}})
    return ctx.result, run_after(list(checks), ctx)


def run_checks(*checks, downtime=59, total=764):
    # the migrate fixture's path: run_after() on the checks, then raise_for_failures()
    raise_for_failures(judged(checks, downtime, total)[1])


def raise_for_checks(*checks, required, downtime=59, total=764):
    # MigrationOutcome.raise_for_checks() with --mdevtest-require-checks
    from mdevtest.migration_run import MigrationOutcome

    result, results = judged(checks, downtime, total)
    outcome = MigrationOutcome(SimpleNamespace(id="host-a->host-b"), None, None, result,
                               check_results=results, planned=[c.name for c in checks],
                               required_checks=required)
    outcome.raise_for_checks()


NO_PROBE = Skip("no synthetic workload in this guest: its MDT-READY line is another workload's "
                "(no fb= field)")


def test_check_downtime():
    run_checks(DowntimeCheck(), downtime=612)


def test_check_total_time():
    run_checks(DowntimeCheck(), total=12_000)


def test_check_graphics_frozen():
    run_checks(Raises("graphics", errors.CheckFailed(
        "graphics: display frozen on host-b/vm1: frames [58, 58, 58] over 3 s")))


def test_check_device_state():
    pci = lambda crc: {{"00:02.0": PciFunction("00:02.0", "8086:1234", "030000", crc)}}
    problems = compare_states(GuestState("1280x800", 10, pci(1), {{}}),
                              GuestState("1280x800", 12, pci(2), {{}}))
    run_checks(Raises("device-state", errors.CheckFailed(
        "device-state on host-b/vm1: " + "; ".join(problems))))


def test_check_device_memory():
    reply = GuestReply("VERIFY-VRAM", "fail", {{"bad": "3"}}, ("offset=0x1000 want=0x5a got=0x00",))
    run_checks(Raises("device-memory", errors.CheckFailed(
        f"device-memory on host-b/vm1: {{reply.describe()}}")))


def test_check_guest_logs():
    run_checks(Raises("guest-logs", errors.CheckFailed(
        "guest-logs: BUG: kernel NULL pointer dereference, address: 0000000000000008")))


def test_check_hit_an_infrastructure_error():
    run_checks(Raises("host-logs", errors.CommandTimedOut("host-b", "dmesg | tail -n +12", 30)))


def test_checks_several_failures():
    run_checks(DowntimeCheck(), HeartbeatGap(),
               Raises("host-logs", errors.CommandTimedOut("host-b", "dmesg", 30)), downtime=612)


def test_required_check_skipped():
    raise_for_checks(DowntimeCheck(), Raises("ram-integrity", NO_PROBE), required=("ram-integrity",))


def test_required_check_skipped_and_downtime_exceeded():
    raise_for_checks(DowntimeCheck(), Raises("ram-integrity", NO_PROBE), required=("ram-integrity",),
                     downtime=612)


def test_known_issue():
    # what MigrationOutcome.raise_for_checks does when a known issue explains every failed check
    from mdevtest.checks.known_issues import TCG_INTX, TCG_INTX_TITLE, KnownIssue
    issue = KnownIssue(TCG_INTX, TCG_INTX_TITLE, "accel tcg, destination console: 'Disabling IRQ #23'",
                       ("guest-logs", "heartbeat"))
    pytest.xfail(issue.describe())


def test_plain_assertion():
    assert 1 + 1 == 3


def test_suite_bug():
    {{}}["missing"]


def test_passes():
    pass
"""

INFRA = "Infrastructure (SSH, QEMU, lab)"

#: Where each test of FAILING_TESTS must land: (allure status, categories). The status is by
#: failure class (mdevtest.report.allure_steps): the product's failures are failed (red), the
#: infrastructure's broken (yellow); a plain assertion failed, a bug broken, as allure-pytest has it.
EXPECTED: dict[str, tuple[str, list[str]]] = {
    "test_migration_failed": ("failed", ["Migration failed"]),
    "test_migration_timed_out": ("failed", ["Migration failed"]),
    "test_migration_blocked": ("failed", ["Migration failed"]),
    "test_migration_failure_pinned_on_the_infrastructure": ("broken", ["Migration failed"]),
    "test_downtime_over_limit": ("failed", ["Downtime exceeded"]),
    "test_heartbeat_gap": ("failed", ["Device-state mismatch"]),
    "test_guest_ram_check": ("failed", ["Device-state mismatch"]),
    "test_black_screen": ("failed", ["Graphics corrupted"]),
    "test_torn_frame": ("failed", ["Graphics corrupted"]),
    "test_display_frozen": ("failed", ["Graphics corrupted"]),
    "test_preflight_failed": ("failed", ["Preflight failed"]),
    "test_preflight_skipped": ("skipped", ["Preflight failed"]),
    "test_ssh_unreachable": ("broken", [INFRA]),
    "test_remote_command_timed_out": ("broken", [INFRA]),
    "test_qemu_would_not_start": ("broken", [INFRA]),
    "test_boot_failure_in_fixture": ("broken", [INFRA]),
    "test_unexpected_error_inside_the_ssh_layer": ("broken", [INFRA]),
    "test_check_downtime": ("failed", ["Downtime exceeded"]),
    "test_check_total_time": ("failed", ["Total time exceeded"]),
    "test_check_graphics_frozen": ("failed", ["Graphics corrupted"]),
    "test_check_device_state": ("failed", ["Device-state mismatch"]),
    "test_check_device_memory": ("failed", ["Device-state mismatch"]),
    "test_check_guest_logs": ("failed", ["Errors in host or guest logs"]),
    "test_check_hit_an_infrastructure_error": ("broken", [INFRA]),  # only an SSH error: broken
    "test_checks_several_failures": (
        "failed",  # a product failure among them: red
        ["Device-state mismatch", "Downtime exceeded", INFRA],  # Allure files it under the first
    ),
    "test_required_check_skipped": ("failed", ["Required check skipped"]),
    "test_required_check_skipped_and_downtime_exceeded": (
        "failed",
        ["Downtime exceeded", "Required check skipped"],  # the real failure first
    ),
    "test_known_issue": ("skipped", ["Known issues"]),
    "test_plain_assertion": ("failed", []),  # Allure's default "Product defects"
    "test_suite_bug": ("broken", []),  # Allure's default "Test defects"
    "test_passes": ("passed", []),
}


def allure_results(results: Path) -> dict[str, dict[str, Any]]:
    """The ``*-result.json`` files of a run, by test name."""
    out = {}
    for path in results.glob("*-result.json"):
        doc = json.loads(path.read_text())
        out[doc["name"]] = doc
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Run FAILING_TESTS once, in a subprocess, with allure-pytest recording."""
    base = tmp_path_factory.mktemp("categories")
    (base / "test_failures.py").write_text(
        FAILING_TESTS.format(inventory=REPO / "inventory" / "local-lab.yaml")
    )
    import subprocess
    import sys

    results = base / "allure-results"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--alluredir={results}",
         "--rootdir", str(base), str(base / "test_failures.py")],
        cwd=base, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    return allure_results(results)


def test_every_message_we_produce_lands_in_its_category(recorded: dict[str, dict[str, Any]]) -> None:
    assert set(recorded) == set(EXPECTED)
    wrong = {}
    for name, (status, categories) in EXPECTED.items():
        doc = recorded[name]
        details = doc.get("statusDetails") or {}
        args = (doc["status"], details.get("message"), details.get("trace"))
        got = (doc["status"], matching_categories(*args), categorize(*args))
        if got != (status, categories, categories[0] if categories else None):
            wrong[name] = (got, details.get("message", "")[:300])
    assert not wrong, json.dumps(wrong, indent=1)


def test_ssh_message_is_the_real_connect_failure(recorded: dict[str, dict[str, Any]]) -> None:
    message = recorded["test_ssh_unreachable"]["statusDetails"]["message"]
    assert message.startswith("mdevtest.errors.ConnectFailed: host-a: cannot reach ")


def test_device_state_problems_are_categorised() -> None:
    def pci(crc: int, ids: str = "8086:1234") -> dict[str, PciFunction]:
        return {"00:02.0": PciFunction("00:02.0", ids, "030000", crc)}

    def irqs(count: int) -> dict[str, IrqCount]:
        return {"ttyS1": IrqCount("4", "ttyS1", count), "LOC": IrqCount("LOC", "LOC", 9)}

    before = GuestState("1280x800", 10, pci(1), irqs(100))
    changed = [
        GuestState("1024x768", 12, pci(1), irqs(120)),
        GuestState("1280x800", 12, pci(2), irqs(120)),
        GuestState("1280x800", 12, pci(1, "8086:9999"), irqs(120)),
        GuestState("1280x800", 12, {}, irqs(120)),
        GuestState("1280x800", 12, pci(1), irqs(50)),
        GuestState("1280x800", 12, pci(1), irqs(100)),
        GuestState("1280x800", 12, pci(1), {"LOC": IrqCount("LOC", "LOC", 9)}),
    ]
    seen = 0
    for after in changed:
        for problem in compare_states(before, after, live_irqs=("ttyS*",)):
            seen += 1
            for prefix in (
                "mdevtest.errors.CheckFailed: device-state on host-b/vm1: ",
                "mdevtest.errors.CheckFailed: ",
                "AssertionError: ",
            ):
                msg = prefix + problem
                assert matching_categories("failed", msg) == ["Device-state mismatch"], msg
    assert seen >= len(changed)


def test_categories_do_not_match_other_statuses_or_missing_messages() -> None:
    msg = "mdevtest.errors.MigrationFailed: a -> b: migration failed: x"
    assert categorize("passed", msg) is None
    assert categorize("broken", None) is None
    assert categorize("broken", msg) == "Migration failed"
    assert categorize("failed", "AssertionError: migration status completed: None") is None
    assert categorize("failed", "AssertionError: migration status failed: boom") == "Migration failed"


def test_downtime_category_needs_a_limit_breach_not_the_word() -> None:
    assert categorize("failed", "AssertionError: host-a->host-b: downtime 612 ms > limit 500 ms") == (
        "Downtime exceeded"
    )
    msg = "mdevtest.errors.MigrationFailed: a -> b: migration failed: downtime-limit too low"
    assert matching_categories("broken", msg) == ["Migration failed"]
    obs = (
        "mdevtest.errors.CheckFailed: heartbeat: heartbeat sequence numbers missing: 101..103\n"
        "downtime: observed downtime 812.5 ms (heartbeats stopped after seq 1234) > limit 500 ms"
    )
    assert matching_categories("broken", obs) == ["Device-state mismatch", "Downtime exceeded"]
    assert categorize("broken", obs) == "Device-state mismatch"  # the more serious one
    slow = "mdevtest.errors.CheckFailed: downtime: total time 12000 ms > limit 10 s"
    assert matching_categories("broken", slow) == ["Total time exceeded"]


def test_categories_json_is_what_allure_reads(tmp_path: Path) -> None:
    path = write_categories(tmp_path)
    assert path == tmp_path / "categories.json"
    doc = json.loads(path.read_text())
    names = [c["name"] for c in doc]
    assert names == [
        "Migration failed",
        "Device-state mismatch",
        "Graphics corrupted",
        "Downtime exceeded",
        "Total time exceeded",
        "Errors in host or guest logs",
        "Preflight failed",
        "Known issues",
        INFRA,  # broken mdevtest errors: infrastructure by failure class
        INFRA,
        "Required check skipped",  # after every failure: it files a test only when nothing failed
        INFRA,  # by traceback; Allure merges categories of the same name
    ]
    for c in doc:
        assert set(c) <= {"name", "matchedStatuses", "messageRegex", "traceRegex", "description"}
        assert set(c["matchedStatuses"]) <= {"failed", "broken", "skipped", "passed", "unknown"}
    assert doc[-1]["traceRegex"] == CATEGORIES[-1].trace_regex


def test_category_matching_is_a_full_match_across_lines() -> None:
    c = Category("x", ("failed",), message_regex="AssertionError: boom.*")
    assert c.matches("failed", "AssertionError: boom\nassert 1 == 2")  # DOTALL
    assert not c.matches("failed", "E AssertionError: boom")  # whole text, like Java's matches()
    t = Category("t", (), trace_regex=".*remote.py.*")
    assert t.matches("skipped", "anything", "x/remote.py:3")
    assert not t.matches("skipped", "anything", None)


def test_environment_properties_escaping(tmp_path: Path) -> None:
    path = write_environment(
        tmp_path,
        {
            "host-a.kernel": "6.12.48+deb13-amd64",
            "guest image": "mdevtest synthetic image 2db6 (kernel 6.1.0-56-amd64)",
            "uri": "tcp:198.18.1.12:4444",
            "key=with:colon#!": "a\\b",
            "multi": "line one\nline two\ttab",
            "lead": "  two leading spaces",
            "unicode": "größe 1\u00d72 \U0001f600",
        },
    )
    assert path.read_text().splitlines() == [
        r"host-a.kernel=6.12.48+deb13-amd64",
        r"guest\ image=mdevtest synthetic image 2db6 (kernel 6.1.0-56-amd64)",
        r"uri=tcp\:198.18.1.12\:4444",
        r"key\=with\:colon\#\!=a\\b",
        r"multi=line one\nline two\ttab",
        r"lead=\  two leading spaces",
        r"unicode=gr\u00F6\u00DFe 1\u00D72 \uD83D\uDE00",
    ]
    path.read_bytes().decode("ascii")  # ISO-8859-1-safe whatever the input


def test_environment_facts_from_host_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    monkeypatch.setattr("mdevtest.report.allure_meta.package_version", lambda: "0.1.0")
    monkeypatch.setattr("mdevtest.report.allure_meta.source_commit", lambda: "abc1234 dirty")
    hosts = [
        SimpleNamespace(name="host-b", kernel="6.12", qemu_version="10.0.0", accel="tcg"),
        SimpleNamespace(name="host-a", kernel="6.1", qemu_version="7.2.22", accel="kvm"),
    ]
    facts = environment_facts(hosts, guest_image="img 2db6", extra={"vgpu.driver": "mtty 6.12"})
    assert list(facts.items()) == [
        ("host-a.kernel", "6.1"),
        ("host-a.qemu", "7.2.22"),
        ("host-a.accel", "kvm"),
        ("host-b.kernel", "6.12"),
        ("host-b.qemu", "10.0.0"),
        ("host-b.accel", "tcg"),
        ("guest.image", "img 2db6"),
        ("mdevtest.version", "0.1.0"),
        ("mdevtest.commit", "abc1234 dirty"),
        ("vgpu.driver", "mtty 6.12"),
    ]
    # installed from a wheel: no checkout, so no commit, rather than an empty or made-up one
    monkeypatch.setattr("mdevtest.report.allure_meta.source_commit", lambda: None)
    facts = environment_facts(hosts)
    assert facts["mdevtest.version"] == "0.1.0"
    assert "mdevtest.commit" not in facts


def test_executor_json(tmp_path: Path) -> None:
    doc = json.loads(write_executor(tmp_path, "nightly", "nightly #41").read_text())
    assert doc == {"name": "nightly", "type": "mdevtest", "buildName": "nightly #41"}
    url = "https://ci.example/job/41"
    path = write_executor(tmp_path, "nightly", "#42", url, build_order=42, report_url=url + "/r")
    assert json.loads(path.read_text()) == {
        "name": "nightly",
        "type": "mdevtest",
        "buildName": "#42",
        "url": url,
        "buildUrl": url,
        "buildOrder": 42,
        "reportUrl": url + "/r",
    }


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"JENKINS_URL": "https://ci/", "BUILD_NUMBER": "41", "BUILD_URL": "https://ci/job/41/"},
            {"name": "Jenkins", "buildName": "#41", "buildOrder": 41, "url": "https://ci/job/41/"},
        ),
        (
            {"GITLAB_CI": "true", "CI_PIPELINE_IID": "7", "CI_PIPELINE_URL": "https://gl/p/7"},
            {"name": "GitLab CI", "buildName": "#7", "buildOrder": 7, "url": "https://gl/p/7"},
        ),
        (
            {"GITHUB_ACTIONS": "true", "GITHUB_RUN_NUMBER": "12", "GITHUB_RUN_ID": "99",
             "GITHUB_REPOSITORY": "lab/mdevtest"},
            {"name": "GitHub Actions", "buildName": "#12", "buildOrder": 12,
             "url": "https://github.com/lab/mdevtest/actions/runs/99"},
        ),
        (
            {"JENKINS_URL": "https://ci/", "BUILD_NUMBER": "41", "MDEVTEST_EXECUTOR": "nightly",
             "MDEVTEST_BUILD_NAME": "nightly 2026-11-26", "MDEVTEST_BUILD_ORDER": "300"},
            {"name": "nightly", "buildName": "nightly 2026-11-26", "buildOrder": 300},
        ),
    ],
)  # fmt: skip
def test_executor_from_the_environment(
    tmp_path: Path, environ: dict[str, str], expected: dict[str, Any]
) -> None:
    doc = json.loads(write_executor_from_env(tmp_path, environ).read_text())
    assert {k: doc.get(k) for k in expected} == expected


def test_executor_of_a_developer_run(tmp_path: Path) -> None:
    doc = json.loads(write_executor_from_env(tmp_path, {}).read_text())
    assert doc["name"].startswith("mdevtest on ")
    assert "buildOrder" not in doc
    assert doc["buildName"][:2] == "20"  # the local time


def test_copy_history(tmp_path: Path) -> None:
    report, results = tmp_path / "report", tmp_path / "results"
    assert copy_history(report, results) == 0  # first run: nothing to carry over
    assert not (results / "history").exists()
    (report / "history").mkdir(parents=True)
    for name in ("history.json", "history-trend.json", "duration-trend.json"):
        (report / "history" / name).write_text(f'["{name}"]')
    (results / "history").mkdir(parents=True)
    (results / "history" / "history.json").write_text('["stale"]')
    assert copy_history(report, results) == 3
    assert (results / "history" / "history.json").read_text() == '["history.json"]'


HISTORY_TEST = """
import uuid
import allure
from mdevtest.report.allure_meta import history_safe_parameter

def test_migrate():
    allure.dynamic.parameter("pair", "host-a->host-b")
    history_safe_parameter("mdev uuid", str(uuid.uuid4()))

def test_unsafe():
    allure.dynamic.parameter("mdev uuid", str(uuid.uuid4()))
"""


def test_history_safe_parameter_keeps_the_history_id(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(HISTORY_TEST)
    runs = []
    for i in range(2):
        results = pytester.path / f"results-{i}"
        pytester.runpytest_subprocess(f"--alluredir={results}").assert_outcomes(passed=2)
        runs.append(allure_results(results))
    safe = [r["test_migrate"] for r in runs]
    params = [{p["name"]: p for p in r["parameters"]} for r in safe]
    assert params[0]["mdev uuid"]["value"] != params[1]["mdev uuid"]["value"]
    assert params[0]["mdev uuid"]["excluded"] is True
    assert safe[0]["historyId"] == safe[1]["historyId"]
    # the same value as an ordinary parameter starts a new history every run
    assert runs[0]["test_unsafe"]["historyId"] != runs[1]["test_unsafe"]["historyId"]
