"""The simulated vGPU parent, mounted for real (FUSE), checked with plain writes, the real mdevctl
and MdevManager. Skipped, with the reason, where FUSE cannot be mounted (not root, no /dev/fuse, no
libfuse or mfusepy); the pure state machine is covered without FUSE at the end.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mdevtest.errors import LabError, MdevError
from mdevtest.lab.simsysfs import (
    FSTYPE,
    SimConfig,
    SimKernel,
    SimParent,
    SimType,
    SimulatedSysfs,
    fuse_unavailable_reason,
    is_mounted,
    write_static_tree,
)
from mdevtest.localexec import LocalExecutor
from mdevtest.mdev import MdevManager, MdevParent, mdevctl_argv, parse_mdevctl_list, parse_mdevctl_types
from mdevtest.vendors import get_profile

GVT = "0000:00:02.0"
V54 = "i915-GVTg_V5_4"
V58 = "i915-GVTg_V5_8"
U1 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
U2 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002"
U3 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1003"

FUSE_MISSING = fuse_unavailable_reason()
needs_fuse = pytest.mark.skipif(FUSE_MISSING is not None, reason=f"no FUSE here: {FUSE_MISSING}")
needs_mdevctl = pytest.mark.skipif(
    shutil.which("mdevctl") is None or shutil.which("unshare") is None or os.geteuid() != 0,
    reason="needs root, mdevctl (Debian: mdevctl) and unshare (util-linux)",
)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatedSysfs]:
    handle = SimulatedSysfs(tmp_path / "host-a")
    with handle:
        yield handle
    assert is_mounted(handle.sys_dir) is None, "the simulated sysfs stayed mounted"


def types_dir(sim: SimulatedSysfs, type_id: str) -> Path:
    return sim.sys_dir / "class" / "mdev_bus" / GVT / "mdev_supported_types" / type_id


def write(path: Path, data: bytes) -> None:
    """One write(2), as `echo > file` does; raises OSError with the errno."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def errno_of(path: Path, data: bytes) -> int | None:
    """The errno a write fails with (the test fails if it succeeds)."""
    return failure(write, path, data)


def failure(fn: Callable[..., object], *args: object) -> int | None:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    pytest.fail(f"{getattr(fn, '__name__', fn)}{args} did not fail")


def available(sim: SimulatedSysfs, type_id: str) -> int:
    return int((types_dir(sim, type_id) / "available_instances").read_text())


