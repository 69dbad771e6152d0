"""Mediated devices on one host: parents, types, instances; create and remove by UUID.

Everything goes through an :class:`~mdevtest.localexec.Executor` (SSH to a lab host, or the
controller itself) and the kernel's mdev sysfs ABI (``Documentation/ABI/testing/sysfs-bus-vfio-mdev``)
under a per-host sysfs root, so the same code drives a real GVT-g/NVIDIA/mtty host (root ``/``) and
the local lab's simulated parent (root under the host's state dir)::

    <root>/sys/class/mdev_bus/<parent>/mdev_supported_types/<type>/
        create  available_instances  device_api  name  description  devices/
    <root>/sys/bus/mdev/devices/<uuid>/  ->  .../<parent>/<uuid>/
        remove  mdev_type -> ../mdev_supported_types/<type>

What it guarantees:

* discovery is one round trip (:meth:`MdevManager.parents`, :meth:`MdevManager.instances`): a
  single shell script prints everything and Python parses it;
* every value interpolated into a shell script is ``shlex.quote``-d; parent and type names that
  could leave the sysfs tree (``/``, ``..``) are refused before anything runs;
* refusals are :class:`~mdevtest.errors.MdevError` naming host, parent, type and value, with the
  kernel's errno (EINVAL malformed UUID, EEXIST duplicate, ENOSPC/EUSERS exhausted, EBUSY in use)
  and what to do about it;
* with ``use_mdevctl`` the real ``mdevctl start/stop`` is used instead of the raw files. Debian 12's
  mdevctl 1.2.0 ignores ``MDEVCTL_ENV_ROOT``, so for a sysfs root other than ``/`` mdevctl runs in a
  private mount namespace with ``<root>/sys`` bind-mounted over ``/sys`` (needs root, which the
  local lab has); that works for every mdevctl version;
* an ownership record ``<state_dir>/mdevs`` (``<uuid> <parent> <type> <owner>`` per line, updated
  under ``flock``) lets :meth:`MdevManager.reap` remove what an earlier, crashed run created, and
  nothing else.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import re
import secrets
import shlex
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mdevtest.errors import CommandTimedOut, MdevError
from mdevtest.localexec import Executor
from mdevtest.remote import CommandResult, quote_argv

__all__ = [
    "MdevInstance",
    "MdevManager",
    "MdevParent",
    "MdevRecord",
    "MdevType",
    "errno_name",
    "mdevctl_argv",
    "parse_mdevctl_list",
    "parse_mdevctl_types",
]

#: Name of the ownership record inside a host's state dir.
RECORD_NAME = "mdevs"
_LOCK_WAIT_S = 10
_APPEAR_POLLS = 50  # x 0.1 s: how long a created/removed device may take to (dis)appear
_SAFE_NAME = re.compile(r"[^/\s\x00]+")
_OWNER = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")
_OS_ERROR = re.compile(r"os error (\d+)")
_EXHAUSTED = frozenset({"ENOSPC", "EUSERS", "EDQUOT"})
_STRERROR = {os.strerror(code): name for code, name in errno.errorcode.items()}
#: mdevctl checks some things itself before touching sysfs; what it then says, as an errno name.
_MDEVCTL_REFUSALS = (
    (re.compile(r"No available instances of"), "ENOSPC"),
    (re.compile(r"Device already exists|Device exists with different"), "EEXIST"),
    (re.compile(r"Invalid value .* for '--uuid"), "EINVAL"),
)


@dataclass(frozen=True)
class MdevType:
    """One mdev type offered by one parent, as sysfs shows it at the time of the query.

    ``name`` and ``description`` are optional in the ABI: ``""`` when the driver has none.
    """

    parent: str
    type_id: str
    name: str
    description: str
    device_api: str
    available_instances: int


@dataclass(frozen=True)
class MdevParent:
    """A device that can host mediated devices, with the types it offers (sorted by id)."""

    name: str
    types: tuple[MdevType, ...]

    def type(self, type_id: str) -> MdevType | None:
        return next((t for t in self.types if t.type_id == type_id), None)


@dataclass(frozen=True)
class MdevInstance:
    """An existing mediated device. ``uuid`` is lowercase, as the kernel names it."""

    uuid: str
    parent: str
    type_id: str


@dataclass(frozen=True)
class MdevRecord:
    """One line of the ownership record: an mdev that ``owner`` created."""

    uuid: str
    parent: str
    type_id: str
    owner: str


def errno_name(text: str) -> str | None:
    """The errno name (``EEXIST``) a tool reported, from its stderr.

    Understands Rust's ``... (os error 17)`` (mdevctl) and C's ``strerror`` text (``tee: x: File
    exists``); scripts run with ``LC_ALL=C`` so the text is the C locale's.
    """
    codes = _OS_ERROR.findall(text)
    if codes:
        return errno.errorcode.get(int(codes[-1]))
    for line in reversed(text.strip().splitlines()):
        tail = line.rsplit(": ", 1)[-1].strip()
        if tail in _STRERROR:
            return _STRERROR[tail]
    return None


def mdevctl_argv(sysfs_root: str, *args: str) -> list[str]:
    """The argument vector running ``mdevctl args`` against the sysfs under ``sysfs_root``.

    For ``/`` that is plain ``mdevctl``. Otherwise mdevctl runs in a private mount namespace with
    ``<root>/sys`` bind-mounted over ``/sys`` (``MDEVCTL_ENV_ROOT=/`` for versions that read it):
    Debian 12's mdevctl 1.2.0 has no ``MDEVCTL_ENV_ROOT`` and would otherwise act on the real
    ``/sys``. Needs root (``unshare``, ``mount``).
    """
    argv = ["mdevctl", *args]
    root = posixpath.normpath(sysfs_root)
    if root == "/":
        return argv
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", 'mount --bind "$0" /sys && exec "$@"', posixpath.join(root, "sys"),
        "env", "MDEVCTL_ENV_ROOT=/", *argv,
    ]  # fmt: skip


def parse_mdevctl_types(text: str, *, host: str = "?") -> list[MdevParent]:
    """Parse ``mdevctl types --dumpjson`` (a list of ``{parent: [{type: {attrs}}]}`` maps).

    mdevctl joins multi-line descriptions with ``", "``; they are returned as mdevctl shows them.
    """
    data = _load_json(text, "mdevctl types --dumpjson", host)
    parents: dict[str, list[MdevType]] = {}
    try:
        for chunk in data:
            for parent, entries in chunk.items():
                types = parents.setdefault(parent, [])
                for entry in entries:
                    for type_id, attrs in entry.items():
                        types.append(
                            MdevType(
                                parent=parent,
                                type_id=type_id,
                                name=str(attrs.get("name", "")),
                                description=str(attrs.get("description", "")),
                                device_api=str(attrs.get("device_api", "")),
                                available_instances=int(attrs["available_instances"]),
                            )
                        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise MdevError(f"{host}: unexpected mdevctl types --dumpjson output ({exc!r})") from exc
    return sorted(
        (MdevParent(p, tuple(sorted(ts, key=lambda t: t.type_id))) for p, ts in parents.items()),
        key=lambda p: p.name,
    )


def parse_mdevctl_list(text: str, *, host: str = "?") -> list[MdevInstance]:
    """Parse ``mdevctl list --dumpjson`` (a list of ``{parent: [{uuid: {mdev_type, ...}}]}`` maps)."""
    data = _load_json(text, "mdevctl list --dumpjson", host)
    found = []
    try:
        for chunk in data:
            for parent, entries in chunk.items():
                for entry in entries:
                    for uuid, attrs in entry.items():
                        found.append(MdevInstance(uuid.lower(), parent, str(attrs["mdev_type"])))
    except (AttributeError, KeyError, TypeError) as exc:
        raise MdevError(f"{host}: unexpected mdevctl list --dumpjson output ({exc!r})") from exc
    return sorted(found, key=lambda i: i.uuid)


def _load_json(text: str, what: str, host: str) -> list[dict[str, Any]]:
    if not text.strip():
        return []  # mdevctl prints nothing (1.2.0 `list`) when there is nothing
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MdevError(f"{host}: {what} did not print JSON ({exc}): {text[:200]!r}") from exc
    if not isinstance(data, list):
        raise MdevError(f"{host}: {what} printed {type(data).__name__}, expected a list")
    return data


def _mdevctl_refusal(text: str) -> str | None:
    for pattern, code in _MDEVCTL_REFUSALS:
        if pattern.search(text):
            return code
    return None


class MdevManager:
    """mdev discovery and lifecycle on one host.

    ``sysfs_root`` is where the host's ``/sys`` is looked up (``/`` on real hosts). ``state_dir``
    (on the host) holds the ownership record; without it, :meth:`create` cannot take an ``owner``
    and :meth:`reap` has nothing to read. ``timeout`` bounds every command.
    """

    def __init__(
        self,
        executor: Executor,
        *,
        sysfs_root: str = "/",
        use_mdevctl: bool = False,
        timeout: float = 30,
        state_dir: str | None = None,
    ) -> None:
        if not sysfs_root.startswith("/"):
            raise ValueError(f"sysfs_root must be an absolute path, got {sysfs_root!r}")
        if state_dir is not None and not state_dir.startswith("/"):
            raise ValueError(f"state_dir must be an absolute path, got {state_dir!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.executor = executor
        self.sysfs_root = posixpath.normpath(sysfs_root)
        self.use_mdevctl = use_mdevctl
        self.timeout = timeout
        self.state_dir = state_dir

    def __repr__(self) -> str:
        how = "mdevctl" if self.use_mdevctl else "sysfs"
        return f"MdevManager({self.host!r}, root={self.sysfs_root!r}, via {how})"

    @property
    def host(self) -> str:
        return self.executor.name

    # -- paths -----------------------------------------------------------------------------------

    def _sys(self, *parts: str) -> str:
        return posixpath.join(self.sysfs_root, "sys", *parts)

    @property
    def bus_dir(self) -> str:
        """``<root>/sys/class/mdev_bus``: one entry per parent."""
        return self._sys("class", "mdev_bus")

    @property
    def devices_dir(self) -> str:
        """``<root>/sys/bus/mdev/devices``: one entry per existing mdev."""
        return self._sys("bus", "mdev", "devices")

    def sysfs_path(self, uuid: str) -> str:
        """The device path QEMU's ``-device vfio-pci,sysfsdev=`` needs, under this host's root."""
        return posixpath.join(self.devices_dir, uuid.lower())

    @property
    def record_path(self) -> str | None:
        return None if self.state_dir is None else posixpath.join(self.state_dir, RECORD_NAME)

    # -- discovery -------------------------------------------------------------------------------

    def parents(self) -> list[MdevParent]:
        """Every parent with its types (one round trip). Sorted by parent name, then type id."""
        mark = _marker()
        script = f"""LC_ALL=C; export LC_ALL
