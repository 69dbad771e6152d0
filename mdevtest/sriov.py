"""SR-IOV virtual functions as migratable VFIO devices, on one host over sysfs.

Today's GPUs migrate a VF bound to a vfio-pci variant driver rather than an mdev: Intel Xe
(``xe-vfio-pci``), NVIDIA vGPU 17+ (a vGPU type per VF), mlx5/virtio VFs. :class:`VfManager` does
what a lab engineer does by hand, with the kernel's sysfs ABI only:

* :meth:`~VfManager.provision`: ``sriov_drivers_autoprobe=0`` (new VFs stay unbound, so no
  host driver grabs them), ``sriov_numvfs=N``; the PF's previous settings are recorded first, so
  :meth:`~VfManager.restore` puts them back after the run (and says so loudly when it cannot);
* :meth:`~VfManager.allocate`: a free VF gets ``driver_override`` = the variant driver and is
  bound through ``drivers_probe`` (unbound first from whatever had it); NVIDIA's VF stays with
  the host driver and gets its vGPU type in ``nvidia/current_vgpu_type``; the VF is recorded with
  its owner (the run), like mdevs (:mod:`mdevtest.mdev`), so a crashed run's VFs are reaped;
* :meth:`~VfManager.release`: type cleared, unbound, override cleared, record dropped.

QEMU gets the VF as ``-device vfio-pci,sysfsdev=/sys/bus/pci/devices/<VF>``. Every command is
bounded by ``timeout``; ``sysfs_root`` points at the local lab's simulated tree
(:mod:`mdevtest.lab.simsriov`).
"""

from __future__ import annotations

import posixpath
import re
import secrets
import shlex
from dataclasses import dataclass

from mdevtest.errors import MdevError
from mdevtest.localexec import Executor
from mdevtest.remote import CommandResult

__all__ = ["PfState", "VfInstance", "VfManager", "VfState", "parse_vgpu_types"]

RECORD_NAME = "vfs.owners"
RESTORE_NAME = "sriov.restore"
_LOCK_WAIT_S = 10
_ADDRESS = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
_OWNER = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")
_DRIVER = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class VfState:
    """A VF as sysfs shows it."""

    address: str
    driver: str | None
    override: str | None
    vgpu_type: int | None  # NVIDIA's current_vgpu_type; None where the VF has none


@dataclass(frozen=True)
class PfState:
    """A PF and its VFs as sysfs shows them."""

    address: str
    vendor: str
    device: str
    revision: str
    driver: str | None
    total_vfs: int
    num_vfs: int
    autoprobe: bool
    vfs: tuple[VfState, ...]

    def vf(self, address: str) -> VfState | None:
        return next((v for v in self.vfs if v.address == address), None)


@dataclass(frozen=True)
class VfInstance:
    """A VF this framework bound for a guest: ``uuid`` is its PCI address (the id reports and
    leases use for any VFIO device), ``type_id`` what it was set up as (``xe-vfio-pci``, an
    NVIDIA vGPU type id, a variant driver's name)."""

    uuid: str
    parent: str
    type_id: str
    driver: str
    owner: str = ""


def parse_vgpu_types(text: str) -> dict[int, str]:
    """NVIDIA's ``creatable_vgpu_types`` (``ID : name`` lines under a header) -> {id: name}."""
    found: dict[int, str] = {}
    for line in text.splitlines():
        head, sep, name = line.partition(":")
        if sep and head.strip().isdigit():
            found[int(head.strip())] = name.strip()
    return found


