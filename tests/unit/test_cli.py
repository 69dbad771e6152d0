"""The ``mdevtest`` command: inventory check output and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mdevtest.cli import EXIT_INVENTORY, EXIT_OK, EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[2]


def test_inventory_check_prints_the_lab(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inventory", "check", str(REPO / "inventory/local-lab.yaml")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "host-a" in out
    assert "host-a->host-b" in out


@pytest.mark.parametrize("path", sorted((REPO / "inventory" / "examples").glob("*.yaml")), ids=str)
def test_examples_pass_inventory_check(path: Path) -> None:
    assert main(["inventory", "check", str(path)]) == EXIT_OK


def test_broken_inventory_exit_code_and_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "lab.yaml"
    bad.write_text((REPO / "inventory/local-lab.yaml").read_text().replace("port: 22", "port: 70000", 1))
    assert main(["inventory", "check", str(bad)]) == EXIT_INVENTORY
    err = capsys.readouterr().err
    assert str(bad) in err
    assert "hosts[0].ssh.port" in err
    assert "70000" in err


def test_console_script_never_prints_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "lab.yaml"
    bad.write_text("hosts: [")
    proc = subprocess.run(
        [sys.executable, "-m", "mdevtest.cli", "inventory", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == EXIT_INVENTORY
    assert "Traceback" not in proc.stderr
    assert "lab.yaml" in proc.stderr


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["lab", "sideways"])
    assert exc.value.code == EXIT_USAGE


def test_a_reader_that_leaves_early_is_not_a_traceback() -> None:
    """`mdevtest schema inventory | head -c 1`: the pipe closes under the writer."""
    import subprocess
    import sys

    proc = subprocess.run(
        ["sh", "-c", f"{sys.executable} -m mdevtest.cli schema inventory | head -c 1 >/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "BrokenPipeError" not in proc.stderr