bus={shlex.quote(self.bus_dir)}
m={mark}
if [ -d "$bus" ]; then
  for p in "$bus"/*; do
    [ -d "$p/mdev_supported_types" ] || continue
    echo "$m parent ${{p##*/}}"
    for t in "$p"/mdev_supported_types/*; do
      [ -d "$t" ] || continue
      echo "$m type ${{t##*/}}"
      for f in available_instances device_api name description; do
        [ -f "$t/$f" ] || continue
        echo "$m attr $f"
        cat "$t/$f" || echo "$m unreadable $f"
        echo
      done
    done
  done
fi
echo "$m end"
"""
        result = self._run_script(script, "list mdev parents and types")
        return _parse_parents(result, mark)

    def instances(self) -> list[MdevInstance]:
        """Every existing mdev with its parent and type (one round trip), sorted by UUID."""
        mark = _marker()
        script = f"""LC_ALL=C; export LC_ALL
m={mark}
{_list_devices_snippet(self.devices_dir)}
echo "$m end"
"""
        result = self._run_script(script, "list mdev instances")
        instances, _ = _parse_listing(result, mark)
        return instances

    def find_type(self, type_id: str, parent: str | None = None) -> MdevType:
        """The type ``type_id`` on ``parent`` (or, if None, on the parent with most free instances).

        Raises :class:`MdevError` when the parent or the type does not exist, listing what does.
        """
        _check_name("type", type_id)
        if parent is not None:
            _check_name("parent", parent)
        return self._select_type(self.parents(), type_id, parent)

    def require_available(self, type_id: str, parent: str | None = None) -> MdevType:
        """Like :meth:`find_type`, but also fails when the type has no free instance."""
        mtype = self.find_type(type_id, parent)
        if mtype.available_instances <= 0:
            raise self._no_instance(mtype, None)
        return mtype

    # -- lifecycle -------------------------------------------------------------------------------

    def create(
        self,
        type_id: str,
        *,
        parent: str | None = None,
        uuid: str | None = None,
        owner: str | None = None,
    ) -> MdevInstance:
        """Create one mdev of ``type_id`` and return it.

        ``uuid`` defaults to a random one; the kernel decides whether a given one is acceptable. With
        ``owner`` the mdev is added to the ownership record (needs ``state_dir``), in the same round
        trip as the creation; if recording fails the mdev is removed again.
        """
        if owner is not None:
            self._check_owner(owner)
        mtype = self.require_available(type_id, parent)
        wanted = str(uuidlib.uuid4()) if uuid is None else uuid
        dev = self.sysfs_path(wanted)
        if self.use_mdevctl:
            argv = self._mdevctl("start", "-u", wanted, "-p", mtype.parent, "-t", mtype.type_id)
            do_create = f"{quote_argv(argv)} >&2 || exit 3"
        else:
            create = posixpath.join(
                self.bus_dir, mtype.parent, "mdev_supported_types", mtype.type_id, "create"
            )
            do_create = (
                f"printf '%s\\n' {shlex.quote(wanted)} | tee {shlex.quote(create)} >/dev/null || exit 3"
            )
        record = ""
        if owner is not None:
            line = f"{wanted.lower()} {mtype.parent} {mtype.type_id} {owner}"
            record = self._record_snippet(f"printf '%s\\n' {shlex.quote(line)} >> \"$rec\"")
        script = f"""LC_ALL=C; export LC_ALL
