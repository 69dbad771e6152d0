"""The vGPU layer on the simulated parent over real SSH: lifecycle, mdevctl, preflight, reaping."""

from __future__ import annotations

import shlex
import uuid

import pytest

from mdevtest.errors import PreflightFailed
from mdevtest.mdev import MdevManager
from mdevtest.preflight import preflight_pair
from mdevtest.testbed import Testbed

TYPE = "i915-GVTg_V5_4"


@pytest.mark.parametrize("host", ["host-a", "host-b"])
@pytest.mark.parametrize("via", ["sysfs", "mdevctl"])
def test_create_remove_and_mdevctl_agrees_with_the_tree(lab: Testbed, host: str, via: str) -> None:
    remote = lab.remote(host)
    mdevs = MdevManager(remote, sysfs_root=remote.host.sysfs_root, use_mdevctl=via == "mdevctl")
    before = mdevs.find_type(TYPE).available_instances
    created = mdevs.create(TYPE)
    try:
        assert mdevs.find_type(TYPE).available_instances == before - 1
        tree = {(i.uuid, i.parent, i.type_id) for i in mdevs.instances()}
        assert (created.uuid, created.parent, TYPE) in tree
        listed = {(i.uuid, i.parent, i.type_id) for i in mdevs.mdevctl_list()}
        assert listed == tree, "the real mdevctl sees other devices than the sysfs tree"
        types = {
            (t.parent, t.type_id, t.available_instances) for p in mdevs.mdevctl_types() for t in p.types
        }
        assert types == {
            (t.parent, t.type_id, t.available_instances) for p in mdevs.parents() for t in p.types
        }
    finally:
        mdevs.remove(created.uuid)
    assert mdevs.find_type(TYPE).available_instances == before
    assert created.uuid not in {i.uuid for i in mdevs.instances()}


def test_exhausted_destination_fails_preflight_saying_so(lab: Testbed) -> None:
    pair = lab.inventory.pairs[0]
    dst = lab.mdevs(pair.destination)
    hogs = [
        dst.create(TYPE, owner="another-run") for _ in range(dst.find_type(TYPE).available_instances)
    ]
    try:
        report = preflight_pair(lab, pair)
        assert not report.passed
        (failure,) = report.failures
        assert failure.host == pair.destination
        assert "available_instances=0" in failure.detail
        with pytest.raises(PreflightFailed, match=rf"{pair.destination}: free {TYPE}"):
            report.raise_for_failures()
    finally:
        for hog in hogs:
            dst.remove(hog.uuid)
    assert preflight_pair(lab, pair).passed


def test_reap_removes_only_mdevs_an_earlier_run_recorded(lab: Testbed) -> None:
    host = lab.inventory.hosts[0].name
    mdevs = lab.mdevs(host)
    left = mdevs.create(TYPE, owner="crashedrun")  # ours, from a run that died
    foreign = str(uuid.uuid4())  # someone else's: created straight through sysfs, not recorded
    create = (
        f"{mdevs.sysfs_root}/sys/class/mdev_bus/{left.parent}/mdev_supported_types/i915-GVTg_V5_8/create"
    )
    lab.remote(host).check_shell(f"echo {foreign} > {shlex.quote(create)}")
    try:
        reaped = lab.reap()[host]
        assert f"mdev {left.uuid}" in reaped
        present = {i.uuid for i in mdevs.instances()}
        assert left.uuid not in present
        assert foreign in present, "reaping touched an mdev that is not ours"
    finally:
        mdevs.remove(foreign, missing_ok=True)
        mdevs.remove(left.uuid, missing_ok=True)
