"""The embedded labs: ``netns`` (:mod:`.local`, hosts as network namespaces) and ``nested``
(:mod:`.nested`, hosts as QEMU VMs with a real mdev). :func:`make_lab` picks the one an
inventory's ``local_lab.flavor`` names; both have the same ``up``/``down``/``status`` surface
(:class:`Lab`). What the lab modules share lives in :mod:`.common`, under public names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mdevtest.errors import LabError
from mdevtest.lab.common import Lab, LabStatusView, Progress

if TYPE_CHECKING:
    from mdevtest.inventory import Inventory


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
