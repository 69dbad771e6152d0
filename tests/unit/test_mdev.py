"""MdevManager on real-format sysfs trees (GVT-g, mtty, NVIDIA) built as plain files: no FUSE, no SSH.

The trees come from ``data/sim-*.json`` (:func:`write_static_tree` renders exactly what the simulated
sysfs serves) and hold the mdevs of ``data/sample-devices.json``; ``data/mdevctl-*`` is what the real
mdevctl printed for the same trees. Writes to ``create``/``remove`` are answered with the kernel's
errnos by ``data/fake_kernel_tee.py`` (first ``tee`` on PATH), so every refusal path runs for real.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from mdevtest.errors import CommandFailed, CommandTimedOut, MdevError
from mdevtest.lab.simsysfs import SimConfig, write_static_tree
from mdevtest.localexec import Executor, LocalExecutor
from mdevtest.mdev import (
    MdevInstance,
    MdevManager,
    MdevParent,
    errno_name,
    mdevctl_argv,
    parse_mdevctl_list,
    parse_mdevctl_types,
)
from mdevtest.remote import CommandResult

DATA = Path(__file__).parent / "data"
DEVICES: dict[str, dict[str, str]] = json.loads((DATA / "sample-devices.json").read_text())
VENDORS = ("gvt", "mtty", "nvidia")


# --------------------------------------------------------------------------------------------
# Fixtures: a host tree and an executor whose `tee` behaves like the kernel


class KernelExecutor(LocalExecutor):
    """A LocalExecutor whose PATH starts with a `tee` that answers like the kernel (see module doc)."""

    def __init__(self, bin_dir: Path) -> None:
        super().__init__("host-b", default_timeout=60)
        self.path = f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        self.scripts: list[str] = []

    def run_shell(
        self, script: str, *, timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        self.scripts.append(script)
        return super().run_shell(script, timeout=timeout, env={"PATH": self.path, **(env or {})})


@pytest.fixture
def executor(tmp_path: Path) -> KernelExecutor:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tee = bin_dir / "tee"
    tee.write_text(f'#!/bin/sh\nexec {sys.executable} {DATA / "fake_kernel_tee.py"} "$@"\n')
    tee.chmod(0o755)
    return KernelExecutor(bin_dir)


def make_host(root: Path, vendor: str, devices: Mapping[str, str] | None = None) -> Path:
    """A plain sysfs tree of ``vendor``'s sample host under ``root``; returns ``root``."""
    config = SimConfig.from_json((DATA / f"sim-{vendor}.json").read_text())
    root.mkdir(parents=True, exist_ok=True)
    write_static_tree(root, config, DEVICES[vendor] if devices is None else devices)
    state = {"config": json.loads(config.to_json()), "in_use": []}
    (root / "fake-kernel.json").write_text(json.dumps(state))
    return root


def mark_in_use(root: Path, uuid: str) -> None:
    state = json.loads((root / "fake-kernel.json").read_text())
    state["in_use"].append(uuid)
    (root / "fake-kernel.json").write_text(json.dumps(state))


def manager(executor: Executor, root: Path) -> MdevManager:
    return MdevManager(executor, sysfs_root=str(root), state_dir=str(root / "state"))


def normalised(parents: Sequence[MdevParent]) -> list[MdevParent]:
    """Parents as mdevctl shows them: multi-line descriptions joined with ', '."""
    return [
        MdevParent(
            p.name,
            tuple(replace(t, description=", ".join(t.description.splitlines())) for t in p.types),
        )
        for p in parents
    ]


# --------------------------------------------------------------------------------------------
# Discovery: the same answers as the real mdevctl on the same trees


@pytest.mark.parametrize("vendor", VENDORS)
def test_parents_match_what_mdevctl_reported(tmp_path: Path, vendor: str) -> None:
    root = make_host(tmp_path / "host", vendor)
    mgr = manager(LocalExecutor("host-a"), root)
    expected = parse_mdevctl_types((DATA / f"mdevctl-types-{vendor}.json").read_text(), host="host-a")
    assert normalised(mgr.parents()) == normalised(expected)
    assert expected, "the sample must not be empty"


