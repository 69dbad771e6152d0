"""The import graph of mdevtest/ has no circle, of any kind, and no module imports another's
private names (scripts/check-imports measures both; this keeps CI holding them)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "check-imports"

#: Private names still imported across files, by the module they come from, with why. An entry
#: that no longer matches anything fails the test too: remove it then.
PENDING_PRIVATE: dict[str, str] = {}


@pytest.fixture(scope="module")
def check_imports() -> ModuleType:
    loader = SourceFileLoader("check_imports", str(SCRIPT))
    spec = importlib.util.spec_from_loader("check_imports", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


def test_mdevtest_has_no_import_circle(check_imports: ModuleType) -> None:
    graph = check_imports.collect(REPO)
    assert graph.count("module") > 100  # it did read the package
    assert graph.count("local") > 10
    for label, kinds in check_imports.LAYERS:
        assert check_imports.cycles(graph.edges, kinds) == [], label


def test_no_private_names_imported_across_modules(check_imports: ModuleType) -> None:
    private = check_imports.collect(REPO).private_imports
    unexpected = [str(p) for p in private if p.module not in PENDING_PRIVATE]
    assert unexpected == []
    stale = set(PENDING_PRIVATE) - {p.module for p in private}
    assert stale == set(), "no longer imported privately: remove from PENDING_PRIVATE"


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "mdevtest" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("b_imports_a", "layer"),
    [
        ("from mdevtest.a import X\n", "module-level imports"),
        ("def f():\n    from mdevtest import a\n", "adding function-local imports"),
        ('REGISTRY = {"a": "mdevtest.a"}\n', "adding imports by name"),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mdevtest.a import X\n",
         "adding TYPE_CHECKING-only imports"),
    ],
)  # fmt: skip
def test_a_circle_is_found_in_its_layer(
    check_imports: ModuleType, tmp_path: Path, b_imports_a: str, layer: str
) -> None:
    root = _package(
        tmp_path, {"__init__.py": "", "a.py": "from mdevtest.b import Y\nX = 1\n", "b.py": b_imports_a}
    )
    graph = check_imports.collect(root)
    found = {label: check_imports.cycles(graph.edges, kinds) for label, kinds in check_imports.LAYERS}
    labels = [label for label, _ in check_imports.LAYERS]
    first = labels.index(layer)
    assert all(found[label] == [] for label in labels[:first])
    assert found[layer] == [["mdevtest.a", "mdevtest.b", "mdevtest.a"]]


def test_a_package_and_its_modules(check_imports: ModuleType, tmp_path: Path) -> None:
    """A module importing its own package's __init__ counts; the package's __init__ merely
    running first (an import of a sibling) does not."""
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "p/__init__.py": "def make():\n    from mdevtest.p.impl import Impl\n    return Impl()\n",
            "p/base.py": "class Base: ...\n",
            "p/impl.py": "from mdevtest.p.base import Base\nclass Impl(Base): ...\n",
        },
    )
    kinds = check_imports.KINDS
    assert check_imports.cycles(check_imports.collect(root).edges, kinds) == []
    (root / "mdevtest" / "p" / "impl.py").write_text("from mdevtest.p import make\n")
    circles = check_imports.cycles(check_imports.collect(root).edges, kinds)
    assert circles == [["mdevtest.p", "mdevtest.p.impl", "mdevtest.p"]]


def test_the_script_reports_and_fails(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "def f():\n    from mdevtest.b import g\n",
            "b.py": "from mdevtest.a import _helper, f\ndef g(): ...\n",
        },
    )
    argv = [sys.executable, str(SCRIPT), "--root", str(root)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1
    assert "circles, module-level imports: 0" in run.stdout
    assert "  mdevtest.a -> mdevtest.b -> mdevtest.a" in run.stdout
    assert "mdevtest/b.py:1: from mdevtest.a import _helper" in run.stdout