dev={shlex.quote(dev)}
{do_create}
i=0
while [ ! -e "$dev/mdev_type" ]; do
  i=$((i + 1))
  if [ "$i" -gt {_APPEAR_POLLS} ]; then echo "device $dev did not appear" >&2; exit 4; fi
  sleep 0.1
done
{record}
"""
        result = self.executor.run_shell(script, timeout=self.timeout)
        instance = MdevInstance(wanted.lower(), mtype.parent, mtype.type_id)
        if result.rc == 0:
            return instance
        if result.rc == 5:
            cause = _stderr_tail(result)
            self.remove(instance.uuid, missing_ok=True)
            raise MdevError(
                f"{self.host}: created mdev {instance.uuid} ({mtype.type_id} on {mtype.parent}) but "
                f"could not record it in {self.record_path}: {cause}; it was removed again. Check "
                "that the state dir is writable and that flock(1) is installed"
            )
        if result.rc == 3:
            raise self._create_refused(mtype, wanted, result)
        raise MdevError(
            f"{self.host}: creating mdev {wanted} ({mtype.type_id} on {mtype.parent}) failed "
            f"(rc={result.rc}): {_stderr_tail(result)}"
        )

    def remove(self, uuid: str, *, missing_ok: bool = False) -> None:
        """Remove the mdev ``uuid`` and drop it from the ownership record.

        A device that does not exist is an error unless ``missing_ok``; its record line is dropped
        either way. A device in use (QEMU has it open) is refused by the driver with EBUSY.
        """
        _check_name("UUID", uuid)  # it becomes a path: it must not leave the devices directory
        dev = self.sysfs_path(uuid)
        mark = _marker()
        if self.use_mdevctl:
            do_remove = f"{quote_argv(self._mdevctl('stop', '-u', uuid.lower()))} >&2 || exit 3"
        else:
            do_remove = "printf '1\\n' | tee \"$dev/remove\" >/dev/null || exit 3"
        drop = ""
        if self.record_path is not None:
            drop = self._record_snippet(_drop_lines_awk([uuid.lower()]), only_if_exists=True)
        script = f"""LC_ALL=C; export LC_ALL