@pytest.mark.parametrize("vendor", VENDORS)
def test_instances_match_what_mdevctl_reported(tmp_path: Path, vendor: str) -> None:
    root = make_host(tmp_path / "host", vendor)
    mgr = manager(LocalExecutor("host-a"), root)
    expected = parse_mdevctl_list((DATA / f"mdevctl-list-{vendor}.json").read_text())
    assert mgr.instances() == expected
    assert {i.uuid for i in expected} == set(DEVICES[vendor])


def test_gvt_types_as_sysfs_shows_them(tmp_path: Path) -> None:
    mgr = manager(LocalExecutor("host-a"), make_host(tmp_path / "h", "gvt"))
    (parent,) = mgr.parents()
    assert parent.name == "0000:00:02.0"
    assert [t.type_id for t in parent.types] == [
        "i915-GVTg_V5_1", "i915-GVTg_V5_2", "i915-GVTg_V5_4", "i915-GVTg_V5_8",
    ]  # fmt: skip
    v54 = parent.type("i915-GVTg_V5_4")
    assert v54 is not None
    assert v54.name == "GVTg_V5_4"
    assert v54.device_api == "vfio-pci"
    assert v54.description.splitlines() == [
        "low_gm_size: 128MB", "high_gm_size: 512MB", "fence: 4", "resolution: 1920x1200", "weight: 4",
    ]  # fmt: skip
    # one V5_4 and one V5_8 exist: shared graphics memory leaves 2 x V5_4, 0 x V5_1
    assert {t.type_id: t.available_instances for t in parent.types} == {
        "i915-GVTg_V5_1": 0, "i915-GVTg_V5_2": 1, "i915-GVTg_V5_4": 2, "i915-GVTg_V5_8": 5,
    }  # fmt: skip


def test_mtty_idle_host_has_24_and_12_free(tmp_path: Path) -> None:
    mgr = manager(LocalExecutor("l1"), make_host(tmp_path / "h", "mtty", devices={}))
    (parent,) = mgr.parents()
    assert parent.name == "mtty"
    assert [(t.type_id, t.name, t.available_instances, t.description) for t in parent.types] == [
        ("mtty-1", "Single port serial", 24, ""),
        ("mtty-2", "Dual port serial", 12, ""),
    ]
    assert mgr.instances() == []


def test_nvidia_offers_only_the_type_in_use(tmp_path: Path) -> None:
    mgr = manager(LocalExecutor("gpu1"), make_host(tmp_path / "h", "nvidia"))
    (parent,) = mgr.parents()
    free = {t.type_id: t.available_instances for t in parent.types}
    assert free["nvidia-231"] == 7
    assert all(n == 0 for t, n in free.items() if t != "nvidia-231")
    t231 = parent.type("nvidia-231")
    assert t231 is not None
    assert t231.name == "GRID T4-2Q"
    assert "framebuffer=2048M" in t231.description


def test_discovery_is_one_round_trip(tmp_path: Path, executor: KernelExecutor) -> None:
    mgr = manager(executor, make_host(tmp_path / "h", "gvt"))
    mgr.parents()
    mgr.instances()
    assert len(executor.scripts) == 2


def test_empty_host_has_no_parents(tmp_path: Path) -> None:
    mgr = manager(LocalExecutor("bare"), tmp_path / "nothing-here")
    assert mgr.parents() == []
    assert mgr.instances() == []


