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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from mdevtest.errors import GuestError, MachineError, MdevError, MdevtestError
from mdevtest.guest.image import BootImage, sha256_file
from mdevtest.guest.qga import GuestAgent, wait_agent_ready
from mdevtest.host import HostFacts, probe_host
from mdevtest.inventory import DiskImage, HostPair, Inventory, KernelImage
from mdevtest.mdev import MdevInstance, MdevManager
from mdevtest.qemu.cmdline import Control, DiskAttach, MachineSpec
from mdevtest.qemu.machine import RemoteMachine, reap
from mdevtest.remote import Remote, RemotePool
from mdevtest.sriov import VfInstance, VfManager
from mdevtest.vendors import get_profile

if TYPE_CHECKING:
    from mdevtest.virt.connection import LibvirtLink


@dataclass(frozen=True)
class VgpuAllocation:
    """The VFIO device this session set up for one machine (freed when the machine is released):
    an mdev it created, or an SR-IOV VF it bound (``instance.uuid`` is then the VF's address)."""

    host: str
    instance: MdevInstance | VfInstance
    sysfs_path: str
    vendor: str
    simulated: bool
    kernel_migration: str | None = None
    """What the kernel's VFIO debugfs said of the device's migration support (``yes: ...``,
    ``unknown: ...``); None where it was not asked (a simulated device)."""

    @property
    def kind(self) -> str:
        """``mdev`` or ``vf``."""
        return "vf" if isinstance(self.instance, VfInstance) else "mdev"

    def describe(self) -> str:
        """``mdev <uuid>`` or ``VF <address>``, for reports."""
        return f"{'VF' if self.kind == 'vf' else 'mdev'} {self.instance.uuid}"


@dataclass(frozen=True)
class HostBoot:
    """Where a guest image's files are on one host (uploaded and verified once per host)."""

    kernel: str | None
    initrd: str | None
    disk: str | None
    cloud_init: str | None


#: The PCI vendor:device of the emulated VGA every lab guest has (QEMU's ``-vga std``): the
#: display the probe draws on when the vGPU brings none of its own (the local lab's stand-in).
EMULATED_VGA = "1234:1111"

#: The probe's control channel by how the image has it: the initramfs guest's second UART, a
#: virtio-serial port for a probe deployed into any Linux guest (no UART to spare there).
_CONTROL: dict[str, Control] = {"builtin": "uart", "deploy": "vport", "none": "none"}