dev={shlex.quote(dev)}
m={mark}
if [ -e "$dev" ]; then
  echo "$m type $(readlink -f "$dev/mdev_type")"
  {do_remove}
  i=0
  while [ -e "$dev" ]; do
    i=$((i + 1))
    if [ "$i" -gt {_APPEAR_POLLS} ]; then echo "device $dev did not go away" >&2; exit 4; fi
    sleep 0.1
  done
else
  echo "$m missing"
fi
{drop}
"""
        try:
            result = self.executor.run_shell(script, timeout=self.timeout)
        except CommandTimedOut as exc:
            # Newer kernels (no driver remove callback) block until the VFIO user lets the device go.
            raise MdevError(
                f"{self.host}: removing mdev {uuid} did not finish within {self.timeout:g} s: it is "
                "probably in use (the kernel waits for the VFIO user to release it); stop the guest "
                "(QEMU) that has it open, then remove it"
            ) from exc
        where = "unknown type on unknown parent"
        missing = False
        for line in result.stdout.splitlines():
            if line.startswith(f"{mark} type "):
                target = line[len(mark) + 6 :]
                where = f"{posixpath.basename(target)} on {_parent_of_type_path(target)}"
            elif line == f"{mark} missing":
                missing = True
        if result.rc == 3:
            raise self._remove_refused(uuid, where, result)
        if result.rc != 0:
            raise MdevError(
                f"{self.host}: removing mdev {uuid} ({where}) failed (rc={result.rc}): "
                f"{_stderr_tail(result)}"
            )
        if missing and not missing_ok:
            raise MdevError(
                f"{self.host}: no mdev {uuid} to remove ({dev} does not exist); it was already "
                "removed, or the UUID is wrong (`mdevctl list` shows what exists)"
            )

    # -- ownership record ------------------------------------------------------------------------

    def records(self) -> list[MdevRecord]:
        """The ownership record's entries (empty without a state dir or record)."""
        records, _ = self._records_and_instances()
        return records

    def reap(self, keep_owner: str | None) -> list[str]:
        """Remove the recorded mdevs whose owner is not ``keep_owner``; return their UUIDs.

        Only devices that are in the record *and* still exist with the recorded parent and type are
        removed; nothing else on the host is touched. Record lines whose device is gone (or now has
        another type) are dropped. Every removal is attempted; failures are raised together after.
        """
        if self.record_path is None:
            return []
        records, instances = self._records_and_instances()
        existing = {i.uuid: i for i in instances}
        removed: list[str] = []
        stale: list[str] = []
        failures: list[str] = []
        for rec in records:
            if keep_owner is not None and rec.owner == keep_owner:
                continue
            inst = existing.get(rec.uuid)
            if inst is None or (inst.parent, inst.type_id) != (rec.parent, rec.type_id):
                stale.append(rec.uuid)
                continue
            try:
                self.remove(rec.uuid, missing_ok=True)
            except MdevError as exc:
                failures.append(str(exc))
            else:
                removed.append(rec.uuid)
        if stale:
            script = "LC_ALL=C; export LC_ALL\n" + self._record_snippet(
                _drop_lines_awk(stale), only_if_exists=True
            )
            result = self.executor.run_shell(script, timeout=self.timeout)
            if result.rc != 0:
                failures.append(
                    f"{self.host}: could not drop stale lines from {self.record_path}: "
                    f"{_stderr_tail(result)}"
                )
        if failures:
            raise MdevError(
                f"{self.host}: reaping left mdevs behind (removed: {', '.join(removed) or 'none'}):\n  "
                + "\n  ".join(failures)
            )
        return removed

    def _records_and_instances(self) -> tuple[list[MdevRecord], list[MdevInstance]]:
        mark = _marker()
        rec = self.record_path
        show = ""
        if rec is not None:
            show = f'if [ -f {shlex.quote(rec)} ]; then echo "$m record"; cat {shlex.quote(rec)}; fi'
        script = f"""LC_ALL=C; export LC_ALL
m={mark}
{_list_devices_snippet(self.devices_dir)}
{show}
echo "$m end"
"""
        result = self._run_script(script, "read the mdev ownership record")
        instances, record_lines = _parse_listing(result, mark)
        records = []
        for line in record_lines:
            fields = line.split()
            if len(fields) == 4:
                records.append(MdevRecord(fields[0].lower(), fields[1], fields[2], fields[3]))
        return records, instances

    def _record_snippet(self, body: str, *, only_if_exists: bool = False) -> str:
        """Shell running ``body`` with ``$rec`` set, under the record's lock; exit 5 on failure.

        With ``only_if_exists`` nothing happens when there is no record yet.
        """
        if self.state_dir is None:
            raise ValueError("this MdevManager has no state_dir: pass one to record mdev owners")
        locked = f"""(
  flock -w {_LOCK_WAIT_S} 9 || {{ echo "cannot lock $rec.lock within {_LOCK_WAIT_S} s" >&2; exit 1; }}
  {body}
) 9>>"$rec.lock" || exit 5"""
        head = f'sd={shlex.quote(self.state_dir)}\nrec="$sd/{RECORD_NAME}"\n'
        if only_if_exists:
            return head + f'if [ -f "$rec" ]; then\n{locked}\nfi\n'
        return head + f'mkdir -p "$sd" || exit 5\n{locked}\n'

    @staticmethod
    def _check_owner(owner: str) -> None:
        if not _OWNER.fullmatch(owner):
            raise ValueError(
                f"mdev owner {owner!r} must be 1-128 characters of A-Z a-z 0-9 . _ : @ + = -"
            )

    # -- mdevctl ---------------------------------------------------------------------------------

    def _mdevctl(self, *args: str) -> list[str]:
        return mdevctl_argv(self.sysfs_root, *args)

    def mdevctl_types(self) -> list[MdevParent]:
        """What the host's ``mdevctl types`` reports (to cross-check :meth:`parents`)."""
        result = self.executor.run(self._mdevctl("types", "--dumpjson"), timeout=self.timeout)
        if result.rc != 0:
            raise MdevError(f"{self.host}: mdevctl types failed: {_stderr_tail(result)}")
        return parse_mdevctl_types(result.stdout, host=self.host)

    def mdevctl_list(self) -> list[MdevInstance]:
        """What the host's ``mdevctl list`` reports (to cross-check :meth:`instances`)."""
        result = self.executor.run(self._mdevctl("list", "--dumpjson"), timeout=self.timeout)
        if result.rc != 0:
            raise MdevError(f"{self.host}: mdevctl list failed: {_stderr_tail(result)}")
        return parse_mdevctl_list(result.stdout, host=self.host)

    # -- errors ----------------------------------------------------------------------------------

    def _run_script(self, script: str, what: str) -> CommandResult:
        result = self.executor.run_shell(script, timeout=self.timeout)
        if result.rc != 0:
            raise MdevError(
                f"{self.host}: cannot {what} under {self._sys()} (rc={result.rc}): "
                f"{_stderr_tail(result)}"
            )
        return result

    def _select_type(self, parents: Sequence[MdevParent], type_id: str, parent: str | None) -> MdevType:
        if not parents:
            raise MdevError(
                f"{self.host}: no mdev parent devices ({self.bus_dir} is empty or missing), so type "
                f"{type_id} is not available; load the vendor driver (i915 with enable_gvt=1 and "
                "kvmgt, nvidia-vgpu-mgr, mtty) or, in the local lab, start the simulated parent"
            )
        if parent is not None and all(p.name != parent for p in parents):
            raise MdevError(
                f"{self.host}: mdev parent {parent} (for type {type_id}) not found in {self.bus_dir}; "
                f"parents present: {', '.join(p.name for p in parents)}; fix vgpu.parent in the "
                "inventory or leave it unset to use any parent offering the type"
            )
        scope = [p for p in parents if parent is None or p.name == parent]
        found = [t for p in scope for t in p.types if t.type_id == type_id]
        if not found:
            offered = [t for p in scope for t in p.types]
            listing = "; ".join(
                f"{t.type_id} ({t.name or 'no name'}, {t.available_instances} free) on {t.parent}"
                for t in offered
            )
            raise MdevError(
                f"{self.host}: mdev type {type_id} is not offered by "
                f"{'parent ' + parent if parent else 'any parent'}; available types: "
                f"{listing or 'none'}; fix vgpu.type in the inventory"
            )
        return max(found, key=lambda t: t.available_instances)

    def _no_instance(self, mtype: MdevType, kernel: str | None) -> MdevError:
        said = f"the kernel refused with {kernel}" if kernel else "available_instances=0"
        try:
            users = [i.uuid for i in self.instances() if i.type_id == mtype.type_id]
        except MdevError:
            users = []
        existing = f"; existing instances of it: {', '.join(users)}" if users else ""
        return MdevError(
            f"{self.host}: no available instance of {mtype.type_id} on {mtype.parent} ({said})"
            f"{existing}; remove stale vGPUs with `mdevtest lab reap` or pick another type"
        )

    def _create_refused(self, mtype: MdevType, wanted: str, result: CommandResult) -> MdevError:
        code = _mdevctl_refusal(result.stderr) if self.use_mdevctl else None
        code = code or errno_name(result.stderr)
        where = f"{self.host}: parent {mtype.parent}, type {mtype.type_id}"
        if code in _EXHAUSTED:
            return self._no_instance(mtype, code)
        if code == "EINVAL":
            return MdevError(
                f"{where}: UUID {wanted!r} refused (EINVAL: {os.strerror(errno.EINVAL)}): not a "
                "well-formed UUID (8-4-4-4-12 hex digits); pass a valid UUID or let mdevtest "
                "generate one"
            )
        if code == "EEXIST":
            return MdevError(
                f"{where}: UUID {wanted} refused (EEXIST: {os.strerror(errno.EEXIST)}): an mdev with "
                "this UUID already exists on the host; remove it (ours: `mdevtest lab reap`) or use "
                "another UUID"
            )
        said = f"{code}: " if code else ""
        return MdevError(
            f"{where}: creating mdev {wanted} was refused ({said}{_stderr_tail(result)}); check the "
            "host's dmesg for the vendor driver's reason"
        )

    def _remove_refused(self, uuid: str, where: str, result: CommandResult) -> MdevError:
        code = errno_name(result.stderr)
        if code == "EBUSY":
            return MdevError(
                f"{self.host}: cannot remove mdev {uuid} ({where}): it is in use (EBUSY: "
                f"{os.strerror(errno.EBUSY)}); stop the guest (QEMU) that has it open, then remove it"
            )
        said = f"{code}: " if code else ""
        return MdevError(
            f"{self.host}: removing mdev {uuid} ({where}) was refused ({said}{_stderr_tail(result)})"
        )