def test_hostile_root_path_is_quoted(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    root = make_host(tmp_path / f"we ird $(touch {canary}) 'q' \"dq\" ;x", "mtty")
    mgr = manager(LocalExecutor("h"), root)
    assert [p.name for p in mgr.parents()] == ["mtty"]
    assert len(mgr.instances()) == 2
    assert not canary.exists()


def test_sysfs_path_is_under_the_root() -> None:
    mgr = MdevManager(LocalExecutor(), sysfs_root="/var/lib/lab/host-a/")
    assert mgr.sysfs_path("83B8F4F2-509F-382F-3C1E-E6BFE0FA1001") == (
        "/var/lib/lab/host-a/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
    )
    assert MdevManager(LocalExecutor()).sysfs_path("u") == "/sys/bus/mdev/devices/u"


# --------------------------------------------------------------------------------------------
# find_type and its errors


def test_find_type_without_parent_picks_the_one_with_most_free(tmp_path: Path) -> None:
    root = make_host(tmp_path / "h", "gvt")
    mgr = manager(LocalExecutor("h"), root)
    assert mgr.find_type("i915-GVTg_V5_8").available_instances == 5
    assert mgr.find_type("i915-GVTg_V5_8", parent="0000:00:02.0").parent == "0000:00:02.0"


def test_missing_type_lists_the_available_ones(tmp_path: Path) -> None:
    mgr = manager(LocalExecutor("host-b"), make_host(tmp_path / "h", "mtty"))
    with pytest.raises(MdevError) as info:
        mgr.find_type("mtty-4")
    msg = str(info.value)
    assert msg.startswith("host-b: mdev type mtty-4 is not offered by any parent")
    assert "mtty-1 (Single port serial, 21 free) on mtty" in msg
    assert "mtty-2 (Dual port serial, 10 free) on mtty" in msg
    assert "fix vgpu.type" in msg


def test_missing_parent_lists_the_present_ones(tmp_path: Path) -> None:
    mgr = manager(LocalExecutor("host-b"), make_host(tmp_path / "h", "gvt"))
    with pytest.raises(MdevError) as info:
        mgr.find_type("i915-GVTg_V5_4", parent="0000:00:03.0")
    msg = str(info.value)
    assert msg.startswith("host-b: mdev parent 0000:00:03.0 (for type i915-GVTg_V5_4) not found")
    assert "parents present: 0000:00:02.0; fix vgpu.parent" in msg


def test_no_parent_at_all_says_load_the_driver(tmp_path: Path) -> None:
    mgr = manager(LocalExecutor("host-b"), tmp_path / "empty")
    with pytest.raises(MdevError, match=r"no mdev parent devices .* load the vendor driver"):
        mgr.find_type("i915-GVTg_V5_4")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "with space", ".", ""])
def test_names_that_leave_the_tree_are_refused(tmp_path: Path, bad: str) -> None:
    mgr = manager(LocalExecutor("h"), tmp_path)
    with pytest.raises(MdevError, match="invalid mdev type"):
        mgr.find_type(bad)
    with pytest.raises(MdevError, match="invalid mdev parent"):
        mgr.find_type("mtty-1", parent=bad)


# --------------------------------------------------------------------------------------------
# create / remove through the (fake) kernel


def test_create_and_remove_via_sysfs(tmp_path: Path, executor: KernelExecutor) -> None:
    root = make_host(tmp_path / "h", "gvt", devices={})
    mgr = manager(executor, root)
    inst = mgr.create("i915-GVTg_V5_4", owner="run-1")
    assert inst.parent == "0000:00:02.0"
    assert inst.type_id == "i915-GVTg_V5_4"
    assert mgr.instances() == [inst]
    assert os.path.realpath(mgr.sysfs_path(inst.uuid)).endswith(f"0000:00:02.0/{inst.uuid}")
    assert mgr.find_type("i915-GVTg_V5_4").available_instances == 3
    assert mgr.find_type("i915-GVTg_V5_8").available_instances == 6  # graphics memory is shared
    assert (root / "state" / "mdevs").read_text() == f"{inst.uuid} 0000:00:02.0 i915-GVTg_V5_4 run-1\n"
    mgr.remove(inst.uuid)
    assert mgr.instances() == []
    assert (root / "state" / "mdevs").read_text() == ""
    assert mgr.find_type("i915-GVTg_V5_4").available_instances == 4


def test_create_with_given_uppercase_uuid(tmp_path: Path, executor: KernelExecutor) -> None:
    mgr = manager(executor, make_host(tmp_path / "h", "mtty", devices={}))
    inst = mgr.create("mtty-2", uuid="0F0E0D0C-0B0A-4908-8706-050403020100")
    assert inst == MdevInstance("0f0e0d0c-0b0a-4908-8706-050403020100", "mtty", "mtty-2")
    assert mgr.instances() == [inst]


def test_no_available_instance_is_refused_before_writing(
    tmp_path: Path, executor: KernelExecutor
) -> None:
    mgr = manager(executor, make_host(tmp_path / "h", "gvt"))
    with pytest.raises(MdevError) as info:
        mgr.create("i915-GVTg_V5_1")
    assert str(info.value) == (
        "host-b: no available instance of i915-GVTg_V5_1 on 0000:00:02.0 (available_instances=0); "
        "remove stale vGPUs with `mdevtest lab reap` or pick another type"
    )
    assert not any("tee" in s for s in executor.scripts)


