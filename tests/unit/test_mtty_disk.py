"""The nested lab's UEFI disk guest: which kernel modules go into it, in which order."""

from __future__ import annotations

import pytest

from mdevtest.errors import LabError
from mdevtest.lab.images import LAB_IMAGES
from mdevtest.lab.mtty_disk import module_closure

# The shape of trixie's modules.dep for the two modules (dependencies listed after the colon).
DEP = """\
kernel/drivers/block/virtio_blk.ko.xz:
kernel/drivers/gpu/drm/drm.ko.xz:
kernel/drivers/gpu/drm/drm_kms_helper.ko.xz: kernel/drivers/gpu/drm/drm.ko.xz
kernel/drivers/gpu/drm/ttm/ttm.ko.xz: kernel/drivers/gpu/drm/drm.ko.xz
kernel/drivers/gpu/drm/drm_ttm_helper.ko.xz: kernel/drivers/gpu/drm/ttm/ttm.ko.xz kernel/drivers/gpu/drm/drm_kms_helper.ko.xz kernel/drivers/gpu/drm/drm.ko.xz
kernel/drivers/gpu/drm/drm_vram_helper.ko.xz: kernel/drivers/gpu/drm/drm_ttm_helper.ko.xz kernel/drivers/gpu/drm/ttm/ttm.ko.xz kernel/drivers/gpu/drm/drm_kms_helper.ko.xz kernel/drivers/gpu/drm/drm.ko.xz
kernel/drivers/gpu/drm/tiny/bochs.ko.xz: kernel/drivers/gpu/drm/drm_vram_helper.ko.xz kernel/drivers/gpu/drm/drm_ttm_helper.ko.xz kernel/drivers/gpu/drm/ttm/ttm.ko.xz kernel/drivers/gpu/drm/drm_kms_helper.ko.xz kernel/drivers/gpu/drm/drm.ko.xz
"""  # noqa: E501
BUILTIN = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/char/virtio_console.ko\n"


def names(paths: list[str]) -> list[str]:
    return [p.rsplit("/", 1)[-1].split(".ko")[0] for p in paths]


def test_dependencies_load_first_and_once() -> None:
    order = names(module_closure(DEP, BUILTIN, ("virtio_blk", "bochs")))
    assert order[0] == "virtio_blk"
    assert order[-1] == "bochs"
    assert len(order) == len(set(order)) == 7
    for before, after in (("drm", "drm_kms_helper"), ("ttm", "drm_ttm_helper"),
                          ("drm_ttm_helper", "drm_vram_helper")):  # fmt: skip
        assert order.index(before) < order.index(after)


def test_built_in_modules_are_not_loaded_and_unknown_ones_are_errors() -> None:
    assert module_closure(DEP, BUILTIN, ("virtio_console",)) == []
    with pytest.raises(LabError, match=r"module nope .*not in modules\.dep"):
        module_closure(DEP, BUILTIN, ("nope",))


def test_the_nested_lab_owns_both_of_its_guest_images() -> None:
    assert {k for k, v in LAB_IMAGES.items() if v.lab == "nested"} == {"lab-mtty", "lab-mtty-uefi"}
    assert LAB_IMAGES["lab-mtty-uefi"].why_not("mtty") is None