# --------------------------------------------------------------------------------------------
# Script fragments and parsers (module level: pure, unit-testable)


def _marker() -> str:
    """A token no sysfs value contains, to frame a script's output."""
    return f"@mdevtest-{secrets.token_hex(6)}"


def _check_name(kind: str, value: str) -> None:
    if not _SAFE_NAME.fullmatch(value) or value in (".", ".."):
        raise MdevError(
            f"invalid mdev {kind} {value!r}: must be a single sysfs name (no '/', whitespace, "
            "'.' or '..')"
        )


def _list_devices_snippet(devices_dir: str) -> str:
    return f"""d={shlex.quote(devices_dir)}
if [ -d "$d" ]; then
  for u in "$d"/*; do
    [ -e "$u/mdev_type" ] || continue
    t=$(readlink -f "$u/mdev_type") || continue
    echo "$m dev ${{u##*/}} $t"
  done
fi"""


def _drop_lines_awk(uuids: Iterable[str]) -> str:
    """Shell removing the record lines of ``uuids`` (first field) from ``$rec``, atomically."""
    wanted = " ".join(uuids)
    return (
        f"awk -v drop={shlex.quote(wanted)} "
        '\'BEGIN { n = split(drop, a, " "); for (i = 1; i <= n; i++) skip[a[i]] = 1 } '
        '!($1 in skip)\' "$rec" > "$rec.tmp" && mv -f "$rec.tmp" "$rec"'
    )