def test_no_available_instance_names_who_holds_them(tmp_path: Path, executor: KernelExecutor) -> None:
    mgr = manager(executor, make_host(tmp_path / "h", "nvidia"))
    free = {t.type_id: t.available_instances for p in mgr.parents() for t in p.types}
    assert free["nvidia-234"] == 0
    with pytest.raises(MdevError, match=r"no available instance of nvidia-234 on 0000:3b:00\.0"):
        mgr.require_available("nvidia-234")
    for _ in range(7):
        mgr.create("nvidia-231")
    with pytest.raises(MdevError) as info:
        mgr.create("nvidia-231")
    msg = str(info.value)
    assert "no available instance of nvidia-231 on 0000:3b:00.0 (available_instances=0)" in msg
    holders = msg.split("existing instances of it: ")[1].split(";", maxsplit=1)[0].split(", ")
    assert len(holders) == 8
    assert "aa618089-8b16-4d01-a136-25a0f3c73123" in holders


def test_kernel_exhaustion_is_reported_as_no_instance(tmp_path: Path, executor: KernelExecutor) -> None:
    """The listing said 1 free, the driver then refused (ENOSPC, as GVT-g and mtty do)."""
    root = make_host(
        tmp_path / "h",
        "mtty",
        devices={f"00000000-0000-4000-8000-0000000000{i:02d}": "mtty mtty-2" for i in range(12)},
    )
    attr = root / "sys/devices/virtual/mtty/mtty/mdev_supported_types/mtty-2/available_instances"
    attr.write_text("1\n")  # a stale view: another user took the last ports meanwhile
    mgr = manager(executor, root)
    with pytest.raises(MdevError) as info:
        mgr.create("mtty-2")
    assert "no available instance of mtty-2 on mtty (the kernel refused with ENOSPC)" in str(info.value)
    assert "mdevtest lab reap" in str(info.value)


def test_malformed_uuid_is_refused_with_einval(tmp_path: Path, executor: KernelExecutor) -> None:
    mgr = manager(executor, make_host(tmp_path / "h", "gvt"))
    with pytest.raises(MdevError) as info:
        mgr.create("i915-GVTg_V5_8", uuid="not-a-uuid; rm -rf /")
    assert str(info.value).startswith(
        "host-b: parent 0000:00:02.0, type i915-GVTg_V5_8: UUID 'not-a-uuid; rm -rf /' refused "
        "(EINVAL: Invalid argument): not a well-formed UUID"
    )
    assert len(manager(executor, tmp_path / "h").instances()) == 2


def test_duplicate_uuid_is_refused_with_eexist(tmp_path: Path, executor: KernelExecutor) -> None:
    mgr = manager(executor, make_host(tmp_path / "h", "gvt"))
    existing = "6d0d6c36-4b1f-4a7c-9d6e-0c1f2b3a4d01"
    with pytest.raises(MdevError) as info:
        mgr.create("i915-GVTg_V5_8", uuid=existing.upper())
    where = "parent 0000:00:02.0, type i915-GVTg_V5_8"
    assert f"{where}: UUID {existing.upper()} refused (EEXIST: File exists)" in str(info.value)
    assert "already exists on the host" in str(info.value)


def test_remove_while_in_use_is_refused_with_ebusy(tmp_path: Path, executor: KernelExecutor) -> None:
    root = make_host(tmp_path / "h", "mtty")
    uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
    mark_in_use(root, uuid)
    mgr = manager(executor, root)
    with pytest.raises(MdevError) as info:
        mgr.remove(uuid)
    assert str(info.value) == (
        f"host-b: cannot remove mdev {uuid} (mtty-2 on mtty): it is in use (EBUSY: Device or resource "
        "busy); stop the guest (QEMU) that has it open, then remove it"
    )
    assert uuid in {i.uuid for i in mgr.instances()}


def test_remove_missing_device(tmp_path: Path, executor: KernelExecutor) -> None:
    mgr = manager(executor, make_host(tmp_path / "h", "mtty"))
    gone = "11111111-2222-3333-4444-555555555555"
    with pytest.raises(MdevError, match=f"host-b: no mdev {gone} to remove"):
        mgr.remove(gone)
    mgr.remove(gone, missing_ok=True)


