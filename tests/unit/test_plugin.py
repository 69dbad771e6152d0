"""The pytest plugin, in-process with pytester: options, inventory errors, pair ids."""

from __future__ import annotations

from pathlib import Path

import pytest

# imported here, not first inside an in-process pytester run: pytester drops what a run imported,
# and numpy (under the checks) cannot be imported twice in one process
from mdevtest.checks.standard import known_check_names

REPO = Path(__file__).resolve().parents[2]
LOCAL_LAB = REPO / "inventory" / "local-lab.yaml"


def test_plugin_is_loaded_through_its_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_noop(): pass")
    result = pytester.runpytest("--trace-config", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*mdevtest*mdevtest/plugin/__init__.py*"])
    result.assert_outcomes(passed=1)


def test_pair_ids_read_like_the_lab(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "def test_migrate(pair):\n    assert pair.id == f'{pair.source}->{pair.destination}'\n"
    )
    result = pytester.runpytest("--inventory", str(LOCAL_LAB), "-v")
    result.stdout.fnmatch_lines(
        [
            "*test_migrate?host-a->host-b-GVTg_V5_4? PASSED*",
            "*test_migrate?host-b->host-a-GVTg_V5_4? PASSED*",
        ]
    )
    result.assert_outcomes(passed=2)


def test_pair_filter_selects_one_pair(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_migrate(pair):\n    pass\n")
    result = pytester.runpytest(
        "--inventory", str(LOCAL_LAB), "--mdevtest-pairs", "host-b->host-a", "-v"
    )
    result.stdout.fnmatch_lines(["*test_migrate?host-b->host-a-GVTg_V5_4? PASSED*"])
    result.assert_outcomes(passed=1)


def test_unknown_pair_filter_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_migrate(pair):\n    pass\n")
    result = pytester.runpytest("--inventory", str(LOCAL_LAB), "--mdevtest-pairs", "host-x->host-y")
    assert "matches no pair" in result.stdout.str() + result.stderr.str()
    assert result.ret != 0


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            LOCAL_LAB.read_text().replace("port: 22", "port: twenty-two", 1),
            "hosts[0].ssh.port",
        ),
        (LOCAL_LAB.read_text().replace("accel: auto", "acel: auto", 1), "did you mean 'accel'"),
        (
            LOCAL_LAB.read_text().replace("destination: host-b", "destination: host-c", 1),
            "pairs[0].destination",
        ),
    ],
    ids=["wrong-type", "unknown-key", "missing-host"],
)
def test_broken_inventory_is_a_short_usage_error(
    pytester: pytest.Pytester, yaml_text: str, expected: str
) -> None:
    bad = pytester.path / "bad.yaml"
    bad.write_text(yaml_text)
    pytester.makepyfile("def test_migrate(pair):\n    pass\n")
    result = pytester.runpytest("--inventory", str(bad))
    err = result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "bad.yaml" in err
    assert expected in err
    assert "Traceback" not in err + result.stdout.str()


def test_no_inventory_skips_lab_tests_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_migrate(pair):\n    pass\n")
    result = pytester.runpytest("-rs")
    result.stdout.fnmatch_lines(["*SKIPPED*no inventory*--inventory PATH*"])


def test_bad_policy_marker_is_a_usage_error_naming_what_is_allowed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n@pytest.mark.policy(bogus=1)\ndef test_migrate(pair):\n    pass\n"
    )
    result = pytester.runpytest("--inventory", str(LOCAL_LAB))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "unknown migration policy option(s) bogus" in err
    assert "downtime_limit_ms" in err


def test_qemu_args_marker_takes_strings_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n@pytest.mark.qemu_args('-device', 3)\ndef test_migrate(pair):\n    pass\n"
    )
    result = pytester.runpytest("--inventory", str(LOCAL_LAB))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "qemu_args takes QEMU arguments as strings" in result.stderr.str()


def test_unknown_vendor_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile('import pytest\n@pytest.mark.vendor("amd")\ndef test_migrate(pair):\n    pass\n')
    result = pytester.runpytest("--inventory", str(LOCAL_LAB))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "allowed are gvt, mtty, nvidia, nvidia-vfio, sim-nvidia-vfio, sim-xe-sriov," in (
        result.stderr.str()
    )