def _parent_of_type_path(path: str) -> str:
    """``.../<parent>/mdev_supported_types/<type>`` -> ``<parent>``."""
    return posixpath.basename(posixpath.dirname(posixpath.dirname(path)))


def _stderr_tail(result: CommandResult, lines: int = 4) -> str:
    tail = result.stderr.strip().splitlines()[-lines:]
    return " | ".join(tail) if tail else f"no error output (rc={result.rc})"


def _require_end(result: CommandResult, mark: str) -> list[str]:
    lines = result.stdout.splitlines()
    if f"{mark} end" not in lines:
        raise MdevError(
            f"{result.host}: mdev listing was cut short (no end marker); output: "
            f"{result.stdout[-300:]!r}, stderr: {_stderr_tail(result)}"
        )
    return lines


def _parse_parents(result: CommandResult, mark: str) -> list[MdevParent]:
    lines = _require_end(result, mark)
    prefix = f"{mark} "
    parents: list[tuple[str, list[dict[str, str]]]] = []
    attr: str | None = None
    content: list[str] = []

    def flush() -> None:
        nonlocal attr, content
        if attr is not None and parents and parents[-1][1]:
            parents[-1][1][-1][attr] = "\n".join(content).strip()
        attr, content = None, []

    for line in lines:
        if not line.startswith(prefix):
            if attr is not None:
                content.append(line)
            continue
        flush()
        kind, _, value = line[len(prefix) :].partition(" ")
        if kind == "parent":
            parents.append((value, []))
        elif kind == "type" and parents:
            parents[-1][1].append({"@id": value})
        elif kind == "attr":
            attr = value
        elif kind == "unreadable" and parents and parents[-1][1]:
            parents[-1][1][-1].pop(value, None)
    flush()
    result_parents = []
    for name, types in parents:
        parsed = [_make_type(result.host, name, t) for t in types]
        result_parents.append(
            MdevParent(name, tuple(sorted((t for t in parsed if t), key=lambda t: t.type_id)))
        )
    return sorted(result_parents, key=lambda p: p.name)