#: The start of the probe agent's READY line (its first field is always the display's).
PROBE_READY = "MDT-READY fb="

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
        self._image: BootImage | None = None
        self._lock = threading.Lock()
        self._serial = 0
        self.vgpus: dict[str, VgpuAllocation] = {}  # machine tag -> its mdev
        self._qemu_args: dict[str, tuple[str, ...]] = {}  # machine tag -> a test's own QEMU args
        self._controller_addr: dict[str, str] = {}
        self._machines: list[RemoteMachine] = []
        # host -> machines (with their mdev) whose release failed because the host was
        # unreachable: released when the host answers again (before the next machine there,
        # by the next lease's reaper, at close), else by a later run's reaper
        self._pending: dict[str, list[tuple[RemoteMachine, VgpuAllocation | None]]] = {}
        # (host, PF) whose VFs this session enabled: restored as found at close
        self._provisioned: set[tuple[str, str]] = set()
        self._libvirt: dict[str, LibvirtLink] = {}  # host -> its libvirtd (backend libvirt)

    def remote(self, host: str) -> Remote:
        return self.pool[host]

    def facts(self, host: str) -> HostFacts:
        """Probe a host once per session."""
        with self._lock:
            if host not in self._facts:
                self._facts[host] = probe_host(self.remote(host))
            return self._facts[host]

    def libvirt(self, host: str) -> LibvirtLink:
        """The connection to ``host``'s libvirtd (opened once per session)."""
        from mdevtest.virt.connection import LibvirtLink

        with self._lock:
            link = self._libvirt.get(host)
            if link is None:
                remote = self.remote(host)
                link = LibvirtLink(remote, socket_path=remote.host.libvirt_socket)
                self._libvirt[host] = link
            return link

    def uses_libvirt(self, host: str) -> bool:
        """A pair of the inventory runs guests on ``host`` through libvirt."""
        return any(
            p.backend == "libvirt" and host in (p.source, p.destination) for p in self.inventory.pairs
        )

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

    def vfs(self, host: str) -> VfManager:
        """The SR-IOV VF manager of ``host`` (its sysfs root and state dir)."""
        remote = self.remote(host)
        return VfManager(remote, sysfs_root=remote.host.sysfs_root, state_dir=remote.host.state_dir)

    def reap_host(self, host: str) -> list[str]:
        """Kill machines and remove mdevs that other runs left on ``host`` (ours only).

        Call it only while holding the host's lease: a live run keeps its machines and mdevs only
        while it holds the lease, so whatever is left then belongs to a run that died.
        """
        done = self.flush_pending(host)
        left = reap(self.remote(host), keep_run=self.run_id)
        if self.uses_libvirt(host):
            from mdevtest.virt.machine import reap_domains

            left += reap_domains(self.remote(host), keep_run=self.run_id)
        mdevs = [f"mdev {u}" for u in self.mdevs(host).reap(keep_owner=self.run_id)]
        vfs: list[str] = []
        if self.remote(host).host.state_dir is not None:
            manager = self.vfs(host)
            vfs = [f"VF {a}" for a in manager.reap(keep_owner=self.run_id)]
            with self._lock:
                ours = {pf for h, pf in self._provisioned if h == host}
            vfs += manager.restore_left(keep=ours)  # PFs a dead run left with VFs enabled
        return done + left + mdevs + vfs

    def reap(self) -> dict[str, list[str]]:
        """:meth:`reap_host` on every host (``mdevtest lab reap``; no other run may be active)."""
        return {h.name: self.reap_host(h.name) for h in self.inventory.hosts}

    # -- images ----------------------------------------------------------------------------------

    def image(self) -> BootImage:
        """The guest image on the controller (the labs build and cache theirs)."""
        if self._image is None:
            self._image = resolve_image(self.inventory)
        return self._image

    def image_on(self, host: str) -> HostBoot:
        """The image's files on ``host``, uploading them once if the host lacks them; a disk is
        checked by size and sha256 on the host after the copy (and by size afterwards)."""
        image = self.image()
        base = f"{self.remote(host).host.state_dir}/images/{image.digest}"
        files: dict[str, Path] = {}
        kernel = initrd = disk = seed = None
        if image.kernel is not None:
            kernel = f"{base}/vmlinuz"
            files[kernel] = image.kernel
        if image.initrd is not None:
            initrd = f"{base}/initrd.img"
            files[initrd] = image.initrd
        if image.cloud_init is not None:
            seed = f"{base}/seed.img"
            files[seed] = image.cloud_init
        self._ensure_files(host, files)
        if image.disk is not None:
            disk = f"{base}/disk.{image.disk_format}"
            self._ensure_verified(host, disk, image.disk, image.disk_sha256)
        return HostBoot(kernel, initrd, disk, seed)

    def _ensure_verified(self, host: str, target: str, local: Path, sha256: str | None) -> None:
        """Copy a (large) file once; the host's own sha256 of the copy must match the
        controller's, recorded in ``<target>.verified`` (size and digest) for later sessions."""
        remote = self.remote(host)
        size = local.stat().st_size
        digest = sha256 or sha256_file(local)
        stamp = f"{size} {digest}"
        marker = f"{target}.verified"
        with self._lock:
            seen = remote.run_shell(
                f"[ $(stat -c %s {shlex.quote(target)} 2>/dev/null || echo 0) = {size} ] && "
                f"cat {shlex.quote(marker)}",
                timeout=30,
            )
            if seen.rc == 0 and seen.stdout.strip() == stamp:
                return
            remote.check(["mkdir", "-p", target.rsplit("/", 1)[0]], timeout=30)
            remote.put(local, f"{target}.part", timeout=1800)
            got = remote.check(["sha256sum", f"{target}.part"], timeout=600).stdout.split()
            if not got or got[0] != digest:
                remote.run(["rm", "-f", f"{target}.part"], timeout=30)
                raise MachineError(
                    f"{host}: the copy of {local} has sha256 {got[0] if got else '?'}, expected "
                    f"{digest}; the transfer was corrupted or the file changed while copying"
                )
            remote.check_shell(
                f"mv {shlex.quote(target + '.part')} {shlex.quote(target)} && "
                f"echo {shlex.quote(stamp)} > {shlex.quote(marker)}",
                timeout=30,
            )

    def pattern_disk_on(self, host: str) -> str | None:
        """The synthetic workload's DMA pattern disk on ``host`` (same bytes on every host)."""
        if self.image().probe == "none":
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
        machine: str = "q35",
    ) -> MachineSpec:
        """The guest's machine on ``host``: the vGPU's device options, then ``qemu_args`` (a test's
        own, e.g. a device under test; the destination gets the source's)."""
        guest = self.inventory.guest
        image = self.image()
        files = self.image_on(host)
        append = " ".join(x for x in (image.append, guest.extra_append, extra_append) if x)
        extra: tuple[str, ...] = ()
        display: str | None = None
        if vgpu is not None:
            profile = get_profile(vgpu.vendor)
            facts = self.facts(host)
            tracking = facts.dirty_tracking.vfio_options if facts.dirty_tracking else ()
            extra = tuple(profile.qemu_device_args(vgpu.sysfs_path, facts.qemu_caps, extra=tracking))
            display = profile.display_device(facts.qemu_caps)
        remote_host = self.remote(host).host
        return MachineSpec(
            name=name,
            memory_mib=guest.memory_mib,
            vcpus=guest.vcpus,
            kernel=files.kernel,
            initrd=files.initrd,
            append=append if files.kernel is not None else "",
            accel=self.facts(host).accel,
            machine=machine,
            display_device=display,
            extra_args=extra + qemu_args,
            control=_CONTROL[image.probe],
            pattern_disk=self.pattern_disk_on(host),
            disk=DiskAttach(files.disk, image.disk_format) if files.disk else None,
            firmware=image.firmware,
            ovmf_code=remote_host.ovmf_code,
            ovmf_vars=remote_host.ovmf_vars,
            agent=image.agent,
            cloud_init=files.cloud_init,
        )

    def machine_type(self, pair: HostPair) -> str:
        """The machine type guests of ``pair`` run: the newest versioned q35 both hosts' QEMUs
        have (the older one's newest), so the guest can migrate both ways."""
        from mdevtest.qemu.caps import common_machine_type

        return common_machine_type(
            self.facts(pair.source).qemu_caps, self.facts(pair.destination).qemu_caps
        )

    def allocate_vgpu(
        self, pair: HostPair, host: str, *, uuid: str | None = None
    ) -> VgpuAllocation | None:
        """Create the pair's vGPU on ``host`` (same UUID on both sides, as libvirt expects), or
        bind a VF for a VF vendor (any free VF of the PF: addresses differ between hosts)."""
        if pair.vgpu is None:
            return None
        self.flush_pending(host)  # a discarded machine's mdev there may have this very UUID
        if pair.vgpu.is_vf:
            vgpu = self._allocate_vf(pair, host)
        else:
            manager = self.mdevs(host, pair)
            instance = manager.create(
                pair.vgpu.type, parent=pair.vgpu.parent, uuid=uuid, owner=self.run_id
            )
            vgpu = VgpuAllocation(
                host=host,
                instance=instance,
                sysfs_path=manager.sysfs_path(instance.uuid),
                vendor=pair.vgpu.vendor,
                simulated=get_profile(pair.vgpu.vendor).simulated,
            )
        return vgpu if vgpu.simulated else self._kernel_says(pair, vgpu)

    def _kernel_says(self, pair: HostPair, vgpu: VgpuAllocation) -> VgpuAllocation:
        """Ask the kernel whether the device can migrate (probed, not guessed from versions); a
        device whose driver has none is released and the pair refused with the reason."""
        from mdevtest.errors import PreflightFailed
        from mdevtest.host import probe_kernel_migration

        try:
            said = probe_kernel_migration(self.remote(vgpu.host), vgpu.instance.uuid)
        except MdevtestError as exc:
            return replace(vgpu, kernel_migration=f"unknown: {exc}")
        if said.supported is False:
            with contextlib.suppress(MdevtestError):
                self.release_vgpu(vgpu)
            raise PreflightFailed(pair.id, [f"{vgpu.host}: {vgpu.describe()}: {said.detail}"])
        word = "yes" if said.supported else "unknown"
        return replace(vgpu, kernel_migration=f"{word}: {said.detail}")

    def _allocate_vf(self, pair: HostPair, host: str) -> VgpuAllocation:
        """Bind a free VF of the pair's PF on ``host`` (enabling VFs first if it has too few)."""
        from mdevtest.vendors.vf import VfProfile

        spec = pair.vgpu
        assert spec is not None  # the inventory requires a parent for a VF vendor
        assert spec.parent is not None
        profile = get_profile(spec.vendor)
        assert isinstance(profile, VfProfile)
        manager = self.vfs(host)
        with self._lock:
            self._provisioned.add((host, spec.parent))
        instance = manager.allocate(
            spec.parent,
            driver=profile.bind_driver(spec.type),
            vgpu_type=profile.vgpu_type(spec.type),
            owner=self.run_id,
            vfs=spec.vfs or 2,
        )
        return VgpuAllocation(
            host=host,
            instance=instance,
            sysfs_path=manager.device_dir(instance.uuid),
            vendor=spec.vendor,
            simulated=profile.simulated,
        )

    def restore_vfs(self) -> list[str]:
        """Every PF this session enabled VFs on, back as it was found (raises naming each PF
        that could not be restored: a host left with VFs it did not have is a dirty host)."""
        done: list[str] = []
        problems: list[str] = []
        for host, pf in sorted(self._provisioned):
            try:
                note = self.vfs(host).restore(pf)
            except MdevtestError as exc:
                problems.append(str(exc))
            else:
                if note:
                    done.append(f"{host}: {note}")
        self._provisioned.clear()
        if problems:
            raise MdevError("SR-IOV hygiene: " + "; ".join(problems))
        return done

    def release_vgpu(self, vgpu: VgpuAllocation) -> None:
        if isinstance(vgpu.instance, VfInstance):
            self.vfs(vgpu.host).release(vgpu.instance, missing_ok=True)
            return
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
            if isinstance(vgpu.instance, VfInstance):
                present = {r.uuid for r in self.vfs(vgpu.host).records()}
            else:
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
        its mdev behind as well); the first failure is raised at the end. On a host that cannot
        be reached the release is recorded as pending instead (:meth:`pending`), never waited
        for: it is done once the host answers again.
        """
        vgpu = self.vgpus.pop(machine.tag, None)
        self._qemu_args.pop(machine.tag, None)
        if machine in self._machines:
            self._machines.remove(machine)
        self._release(machine, vgpu)

    def _release(self, machine: RemoteMachine, vgpu: VgpuAllocation | None) -> None:
        host = machine.remote.name
        if machine.remote.unreachable is not None:
            self._defer(host, machine, vgpu)
            return
        try:
            with contextlib.ExitStack() as steps:  # run last-registered first: stop, files, mdev
                if vgpu is not None:
                    steps.callback(self.release_vgpu, vgpu)
                steps.callback(self._remove_files_quietly, machine)
                machine.shutdown()
        except MdevtestError:
            if machine.remote.unreachable is None:
                raise
            self._defer(host, machine, vgpu)

    def _defer(self, host: str, machine: RemoteMachine, vgpu: VgpuAllocation | None) -> None:
        with self._lock:
            entries = self._pending.setdefault(host, [])
            if all(m is not machine for m, _ in entries):
                entries.append((machine, vgpu))

    def pending(self) -> dict[str, list[str]]:
        """Releases waiting for their host to answer again, by host (for reports)."""
        with self._lock:
            return {
                host: [m.label + (f" + {v.describe()}" if v else "") for m, v in entries]
                for host, entries in self._pending.items()
                if entries
            }

    def flush_pending(self, host: str) -> list[str]:
        """Release what waits for ``host``, if it answers now; returns what was released."""
        with self._lock:
            entries = self._pending.pop(host, [])
        done: list[str] = []
        for machine, vgpu in entries:
            self._release(machine, vgpu)
            if all(m is not machine for m, _ in self._pending.get(host, [])):
                done.append(f"{machine.label} (released late: its host was unreachable)")
        return done

    @staticmethod
    def _remove_files_quietly(machine: RemoteMachine) -> None:
        with contextlib.suppress(MdevtestError):
            machine.remove_files()

    def next_name(self, role: str) -> str:
        with self._lock:
            self._serial += 1
            return f"{role}{self._serial}"

    def start_source(
        self,
        pair: HostPair,
        *,
        extra_append: str = "",
        qemu_args: tuple[str, ...] = (),
        probe_options: Mapping[str, str] | None = None,
    ) -> RemoteMachine:
        """Start the guest on the pair's source and wait until it is ready: its console marker
        (the lab's initramfs guests) or its qemu-guest-agent; then, for an image whose probe is
        deployed, copy the probe in and wait for its READY.

        ``qemu_args`` are added to the command line here and on every destination it migrates to.
        ``probe_options`` go to the probe (e.g. ``udp``): on the kernel command line of a built-in
        probe (``mdt.<key>=<value>``), on the command line of a deployed one.
        """
        image = self.image()
        options = dict(probe_options or {})
        if image.probe == "builtin":
            extra_append = " ".join(
                x for x in (extra_append, *(f"mdt.{k}={v}" for k, v in options.items())) if x
            )
        vgpu = self.allocate_vgpu(pair, pair.source)
        machine = self._machine(
            pair.source,
            vgpu,
            name=self.next_name("vm"),
            extra_append=extra_append,
            qemu_args=qemu_args,
            machine_type=self.machine_type(pair),
            backend=pair.backend,
        )
        try:
            machine.start()
            timeout = self.inventory.guest.boot_timeout_s
            started = time.monotonic()
            agent = GuestAgent(lambda: machine)
            if image.ready_marker is not None:
                wait_ready(machine, timeout=timeout, marker=image.ready_marker)
            else:
                machine.os_info = wait_agent_ready(agent, timeout=timeout, alive=machine.is_alive)
            if image.probe == "deploy":
                self._deploy_probe(agent, pair, {**image.probe_defaults, **options})
                left = max(30.0, timeout - (time.monotonic() - started))
                # The probe's READY (the image's own workload may print a READY of its own).
                wait_ready(machine, timeout=left, marker=PROBE_READY)
        except BaseException:
            self.release(machine)
            raise
        return machine

    def _deploy_probe(self, agent: GuestAgent, pair: HostPair, options: dict[str, str]) -> None:
        from mdevtest.guest.probe import deploy_probe, probe_binary
        from mdevtest.qemu.cmdline import CONTROL_PORT, PATTERN_SERIAL

        display = get_profile(pair.vgpu.vendor).guest_display if pair.vgpu else None
        args = {
            "console": "/dev/ttyS0",
            "ctl": f"vport:{CONTROL_PORT}",
            "drm": f"pci:{display or EMULATED_VGA}",
            "dma_dev": f"serial:{PATTERN_SERIAL}",
            **options,
        }
        deploy_probe(agent, probe_binary(), args)

    def _machine(
        self,
        host: str,
        vgpu: VgpuAllocation | None,
        *,
        name: str,
        incoming: bool = False,
        extra_append: str = "",
        qemu_args: tuple[str, ...] = (),
        machine_type: str = "q35",
        backend: str = "qemu",
        domain_of: RemoteMachine | None = None,
    ) -> RemoteMachine:
        """A machine object owning ``vgpu`` (released with it); the mdev goes if this fails.
        ``backend`` libvirt: a libvirt domain (``domain_of``: the source whose domain, name and
        uuid, a destination continues)."""
        try:
            spec = self.machine_spec(
                host,
                name=name,
                vgpu=vgpu,
                extra_append=extra_append,
                qemu_args=qemu_args,
                machine=machine_type,
            )
            if incoming:
                spec = spec.as_destination()
            machine = self._new_machine(host, spec, backend, domain_of)
        except BaseException:
            if vgpu is not None:
                self.release_vgpu(vgpu)
            raise
        if vgpu is not None:
            self.vgpus[machine.tag] = vgpu
        self._qemu_args[machine.tag] = qemu_args
        self._machines.append(machine)
        return machine

    def _new_machine(
        self, host: str, spec: MachineSpec, backend: str, domain_of: RemoteMachine | None
    ) -> RemoteMachine:
        if backend == "qemu":
            return RemoteMachine(self.remote(host), spec, run_id=self.run_id)
        from mdevtest.virt.machine import LibvirtMachine

        name = dom_uuid = None
        if isinstance(domain_of, LibvirtMachine):  # the guest keeps its domain name and uuid
            name, dom_uuid = domain_of.domain_name, domain_of.domain_uuid
        return LibvirtMachine(
            self.remote(host),
            spec,
            run_id=self.run_id,
            link=lambda: self.libvirt(host),
            domain_name=name,
            domain_uuid=dom_uuid,
        )

    def start_destination(self, pair: HostPair, source: RemoteMachine) -> RemoteMachine:
        """Start the same device model on the pair's destination, waiting for ``-incoming``."""
        facts_src, facts_dst = self.facts(pair.source), self.facts(pair.destination)
        if facts_src.accel != facts_dst.accel:
            raise MachineError(
                f"{pair.id}: source runs {facts_src.accel}, destination {facts_dst.accel}; "
                "set the same `accel` on both hosts in the inventory"
            )
        from mdevtest.virt.machine import LibvirtMachine

        if isinstance(source, LibvirtMachine) != (pair.backend == "libvirt"):
            runs = "libvirt" if isinstance(source, LibvirtMachine) else "qemu"
            raise MachineError(
                f"{pair.id}: the guest runs under backend {runs}, the pair has backend "
                f"{pair.backend}; give both directions of a round trip the same backend"
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
            machine_type=source.spec.machine,  # the guest's machine type never changes
            backend=pair.backend,
            domain_of=source,
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
        """The inventory's pair that leads back (destination -> source), for round trips, with
        ``pair``'s vGPU: a guest keeps its device type both ways (an inventory may give each
        direction another vGPU for the tests that start there)."""
        for candidate in self.inventory.pairs:
            if (candidate.source, candidate.destination) == (pair.destination, pair.source):
                if candidate.vgpu == pair.vgpu:
                    return candidate
                return candidate.model_copy(update={"vgpu": pair.vgpu})
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
        """Last chance for pending releases (a host still dead keeps them for a later run's
        reaper), then every connection goes."""
        for host in list(self._pending):
            with contextlib.suppress(MdevtestError):
                self.flush_pending(host)
        try:
            self.restore_vfs()
        finally:
            for link in self._libvirt.values():
                link.close()
            self._libvirt.clear()
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


def resolve_image(inventory: Inventory) -> BootImage:
    """What the inventory's guest image is, with its files on the controller (a lab image is
    built, or taken from its cache, by the lab that ships it)."""
    spec = inventory.guest.image
    if isinstance(spec, KernelImage):
        digest = hashlib.sha256()
        for path in (spec.kernel, spec.initrd):
            digest.update(Path(path).read_bytes())
        return BootImage(
            digest=digest.hexdigest()[:16],
            description=f"kernel {spec.kernel} + initrd {spec.initrd}",
            kernel=Path(spec.kernel),
            initrd=Path(spec.initrd),
            append=spec.append,
            agent=spec.agent,
            ready_marker=None if spec.agent else "MDT-READY",
        )
    if isinstance(spec, DiskImage):
        disk = Path(spec.path)
        if not disk.is_file():
            raise MachineError(f"{inventory.source_path}: guest.image.path {disk} is not a file")
        sha = sha256_file(disk)
        if spec.sha256 is not None and sha != spec.sha256:
            raise MachineError(
                f"{inventory.source_path}: guest.image.path {disk} has sha256 {sha}, the inventory "
                f"says {spec.sha256}; update guest.image.sha256 or restore the image"
            )
        digest = hashlib.sha256(sha.encode())
        for extra in (spec.kernel, spec.initrd, spec.cloud_init):
            if extra is not None:
                digest.update(Path(extra).read_bytes())
        return BootImage(
            digest=digest.hexdigest()[:16],
            description=f"{spec.format} disk {disk} ({spec.firmware})",
            kernel=Path(spec.kernel) if spec.kernel else None,
            initrd=Path(spec.initrd) if spec.initrd else None,
            append=spec.append,
            disk=disk,
            disk_format=spec.format,
            disk_sha256=sha,
            firmware=spec.firmware,
            cloud_init=Path(spec.cloud_init) if spec.cloud_init else None,
            agent=spec.agent,
            probe="deploy" if spec.probe else "none",
            ready_marker=None if spec.agent else "MDT-READY",
        )
    from mdevtest.lab.images import lab_image

    return lab_image(spec.kind).build(spec, lambda _m: None)