def test_remove_refuses_a_uuid_that_is_a_path(tmp_path: Path, executor: KernelExecutor) -> None:
    root = make_host(tmp_path / "h", "mtty")
    victim = tmp_path / "h" / "remove"
    victim.write_text("untouched")
    with pytest.raises(MdevError, match="invalid mdev UUID"):
        manager(executor, root).remove("../../../..")
    assert victim.read_text() == "untouched"
    assert executor.scripts == []


def test_owner_must_be_one_token(tmp_path: Path, executor: KernelExecutor) -> None:
    mgr = manager(executor, make_host(tmp_path / "h", "mtty"))
    with pytest.raises(ValueError, match="owner"):
        mgr.create("mtty-1", owner="two words")
    assert len(mgr.instances()) == 2


def test_owner_needs_a_state_dir(tmp_path: Path, executor: KernelExecutor) -> None:
    mgr = MdevManager(executor, sysfs_root=str(make_host(tmp_path / "h", "mtty")))
    with pytest.raises(ValueError, match="state_dir"):
        mgr.create("mtty-1", owner="run-1")
    assert mgr.reap(None) == []


def test_unrecordable_create_is_undone(tmp_path: Path, executor: KernelExecutor) -> None:
    root = make_host(tmp_path / "h", "mtty", devices={})
    (root / "blocker").write_text("a file where the state dir should be")
    mgr = MdevManager(executor, sysfs_root=str(root), state_dir=str(root / "blocker"))
    with pytest.raises(MdevError, match=r"could not record it in .*it was removed again"):
        mgr.create("mtty-1", owner="run-1")
    assert mgr.instances() == []


# --------------------------------------------------------------------------------------------
# The ownership record and reaping


def test_reap_removes_only_recorded_foreign_mdevs(tmp_path: Path, executor: KernelExecutor) -> None:
    root = make_host(tmp_path / "h", "mtty")  # two mdevs nobody recorded: not ours
    mgr = manager(executor, root)
    old = mgr.create("mtty-1", owner="run-old")
    mine = mgr.create("mtty-1", owner="run-now")
    crashed = mgr.create("mtty-2", owner="run-crashed")
    assert {r.owner for r in mgr.records()} == {"run-old", "run-now", "run-crashed"}
    removed = mgr.reap(keep_owner="run-now")
    assert sorted(removed) == sorted([old.uuid, crashed.uuid])
    left = {i.uuid for i in mgr.instances()}
    assert left == {mine.uuid, *DEVICES["mtty"]}
    assert [r.uuid for r in mgr.records()] == [mine.uuid]
    assert mgr.reap(keep_owner=None) == [mine.uuid]
    assert {i.uuid for i in mgr.instances()} == set(DEVICES["mtty"])


def test_reap_drops_stale_lines_and_never_touches_a_reused_uuid(
    tmp_path: Path, executor: KernelExecutor
) -> None:
    root = make_host(tmp_path / "h", "mtty")
    foreign = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"  # an mtty-2 someone else made
    (root / "state").mkdir()
    (root / "state" / "mdevs").write_text(
        f"{foreign} mtty mtty-1 run-crashed\n"  # same UUID, other type: not the one we made
        "99999999-9999-4999-8999-999999999999 mtty mtty-1 run-crashed\n"  # already gone
        "garbage line\n"
    )
    mgr = manager(executor, root)
    assert mgr.reap(keep_owner="run-now") == []
    assert foreign in {i.uuid for i in mgr.instances()}
    assert (root / "state" / "mdevs").read_text() == "garbage line\n"


def test_reap_reports_what_it_could_not_remove(tmp_path: Path, executor: KernelExecutor) -> None:
    root = make_host(tmp_path / "h", "mtty", devices={})
    mgr = manager(executor, root)
    busy = mgr.create("mtty-1", owner="run-crashed")
    idle = mgr.create("mtty-1", owner="run-crashed")
    mark_in_use(root, busy.uuid)
    with pytest.raises(MdevError) as info:
        mgr.reap(keep_owner="run-now")
    assert f"removed: {idle.uuid}" in str(info.value)
    assert f"cannot remove mdev {busy.uuid}" in str(info.value)
    assert [r.uuid for r in mgr.records()] == [busy.uuid]