def _make_type(host: str, parent: str, attrs: dict[str, str]) -> MdevType | None:
    raw = attrs.get("available_instances", "")
    try:
        available = int(raw)
    except ValueError:
        if "available_instances" not in attrs:
            return None  # not a type directory the driver finished populating
        raise MdevError(
            f"{host}: parent {parent}, type {attrs['@id']}: available_instances is {raw!r}, not a number"
        ) from None
    return MdevType(
        parent=parent,
        type_id=attrs["@id"],
        name=attrs.get("name", ""),
        description=attrs.get("description", ""),
        device_api=attrs.get("device_api", ""),
        available_instances=available,
    )


def _parse_listing(result: CommandResult, mark: str) -> tuple[list[MdevInstance], list[str]]:
    """Instances (``dev`` lines) and the raw record lines following a ``record`` marker."""
    lines = _require_end(result, mark)
    instances = []
    record: list[str] = []
    in_record = False
    for line in lines:
        if line.startswith(f"{mark} "):
            fields = line.split(" ", 3)
            in_record = fields[1] == "record"
            if fields[1] == "dev" and len(fields) == 4:
                target = fields[3]
                instances.append(
                    MdevInstance(
                        uuid=fields[2].lower(),
                        parent=_parent_of_type_path(target),
                        type_id=posixpath.basename(target),
                    )
                )
        elif in_record and line.strip():
            record.append(line)
    return sorted(instances, key=lambda i: i.uuid), record