def test_pairs_without_the_vgpu_type_skip_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        'import pytest\n@pytest.mark.vgpu_type("i915-GVTg_V5_8")\ndef test_migrate(pair):\n    pass\n'
    )
    result = pytester.runpytest("--inventory", str(LOCAL_LAB), "-rs")
    result.stdout.fnmatch_lines(
        ["*host-a->host-b offers i915-GVTg_V5_4, the test needs i915-GVTg_V5_8*"]
    )
    result.assert_outcomes(skipped=2)


def test_workload_missing_from_the_image_skips(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        'import pytest\n@pytest.mark.workload("synthetic")\ndef test_ok(pair):\n    pass\n'
    )
    result = pytester.runpytest("--inventory", str(LOCAL_LAB))
    result.assert_outcomes(passed=2)


def test_tests_are_grouped_by_host_set_for_xdist(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "def pytest_collection_finish(session):\n"
        "    for item in session.items:\n"
        "        print('GROUP', item.name, item.get_closest_marker('xdist_group').kwargs['name'])\n"
    )
    pytester.makepyfile("def test_migrate(pair):\n    pass\n")
    result = pytester.runpytest("--inventory", str(LOCAL_LAB), "-s", "--collect-only")
    result.stdout.fnmatch_lines(
        [
            "GROUP test_migrate[[]host-a->host-b-GVTg_V5_4[]] host-a+host-b",
            "GROUP test_migrate[[]host-b->host-a-GVTg_V5_4[]] host-a+host-b",
        ]
    )


def test_the_migration_table_names_the_test_without_repeating_the_pair() -> None:
    from mdevtest.report.terminal import short_test_name, vgpu_label

    prefixes = ["host-a->host-b", "host-a->host-b-GVTg_V5_4", "host-b->host-a-GVTg_V5_4"]
    short = {
        "suites/p.py::test_policy[host-a->host-b-GVTg_V5_4-multifd-2]": "test_policy[multifd-2]",
        "suites/b.py::test_live_migration[host-a->host-b-GVTg_V5_4]": "test_live_migration",
        "suites/b.py::test_live_migration[host-a->host-b]": "test_live_migration",  # older ids
        # a ping-pong's way back: its entry's pair is host-b->host-a, the id names the test's pair
        "suites/p.py::test_ping_pong[host-a->host-b-GVTg_V5_4]": "test_ping_pong",
        "suites/x.py::test_other[host-c->host-d]": "test_other[host-c->host-d]",
    }
    for test_id, name in short.items():
        assert short_test_name(test_id, prefixes) == name, test_id
    assert vgpu_label({"vendor": "simulated", "type": "i915-GVTg_V5_4"}) == "GVTg_V5_4"
    assert vgpu_label({"vendor": "mtty", "type": "mtty-2"}) == "mtty-2"
    assert vgpu_label({"vendor": "acme", "type": "acme-1"}) == "acme-1"
    assert vgpu_label(None) == "-"
    sim = {"vendor": "simulated", "type": "i915-GVTg_V5_4", "simulated": True}
    assert vgpu_label(sim) == "GVTg_V5_4 (sim)"


def test_xdist_scope_is_the_host_set_of_the_pair_in_the_test_id() -> None:
    from mdevtest.plugin.scheduling import host_scope

    pairs = [("host-a->host-b", "host-a", "host-b"), ("host-b->host-a", "host-b", "host-a"),
             ("host-a->host-b2", "host-a", "host-b2")]  # fmt: skip
    assert host_scope("s.py::t[host-a->host-b]", pairs) == "host-a+host-b"
    assert host_scope("s.py::t[host-b->host-a-multifd-2]", pairs) == "host-a+host-b"
    assert host_scope("s.py::t[host-a->host-b2-x]", pairs) == "host-a+host-b2"  # longest id wins
    assert host_scope("s.py::t[other]", pairs) is None
    assert host_scope("s.py::t", pairs) is None


def test_loadgroup_runs_a_host_sets_tests_on_one_worker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_p(pair):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "--inventory", str(REPO / "inventory" / "local-lab-2pairs.yaml"),
        "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
    )  # fmt: skip
    result.stdout.fnmatch_lines(["*scheduling tests via HostSetScheduling*"])
    workers: dict[str, set[str]] = {}
    for line in result.stdout.lines:
        if "PASSED" in line and "[gw" in line:
            gw = line.split("]", 1)[0].lstrip("[")
            pair = line.rsplit("[", 1)[1].rstrip("] ").removesuffix("-GVTg_V5_4")
            workers.setdefault("+".join(sorted(pair.split("->"))), set()).add(gw)
    assert set(workers) == {"host-a+host-b", "host-c+host-d"}
    assert all(len(w) == 1 for w in workers.values()), workers