# --------------------------------------------------------------------------------------------
# mdevctl mode: what mdevctl says is mapped to the same errors


@dataclass
class ScriptedExecutor:
    """Answers each command with the next canned (rc, stdout, stderr), or runs it for real (None).

    Records every command it was given.
    """

    name: str
    answers: list[tuple[int, str, str] | None]
    commands: list[str] = field(default_factory=list)

    def run_shell(
        self, script: str, *, timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        assert timeout is not None, "MdevManager must bound every command"
        self.commands.append(script)
        answer = self.answers.pop(0)
        if answer is None:
            return LocalExecutor(self.name).run_shell(script, timeout=timeout, env=env)
        rc, out, err = answer
        return CommandResult(self.name, script, rc, out, err, 0.01)

    def run(
        self, argv: Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        return self.run_shell(" ".join(argv), timeout=timeout, env=env)

    def check(
        self, argv: Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        return LocalExecutor.raise_for(self.run(argv, timeout=timeout, env=env))

    def check_shell(self, script: str, *, timeout: float | None = None) -> CommandResult:
        return LocalExecutor.raise_for(self.run_shell(script, timeout=timeout))


# mdevctl 1.2.0's own words, as printed when run against the simulated sysfs
MDEVCTL_SAYS = {
    "ENOSPC": "Error: No available instances of mtty-2 on mtty\n",
    "EEXIST": "Error: Device already exists\n",
    "EEXIST-other-type": "Error: Device exists with different type\n",
    "EINVAL": (
        "error: Invalid value \"11111111-2222-3333-4444-55555555555\" for '--uuid <UUID>': invalid "
        "group length in group 4: expected 12, found 11\n\nFor more information try --help\n"
    ),
}


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("ENOSPC", "no available instance of mtty-2 on mtty (the kernel refused with ENOSPC)"),
        ("EEXIST", "refused (EEXIST: File exists)"),
        ("EEXIST-other-type", "refused (EEXIST: File exists)"),
        ("EINVAL", "refused (EINVAL: Invalid argument)"),
    ],
)
def test_mdevctl_refusals_map_to_the_same_errors(tmp_path: Path, said: str, expected: str) -> None:
    root = make_host(tmp_path / "h", "mtty", devices={})
    # parents() runs for real, mdevctl "fails", then (ENOSPC only) instances() runs for real
    scripted = ScriptedExecutor("host-b", [None, (3, "", MDEVCTL_SAYS[said]), None])
    mgr = MdevManager(scripted, sysfs_root=str(root), use_mdevctl=True)
    with pytest.raises(MdevError) as info:
        mgr.create("mtty-2", uuid="11111111-2222-3333-4444-555555555555")
    assert expected in str(info.value)
    assert (
        "mdevctl start -u 11111111-2222-3333-4444-555555555555 -p mtty -t mtty-2" in scripted.commands[1]
    )
    assert "unshare --mount --propagation private" in scripted.commands[1]


def test_mdevctl_stop_busy_is_ebusy() -> None:
    uuid = "11111111-2222-3333-4444-555555555555"
    stderr = (
        f"Error: Error removing device {uuid}\n\nCaused by:\n    Device or resource busy (os error 16)\n"
    )
    scripted = ScriptedExecutor("host-a", [(3, "", stderr)])
    mgr = MdevManager(scripted, use_mdevctl=True)
    with pytest.raises(MdevError, match=r"it is in use \(EBUSY"):
        mgr.remove(uuid)
    assert "mdevctl stop -u 11111111-2222-3333-4444-555555555555" in scripted.commands[0]
    assert "unshare" not in scripted.commands[0]  # real root: plain mdevctl


def test_remove_that_blocks_is_reported_as_in_use() -> None:
    """Newer kernels block `remove` until QEMU lets go; the command then times out."""

    class Blocking(ScriptedExecutor):
        def run_shell(
            self, script: str, *, timeout: float | None = None, env: Mapping[str, str] | None = None
        ) -> CommandResult:
            raise CommandTimedOut(self.name, script, timeout or 0)

    mgr = MdevManager(Blocking("host-a", []), timeout=5)
    with pytest.raises(MdevError, match=r"did not finish within 5 s: it is probably in use") as info:
        mgr.remove("11111111-2222-3333-4444-555555555555")
    assert isinstance(info.value.__cause__, CommandTimedOut)


def test_mdevctl_argv() -> None:
    assert mdevctl_argv("/", "types") == ["mdevctl", "types"]
    argv = mdevctl_argv("/srv/lab/host-a/", "list", "--dumpjson")
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert "/srv/lab/host-a/sys" in argv
    assert argv[-3:] == ["mdevctl", "list", "--dumpjson"]
    assert "MDEVCTL_ENV_ROOT=/" in argv


def test_mdevctl_outputs_parse() -> None:
    types = parse_mdevctl_types((DATA / "mdevctl-types-gvt.json").read_text())
    assert [t.type_id for t in types[0].types][:2] == ["i915-GVTg_V5_1", "i915-GVTg_V5_2"]
    assert types[0].types[2].description == (
        "low_gm_size: 128MB, high_gm_size: 512MB, fence: 4, resolution: 1920x1200, weight: 4"
    )
    assert parse_mdevctl_types("[]") == []
    assert parse_mdevctl_list("\n") == []
    with pytest.raises(MdevError, match="did not print JSON"):
        parse_mdevctl_list("Error: something")
    with pytest.raises(MdevError, match="unexpected mdevctl types"):
        parse_mdevctl_types('[{"p": [{"t": {"device_api": "vfio-pci"}}]}]')


# --------------------------------------------------------------------------------------------
# errno text and the executor


@pytest.mark.parametrize(
    ("stderr", "name"),
    [
        ("tee: /sys/class/mdev_bus/x/create: File exists\n", "EEXIST"),
        ("tee: /sys/x/create: Invalid argument", "EINVAL"),
        ("tee: /sys/x/create: No space left on device", "ENOSPC"),
        ("tee: /sys/x/create: Too many users", "EUSERS"),
        ("bash: echo: write error: Device or resource busy", "EBUSY"),
        ("Caused by:\n    Device or resource busy (os error 16)", "EBUSY"),
        ("tee: /sys/x/remove: Input/output error", "EIO"),
        ("something unrelated", None),
    ],
)
def test_errno_name(stderr: str, name: str | None) -> None:
    assert errno_name(stderr) == name


def test_local_executor_results_and_errors(tmp_path: Path) -> None:
    ex = LocalExecutor("ctl")
    res = ex.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (res.host, res.rc, res.stdout, res.stderr) == ("ctl", 3, "out\n", "err\n")
    assert res.command == "sh -c 'echo out; echo err >&2; exit 3'"
    with pytest.raises(CommandFailed) as info:
        ex.check_shell("echo nope >&2; exit 4", timeout=10)
    assert info.value.rc == 4
    assert "nope" in str(info.value)
    assert ex.run_shell("echo $FOO", env={"FOO": "bar baz"}, timeout=10).stdout == "bar baz\n"
    missing = ex.run(["/nonexistent/tool"], timeout=10)
    assert missing.rc == 127
    assert "not found" in missing.stderr


def test_local_executor_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    marker = tmp_path / "late"
    ex = LocalExecutor("ctl")
    with pytest.raises(CommandTimedOut, match=r"timed out after 0\.3 s"):
        ex.run_shell(f"(sleep 1; touch {marker}) & sleep 30", timeout=0.3)
    time.sleep(1.3)
    assert not marker.exists(), "a child of the timed-out command survived"


def test_remote_and_local_satisfy_the_executor_protocol() -> None:
    from mdevtest.remote import Remote

    assert isinstance(LocalExecutor(), Executor)
    for method in ("run", "run_shell", "check", "check_shell"):
        assert callable(getattr(Remote, method))
    assert isinstance(ScriptedExecutor("x", []), Executor)


def test_static_tree_modes_match_sysfs(tmp_path: Path) -> None:
    root = make_host(tmp_path / "h", "gvt")
    t = root / "sys/devices/pci0000:00/0000:00:02.0/mdev_supported_types/i915-GVTg_V5_4"
    assert stat.S_IMODE((t / "create").stat().st_mode) == 0o200
    assert stat.S_IMODE((t / "available_instances").stat().st_mode) == 0o444
    assert (
        os.readlink(root / "sys/class/mdev_bus/0000:00:02.0") == "../../devices/pci0000:00/0000:00:02.0"
    )
