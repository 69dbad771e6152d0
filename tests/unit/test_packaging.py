"""Packaging: the data folders are found in a checkout and declared completely for the wheel.

``workloads/`` and ``inventory/`` stay at the top of the repository and ship as package data
(``pyproject.toml``'s ``[tool.setuptools]`` tables). Building a wheel is slow, so
``scripts/check-wheel`` does that; these tests read the declarations instead, so that a new
file type, a new folder or a new subpackage cannot silently be left out of the wheel.
"""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mdevtest import data
from mdevtest.cli import main
from mdevtest.data import DATA_DIRS, data_dir
from mdevtest.errors import MdevtestError
from mdevtest.workloads.registry import known_workloads

REPO = Path(__file__).resolve().parents[2]


def _setuptools() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        table: dict[str, Any] = tomllib.load(f)["tool"]["setuptools"]
    return table


def test_data_dir_is_the_checkouts_top_level_folder() -> None:
    assert data_dir("workloads") == REPO / "workloads"
    assert data_dir("inventory") == REPO / "inventory"
    assert (data_dir("workloads") / "synthetic" / "mdt-workload.c").is_file()
    assert (data_dir("inventory") / "examples" / "gvt-pair.yaml").is_file()


def test_data_dir_refuses_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="workloads, inventory"):
        data_dir("reports")  # type: ignore[arg-type]


def test_a_stray_folder_next_to_the_package_is_no_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed into site-packages, a top-level ``workloads/`` of some other distribution must
    not be taken for ours: only a folder beside ``pyproject.toml`` counts as the checkout's."""
    (tmp_path / "workloads").mkdir()
    installed = tmp_path / "site" / "mdevtest"
    (installed / "_data" / "workloads").mkdir(parents=True)
    monkeypatch.setattr(data, "_SOURCE_ROOT", tmp_path)
    monkeypatch.setattr(data, "files", lambda _package: installed)

    assert data_dir("workloads") == installed / "_data" / "workloads"


def test_missing_data_says_to_reinstall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_SOURCE_ROOT", tmp_path)
    monkeypatch.setattr(data, "files", lambda _package: tmp_path / "mdevtest")

    with pytest.raises(MdevtestError, match=r"inventory/ folder is missing.*reinstall mdevtest"):
        data_dir("inventory")


@pytest.mark.parametrize("name", DATA_DIRS)
def test_every_data_file_is_declared_as_package_data(name: str) -> None:
    setuptools = _setuptools()
    package = f"mdevtest._data.{name}"
    assert package in setuptools["packages"]
    # data.py looks for the installed copy at mdevtest/_data/<name>
    assert setuptools["package-dir"][package] == name
    assert setuptools.get("include-package-data", True) is False, "package-data is the list"

    folder = REPO / name
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    # setuptools expands package-data with glob.glob (dotfiles excluded, ** recursive)
    declared = {
        match
        for pattern in setuptools["package-data"][package]
        for match in glob.glob(pattern, root_dir=folder, recursive=True)
        if (folder / match).is_file()
    }
    assert on_disk, f"{folder} is empty"
    assert sorted(on_disk - declared) == [], (
        f"files under {name}/ that the wheel would leave out: add a glob for them to "
        f'[tool.setuptools.package-data] "{package}" in pyproject.toml'
    )


def test_every_python_package_is_listed() -> None:
    """The packages are listed (not found) so the data folders can be mapped in; a new
    subpackage must be added there or the wheel lacks it."""
    listed = set(_setuptools()["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "mdevtest").rglob("__init__.py")
    }
    assert sorted(on_disk - listed) == []
    assert "py.typed" in _setuptools()["package-data"]["mdevtest"]


def test_workloads_command_lists_every_workload(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workloads"]) == 0

    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "DRIVER", "DESCRIPTION"]
    assert [line.split()[0] for line in lines[1:-1]] == list(known_workloads())
    synthetic = next(line for line in lines if line.startswith("synthetic "))
    name, kind, driver, description = synthetic.split(maxsplit=3)
    assert (name, kind, driver) == ("synthetic", "synthetic", "synthetic")
    assert description.startswith("Numbered, pixel-checkable frames")
    assert lines[-1] == f"{len(known_workloads())} workload(s) in {REPO / 'workloads'}"
