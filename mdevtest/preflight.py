"""Pair preflight: is this host pair fit to run a migration test, before any guest starts?

Checks, each recorded with what it saw: both hosts reachable; the vendor's host checks pass on both;
the vGPU type exists with a free instance on both; QEMU versions and vendor-driver versions equal on
both sides (unless the test declares itself cross-version); QEMU can migrate the VFIO device, and
how it will track the pages the device dirties (``VFIO dirty tracking``: mode ``device`` or
``off``, and why; see :func:`mdevtest.host.dirty_tracking`); the last two not for the simulated
vGPU. ``blocked-reasons`` is checked once the source runs, by the Migrator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mdevtest.errors import MdevError, MdevtestError, PreflightFailed
from mdevtest.inventory import HostPair
from mdevtest.vendors import get_profile

if TYPE_CHECKING:
    from mdevtest.testbed import Testbed


@dataclass(frozen=True)
class PreflightCheck:
    host: str
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{self.host}: {self.name}: {self.detail}"


@dataclass(frozen=True)
class PreflightReport:
    pair: str
    checks: tuple[PreflightCheck, ...]

    @property
    def failures(self) -> tuple[PreflightCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)

    @property
    def passed(self) -> bool:
        return not self.failures

    def raise_for_failures(self) -> PreflightReport:
        if self.failures:
            raise PreflightFailed(self.pair, [c.line() for c in self.failures])
        return self

    def to_json(self) -> list[dict[str, object]]:
        return [c.__dict__ for c in self.checks]


def preflight_pair(testbed: Testbed, pair: HostPair, *, cross_version: bool = False) -> PreflightReport:
    """Run every check (all of them, so the report lists every problem at once)."""
    checks: list[PreflightCheck] = []
    hosts = (pair.source, pair.destination)
    reachable: list[str] = []
    for host in hosts:
        try:
            facts = testbed.facts(host)
        except MdevtestError as exc:
            checks.append(PreflightCheck(host, "reachable", False, str(exc)))
            continue
        reachable.append(host)
        checks.append(
            PreflightCheck(host, "reachable", True, f"QEMU {facts.qemu_version}, {facts.accel}")
        )
    if len(reachable) == 2 and not cross_version:
        versions = {h: testbed.facts(h).qemu_version for h in hosts}
        same = len(set(versions.values())) == 1
        checks.append(PreflightCheck(pair.source, "same QEMU version", same,
            ", ".join(f"{h} {v}" for h, v in versions.items())
            + ("" if same else "; mark the test cross_version to allow this")))  # fmt: skip
    if pair.backend == "libvirt":
        for host in reachable:
            checks.append(_libvirt_check(testbed, host))
    vgpu = pair.vgpu
    if vgpu is None:
        return PreflightReport(pair.id, tuple(checks))
    profile = get_profile(vgpu.vendor)
    drivers: dict[str, str] = {}
    pf_ids: dict[str, str] = {}  # VF vendors: the PF's vendor:device rev on each host
    for host in reachable:
        remote = testbed.remote(host)
        root = remote.host.sysfs_root
        for hc in profile.host_checks(remote, sysfs_root=root):
            checks.append(PreflightCheck(host, hc.name, hc.passed, hc.detail))
        if vgpu.is_vf:
            identity = _vf_checks(testbed, pair, host, checks)
            if identity is not None:
                pf_ids[host] = identity
        else:
            try:
                mtype = testbed.mdevs(host, pair).require_available(vgpu.type, vgpu.parent)
                checks.append(PreflightCheck(host, f"free {vgpu.type}", True,
                    f"{mtype.available_instances} available on {mtype.parent}"))  # fmt: skip
            except MdevError as exc:
                checks.append(PreflightCheck(host, f"free {vgpu.type}", False, str(exc)))
        try:
            drivers[host] = profile.driver_version(remote, sysfs_root=root)
        except MdevtestError as exc:
            checks.append(PreflightCheck(host, "driver version", False, str(exc)))
        caps = testbed.facts(host).qemu_caps
        if not profile.simulated:
            can = caps.vfio_migration_prop is not None
            checks.append(PreflightCheck(host, "QEMU VFIO migration", can,
                f"QEMU {caps.version_text}: "
                + (f"{caps.vfio_migration_prop} (protocol v{caps.vfio_migration_protocol})" if can
                   else "vfio-pci has no migration property")))  # fmt: skip
            tracking = testbed.facts(host).dirty_tracking
            if tracking is not None:
                checks.append(PreflightCheck(host, "VFIO dirty tracking", tracking.usable,
                    f"mode {tracking.mode}: {tracking.detail}"))  # fmt: skip
    if len(pf_ids) == 2:  # a VF's state loads only into the same device and revision
        same = len(set(pf_ids.values())) == 1
        checks.append(PreflightCheck(pair.source, "same device and revision", same,
            ", ".join(f"{h} {v}" for h, v in pf_ids.items())
            + ("" if same else "; a VF's state cannot move between them")))  # fmt: skip
    if len(drivers) == 2 and not cross_version:
        same = len(set(drivers.values())) == 1
        checks.append(PreflightCheck(pair.source, "same vendor driver", same,
            ", ".join(f"{h} {v}" for h, v in drivers.items())
            + ("" if same else "; mark the test cross_version to allow this")))  # fmt: skip
    return PreflightReport(pair.id, tuple(checks))


def _vf_checks(testbed: Testbed, pair: HostPair, host: str, checks: list[PreflightCheck]) -> str | None:
    """A VF vendor's PF on ``host``: present, SR-IOV, a VF free for this run; returns the PF's
    ``vendor:device rev`` (compared across the pair), None when it could not be read."""
    vgpu = pair.vgpu
    assert vgpu is not None
    assert vgpu.parent is not None
    manager = testbed.vfs(host)
    try:
        state = manager.pf_state(vgpu.parent)
        taken = {r.uuid for r in manager.records()}
    except MdevtestError as exc:
        checks.append(PreflightCheck(host, f"PF {vgpu.parent}", False, str(exc)))
        return None
    wanted = vgpu.vfs or 2
    fits = state.total_vfs >= wanted
    free = max(state.num_vfs, wanted) - len(taken & {v.address for v in state.vfs})
    detail = (
        f"{state.vendor}:{state.device} rev {state.revision}, driver {state.driver or 'none'}, "
        f"{state.num_vfs}/{state.total_vfs} VFs enabled, {len(taken)} taken"
    )
    if not fits:
        detail += f"; {wanted} wanted (vgpu.vfs): the PF offers {state.total_vfs}"
    checks.append(PreflightCheck(host, f"free VF on {vgpu.parent}", fits and free > 0, detail))
    return f"{state.vendor}:{state.device} rev {state.revision}"


def _libvirt_check(testbed: Testbed, host: str) -> PreflightCheck:
    """``backend: libvirt``: the host's libvirtd answers on its socket, with its versions."""
    try:
        link = testbed.libvirt(host)
        conn = link.conn
        lib = link.call(conn.getLibVersion, what="version")
        hv = link.call(conn.getVersion, what="hypervisor version")
    except MdevtestError as exc:
        return PreflightCheck(host, "libvirtd", False, f"{exc}; is libvirtd running on the host?")
    return PreflightCheck(host, "libvirtd", True, f"libvirt {_dotted(lib)}, QEMU {_dotted(hv)}")


def _dotted(version: int) -> str:
    return f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}"
