"""The embedded labs: ``netns`` (:mod:`.local`, hosts as network namespaces) and ``nested``
(:mod:`.nested`, hosts as QEMU VMs with a real mdev). :func:`make_lab` picks the one an
inventory's ``local_lab.flavor`` names; both have the same ``up``/``down``/``status`` surface."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mdevtest.errors import LabError

if TYPE_CHECKING:
    from mdevtest.inventory import Inventory

Progress = Callable[[str], None]


class LabStatusView(Protocol):
    """What ``lab status`` shows of either flavour."""

    @property
    def up(self) -> bool: ...

    @property
    def anything(self) -> bool: ...

    def render(self) -> str: ...


class Lab(Protocol):
    """An embedded lab: ``up`` is idempotent and returns whether it started the lab (so the
    caller owns it); ``down`` removes everything the lab made (``state_dir`` included) and is
    idempotent."""

    state_dir: Path

    def up(self, progress: Progress = ..., *, build_image: bool = True) -> bool: ...

    def down(self, progress: Progress = ...) -> None: ...

    def status(self) -> LabStatusView: ...


def make_lab(inventory: Inventory) -> Lab:
    """The embedded lab ``inventory`` describes (its ``local_lab.flavor``)."""
    spec = inventory.local_lab
    if spec is None:
        raise LabError(
            f"{inventory.source_path}: this inventory has no local_lab section; `mdevtest lab` "
            "only manages the embedded labs (inventory/local-lab.yaml, inventory/nested-mtty.yaml)"
        )
    if spec.flavor == "nested":
        from mdevtest.lab.nested import NestedLab

        return NestedLab(inventory)
    from mdevtest.lab.local import LocalLab

    return LocalLab(inventory)


__all__ = ["Lab", "LabStatusView", "Progress", "make_lab"]
