"""The run-time side of an inventory: connections, host facts, guest images, machines.

A :class:`Testbed` lives for one test session (one per xdist worker). It owns one SSH connection per
host, probes each host once, makes sure the guest image is on each host that needs it, and builds
matching source/destination machines for a pair. The pytest plugin is a thin layer over it; scripts
(benchmarks, the CLI) use it directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from mdevtest.errors import GuestError, MachineError, MdevError, MdevtestError
from mdevtest.host import HostFacts, probe_host
from mdevtest.inventory import HostPair, Inventory, KernelImage
from mdevtest.mdev import MdevInstance, MdevManager
from mdevtest.qemu.cmdline import MachineSpec
from mdevtest.qemu.machine import RemoteMachine, reap
from mdevtest.remote import Remote, RemotePool
from mdevtest.vendors import get_profile


@dataclass(frozen=True)
class VgpuAllocation:
    """An mdev this session created for one machine (removed when the machine is released)."""

    host: str
    instance: MdevInstance
    sysfs_path: str
    vendor: str
    simulated: bool


@dataclass(frozen=True)
class ImageFiles:
    """A bootable kernel + initrd on the controller, identified by a content digest."""

    kernel: Path
    initrd: Path
    append: str
    digest: str
    description: str


#: Size of the synthetic workload's DMA pattern disk.
PATTERN_DISK_MIB = 32


def new_run_id() -> str:
    """Shared by all xdist workers of one run (so none reaps another's machines)."""
    return os.environ.get("PYTEST_XDIST_TESTRUNUID", uuid.uuid4().hex)[:12]


class Testbed:
    """Everything one session needs to start guests on the inventory's hosts."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, inventory: Inventory, *, run_id: str | None = None) -> None:
        self.inventory = inventory
        self.run_id = run_id or new_run_id()
        self.pool = RemotePool(inventory.hosts)
        self._facts: dict[str, HostFacts] = {}
        self._image: ImageFiles | None = None
        self._lock = threading.Lock()
        self._serial = 0
        self.vgpus: dict[str, VgpuAllocation] = {}  # machine tag -> its mdev
        self._qemu_args: dict[str, tuple[str, ...]] = {}  # machine tag -> a test's own QEMU args
        self._controller_addr: dict[str, str] = {}
        self._machines: list[RemoteMachine] = []

    def remote(self, host: str) -> Remote:
        return self.pool[host]

    def facts(self, host: str) -> HostFacts:
        """Probe a host once per session."""
        with self._lock:
            if host not in self._facts:
                self._facts[host] = probe_host(self.remote(host))
            return self._facts[host]

    def mdevs(self, host: str, pair: HostPair | None = None) -> MdevManager:
        """The mdev manager of ``host`` (mdevctl when the pair's vGPU spec asks for it)."""
        remote = self.remote(host)
        use_mdevctl = bool(pair and pair.vgpu and pair.vgpu.use_mdevctl)
        return MdevManager(
            remote,
            sysfs_root=remote.host.sysfs_root,
            use_mdevctl=use_mdevctl,
            state_dir=remote.host.state_dir,
        )

    def reap_host(self, host: str) -> list[str]:
        """Kill machines and remove mdevs that other runs left on ``host`` (ours only).

        Call it only while holding the host's lease: a live run keeps its machines and mdevs only
        while it holds the lease, so whatever is left then belongs to a run that died.
        """
        left = reap(self.remote(host), keep_run=self.run_id)
        return left + [f"mdev {u}" for u in self.mdevs(host).reap(keep_owner=self.run_id)]

    def reap(self) -> dict[str, list[str]]:
        """:meth:`reap_host` on every host (``mdevtest lab reap``; no other run may be active)."""
        return {h.name: self.reap_host(h.name) for h in self.inventory.hosts}

    # -- images ----------------------------------------------------------------------------------

    def image(self) -> ImageFiles:
        """The guest image on the controller (built and cached for the local lab)."""
        if self._image is None:
            spec = self.inventory.guest.image
            if spec.kind == "lab-synthetic":
                from mdevtest.lab.image import DEFAULT_CACHE_DIR, build_guest_image

                built = build_guest_image(DEFAULT_CACHE_DIR)
                self._image = ImageFiles(
                    built.kernel, built.initrd, built.append, built.digest,
                    f"mdevtest synthetic image {built.digest} (kernel {built.kernel_version})",
                )  # fmt: skip
            elif spec.kind == "lab-mtty":
                from mdevtest.lab.nested_image import build_nested_images

                guest = build_nested_images().guest
                self._image = ImageFiles(
                    guest.kernel, guest.initrd, guest.append, guest.digest,
                    f"mdevtest nested-lab mtty guest {guest.digest} (kernel {guest.kernel_version})",
                )  # fmt: skip
            elif isinstance(spec, KernelImage):
                digest = hashlib.sha256()
                for path in (spec.kernel, spec.initrd):
                    digest.update(Path(path).read_bytes())
                self._image = ImageFiles(
                    Path(spec.kernel), Path(spec.initrd), spec.append, digest.hexdigest()[:16],
                    f"kernel {spec.kernel} + initrd {spec.initrd}",
                )  # fmt: skip
            else:
                raise MachineError(
                    f"{self.inventory.source_path}: guest.image.kind {spec.kind!r} is not "
                    "supported yet; use 'lab-synthetic', 'lab-mtty' or 'kernel'"
                )
        return self._image

    def image_on(self, host: str) -> tuple[str, str]:
        """Kernel and initrd paths on ``host``, uploading them once if the host lacks them."""
        image = self.image()
        base = f"{self.remote(host).host.state_dir}/images/{image.digest}"
        kernel, initrd = f"{base}/vmlinuz", f"{base}/initrd.img"
        self._ensure_files(host, {kernel: image.kernel, initrd: image.initrd})
        return kernel, initrd

    def pattern_disk_on(self, host: str) -> str | None:
        """The synthetic workload's DMA pattern disk on ``host`` (same bytes on every host)."""
        if self.inventory.guest.image.kind != "lab-synthetic":
            return None
        from mdevtest.lab.image import DEFAULT_CACHE_DIR
        from mdevtest.workloads.synthetic import write_pattern_disk

        local = DEFAULT_CACHE_DIR / f"pattern-{PATTERN_DISK_MIB}m.img"
        with self._lock:
            if not local.exists():
                local.parent.mkdir(parents=True, exist_ok=True)
                write_pattern_disk(local, PATTERN_DISK_MIB)
        remote_path = f"{self.remote(host).host.state_dir}/images/{local.name}"
        self._ensure_files(host, {remote_path: local})
        return remote_path

    def _ensure_files(self, host: str, files: dict[str, Path]) -> None:
        """Upload controller files to ``host`` unless they are already there."""
        remote = self.remote(host)
        with self._lock:
            # Checked on the host every time (one round trip): a host may be wiped mid-session.
            for target, local in files.items():
                if remote.run_shell(f"test -s {shlex.quote(target)}", timeout=30).rc != 0:
                    remote.check(["mkdir", "-p", target.rsplit("/", 1)[0]], timeout=30)
                    remote.put(local, target, timeout=300)

    def controller_address(self, host: str) -> str:
        """The controller's address as ``host`` sees it (from the SSH session itself)."""
        with self._lock:
            if host not in self._controller_addr:
                seen = self.remote(host).check_shell("echo $SSH_CONNECTION", timeout=30).stdout.split()
                if not seen:
                    raise MachineError(
                        f"{host}: cannot tell the controller's address (no SSH_CONNECTION)"
                    )
                self._controller_addr[host] = seen[0]
            return self._controller_addr[host]

    # -- machines --------------------------------------------------------------------------------

    def machine_spec(
        self,
        host: str,
        *,
        name: str,
        vgpu: VgpuAllocation | None = None,
        extra_append: str = "",
        qemu_args: tuple[str, ...] = (),
    ) -> MachineSpec:
        """The guest's machine on ``host``: the vGPU's device options, then ``qemu_args`` (a test's
        own, e.g. a device under test; the destination gets the source's)."""
        guest = self.inventory.guest
        kernel, initrd = self.image_on(host)
        append = " ".join(x for x in (self.image().append, guest.extra_append, extra_append) if x)
        extra: tuple[str, ...] = ()
        if vgpu is not None:
            profile = get_profile(vgpu.vendor)
            facts = self.facts(host)
            tracking = facts.dirty_tracking.vfio_options if facts.dirty_tracking else ()
            extra = tuple(profile.qemu_device_args(vgpu.sysfs_path, facts.qemu_caps, extra=tracking))
        return MachineSpec(
            name=name,
            memory_mib=guest.memory_mib,
            vcpus=guest.vcpus,
            kernel=kernel,
            initrd=initrd,
            append=append,
            accel=self.facts(host).accel,
            extra_args=extra + qemu_args,
            pattern_disk=self.pattern_disk_on(host),
        )

    def allocate_vgpu(
        self, pair: HostPair, host: str, *, uuid: str | None = None
    ) -> VgpuAllocation | None:
        """Create the pair's vGPU on ``host`` (same UUID on both sides, as libvirt expects)."""
        if pair.vgpu is None:
            return None
        manager = self.mdevs(host, pair)
        instance = manager.create(pair.vgpu.type, parent=pair.vgpu.parent, uuid=uuid, owner=self.run_id)
        return VgpuAllocation(
            host=host,
            instance=instance,
            sysfs_path=manager.sysfs_path(instance.uuid),
            vendor=pair.vgpu.vendor,
            simulated=get_profile(pair.vgpu.vendor).simulated,
        )

    def release_vgpu(self, vgpu: VgpuAllocation) -> None:
        self.mdevs(vgpu.host).remove(vgpu.instance.uuid, missing_ok=True)

    def release_vgpu_of(self, machine: RemoteMachine) -> None:
        """Remove a stopped machine's mdev now (the guest left it), keeping its files."""
        vgpu = self.vgpus.pop(machine.tag, None)
        if vgpu is not None:
            self.release_vgpu(vgpu)

    def verify_vgpus(self, source: RemoteMachine, destination: RemoteMachine) -> None:
        """Right before migrating: both mdevs still exist, and they are of the same type."""
        src, dst = self.vgpus.get(source.tag), self.vgpus.get(destination.tag)
        if src is None and dst is None:
            return
        if src is None or dst is None:
            raise MdevError(f"{source.label} -> {destination.label}: only one side has a vGPU")
        if src.instance.type_id != dst.instance.type_id:
            raise MdevError(
                f"vGPU type mismatch: source {src.host} has {src.instance.type_id}, destination "
                f"{dst.host} has {dst.instance.type_id}; a migration between them cannot work"
            )
        for vgpu in (src, dst):
            present = {i.uuid for i in self.mdevs(vgpu.host).instances()}
            if vgpu.instance.uuid not in present:
                raise MdevError(
                    f"{vgpu.host}: the vGPU {vgpu.instance.uuid} ({vgpu.instance.type_id}) vanished "
                    "before the migration; something removed it under the test"
                )

    def live_machines(self) -> list[RemoteMachine]:
        """Machines started in this session and not released yet (for the watchdog)."""
        return [m for m in self._machines if m.pid is not None]

    def release(self, machine: RemoteMachine) -> None:
        """Stop a machine, remove its files and its mdev. Idempotent.

        Every step runs even when an earlier one fails (a QEMU that would not stop must not leave
        its mdev behind as well); the first failure is raised at the end.
        """
        vgpu = self.vgpus.pop(machine.tag, None)
        self._qemu_args.pop(machine.tag, None)
        with contextlib.ExitStack() as steps:  # run last-registered first: stop, files, mdev
            if machine in self._machines:
                steps.callback(self._machines.remove, machine)
            if vgpu is not None:
                steps.callback(self.release_vgpu, vgpu)
            steps.callback(self._remove_files_quietly, machine)
            machine.shutdown()

    @staticmethod
    def _remove_files_quietly(machine: RemoteMachine) -> None:
        with contextlib.suppress(MdevtestError):
            machine.remove_files()

    def next_name(self, role: str) -> str:
        with self._lock:
            self._serial += 1
            return f"{role}{self._serial}"

    def start_source(
        self, pair: HostPair, *, extra_append: str = "", qemu_args: tuple[str, ...] = ()
    ) -> RemoteMachine:
        """Start the guest on the pair's source and wait until its workload reports READY.

        ``qemu_args`` are added to the command line here and on every destination it migrates to.
        """
        vgpu = self.allocate_vgpu(pair, pair.source)
        machine = self._machine(
            pair.source, vgpu, name=self.next_name("vm"), extra_append=extra_append, qemu_args=qemu_args
        )
        try:
            machine.start()
            wait_ready(machine, timeout=self.inventory.guest.boot_timeout_s)
        except BaseException:
            self.release(machine)
            raise
        return machine

    def _machine(
        self,
        host: str,
        vgpu: VgpuAllocation | None,
        *,
        name: str,
        incoming: bool = False,
        extra_append: str = "",
        qemu_args: tuple[str, ...] = (),
    ) -> RemoteMachine:
        """A machine object owning ``vgpu`` (released with it); the mdev goes if this fails."""
        try:
            spec = self.machine_spec(
                host, name=name, vgpu=vgpu, extra_append=extra_append, qemu_args=qemu_args
            )
            if incoming:
                spec = spec.as_destination()
            machine = RemoteMachine(self.remote(host), spec, run_id=self.run_id)
        except BaseException:
            if vgpu is not None:
                self.release_vgpu(vgpu)
            raise
        if vgpu is not None:
            self.vgpus[machine.tag] = vgpu
        self._qemu_args[machine.tag] = qemu_args
        self._machines.append(machine)
        return machine

    def start_destination(self, pair: HostPair, source: RemoteMachine) -> RemoteMachine:
        """Start the same device model on the pair's destination, waiting for ``-incoming``."""
        facts_src, facts_dst = self.facts(pair.source), self.facts(pair.destination)
        if facts_src.accel != facts_dst.accel:
            raise MachineError(
                f"{pair.id}: source runs {facts_src.accel}, destination {facts_dst.accel}; "
                "set the same `accel` on both hosts in the inventory"
            )
        src_vgpu = self.vgpus.get(source.tag)
        # The destination's mdev must exist before QEMU starts with -incoming.
        vgpu = self.allocate_vgpu(
            pair, pair.destination, uuid=src_vgpu.instance.uuid if src_vgpu else None
        )
        machine = self._machine(
            pair.destination,
            vgpu,
            name=self.next_name("in"),
            incoming=True,
            qemu_args=self._qemu_args.get(source.tag, ()),
        )
        # The same kernel command line as the source (the guest's workload options live there).
        machine.spec = replace(machine.spec, append=source.spec.append)
        try:
            machine.start()
        except BaseException:
            self.release(machine)
            raise
        return machine

    def reverse(self, pair: HostPair) -> HostPair:
        """The inventory's pair that leads back (destination -> source), for round trips."""
        for candidate in self.inventory.pairs:
            if (candidate.source, candidate.destination) == (pair.destination, pair.source):
                return candidate
        raise MachineError(
            f"{pair.id}: the inventory has no pair {pair.destination}->{pair.source} to migrate back "
            "over; add it (with the source's migration address)"
        )

    @staticmethod
    def migration_uri(pair: HostPair) -> str:
        address = pair.migration_address
        if ":" in address:  # IPv6 literal
            address = f"[{address}]"
        return f"tcp:{address}:{pair.migration_port}"

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def wait_ready(machine: RemoteMachine, *, timeout: float, marker: str = "MDT-READY") -> float:
    """Wait until the guest's console shows ``marker``; return seconds since QEMU started."""
    deadline = time.monotonic() + timeout
    while True:
        if marker in machine.serial_log():
            started = machine.started_at or time.monotonic()
            return time.monotonic() - started
        if not machine.is_alive():
            raise GuestError(f"{machine.label}: QEMU exited during boot; log: {machine.log_tail()}")
        if time.monotonic() > deadline:
            tail = machine.serial_log()[-1500:]
            raise GuestError(
                f"{machine.label}: guest not ready ({marker}) within {timeout:g} s; "
                f"console tail:\n{tail}"
            )
        time.sleep(0.5)