def mdevctl(sim: SimulatedSysfs, *args: str) -> str:
    proc = subprocess.run(
        mdevctl_argv(str(sim.root), *args), capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def as_mdevctl_shows(parents: list[MdevParent]) -> list[MdevParent]:
    return [
        MdevParent(
            p.name, tuple(replace(t, description=", ".join(t.description.splitlines())) for t in p.types)
        )
        for p in parents
    ]


# --------------------------------------------------------------------------------------------
# The tree


@needs_fuse
def test_mounted_tree_looks_like_sysfs(sim: SimulatedSysfs) -> None:
    assert is_mounted(sim.sys_dir) == FSTYPE
    findmnt = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", str(sim.sys_dir)],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert findmnt.stdout.strip() == FSTYPE
    bus = sim.sys_dir / "class" / "mdev_bus"
    assert os.listdir(bus) == [GVT]
    assert os.readlink(bus / GVT) == "../../devices/pci0000:00/0000:00:02.0"
    t = types_dir(sim, V54)
    assert sorted(os.listdir(t)) == [
        "available_instances", "create", "description", "device_api", "devices", "name",
    ]  # fmt: skip
    assert (t / "name").read_text() == "GVTg_V5_4\n"
    assert (t / "device_api").read_text() == "vfio-pci\n"
    assert (t / "description").read_text() == (
        "low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4\nresolution: 1920x1200\nweight: 4\n"
    )
    assert available(sim, V54) == 2
    assert available(sim, V58) == 4
    assert oct((t / "create").stat().st_mode & 0o777) == "0o200"
    assert (sim.sys_dir / "devices/pci0000:00/0000:00:02.0/vendor").read_text() == "0x8086\n"


@needs_fuse
def test_create_and_remove_by_plain_writes(sim: SimulatedSysfs) -> None:
    write(types_dir(sim, V54) / "create", f"{U1}\n".encode())
    dev = sim.sys_dir / "bus" / "mdev" / "devices" / U1
    assert os.readlink(dev) == f"../../../devices/pci0000:00/0000:00:02.0/{U1}"
    assert os.path.realpath(dev / "mdev_type") == str(
        sim.sys_dir / "devices/pci0000:00/0000:00:02.0/mdev_supported_types" / V54
    )
    assert sorted(os.listdir(dev)) == ["mdev_type", "remove"]
    assert os.listdir(types_dir(sim, V54) / "devices") == [U1]
    assert os.readlink(types_dir(sim, V54) / "devices" / U1) == f"../../../{U1}"
    assert available(sim, V54) == 1
    assert available(sim, V58) == 2  # shared graphics memory
    write(dev / "remove", b"1\n")
    assert not dev.exists()
    assert os.listdir(sim.sys_dir / "bus" / "mdev" / "devices") == []
    assert (available(sim, V54), available(sim, V58)) == (2, 4)


@needs_fuse
def test_create_accepts_uppercase_and_names_the_device_in_lowercase(sim: SimulatedSysfs) -> None:
    write(types_dir(sim, V58) / "create", U1.upper().encode())  # 36 bytes, no newline
    assert os.listdir(sim.sys_dir / "bus" / "mdev" / "devices") == [U1]
    assert errno_of(types_dir(sim, V58) / "create", f"{U1}\n".encode()) == errno.EEXIST


@needs_fuse
@pytest.mark.parametrize(
    "data",
    [b"\n", U1[:-1].encode(), f"{U1}\n\n".encode(), U1.replace("8", "g", 1).encode(),
     U1.replace("-", "x", 1).encode(), f"{U1}x\n".encode()],
    ids=["newline", "35 bytes", "38 bytes", "not hex", "no dash", "39 bytes"],
)  # fmt: skip
def test_malformed_uuid_is_einval(sim: SimulatedSysfs, data: bytes) -> None:
    assert errno_of(types_dir(sim, V54) / "create", data) == errno.EINVAL
    assert os.listdir(sim.sys_dir / "bus" / "mdev" / "devices") == []


@needs_fuse
def test_duplicate_is_eexist_across_types(sim: SimulatedSysfs) -> None:
    write(types_dir(sim, V54) / "create", f"{U1}\n".encode())
    assert errno_of(types_dir(sim, V54) / "create", f"{U1}\n".encode()) == errno.EEXIST
    assert errno_of(types_dir(sim, V58) / "create", f"{U1.upper()}\n".encode()) == errno.EEXIST


@needs_fuse
def test_exhausted_type_is_enospc(sim: SimulatedSysfs) -> None:
    write(types_dir(sim, V54) / "create", f"{U1}\n".encode())
    write(types_dir(sim, V54) / "create", f"{U2}\n".encode())
    assert available(sim, V54) == 0
    assert available(sim, V58) == 0
    assert errno_of(types_dir(sim, V54) / "create", f"{U3}\n".encode()) == errno.ENOSPC
    assert errno_of(types_dir(sim, V58) / "create", f"{U3}\n".encode()) == errno.ENOSPC


@needs_fuse
def test_exhausted_type_is_eusers_for_core_counted_drivers(tmp_path: Path) -> None:
    config = SimConfig((SimParent("mdpy", "virtual/mdpy/mdpy", (SimType("mdpy-vga", 1),), "EUSERS"),))
    with SimulatedSysfs(tmp_path / "r", config) as s:
        create = s.sys_dir / "class/mdev_bus/mdpy/mdev_supported_types/mdpy-vga/create"
        write(create, f"{U1}\n".encode())
        assert errno_of(create, f"{U2}\n".encode()) == errno.EUSERS


@needs_fuse
def test_remove_in_use_is_ebusy(sim: SimulatedSysfs) -> None:
    write(types_dir(sim, V54) / "create", f"{U1}\n".encode())
    remove = sim.sys_dir / "bus" / "mdev" / "devices" / U1 / "remove"
    sim.set_in_use(U1)
    assert (sim.sys_dir / "kernel/mdevtest_sim/in_use").read_text() == f"{U1}\n"
    assert errno_of(remove, b"1\n") == errno.EBUSY
    assert (sim.sys_dir / "bus" / "mdev" / "devices" / U1).exists()
    sim.set_in_use(U1, False)
    write(remove, b"1\n")
    assert not (sim.sys_dir / "bus" / "mdev" / "devices" / U1).exists()
    assert failure(sim.set_in_use, U1) == errno.ENODEV


@needs_fuse
def test_remove_parses_like_kstrtoul(sim: SimulatedSysfs) -> None:
    write(types_dir(sim, V54) / "create", f"{U1}\n".encode())
    remove = sim.sys_dir / "bus" / "mdev" / "devices" / U1 / "remove"
    write(remove, b"0\n")  # zero: nothing happens
    assert remove.parent.exists()
    assert errno_of(remove, b"yes\n") == errno.EINVAL
    assert errno_of(remove, b"\n") == errno.EINVAL
    write(remove, b"0x1")
    assert not remove.parent.exists()


@needs_fuse
def test_attributes_refuse_the_other_direction(sim: SimulatedSysfs) -> None:
    t = types_dir(sim, V54)
    with pytest.raises(PermissionError):
        (t / "create").read_text()
    assert errno_of(t / "available_instances", b"9\n") == errno.EACCES
    assert failure((t / "newfile").write_text, "x") == errno.EPERM
    assert failure((t / "name").unlink) == errno.EPERM
    assert failure((t / "devices").mkdir) == errno.EEXIST


# --------------------------------------------------------------------------------------------
# The real mdevctl agrees with the tree


@needs_fuse
@needs_mdevctl
def test_mdevctl_lists_the_same_types_and_devices(sim: SimulatedSysfs) -> None:
    mgr = MdevManager(LocalExecutor("host-a"), sysfs_root=str(sim.root))
    write(types_dir(sim, V58) / "create", f"{U1}\n".encode())
    write(types_dir(sim, V54) / "create", f"{U2}\n".encode())
    assert parse_mdevctl_types(mdevctl(sim, "types", "--dumpjson")) == as_mdevctl_shows(mgr.parents())
    assert mgr.mdevctl_types() == as_mdevctl_shows(mgr.parents())
    listed = parse_mdevctl_list(mdevctl(sim, "list", "--dumpjson"))
    assert listed == mgr.instances()
    assert {(i.uuid, i.type_id) for i in listed} == {(U1, V58), (U2, V54)}
    text = mdevctl(sim, "types")
    assert "Available instances: 0" in text  # U2 took the rest of the pool
    assert f"{U1} {GVT} {V58} manual" in mdevctl(sim, "list")


@needs_fuse
@needs_mdevctl
def test_mdevctl_start_and_stop_drive_the_tree(sim: SimulatedSysfs) -> None:
    mdevctl(sim, "start", "-u", U1, "-p", GVT, "-t", V54)
    assert (sim.sys_dir / "bus" / "mdev" / "devices" / U1 / "mdev_type").exists()
    assert available(sim, V54) == 1
    mdevctl(sim, "stop", "-u", U1)
    assert not (sim.sys_dir / "bus" / "mdev" / "devices" / U1).exists()


# --------------------------------------------------------------------------------------------
# MdevManager against the mounted tree, both ways


@needs_fuse
@pytest.mark.parametrize(
    "use_mdevctl",
    [False, pytest.param(True, marks=needs_mdevctl)],
    ids=["sysfs", "mdevctl"],
)
def test_manager_lifecycle_and_errors(sim: SimulatedSysfs, tmp_path: Path, use_mdevctl: bool) -> None:
    mgr = MdevManager(
        LocalExecutor("host-a"),
        sysfs_root=str(sim.root),
        use_mdevctl=use_mdevctl,
        state_dir=str(tmp_path / "state"),
    )
    first = mgr.create(V54, owner="run-1")
    assert mgr.instances() == [first]
    assert mgr.sysfs_path(first.uuid) == str(sim.sys_dir / "bus" / "mdev" / "devices" / first.uuid)
    with pytest.raises(MdevError, match=r"UUID .* refused \(EEXIST"):
        mgr.create(V58, uuid=first.uuid)
    with pytest.raises(MdevError, match=r"refused \(EINVAL"):
        mgr.create(V58, uuid="11111111-2222-3333-4444-55555555555")
    second = mgr.create(V54, uuid=U2, owner="run-2")
    with pytest.raises(MdevError, match=r"no available instance of i915-GVTg_V5_4 on 0000:00:02\.0"):
        mgr.create(V54)
    with pytest.raises(MdevError, match=r"mdev type i915-GVTg_V5_1 is not offered"):
        mgr.create("i915-GVTg_V5_1")
    sim.set_in_use(second.uuid)
    with pytest.raises(MdevError, match=r"it is in use \(EBUSY"):
        mgr.remove(second.uuid)
    sim.set_in_use(second.uuid, False)
    assert mgr.reap(keep_owner="run-2") == [first.uuid]
    assert mgr.instances() == [second]
    mgr.remove(second.uuid)
    assert mgr.instances() == []
    assert mgr.records() == []


@needs_fuse
def test_simulated_profile_checks_pass_when_mounted(sim: SimulatedSysfs) -> None:
    checks = get_profile("simulated").host_checks(LocalExecutor("host-a"), sysfs_root=str(sim.root))
    assert all(c.passed for c in checks), checks


# --------------------------------------------------------------------------------------------
# Lifecycle: always unmounted, bounded, SIGTERM is clean


@needs_fuse
def test_unmounted_even_when_the_body_fails(tmp_path: Path) -> None:
    handle = SimulatedSysfs(tmp_path / "r")

    def body() -> None:
        with handle:
            assert is_mounted(handle.sys_dir) == FSTYPE
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        body()
    assert is_mounted(handle.sys_dir) is None
    handle.stop()  # idempotent


@needs_fuse
def test_a_killed_daemon_is_still_unmounted(tmp_path: Path) -> None:
    handle = SimulatedSysfs(tmp_path / "r").start()
    try:
        assert handle.pid is not None
        os.kill(handle.pid, signal.SIGKILL)
        time.sleep(0.2)
        assert is_mounted(handle.sys_dir) == FSTYPE  # a dead FUSE mount stays behind...
    finally:
        handle.stop()
    assert is_mounted(handle.sys_dir) is None  # ...and stop() cleans it up


@needs_fuse
def test_start_fails_cleanly_on_a_busy_mountpoint(tmp_path: Path) -> None:
    with SimulatedSysfs(tmp_path / "r") as first:
        second = SimulatedSysfs(tmp_path / "r", ready_timeout=5)
        try:
            with pytest.raises(LabError, match="already mounted"):
                second.start()
            assert second.pid is None
        finally:
            second.stop()
        assert is_mounted(first.sys_dir) == FSTYPE
    assert is_mounted(first.sys_dir) is None


@needs_fuse
def test_mount_time_is_bounded(tmp_path: Path) -> None:
    with SimulatedSysfs(tmp_path / "r") as s:
        assert s.mount_time_s is not None
        print(f"simulated sysfs mounted in {s.mount_time_s * 1000:.0f} ms")
        assert s.mount_time_s < 10


@needs_fuse
def test_two_hosts_are_independent(tmp_path: Path) -> None:
    with SimulatedSysfs(tmp_path / "host-a") as a, SimulatedSysfs(tmp_path / "host-b") as b:
        write(types_dir(a, V54) / "create", f"{U1}\n".encode())
        assert available(a, V54) == 1
        assert available(b, V54) == 2
        write(types_dir(b, V54) / "create", f"{U1}\n".encode())  # same UUID on the other host: fine


@needs_fuse
def test_command_line_daemon_and_stop(tmp_path: Path) -> None:
    root = tmp_path / "r"
    pidfile = tmp_path / "sim.pid"
    config = tmp_path / "config.json"
    config.write_text(SimConfig().to_json())
    cmd = [sys.executable, "-m", "mdevtest.lab.simsysfs", "--root", str(root), "--pidfile", str(pidfile)]
    started = subprocess.run(
        [*cmd, "--daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    pid = int(pidfile.read_text())
    assert started.stdout.strip() == str(pid)
    assert is_mounted(root / "sys") == FSTYPE
    stopped = subprocess.run([*cmd, "--stop"], capture_output=True, text=True, timeout=30, check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert is_mounted(root / "sys") is None
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not pidfile.exists()


@needs_fuse
def test_sigterm_unmounts_and_exits_zero(tmp_path: Path) -> None:
    root = tmp_path / "r"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdevtest.lab.simsysfs", "--root", str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while is_mounted(root / "sys") != FSTYPE and time.monotonic() < deadline:
            time.sleep(0.001)
        assert is_mounted(root / "sys") == FSTYPE
        proc.send_signal(signal.SIGTERM)  # as early as possible: right after mount(2)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert is_mounted(root / "sys") is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "mdevtest.lab.simsysfs", "--root", str(tmp_path)]
    proc = subprocess.run(
        [*argv, "--config", '{"parent": []}'], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 2
    assert "unknown keys ['parent']" in proc.stderr


# --------------------------------------------------------------------------------------------
# The state machine and config without FUSE


def test_config_round_trips_and_validates() -> None:
    config = SimConfig.from_json((Path(__file__).parent / "data" / "sim-mtty.json").read_text())
    assert SimConfig.from_json(config.to_json()) == config
    assert config.parents[0].pool == 24
    with pytest.raises(ValueError, match="must end in it"):
        SimParent("0000:00:02.0", "pci0000:00/0000:00:03.0", ())
    with pytest.raises(ValueError, match="single path component"):
        SimType("../evil", 1)
    with pytest.raises(ValueError, match="duplicate parent names"):
        SimConfig((SimConfig().parents[0], SimConfig().parents[0]))
    with pytest.raises(ValueError, match="not JSON"):
        SimConfig.from_json("{")
    assert json.loads(SimConfig().to_json())["parents"][0]["pool"] == 4


def test_kernel_semantics_without_fuse() -> None:
    kernel = SimKernel(SimConfig())
    parent = kernel.config.parents[0]
    v54, v58 = parent.types

    code = failure
    assert kernel.create(parent, v54, f"{U1.upper()}\n".encode()) == U1
    assert code(kernel.create, parent, v58, U1.encode()) == errno.EEXIST
    assert code(kernel.create, parent, v58, b"x" * 36) == errno.EINVAL
    assert kernel.available(parent, v58) == 2
    kernel.in_use.add(U1)
    assert code(kernel.remove, U1, b"1") == errno.EBUSY
    kernel.in_use.clear()
    kernel.remove(U1, b"1\n")
    assert code(kernel.remove, U1, b"1") == errno.ENODEV
    assert kernel.lookup("bus/mdev/devices") is not None
    assert kernel.lookup("nonexistent") is None


def test_static_tree_matches_the_kernel_view(tmp_path: Path) -> None:
    sys_dir = write_static_tree(tmp_path, SimConfig(), {U1: f"{GVT} {V58}"})
    t = sys_dir / "class/mdev_bus" / GVT / "mdev_supported_types"
    assert (t / V58 / "available_instances").read_text() == "3\n"
    assert (t / V54 / "available_instances").read_text() == "1\n"
    assert os.listdir(t / V58 / "devices") == [U1]
    with pytest.raises(ValueError, match="no type"):
        write_static_tree(tmp_path / "x", SimConfig(), {U2: f"{GVT} nope"})
