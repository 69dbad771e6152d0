"""Negative cases: migrations that must not happen fail cleanly, and are reported as expected.

Each case asserts the refusal names its cause, is classified (product or infrastructure), leaves
the guest running on the source with its heartbeat advancing, and leaves no destination behind
(no QEMU, no mdev). What a pair cannot offer (a second vGPU type) is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import allure
import pytest

from mdevtest.errors import MachineError, MdevError, MdevtestError, MigrationBlocked, classify
from mdevtest.guest import Guest
from mdevtest.inventory import HostPair
from mdevtest.mdev import MdevInstance
from mdevtest.migration import MigrationPolicy
from mdevtest.migration_run import MigrationOutcome
from mdevtest.plugin.asserts import assert_no_destination_left, assert_still_on_source
from mdevtest.plugin.fixtures import last_outcome
from mdevtest.plugin.hooks import pair_simulated
from mdevtest.testbed import Testbed

Migrate = Callable[..., MigrationOutcome]

#: QEMU's NVMe controller registers an unmigratable vmstate: a migration blocker on any host.
BLOCKER = ("-device", "nvme,serial=mdt-blocker,id=mdt-blocker")


@allure.feature("negative")
def test_mismatched_vgpu_types_are_refused(
    request: pytest.FixtureRequest, lab: Testbed, pair: HostPair, guest: Guest, migrate: Migrate
) -> None:
    """The destination offers another type of the same parent: refused before any byte moves."""
    if pair.vgpu is None:
        pytest.skip(f"{pair.id} has no vGPU")
    types = [
        t
        for parent in lab.mdevs(pair.destination).parents()
        for t in parent.types
        if t.type_id != pair.vgpu.type and t.available_instances > 0
    ]
    if not types:
        pytest.skip(f"{pair.destination} offers no second vGPU type with a free instance")
    other = pair.model_copy(update={"vgpu": pair.vgpu.model_copy(update={"type": types[0].type_id})})
    source = guest.machine
    with pytest.raises(MdevError, match="vGPU type mismatch") as refused:
        migrate(guest, to=other)
    assert pair.vgpu.type in str(refused.value)
    assert types[0].type_id in str(refused.value)
    assert classify(refused.value) == "infrastructure"  # a lab set up wrong, not a product bug
    assert_still_on_source(guest, source)
    assert_no_destination_left(lab, pair, last_outcome(request.node))


@pytest.fixture
def destination_full(lab: Testbed, pair: HostPair) -> Iterator[list[MdevInstance]]:
    """Every free instance of the pair's type on the destination taken (and given back after)."""
    if pair.vgpu is None:
        pytest.skip(f"{pair.id} has no vGPU")
    mdevs = lab.mdevs(pair.destination, pair)
    taken: list[MdevInstance] = []
    try:
        mtype = mdevs.find_type(pair.vgpu.type, pair.vgpu.parent)
        for _ in range(mtype.available_instances):
            taken.append(mdevs.create(pair.vgpu.type, parent=pair.vgpu.parent, owner=lab.run_id))
        yield taken
    finally:
        for instance in taken:
            mdevs.remove(instance.uuid, missing_ok=True)


@allure.feature("negative")
def test_no_free_instance_on_the_destination_is_refused(
    lab: Testbed, pair: HostPair, guest: Guest, destination_full: list[MdevInstance], migrate: Migrate
) -> None:
    """The destination has no free instance: the destination is never started."""
    assert pair.vgpu is not None
    source = guest.machine
    with pytest.raises(MdevError, match="no available instance") as refused:
        migrate(guest)
    message = str(refused.value)
    assert pair.destination in message
    assert pair.vgpu.type in message
    assert classify(refused.value) == "infrastructure"
    assert_still_on_source(guest, source)
    left = {i.uuid for i in lab.mdevs(pair.destination).instances()}
    assert left == {i.uuid for i in destination_full}, "an mdev was created or lost on the destination"


@allure.feature("negative")
@pytest.mark.qemu_args(*BLOCKER)
def test_blocked_migration_is_refused(
    request: pytest.FixtureRequest, lab: Testbed, pair: HostPair, guest: Guest, migrate: Migrate
) -> None:
    """A device that cannot migrate: QEMU's blocked-reasons name it, nothing is sent."""
    source = guest.machine
    with pytest.raises(MigrationBlocked, match="non-migratable device") as refused:
        migrate(guest)
    assert "nvme" in str(refused.value)
    assert classify(refused.value) == "product"
    outcome = last_outcome(request.node)
    assert outcome is not None
    assert outcome.failure_class == "product"
    assert_still_on_source(guest, source)
    assert_no_destination_left(lab, pair, outcome)


@pytest.fixture
def real_vfio(pair: HostPair) -> None:
    """Skip (before a guest boots) a pair whose vGPU is not a real VFIO device: what is tested is
    QEMU's VFIO migration code, which a simulated vGPU does not reach."""
    if pair.vgpu is None or pair_simulated(pair):
        pytest.skip(f"{pair.id}: no real VFIO device (simulated vGPU): nothing for QEMU to refuse")


@allure.feature("negative")
def test_postcopy_with_a_vfio_device_is_refused(
    real_vfio: None,
    request: pytest.FixtureRequest,
    lab: Testbed,
    pair: HostPair,
    guest: Guest,
    migrate: Migrate,
) -> None:
    """Post-copy cannot carry VFIO device state: QEMU refuses the migration (9.0+: when it is
    started; 8.2: in the device's setup), nothing of the guest moves."""
    source = guest.machine
    with pytest.raises(MdevtestError) as refused:
        migrate(guest, policy=MigrationPolicy.from_options(postcopy=True, timeout_s=300))
    assert "VFIO migration is not supported with postcopy migration" in str(refused.value)
    outcome = last_outcome(request.node)
    assert outcome is not None
    assert_still_on_source(guest, source)
    assert_no_destination_left(lab, pair, outcome)


@allure.feature("negative")
def test_a_vfio_device_behind_a_viommu_is_refused(
    real_vfio: None, lab: Testbed, pair: HostPair, preflight: object
) -> None:
    """A guest IOMMU in front of a VFIO device without dirty tracking through it: QEMU (8.1+)
    blocks its migration, and with ``enable-migration=on`` (what mdevtest asks for) refuses to
    start the guest at all, saying why. The vGPU is given back."""
    before = {i.uuid for i in lab.mdevs(pair.source).instances()}
    with pytest.raises(MachineError, match="not supported with vIOMMU enabled") as refused:
        lab.start_source(pair, qemu_args=("-device", "intel-iommu"))
    assert "QEMU exited while starting" in str(refused.value)
    assert {i.uuid for i in lab.mdevs(pair.source).instances()} == before, "the vGPU was not given back"