class VfManager:
    """SR-IOV VFs of one host: provision, allocate, release, reap, restore."""

    def __init__(
        self,
        executor: Executor,
        *,
        sysfs_root: str = "/",
        state_dir: str | None = None,
        timeout: float = 30,
    ) -> None:
        self.executor = executor
        self.sysfs_root = posixpath.normpath(sysfs_root)
        self.state_dir = state_dir
        self.timeout = timeout

    @property
    def host(self) -> str:
        return self.executor.name

    def _sys(self, *parts: str) -> str:
        return posixpath.join(self.sysfs_root, "sys", *parts)

    def device_dir(self, address: str) -> str:
        """``<root>/sys/bus/pci/devices/<address>``: what QEMU's ``sysfsdev=`` takes."""
        return self._sys("bus", "pci", "devices", address)

    # -- reading -----------------------------------------------------------------------------------

    def pf_state(self, pf: str) -> PfState:
        """The PF's identity, SR-IOV settings and VFs (one round trip)."""
        _check(_ADDRESS, "PF address", pf)
        mark = f"@pf-{secrets.token_hex(4)}"
        d = shlex.quote(self.device_dir(pf))
        script = f"""LC_ALL=C; export LC_ALL
d={d}
[ -d "$d" ] || {{ echo "no PCI device {pf} ($d)" >&2; exit 3; }}
if [ ! -f "$d/sriov_totalvfs" ]; then
  echo "{pf} is not an SR-IOV physical function (no sriov_totalvfs)" >&2; exit 4
fi
for f in vendor device revision sriov_totalvfs sriov_numvfs sriov_drivers_autoprobe; do
  echo "{mark} $f $(cat "$d/$f" 2>/dev/null)"
done
echo "{mark} driver $(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)"
for v in "$d"/virtfn*; do
  [ -e "$v" ] || continue
  a=$(basename "$(readlink "$v")")
  drv=$(basename "$(readlink "$v/driver" 2>/dev/null)" 2>/dev/null)
  ov=$(cat "$v/driver_override" 2>/dev/null)
  ty=$(cat "$v/nvidia/current_vgpu_type" 2>/dev/null || echo -)
  echo "{mark} vf $a ${{drv:--}} ${{ov:-(null)}} $ty"
done
"""
        result = self.executor.run_shell(script, timeout=self.timeout)
        if result.rc in (3, 4):
            raise MdevError(f"{self.host}: {_tail(result)}; check vgpu.parent in the inventory")
        if result.rc != 0:
            raise MdevError(f"{self.host}: cannot read PF {pf} (rc={result.rc}): {_tail(result)}")
        values: dict[str, str] = {}
        vfs: list[VfState] = []
        for line in result.stdout.splitlines():
            if not line.startswith(mark + " "):
                continue
            key, _, value = line[len(mark) + 1 :].partition(" ")
            if key == "vf":
                addr, drv, ov, ty = [*value.split(), "-", "-", "-", "-"][:4]
                vfs.append(
                    VfState(
                        addr,
                        None if drv == "-" else drv,
                        None if ov == "(null)" else ov,
                        int(ty) if ty.isdigit() else None,
                    )
                )
            else:
                values[key] = value.strip()
        return PfState(
            address=pf,
            vendor=values.get("vendor", ""),
            device=values.get("device", ""),
            revision=values.get("revision", ""),
            driver=values.get("driver") or None,
            total_vfs=_int(values.get("sriov_totalvfs")),
            num_vfs=_int(values.get("sriov_numvfs")),
            autoprobe=values.get("sriov_drivers_autoprobe", "1") != "0",
            vfs=tuple(sorted(vfs, key=lambda v: v.address)),
        )

    def creatable_types(self, vf: str) -> dict[int, str]:
        """NVIDIA: the vGPU types a VF offers now (``nvidia/creatable_vgpu_types``)."""
        _check(_ADDRESS, "VF address", vf)
        path = posixpath.join(self.device_dir(vf), "nvidia", "creatable_vgpu_types")
        result = self.executor.run(["cat", path], timeout=self.timeout)
        if result.rc != 0:
            raise MdevError(
                f"{self.host}: {vf} has no vGPU types ({path}: {_tail(result)}); is it bound to "
                "the NVIDIA host driver, and is the vGPU manager running?"
            )
        return parse_vgpu_types(result.stdout)

    def records(self) -> list[VfInstance]:
        """The VFs this framework bound, with their owners (the ownership record)."""
        return self._state()[0]

    def _state(self) -> tuple[list[VfInstance], dict[str, tuple[str, str]]]:
        """Both state files in one round trip: the ownership record, and the PFs to restore
        (PF -> its VF count and autoprobe before the run)."""
        if self.state_dir is None:
            return [], {}
        mark = f"@state-{secrets.token_hex(4)}"
        rec, restore = (
            shlex.quote(posixpath.join(self.state_dir, n)) for n in (RECORD_NAME, RESTORE_NAME)
        )
        result = self.executor.run_shell(  # echo: a file without its last newline stays apart
            f"cat {rec} 2>/dev/null; echo; echo {mark}; cat {restore} 2>/dev/null; exit 0",
            timeout=self.timeout,
        )
        owned, _, saved = result.stdout.partition(f"{mark}\n")
        records = [VfInstance(*f) for f in map(str.split, owned.splitlines()) if len(f) == 5]
        restores: dict[str, tuple[str, str]] = {}
        for f in map(str.split, saved.splitlines()):
            if len(f) == 3 and _ADDRESS.fullmatch(f[0]) and f[1].isdigit() and f[2] in ("0", "1"):
                restores.setdefault(f[0], (f[1], f[2]))
        return records, restores

    # -- provisioning -----------------------------------------------------------------------------

    def provision(self, pf: str, num_vfs: int) -> PfState:
        """At least ``num_vfs`` VFs on ``pf``, none auto-bound; the PF's previous settings are
        recorded once (for :meth:`restore`). VFs that exist already are kept."""
        state = self.pf_state(pf)
        if num_vfs > state.total_vfs:
            raise MdevError(
                f"{self.host}: PF {pf} offers {state.total_vfs} VFs, {num_vfs} wanted; lower "
                "vgpu.vfs in the inventory"
            )
        if state.num_vfs >= num_vfs and not state.autoprobe:
            return state
        d = shlex.quote(self.device_dir(pf))
        line = f"{pf} {state.num_vfs} {1 if state.autoprobe else 0}"
        steps = [self._locked(RESTORE_NAME, f"grep -q '^{pf} ' \"$rec\" 2>/dev/null || "
                              f"printf '%s\\n' {shlex.quote(line)} >> \"$rec\"")]  # fmt: skip
        steps.append(f"echo 0 > {d}/sriov_drivers_autoprobe || exit 3")
        if state.num_vfs < num_vfs:
            if state.num_vfs:
                steps.append(f"echo 0 > {d}/sriov_numvfs || exit 3")
            steps.append(f"echo {num_vfs} > {d}/sriov_numvfs || exit 3")
        result = self.executor.run_shell("\n".join(steps) + "\n", timeout=self.timeout)
        if result.rc != 0:
            raise MdevError(
                f"{self.host}: provisioning {num_vfs} VFs on {pf} failed (rc={result.rc}): "
                f"{_tail(result)}"
            )
        return self.pf_state(pf)

    def restore(self, pf: str) -> str | None:
        """Put the PF's VF count and autoprobe back as :meth:`provision` found them; None when
        there is nothing to restore, else what was done. While a VF of the PF is still in the
        ownership record (another test process, a dead run before its reaping) nothing is done
        and the note says so. Raises when the kernel refuses (a VF still in use)."""
        records, restores = self._state()
        if pf not in restores:
            return None
        bound = [r for r in records if r.parent == pf]
        if bound:  # another test process of the run (xdist), or a run that died: last one out
            owners = ", ".join(sorted({r.owner for r in bound}))
            return f"PF {pf}: not restored yet: {len(bound)} VF(s) still bound (owners {owners})"
        return self._restore(pf, *restores[pf])

    def restore_left(self, *, keep: set[str]) -> list[str]:
        """Restore every PF a run recorded for restoring and did not (it died), except those in
        ``keep`` (this session's own, restored at its close); what was done, one line each.
        A PF with a VF still in the record is left for later (see :meth:`restore`)."""
        records, restores = self._state()
        bound = {r.parent for r in records}
        return [
            f"{self._restore(pf, count, autoprobe)}; left by a run that ended without restoring it"
            for pf, (count, autoprobe) in sorted(restores.items())
            if pf not in keep and pf not in bound
        ]

    def _restore(self, pf: str, count: str, autoprobe: str) -> str:
        d = shlex.quote(self.device_dir(pf))
        script = f"""LC_ALL=C; export LC_ALL
cur=$(cat {d}/sriov_numvfs)
if [ "$cur" != {count} ]; then
  echo 0 > {d}/sriov_numvfs || exit 3
  [ {count} = 0 ] || echo {count} > {d}/sriov_numvfs || exit 3
fi
echo {autoprobe} > {d}/sriov_drivers_autoprobe || exit 3
""" + self._locked(RESTORE_NAME, f'grep -v \'^{pf} \' "$rec" > "$rec.new"; mv "$rec.new" "$rec"')
        result = self.executor.run_shell(script, timeout=self.timeout)
        if result.rc != 0:
            raise MdevError(
                f"{self.host}: could not restore PF {pf} to {count} VFs, autoprobe {autoprobe} "
                f"(rc={result.rc}): {_tail(result)}; a VF may still be in use: restore by hand"
            )
        return f"PF {pf}: {count} VFs, autoprobe {autoprobe} (as before the run)"

    # -- allocation -------------------------------------------------------------------------------

    def allocate(
        self, pf: str, *, driver: str, vgpu_type: int | None = None, owner: str, vfs: int = 2
    ) -> VfInstance:
        """Bind a free VF of ``pf`` to ``driver`` (with ``vgpu_type``: NVIDIA's type on it) and
        record it for ``owner``. The PF is provisioned with ``vfs`` VFs first if it has fewer."""
        _check(_DRIVER, "driver", driver)
        _check(_OWNER, "owner", owner)
        state = self.provision(pf, vfs)
        taken = {r.uuid for r in self.records()}
        free = [
            v
            for v in state.vfs
            # unbound, or with the host driver: a VF already bound to a VFIO driver that is not
            # in our record belongs to someone else's VM
            if v.address not in taken and not v.vgpu_type and v.driver in (None, state.driver)
        ]
        if not free:
            raise MdevError(
                f"{self.host}: no free VF on {pf} ({state.num_vfs} VFs, "
                f"{len(taken)} taken by runs of this framework); raise vgpu.vfs or free one"
            )
        vf = free[0].address
        d = shlex.quote(self.device_dir(vf))
        bus = shlex.quote(self._sys("bus", "pci"))
        type_id = str(vgpu_type) if vgpu_type is not None else driver
        set_type = ""
        if vgpu_type is not None:
            set_type = (
                f"echo {vgpu_type} > {d}/nvidia/current_vgpu_type || "
                f"{{ echo 'vGPU type {vgpu_type} refused on {vf}' >&2; exit 4; }}"
            )
        line = shlex.quote(f"{vf} {pf} {type_id} {driver} {owner}")
        record = self._locked(RECORD_NAME, f"printf '%s\\n' {line} >> \"$rec\"")
        script = f"""LC_ALL=C; export LC_ALL
d={d}
cur=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
if [ -n "$cur" ] && [ "$cur" != {shlex.quote(driver)} ]; then
  echo {vf} > {bus}/drivers/"$cur"/unbind || exit 3
fi
echo {shlex.quote(driver)} > "$d/driver_override" || exit 3
[ -n "$(readlink "$d/driver" 2>/dev/null)" ] || echo {vf} > {bus}/drivers_probe || exit 3
now=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
if [ "$now" != {shlex.quote(driver)} ]; then
  echo "{vf} bound to '${{now:-nothing}}', not {driver}: is the module loaded?" >&2; exit 3
fi
{set_type}
{record}
"""
        result = self.executor.run_shell(script, timeout=self.timeout)
        instance = VfInstance(vf, pf, type_id, driver, owner)
        if result.rc != 0:
            reason = _tail(result)
            self.release(instance, missing_ok=True)
            raise MdevError(
                f"{self.host}: binding VF {vf} of {pf} to {driver}"
                + (f" with vGPU type {vgpu_type}" if vgpu_type is not None else "")
                + f" failed (rc={result.rc}): {reason}"
            )
        return instance

    def release(self, vf: VfInstance, *, missing_ok: bool = False) -> None:
        """Type cleared, unbound, override cleared, record line dropped (each step tried)."""
        d = shlex.quote(self.device_dir(vf.uuid))
        bus = shlex.quote(self._sys("bus", "pci"))
        drop = self._locked(RECORD_NAME, f"grep -v '^{vf.uuid} ' \"$rec\" > \"$rec.new\" 2>/dev/null; "
                            "mv \"$rec.new\" \"$rec\"")  # fmt: skip
        script = f"""LC_ALL=C; export LC_ALL
d={d}
rc=0
if [ -e "$d" ]; then
  if [ -f "$d/nvidia/current_vgpu_type" ] && [ "$(cat "$d/nvidia/current_vgpu_type")" != 0 ]; then
    echo 0 > "$d/nvidia/current_vgpu_type" || rc=3
  fi
  cur=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
  pfdrv=$(basename "$(readlink "$d/physfn/driver" 2>/dev/null)" 2>/dev/null)
  if [ -n "$cur" ] && [ "$cur" = {shlex.quote(vf.driver)} ] && [ "$cur" != "$pfdrv" ]; then
    echo {vf.uuid} > {bus}/drivers/"$cur"/unbind || rc=3
  fi
  echo > "$d/driver_override" || rc=3
elif [ {1 if missing_ok else 0} = 0 ]; then
  echo "no VF {vf.uuid}" >&2; rc=2
fi
{drop}
exit $rc
"""
        result = self.executor.run_shell(script, timeout=self.timeout)
        if result.rc != 0:
            raise MdevError(
                f"{self.host}: releasing VF {vf.uuid} ({vf.driver}) failed (rc={result.rc}): "
                f"{_tail(result)}; probably still in use by a QEMU"
            )

    def reap(self, keep_owner: str | None) -> list[str]:
        """Release the recorded VFs whose owner is not ``keep_owner``; returns their addresses."""
        done = []
        for vf in self.records():
            if keep_owner is not None and vf.owner == keep_owner:
                continue
            self.release(vf, missing_ok=True)
            done.append(vf.uuid)
        return done

    def _locked(self, name: str, body: str) -> str:
        """Shell running ``body`` with ``$rec`` = the state file ``name``, under its lock."""
        if self.state_dir is None:
            raise ValueError("this VfManager has no state_dir: pass one to record VF owners")
        sd = shlex.quote(self.state_dir)
        return f"""mkdir -p {sd} || exit 5
rec={sd}/{name}
(
  flock -w {_LOCK_WAIT_S} 9 || {{ echo "cannot lock $rec.lock" >&2; exit 1; }}
  {body}
) 9>>"$rec.lock" || exit 5"""


def _check(pattern: re.Pattern[str], what: str, value: str) -> None:
    if not pattern.fullmatch(value):
        raise MdevError(f"{what} {value!r} is not valid (expected {pattern.pattern})")


def _int(text: str | None) -> int:
    return int(text) if text and text.strip().isdigit() else 0


def _tail(result: CommandResult, lines: int = 4) -> str:
    text = (result.stderr or result.stdout).strip().splitlines()
    return " | ".join(text[-lines:]) or "no output"