def test_pair_ids_carry_the_vgpu_type_as_the_vendor_names_it() -> None:
    from mdevtest.inventory import load_inventory
    from mdevtest.plugin.hooks import pair_param_id

    local = load_inventory(LOCAL_LAB)
    nested = load_inventory(LOCAL_LAB.parent / "nested-mtty.yaml")
    assert [pair_param_id(p) for p in local.pairs] == [
        "host-a->host-b-GVTg_V5_4",
        "host-b->host-a-GVTg_V5_4",
    ]
    assert pair_param_id(nested.pairs[0]) == "host-a->host-b-mtty-2"
    assert pair_param_id(local.pairs[0].model_copy(update={"vgpu": None})) == "host-a->host-b"


def test_unknown_required_check_is_a_usage_error_listing_the_known_ones(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("def test_migrate(pair):\n    pass\n")
    result = pytester.runpytest(
        "--inventory", str(LOCAL_LAB), "--mdevtest-require-checks", "ram-integrity,ram-integrty"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    known = ", ".join(known_check_names())
    assert f"--mdevtest-require-checks: unknown check(s) ram-integrty; known checks: {known}" in err
    assert "mtty-device-state" in known  # a vendor's own check can be required too
    assert "Traceback" not in err + result.stdout.str()


def test_required_checks_reach_the_session_state(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "from mdevtest.plugin.hooks import state_of\n"
        "def test_required(request):\n"
        "    assert state_of(request.config).required_checks == ('ram-integrity', 'device-state')\n"
    )
    result = pytester.runpytest(
        "--mdevtest-require-checks",
        " ram-integrity, device-state,ram-integrity ",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)


SUMMARY_ENTRY_TEST = """
from mdevtest.plugin.hooks import state_of
from mdevtest.report.summary import SummaryWriter

def test_entry(request):
    SummaryWriter(state_of(request.config).report_dir).add({
        "test_id": "s.py::test_live_migration[host-a->host-b]", "pair": "host-a->host-b",
        "status": "completed", "verdict": "failed",
        "coverage": {"ran": ["downtime"], "skipped": {"ram-integrity": "no synthetic workload"},
                     "required": ["ram-integrity"], "missing_required": ["ram-integrity"]},
    })
"""


def test_the_migration_table_shows_what_ran_and_names_required_checks_skipped(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(SUMMARY_ENTRY_TEST)
    reports = pytester.path / "reports"
    result = pytester.runpytest("--mdevtest-report-dir", str(reports), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*downtime ms*checks*verdict",
            "host-a->host-b *test_live_migration * completed * 1/2 * failed",
            "s.py::test_live_migration[[]host-a->host-b[]] (host-a->host-b): "
            "required check ram-integrity skipped: no synthetic workload",
        ]
    )


POLICY_TIMEOUT_TEST = """
import pytest
from types import SimpleNamespace

@pytest.fixture
def lab(request):  # stands in for the real lab: the facts migration_policy asks for
    from mdevtest.plugin.hooks import state_of
    caps = SimpleNamespace(migration_capabilities=frozenset({"events"}), version_text="7.2.0")
    return SimpleNamespace(inventory=state_of(request.config).inventory,
                           facts=lambda host: SimpleNamespace(qemu_caps=caps))

def test_inventory_default(migration_policy):
    assert migration_policy.timeout_s == 120

@pytest.mark.limits(migration_timeout_s=7)
def test_limits_marker(migration_policy):
    assert migration_policy.timeout_s == 7

@pytest.mark.limits(migration_timeout_s=7)
@pytest.mark.policy(timeout_s=3)
def test_policy_marker_wins(migration_policy):
    assert migration_policy.timeout_s == 3
"""


def test_the_migration_timeout_comes_from_the_tests_limits(pytester: pytest.Pytester) -> None:
    """``@pytest.mark.limits(migration_timeout_s=...)`` bounds the migration (it used to be
    validated and then ignored for the inventory's value)."""
    pytester.makepyfile(POLICY_TIMEOUT_TEST)
    result = pytester.runpytest(
        "--inventory", str(LOCAL_LAB), "--mdevtest-pairs", "host-a->host-b", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=3)
