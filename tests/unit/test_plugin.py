"""The pytest plugin, in-process with pytester: options, inventory errors, pair ids."""

from __future__ import annotations

from pathlib import Path

import pytest

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
        ["*test_migrate?host-a->host-b? PASSED*", "*test_migrate?host-b->host-a? PASSED*"]
    )
    result.assert_outcomes(passed=2)


def test_pair_filter_selects_one_pair(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_migrate(pair):\n    pass\n")
    result = pytester.runpytest(
        "--inventory", str(LOCAL_LAB), "--mdevtest-pairs", "host-b->host-a", "-v"
    )
    result.stdout.fnmatch_lines(["*test_migrate?host-b->host-a? PASSED*"])
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
