"""SR-IOV VFs: the simulated kernel's rules (mdevtest.lab.simsriov) and VfManager against the
mounted simulated sysfs, as a lab host has it."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdevtest.errors import MdevError
from mdevtest.lab.simsysfs import SimConfig, SimKernel, SimulatedSysfs, fuse_unavailable_reason
from mdevtest.localexec import LocalExecutor
from mdevtest.sriov import VfManager, parse_vgpu_types

XE = "0000:03:00.0"
NV = "0000:04:00.0"
XE_DIR = "devices/pci0000:00/0000:00:01.0/0000:03:00.0"
NV_VF = "devices/pci0000:00/0000:00:01.1/0000:04:00.1"

FUSE_MISSING = fuse_unavailable_reason()
needs_fuse = pytest.mark.skipif(FUSE_MISSING is not None, reason=f"no FUSE here: {FUSE_MISSING}")


def refused(kernel: SimKernel, path: str, data: bytes) -> int:
    with pytest.raises(OSError, match=r"\[Errno \d+\]") as info:
        kernel.write(path, data)
    return info.value.errno or 0


def test_numvfs_follows_the_kernel() -> None:
    k = SimKernel(SimConfig())
    assert refused(k, f"{XE_DIR}/sriov_numvfs", b"x") == errno.EINVAL
    assert refused(k, f"{XE_DIR}/sriov_numvfs", b"9") == errno.ERANGE
    k.write(f"{XE_DIR}/sriov_numvfs", b"2\n")
    k.write(f"{XE_DIR}/sriov_numvfs", b"2\n")  # the same count: nothing
    assert refused(k, f"{XE_DIR}/sriov_numvfs", b"3") == errno.EBUSY
    vf = k.lookup("bus/pci/devices/0000:03:00.2")
    assert vf is not None
    assert vf.target.endswith("0000:00:01.0/0000:03:00.2")  # type: ignore[union-attr]
    # autoprobe on (the default): the VFs went to the PF's driver
    assert k.lookup("bus/pci/drivers/xe").entries == (
        "bind",
        "unbind",
        XE,
        "0000:03:00.1",
        "0000:03:00.2",
    )  # type: ignore[union-attr]
    k.control_in_use(b"+0000:03:00.1")
    assert refused(k, f"{XE_DIR}/sriov_numvfs", b"0") == errno.EBUSY
    k.control_in_use(b"-0000:03:00.1")
    k.write(f"{XE_DIR}/sriov_numvfs", b"0")
    assert k.lookup("bus/pci/devices/0000:03:00.1") is None


def test_override_and_probe_bind_the_variant_driver() -> None:
    k = SimKernel(SimConfig())
    k.write(f"{XE_DIR}/sriov_drivers_autoprobe", b"0")
    k.write(f"{XE_DIR}/sriov_numvfs", b"1")
    vf = XE_DIR.replace("03:00.0", "03:00.1")
    assert k.lookup(f"{vf}/driver") is None  # autoprobe off: unbound
    assert refused(k, "bus/pci/drivers/xe-vfio-pci/bind", b"0000:03:00.1") == errno.ENODEV
    k.write(f"{vf}/driver_override", b"xe-vfio-pci\n")
    k.write("bus/pci/drivers_probe", b"0000:03:00.1")
    assert k.lookup(f"{vf}/driver").target.endswith("bus/pci/drivers/xe-vfio-pci")  # type: ignore[union-attr]
    assert refused(k, "bus/pci/drivers_probe", b"0000:09:00.1") == errno.ENODEV
    assert refused(k, "bus/pci/drivers/xe/unbind", b"0000:03:00.1") == errno.ENODEV
    k.write("bus/pci/drivers/xe-vfio-pci/unbind", b"0000:03:00.1")
    assert k.lookup(f"{vf}/driver") is None


def test_nvidia_types_per_vf_are_homogeneous() -> None:
    k = SimKernel(SimConfig())
    k.write(NV_VF.replace("04:00.1", "04:00.0") + "/sriov_numvfs", b"2")
    types = parse_vgpu_types(k.lookup(f"{NV_VF}/nvidia/creatable_vgpu_types").read or "")  # type: ignore[union-attr]
    assert types == {1155: "NVIDIA L40S-12Q", 1156: "NVIDIA L40S-24Q"}
    assert refused(k, f"{NV_VF}/nvidia/current_vgpu_type", b"999") == errno.EINVAL
    k.write(f"{NV_VF}/nvidia/current_vgpu_type", b"1156")
    assert refused(k, f"{NV_VF}/nvidia/current_vgpu_type", b"1155") == errno.EBUSY
    other = NV_VF.replace("04:00.1", "04:00.2")
    assert parse_vgpu_types(k.lookup(f"{other}/nvidia/creatable_vgpu_types").read or "") == {  # type: ignore[union-attr]
        1156: "NVIDIA L40S-24Q"
    }
    assert refused(k, f"{other}/nvidia/current_vgpu_type", b"1155") == errno.EINVAL


def test_config_round_trips_with_pfs() -> None:
    config = SimConfig()
    assert SimConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown keys"):
        SimConfig.from_json('{"parents": [], "pfs": [{"address": "0000:03:00.0", "bogus": 1}]}')


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[VfManager, SimulatedSysfs]]:
    with SimulatedSysfs(tmp_path / "host-a") as sim:
        state = tmp_path / "state"
        yield (
            VfManager(
                LocalExecutor("host-a"), sysfs_root=str(tmp_path / "host-a"), state_dir=str(state)
            ),
            sim,
        )


@needs_fuse
def test_allocate_release_and_restore_an_xe_vf(host: tuple[VfManager, SimulatedSysfs]) -> None:
    vfs, sim = host
    before = vfs.pf_state(XE)
    assert (before.num_vfs, before.autoprobe, before.driver) == (0, True, "xe")
    vf = vfs.allocate(XE, driver="xe-vfio-pci", owner="run1", vfs=2)
    assert (vf.uuid, vf.type_id) == ("0000:03:00.1", "xe-vfio-pci")
    state = vfs.pf_state(XE)
    assert (state.num_vfs, state.autoprobe) == (2, False)
    assert state.vf(vf.uuid).driver == "xe-vfio-pci"  # type: ignore[union-attr]
    assert os.path.realpath(vfs.device_dir(vf.uuid)).endswith("0000:00:01.0/0000:03:00.1")
    second = vfs.allocate(XE, driver="xe-vfio-pci", owner="run1", vfs=2)
    assert second.uuid == "0000:03:00.2"
    with pytest.raises(MdevError, match=r"no free VF on 0000:03:00\.0"):
        vfs.allocate(XE, driver="xe-vfio-pci", owner="run1", vfs=2)
    # another process of the run still has VFs: the last one out restores
    assert vfs.restore(XE) == ("PF 0000:03:00.0: not restored yet: 2 VF(s) still bound (owners run1)")
    assert vfs.reap(keep_owner="run2") == [vf.uuid, second.uuid]
    assert vfs.records() == []
    assert vfs.pf_state(XE).vf(vf.uuid).driver is None  # type: ignore[union-attr]
    sim.set_in_use(vf.uuid)
    with pytest.raises(MdevError, match=r"could not restore PF 0000:03:00\.0"):
        vfs.restore(XE)  # loudly: a VF is still in use (a QEMU nobody knows of)
    sim.set_in_use(vf.uuid, False)
    assert vfs.restore(XE) == "PF 0000:03:00.0: 0 VFs, autoprobe 1 (as before the run)"
    after = vfs.pf_state(XE)
    assert (after.num_vfs, after.autoprobe) == (0, True)
    assert vfs.restore(XE) is None


@needs_fuse
def test_nvidia_vf_keeps_its_host_driver_and_gets_a_type(host: tuple[VfManager, SimulatedSysfs]) -> None:
    vfs, _ = host
    vf = vfs.allocate(NV, driver="nvidia", vgpu_type=1156, owner="run1")
    assert vf.type_id == "1156"
    assert vfs.pf_state(NV).vf(vf.uuid).vgpu_type == 1156  # type: ignore[union-attr]
    with pytest.raises(MdevError, match=r"vGPU type 1155 refused on 0000:04:00\.2"):
        vfs.allocate(NV, driver="nvidia", vgpu_type=1155, owner="run1")  # time-sliced: one type
    assert vfs.creatable_types("0000:04:00.2") == {1156: "NVIDIA L40S-24Q"}
    assert [r.uuid for r in vfs.records()] == [vf.uuid]  # the refused one was not recorded
    vfs.release(vf)
    assert vfs.pf_state(NV).vf(vf.uuid).vgpu_type == 0  # type: ignore[union-attr]
    assert vfs.pf_state(NV).vf(vf.uuid).driver == "nvidia"  # type: ignore[union-attr]


@needs_fuse
def test_a_pf_that_is_not_one_is_named(host: tuple[VfManager, SimulatedSysfs]) -> None:
    vfs, _ = host
    with pytest.raises(MdevError, match=r"no PCI device 0000:09:00\.0"):
        vfs.pf_state("0000:09:00.0")
    with pytest.raises(MdevError, match="not valid"):
        vfs.pf_state("03:00.0; rm -rf /")


def test_a_round_trip_keeps_the_guests_vgpu_on_the_way_back() -> None:
    """local-lab-vf.yaml gives each direction another VF vendor; the guest keeps its own."""
    from mdevtest.data import data_dir
    from mdevtest.inventory import load_inventory
    from mdevtest.testbed import Testbed

    inv = load_inventory(data_dir("inventory") / "local-lab-vf.yaml")
    there, back = inv.pairs
    with Testbed(inv) as lab:  # connects lazily: nothing is reached here
        route = lab.reverse(there)
    assert (route.source, route.destination) == ("host-b", "host-a")
    assert route.migration_address == back.migration_address
    assert route.vgpu == there.vgpu != back.vgpu


@needs_fuse
def test_a_vf_someone_else_bound_to_vfio_is_left_alone(host: tuple[VfManager, SimulatedSysfs]) -> None:
    vfs, _ = host
    vfs.provision(XE, 2)
    theirs = Path(vfs.device_dir("0000:03:00.1"))
    (theirs / "driver_override").write_text("xe-vfio-pci\n")  # a VM of another tool
    (theirs.parents[1] / "drivers_probe").write_text("0000:03:00.1\n")
    assert vfs.pf_state(XE).vf("0000:03:00.1").driver == "xe-vfio-pci"  # type: ignore[union-attr]
    mine = vfs.allocate(XE, driver="xe-vfio-pci", owner="run1")
    assert mine.uuid == "0000:03:00.2"


@needs_fuse
def test_a_pf_a_dead_run_left_is_restored_by_the_next_reaper(
    host: tuple[VfManager, SimulatedSysfs],
) -> None:
    vfs, _ = host
    vfs.allocate(XE, driver="xe-vfio-pci", owner="dead-run", vfs=3)  # ... and then it died
    assert vfs.restore_left(keep=set()) == []  # its VF is still bound: not yet
    assert vfs.reap(keep_owner="next-run") == ["0000:03:00.1"]
    assert vfs.restore_left(keep={XE}) == []  # a PF of this session's own: its close does it
    assert vfs.restore_left(keep=set()) == [
        "PF 0000:03:00.0: 0 VFs, autoprobe 1 (as before the run); left by a run that ended "
        "without restoring it"
    ]
    state = vfs.pf_state(XE)
    assert (state.num_vfs, state.autoprobe) == (0, True)
