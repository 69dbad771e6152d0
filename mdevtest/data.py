"""Where mdevtest's data folders are: ``workloads/`` and ``inventory/``, in a checkout or installed.

Both folders live at the top of the repository (the layout is fixed), outside the ``mdevtest``
package. A wheel carries them as package data under ``mdevtest/_data/`` (``pyproject.toml`` maps
``mdevtest._data.workloads`` to ``workloads/`` and ``mdevtest._data.inventory`` to
``inventory/``). :func:`data_dir` prefers the checkout's folder, so an edit to a workload
definition or a guest-side source is live without reinstalling, and otherwise returns the
installed copy.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal, get_args

from mdevtest.errors import MdevtestError

__all__ = ["DATA_DIRS", "DataName", "data_dir"]

DataName = Literal["workloads", "inventory"]
#: The data folders mdevtest ships, by name.
DATA_DIRS: tuple[DataName, ...] = get_args(DataName)

#: The directory holding the ``mdevtest`` package; the repository's top in a source checkout.
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def data_dir(name: DataName) -> Path:
    """The folder ``name`` (``"workloads"`` or ``"inventory"``) as a real directory.

    In a source checkout (the package sits next to ``pyproject.toml``), the repository's
    top-level folder; otherwise the installed package data. Raises :class:`MdevtestError` when
    neither exists (an installation that lost its data: reinstall mdevtest).
    """
    if name not in DATA_DIRS:
        raise ValueError(f"unknown data folder {name!r}; one of {', '.join(DATA_DIRS)}")
    checkout = _SOURCE_ROOT / name
    if (_SOURCE_ROOT / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    installed = files("mdevtest") / "_data" / name
    # installed from a wheel, unpacked: a real folder, not inside a zip file
    if not isinstance(installed, Path) or not installed.is_dir():
        raise MdevtestError(
            f"mdevtest's {name}/ folder is missing: neither {checkout} (a source checkout) nor "
            f"{installed} (the installed package data) is a directory; reinstall mdevtest "
            "(`pip install .` in a checkout, or its wheel)"
        )
    return installed
