"""A simulated vGPU parent: a FUSE filesystem that behaves like the kernel's mdev sysfs.

Mounted at ``<sysfs_root>/sys`` (a lab host's sysfs root), it shows one or more GVT-g-like parents
the way a real host does, so :class:`~mdevtest.mdev.MdevManager` and the real ``mdevctl`` run
unchanged against it::

    class/mdev_bus/<parent>            -> ../../devices/<device_path>
    bus/mdev/devices/<uuid>            -> ../../../devices/<device_path>/<uuid>
    devices/<device_path>/
        mdev_supported_types/<type>/   create (w)  available_instances  device_api  name  description
                                       devices/<uuid> -> ../../../<uuid>
        <uuid>/                        mdev_type -> ../mdev_supported_types/<type>   remove (w)
    kernel/mdevtest_sim/in_use         (not in a real sysfs) control file, see below

Writes behave as the kernel's ``create_store``/``remove_store`` (``drivers/vfio/mdev/mdev_sysfs.c``)
and ``mdev_device_create`` (``mdev_core.c``) do, in the same order:

* ``create``: a write of fewer than 36 or more than 37 bytes, or whose first 36 are not a UUID
  (``8-4-4-4-12`` hex digits) -> ``EINVAL``; a UUID that exists on any parent -> ``EEXIST``; a type
  without free instances -> ``ENOSPC`` (what GVT-g's ``alloc_resource`` and mtty's ``init_dev``
  return) or, per parent, ``EUSERS`` (the core's counter for drivers with ``max_instances``, since
  Linux 6.1). The device is named in lowercase (``%pUl``).
* ``remove``: not an unsigned integer (``kstrtoul``) -> ``EINVAL``; ``0`` -> nothing; otherwise, if
  the device is marked in use -> ``EBUSY`` (GVT-g's ``intel_vgpu_remove`` in kernels whose mdev
  drivers could refuse a remove; current kernels block until the VFIO user lets go instead, which
  :meth:`MdevManager.remove <mdevtest.mdev.MdevManager.remove>` reports as "probably in use"), else
  it is removed.
* attributes without a store/show refuse the other direction with ``EACCES``; nothing can be
  created, renamed or deleted (``EPERM``).

"In use" stands for "QEMU has the VFIO device open". Write ``+<uuid>`` (or ``<uuid>``) to
``kernel/mdevtest_sim/in_use`` to mark it, ``-<uuid>`` to clear it; reading lists the marked UUIDs.
:meth:`SimulatedSysfs.set_in_use` does that from Python.

Run it with ``python -m mdevtest.lab.simsysfs --root ROOT [--config JSON] [--daemon --pidfile P]``
(``--stop`` stops a daemon), or from Python with the :class:`SimulatedSysfs` context manager, which
always unmounts. SIGTERM unmounts cleanly (libfuse's handler ends the loop, then unmounts). Needs
root, ``/dev/fuse`` and libfuse 3 (Debian: ``libfuse3-3``) through the ``mfusepy`` binding.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from mdevtest.errors import LabError
from mdevtest.lab.simsriov import DEFAULT_PFS, SimPf, SriovKernel, parse_sim_pf, sim_pf_json
from mdevtest.lab.sysfs_nodes import Attr, Dir, Link, Node

__all__ = [
    "FSTYPE",
    "SimConfig",
    "SimKernel",
    "SimParent",
    "SimPf",
    "SimType",
    "SimulatedSysfs",
    "fuse_unavailable_reason",
    "is_mounted",
    "main",
    "unmount",
    "write_static_tree",
]

#: Subtype of the mount: ``findmnt`` shows ``fuse.mdevtest-simsysfs``.
SUBTYPE = "mdevtest-simsysfs"
FSTYPE = f"fuse.{SUBTYPE}"
CONTROL_DIR = "kernel/mdevtest_sim"
UUID_STRING_LEN = 36
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ERRNOS = {"ENOSPC": errno.ENOSPC, "EUSERS": errno.EUSERS}
_SYSFS_SIZE = 4096  # what sysfs reports as the size of every attribute
_POLL_S = 0.02
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


# --------------------------------------------------------------------------------------------
# Configuration


def gvt_description(low_gm_mb: int, high_gm_mb: int, fence: int, resolution: str, weight: int) -> str:
    """A type description in GVT-g's format (``intel_vgpu_show_description``)."""
    return (
        f"low_gm_size: {low_gm_mb}MB\nhigh_gm_size: {high_gm_mb}MB\nfence: {fence}\n"
        f"resolution: {resolution}\nweight: {weight}\n"
    )


def _check_component(what: str, value: str) -> None:
    if not value or "/" in value or value in (".", "..") or any(c.isspace() for c in value):
        raise ValueError(f"{what} {value!r} must be a single path component without spaces")


@dataclass(frozen=True)
class SimType:
    """One mdev type of a simulated parent. ``name``/``description`` None: attribute absent."""

    type_id: str
    max_instances: int
    name: str | None = None
    description: str | None = None
    device_api: str = "vfio-pci"
    cost: int = 1
    """Units of the parent's ``pool`` one instance takes (ignored without a pool)."""

    def __post_init__(self) -> None:
        _check_component("type_id", self.type_id)
        if self.max_instances < 0:
            raise ValueError(f"type {self.type_id}: max_instances must be >= 0")
        if self.cost < 1:
            raise ValueError(f"type {self.type_id}: cost must be >= 1")


@dataclass(frozen=True)
class SimParent:
    """A simulated parent device.

    ``device_path`` is where it sits under ``/sys/devices`` (its last component must be ``name``);
    ``exhausted_errno`` is what a create on a full type fails with; ``attributes`` are extra
    read-only files in the device directory (``vendor``, ``device``...).

    Types can share the parent's resources as on real hardware: with a ``pool``, every instance
    takes its type's ``cost`` units of it (GVT-g's graphics memory, mtty's 24 ports), so creating one
    type lowers the others' ``available_instances``; ``homogeneous`` parents (time-sliced NVIDIA
    vGPU) offer only the type already in use once one instance exists.
    """

    name: str
    device_path: str
    types: tuple[SimType, ...]
    exhausted_errno: str = "ENOSPC"
    attributes: tuple[tuple[str, str], ...] = ()
    pool: int | None = None
    homogeneous: bool = False

    def __post_init__(self) -> None:
        _check_component("parent name", self.name)
        parts = self.device_path.split("/")
        for part in parts:
            _check_component("device_path component", part)
        if parts[-1] != self.name:
            raise ValueError(f"parent {self.name}: device_path {self.device_path!r} must end in it")
        if self.pool is not None and self.pool < 0:
            raise ValueError(f"parent {self.name}: pool must be >= 0")
        if self.exhausted_errno not in _ERRNOS:
            raise ValueError(f"parent {self.name}: exhausted_errno must be one of {sorted(_ERRNOS)}")
        ids = [t.type_id for t in self.types]
        if len(set(ids)) != len(ids):
            raise ValueError(f"parent {self.name}: duplicate type ids in {ids}")
        for key, _ in self.attributes:
            _check_component("attribute", key)
            if key == "mdev_supported_types" or _UUID.fullmatch(key):
                raise ValueError(f"parent {self.name}: attribute name {key!r} is reserved")

    def type(self, type_id: str) -> SimType | None:
        return next((t for t in self.types if t.type_id == type_id), None)


#: A GVT-g-like parent (Intel integrated GPU at 00:02.0) with two V5 types.
DEFAULT_GVT_PARENT = SimParent(
    name="0000:00:02.0",
    device_path="pci0000:00/0000:00:02.0",
    types=(
        SimType(
            "i915-GVTg_V5_4",
            max_instances=2,
            name="GVTg_V5_4",
            description=gvt_description(128, 512, 4, "1920x1200", 4),
            cost=2,
        ),
        SimType(
            "i915-GVTg_V5_8",
            max_instances=4,
            name="GVTg_V5_8",
            description=gvt_description(64, 384, 4, "1024x768", 2),
        ),
    ),
    attributes=(("vendor", "0x8086"), ("device", "0x3e92"), ("class", "0x030000")),
    # shared graphics memory: a V5_4 takes twice what a V5_8 does (2 x V5_4 or 4 x V5_8)
    pool=4,
)


@dataclass(frozen=True)
class SimConfig:
    """Which parents the simulated sysfs shows. JSON round-trips through :meth:`to_json`."""

    parents: tuple[SimParent, ...] = field(default_factory=lambda: (DEFAULT_GVT_PARENT,))
    pfs: tuple[SimPf, ...] = DEFAULT_PFS
    """SR-IOV physical functions (:mod:`mdevtest.lab.simsriov`)."""

    def __post_init__(self) -> None:
        names = [p.name for p in self.parents]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parent names in {names}")
        addresses = [p.address for p in self.pfs]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"duplicate PF addresses in {addresses}")
        paths = [p.device_path for p in self.parents] + [p.device_path for p in self.pfs]
        for a in paths:
            for b in paths:
                if a != b and b.startswith(a + "/"):
                    raise ValueError(f"device_path {b!r} lies inside another parent's {a!r}")

    def parent(self, name: str) -> SimParent | None:
        return next((p for p in self.parents if p.name == name), None)

    def to_json(self) -> str:
        return json.dumps(
            {
                "parents": [
                    {
                        "name": p.name,
                        "device_path": p.device_path,
                        "exhausted_errno": p.exhausted_errno,
                        "pool": p.pool,
                        "homogeneous": p.homogeneous,
                        "attributes": dict(p.attributes),
                        "types": [
                            {
                                "type_id": t.type_id,
                                "max_instances": t.max_instances,
                                "name": t.name,
                                "description": t.description,
                                "device_api": t.device_api,
                                "cost": t.cost,
                            }
                            for t in p.types
                        ],
                    }
                    for p in self.parents
                ],
                "pfs": [sim_pf_json(p) for p in self.pfs],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> SimConfig:
        """Parse :meth:`to_json` output; unknown keys and wrong types raise ``ValueError``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"simulated sysfs config is not JSON: {exc}") from exc
        try:
            d = _keys(data, {"parents", "pfs"}, "config")
            pfs = d.get("pfs")
            return cls(
                tuple(_parent_from(p) for p in d["parents"]),
                DEFAULT_PFS if pfs is None else tuple(parse_sim_pf(p) for p in pfs),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"invalid simulated sysfs config: {exc}") from exc


def _keys(obj: Any, allowed: set[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise TypeError(f"{what} must be an object")
    unknown = set(obj) - allowed
    if unknown:
        raise TypeError(f"{what}: unknown keys {sorted(unknown)}")
    return obj


def _parent_from(obj: Any) -> SimParent:
    d = _keys(
        obj,
        {"name", "device_path", "types", "exhausted_errno", "attributes", "pool", "homogeneous"},
        "parent",
    )
    types = []
    for t in d["types"]:
        td = _keys(t, {"type_id", "max_instances", "name", "description", "device_api", "cost"}, "type")
        types.append(
            SimType(
                type_id=str(td["type_id"]),
                max_instances=int(td["max_instances"]),
                name=None if td.get("name") is None else str(td["name"]),
                description=None if td.get("description") is None else str(td["description"]),
                device_api=str(td.get("device_api", "vfio-pci")),
                cost=int(td.get("cost", 1)),
            )
        )
    attrs = d.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise TypeError("parent attributes must be an object")
    return SimParent(
        name=str(d["name"]),
        device_path=str(d["device_path"]),
        types=tuple(types),
        exhausted_errno=str(d.get("exhausted_errno", "ENOSPC")),
        attributes=tuple((str(k), str(v)) for k, v in attrs.items()),
        pool=None if d.get("pool") is None else int(d["pool"]),
        homogeneous=bool(d.get("homogeneous", False)),
    )


# --------------------------------------------------------------------------------------------
# The simulated kernel: state and the tree it shows (pure Python, no FUSE)


@dataclass
class _Device:
    parent: str
    type_id: str


class SimKernel:
    """The state of the simulated mdev core and drivers, and the sysfs tree it implies.

    Paths are relative to the mounted ``sys`` directory, without a leading slash (``""`` is its
    root). Methods raise ``OSError`` with the errno the kernel would return.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.devices: dict[str, _Device] = {}
        self.in_use: set[str] = set()
        self._parents_by_path = {p.device_path: p for p in config.parents}
        # every directory on the way to a parent device, with its children
        self._device_dirs: dict[str, set[str]] = {"devices": set()}
        for p in config.parents:
            parts = ["devices", *p.device_path.split("/")]
            for i in range(1, len(parts)):
                self._device_dirs.setdefault("/".join(parts[:i]), set()).add(parts[i])
        # SR-IOV functions: the directories on the way to them; the functions themselves (the
        # PF, and VFs as they come and go) are listed by the SR-IOV state
        self.sriov = SriovKernel(config.pfs, in_use=lambda address: address in self.in_use)
        for pf in config.pfs:
            parts = ["devices", *pf.device_path.split("/")][:-1]
            for i in range(1, len(parts)):
                self._device_dirs.setdefault("/".join(parts[:i]), set()).add(parts[i])
            self._device_dirs.setdefault("/".join(parts), set())

    # -- state changes (the kernel's store functions) ---------------------------------------------

    def available(self, parent: SimParent, mtype: SimType) -> int:
        """``available_instances``: the type's own limit, the shared pool, homogeneity."""
        mine = [d for d in self.devices.values() if d.parent == parent.name]
        if parent.homogeneous and any(d.type_id != mtype.type_id for d in mine):
            return 0
        free = mtype.max_instances - sum(1 for d in mine if d.type_id == mtype.type_id)
        if parent.pool is not None:
            costs = {t.type_id: t.cost for t in parent.types}
            left = parent.pool - sum(costs[d.type_id] for d in mine)
            free = min(free, left // mtype.cost)
        return max(free, 0)

    def create(self, parent: SimParent, mtype: SimType, data: bytes) -> str:
        """``create_store``: returns the new device's name or raises ``OSError``."""
        if not UUID_STRING_LEN <= len(data) <= UUID_STRING_LEN + 1:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        text = data[:UUID_STRING_LEN].decode("ascii", errors="replace")
        if not _UUID.fullmatch(text):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        name = text.lower()
        if name in self.devices:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        if self.available(parent, mtype) <= 0:
            code = _ERRNOS[parent.exhausted_errno]
            raise OSError(code, os.strerror(code))
        self.devices[name] = _Device(parent.name, mtype.type_id)
        return name

    def remove(self, name: str, data: bytes) -> None:
        """``remove_store`` for device ``name``."""
        value = _kstrtoul(data)
        if value is None:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if value == 0:
            return
        if name not in self.devices:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        if name in self.in_use:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        del self.devices[name]

    def control_in_use(self, data: bytes) -> None:
        """``+uuid``/``uuid`` marks a device in use, ``-uuid`` clears it (one per line)."""
        for raw in data.decode("ascii", errors="replace").split():
            sign, uuid = (raw[0], raw[1:]) if raw[0] in "+-" else ("+", raw)
            uuid = uuid.lower()
            if uuid not in self.devices and uuid not in self.sriov.functions:
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            if sign == "+":
                self.in_use.add(uuid)
            else:
                self.in_use.discard(uuid)

    def write(self, path: str, data: bytes) -> None:
        """Dispatch a write to the attribute at ``path`` (already known to be writable)."""
        parts = path.split("/")
        if path == f"{CONTROL_DIR}/in_use":
            self.control_in_use(data)
            return
        if self.sriov.write(parts, data, _kstrtoul):
            return
        if parts[-1] == "create":
            parent, mtype = self._type_at(parts[:-1])
            if parent is None or mtype is None:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            self.create(parent, mtype, data)
            return
        if parts[-1] == "remove":
            self.remove(parts[-2], data)
            self.in_use.discard(parts[-2])
            return
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    # -- the tree ---------------------------------------------------------------------------------

    def lookup(self, path: str) -> Node | None:
        """The node at ``path`` (relative, no leading slash), or None."""
        parts = [p for p in path.split("/") if p]
        n = len(parts)
        if n == 0:
            return Dir(("bus", "class", "devices", "kernel"))
        top = parts[0]
        if top == "class":
            return self._lookup_class(parts, n)
        if top == "bus":
            return self._lookup_bus(parts, n)
        if top == "kernel":
            return self._lookup_kernel(parts, n)
        if top == "devices":
            return self._lookup_devices(parts)
        return None

    def _lookup_class(self, parts: list[str], n: int) -> Node | None:
        if n == 1:
            return Dir(("mdev_bus",))
        if parts[1] != "mdev_bus":
            return None
        if n == 2:
            return Dir(tuple(sorted(p.name for p in self.config.parents)))
        parent = self.config.parent(parts[2])
        if n == 3 and parent is not None:
            return Link(f"../../devices/{parent.device_path}")
        return None

    def _lookup_bus(self, parts: list[str], n: int) -> Node | None:
        if n == 1:
            return Dir(("mdev", "pci"))
        if parts[1] == "pci":
            return self.sriov.lookup_bus_pci(parts[2:])
        if parts[1] != "mdev":
            return None
        if n == 2:
            return Dir(("devices",))
        if parts[2] != "devices":
            return None
        if n == 3:
            return Dir(tuple(sorted(self.devices)))
        dev = self.devices.get(parts[3])
        if n == 4 and dev is not None:
            parent = self.config.parent(dev.parent)
            assert parent is not None
            return Link(f"../../../devices/{parent.device_path}/{parts[3]}")
        return None

    def _lookup_kernel(self, parts: list[str], n: int) -> Node | None:
        control = CONTROL_DIR.split("/")
        if n == 1:
            return Dir((control[1],))
        if parts[1] != control[1]:
            return None
        if n == 2:
            return Dir(("in_use",))
        if n == 3 and parts[2] == "in_use":
            return Attr("".join(f"{u}\n" for u in sorted(self.in_use)), writable=True)
        return None

    def _lookup_devices(self, parts: list[str]) -> Node | None:
        joined = "/".join(parts)
        if joined in self._device_dirs:
            return Dir(tuple(sorted(self._device_dirs[joined] | set(self.sriov.children(joined)))))
        for path, address in self.sriov.by_path().items():
            base = path.split("/")
            if parts[: len(base)] == base:
                return self.sriov.lookup_function(address, parts[len(base) :])
        for device_path, parent in self._parents_by_path.items():
            base = ["devices", *device_path.split("/")]
            if parts[: len(base)] == base:
                return self._lookup_parent(parent, parts[len(base) :])
        return None

    def _lookup_parent(self, parent: SimParent, rest: list[str]) -> Node | None:
        n = len(rest)
        mine = sorted(u for u, d in self.devices.items() if d.parent == parent.name)
        if n == 0:
            return Dir(tuple(sorted(["mdev_supported_types", *dict(parent.attributes), *mine])))
        head = rest[0]
        if head == "mdev_supported_types":
            return self._lookup_types(parent, rest[1:])
        if n == 1 and head in dict(parent.attributes):
            return Attr(dict(parent.attributes)[head] + "\n")
        dev = self.devices.get(head)
        if dev is None or dev.parent != parent.name:
            return None
        if n == 1:
            return Dir(("mdev_type", "remove"))
        if n == 2 and rest[1] == "mdev_type":
            return Link(f"../mdev_supported_types/{dev.type_id}")
        if n == 2 and rest[1] == "remove":
            return Attr(None, writable=True)
        return None

    def _lookup_types(self, parent: SimParent, rest: list[str]) -> Node | None:
        n = len(rest)
        if n == 0:
            return Dir(tuple(sorted(t.type_id for t in parent.types)))
        mtype = parent.type(rest[0])
        if mtype is None:
            return None
        if n == 1:
            names = ["available_instances", "create", "device_api", "devices"]
            names += [
                a for a, v in (("name", mtype.name), ("description", mtype.description)) if v is not None
            ]
            return Dir(tuple(sorted(names)))
        attr = rest[1]
        users = sorted(
            u for u, d in self.devices.items() if (d.parent, d.type_id) == (parent.name, mtype.type_id)
        )
        if n == 2:
            if attr == "create":
                return Attr(None, writable=True)
            if attr == "available_instances":
                return Attr(f"{self.available(parent, mtype)}\n")
            if attr == "device_api":
                return Attr(f"{mtype.device_api}\n")
            if attr == "name" and mtype.name is not None:
                return Attr(f"{mtype.name}\n")
            if attr == "description" and mtype.description is not None:
                return Attr(
                    mtype.description if mtype.description.endswith("\n") else mtype.description + "\n"
                )
            if attr == "devices":
                return Dir(tuple(users))
            return None
        if n == 3 and attr == "devices" and rest[2] in users:
            return Link(f"../../../{rest[2]}")
        return None

    def _type_at(self, parts: list[str]) -> tuple[SimParent | None, SimType | None]:
        # parts: devices/<device_path>/mdev_supported_types/<type>
        if len(parts) < 4 or parts[0] != "devices" or parts[-2] != "mdev_supported_types":
            return None, None
        parent = self._parents_by_path.get("/".join(parts[1:-2]))
        return parent, None if parent is None else parent.type(parts[-1])


def _kstrtoul(data: bytes) -> int | None:
    """The kernel's ``kstrtoul(buf, 0, ...)``: one optional trailing newline, base by prefix."""
    text = data.decode("ascii", errors="replace")
    text = text.removesuffix("\n")
    text = text.removeprefix("+")
    if not text:
        return None
    base = 10
    if text[:2].lower() == "0x":
        text, base = text[2:], 16
    elif text.startswith("0") and len(text) > 1:
        text, base = text[1:], 8
    try:
        return int(text, base) if text and text.isalnum() else None
    except ValueError:
        return None


def write_static_tree(
    root: str | Path, config: SimConfig, devices: Mapping[str, str] | None = None
) -> Path:
    """Write the tree a :class:`SimKernel` shows as plain dirs/files/symlinks under ``root/sys``.

    For tests that need a realistic, read-only snapshot without FUSE or root. ``devices`` maps UUID
    to ``"<parent> <type>"``; they are created (in order) as through ``create``, so
    ``available_instances`` reflects them. Returns ``root/sys``.
    """
    kernel = SimKernel(config)
    for uuid, where in (devices or {}).items():
        parent_name, type_id = where.split()
        parent = config.parent(parent_name)
        mtype = parent.type(type_id) if parent is not None else None
        if parent is None or mtype is None:
            raise ValueError(f"no type {type_id} on parent {parent_name} in the config")
        kernel.create(parent, mtype, f"{uuid}\n".encode())
    sys_dir = Path(root) / "sys"

    def emit(rel: str) -> None:
        node = kernel.lookup(rel)
        target = sys_dir / rel if rel else sys_dir
        if isinstance(node, Dir):
            target.mkdir(parents=True, exist_ok=True)
            for entry in node.entries:
                emit(f"{rel}/{entry}" if rel else entry)
        elif isinstance(node, Link):
            target.symlink_to(node.target)
        elif isinstance(node, Attr):
            target.write_text(node.read or "")
            target.chmod(node.mode)

    emit("")
    return sys_dir


# --------------------------------------------------------------------------------------------
# The FUSE layer


def _load_fuse() -> Any:
    """Import mfusepy (it loads libfuse at import time). Raises ``ImportError``/``OSError``."""
    import mfusepy  # type: ignore[import-untyped]

    return mfusepy


def fuse_unavailable_reason() -> str | None:
    """Why a simulated sysfs cannot be mounted here, or None if it can."""
    if os.geteuid() != 0:
        return "mounting the simulated sysfs needs root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (load the fuse module or pass --device /dev/fuse)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable"
    try:
        _load_fuse()
    except ImportError:
        return "the Python FUSE binding mfusepy is not installed (pip install 'mfusepy>=3.1')"
    except OSError as exc:  # mfusepy raises EnvironmentError when libfuse is missing
        return f"libfuse is not loadable ({exc}); install the Debian package libfuse3-3"
    return None


def _build_operations(kernel: SimKernel, fuse: Any, on_init: Any) -> Any:
    """The mfusepy ``Operations`` subclass serving ``kernel`` (built here: mfusepy is untyped)."""
    started = time.time()

    def fail(code: int) -> Exception:
        return fuse.FuseOSError(code)  # type: ignore[no-any-return]

    class Operations(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def init(self, path: str) -> None:
            on_init()

        def _node(self, path: str) -> Node:
            node = kernel.lookup(path.lstrip("/"))
            if node is None:
                raise fail(errno.ENOENT)
            return node

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            node = self._node(path)
            ns = int(started * 1e9)
            common = {"st_uid": 0, "st_gid": 0, "st_atime": ns, "st_mtime": ns, "st_ctime": ns}
            if isinstance(node, Dir):
                return {**common, "st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_size": 0}
            if isinstance(node, Link):
                return {
                    **common,
                    "st_mode": stat.S_IFLNK | 0o777,
                    "st_nlink": 1,
                    "st_size": len(node.target),
                }
            return {**common, "st_mode": stat.S_IFREG | node.mode, "st_nlink": 1, "st_size": _SYSFS_SIZE}

        def readdir(self, path: str, fh: int) -> list[str]:
            node = self._node(path)
            if not isinstance(node, Dir):
                raise fail(errno.ENOTDIR)
            return [".", "..", *node.entries]

        def readlink(self, path: str) -> str:
            node = self._node(path)
            if not isinstance(node, Link):
                raise fail(errno.EINVAL)
            return node.target

        def open(self, path: str, flags: int) -> int:
            node = self._node(path)
            if isinstance(node, Dir):
                raise fail(errno.EISDIR)
            if not isinstance(node, Attr):
                raise fail(errno.ELOOP)
            mode = flags & os.O_ACCMODE
            if mode in (os.O_RDONLY, os.O_RDWR) and node.read is None:
                raise fail(errno.EACCES)
            if mode in (os.O_WRONLY, os.O_RDWR) and not node.writable:
                raise fail(errno.EACCES)
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            node = self._node(path)
            if not isinstance(node, Attr) or node.read is None:
                raise fail(errno.EACCES)
            data = node.read.encode()
            return data[offset : offset + size]

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            node = self._node(path)
            if not isinstance(node, Attr) or not node.writable:
                raise fail(errno.EACCES)
            try:
                kernel.write(path.lstrip("/"), data)
            except OSError as exc:
                raise fail(exc.errno or errno.EIO) from exc
            return len(data)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            node = self._node(path)  # O_TRUNC on an attribute is accepted and ignored, like sysfs
            if not isinstance(node, Attr) or not node.writable:
                raise fail(errno.EACCES)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            return {"f_bsize": 4096, "f_namemax": 255}

        def _refuse(self, *args: Any) -> int:
            raise fail(errno.EPERM)

        create = mkdir = unlink = rmdir = symlink = rename = link = _refuse
        chmod = chown = utimens = mknod = _refuse

    return Operations()


def serve(root: str | Path, config: SimConfig, *, debug: bool = False) -> int:
    """Mount at ``root/sys`` and serve in the foreground until unmounted or signalled.

    Once the filesystem is up, ``root/simsysfs.ready`` holds this process's pid (so a starter can
    tell its own mount from someone else's). Returns the exit status: 0 after a clean stop
    (SIGTERM, SIGINT, ``umount``).
    """
    fuse = _load_fuse()
    mountpoint = Path(root) / "sys"
    mountpoint.mkdir(parents=True, exist_ok=True)
    fstype = is_mounted(mountpoint)
    if fstype is not None:
        print(
            f"simsysfs: {mountpoint} is already mounted ({fstype}); stop the other daemon "
            f"(--stop) or unmount it (umount -l {mountpoint})",
            file=sys.stderr,
        )
        return 2
    _prepare_mdevctl_dirs(Path(root))
    ready = _ready_file(root)
    kernel = SimKernel(config)
    mounted: list[bool] = []

    def on_init() -> None:
        mounted.append(True)
        ready.write_text(f"{os.getpid()}\n")
        # libfuse's handlers are in place now: a stop request ends the loop and unmounts
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    ops = _build_operations(kernel, fuse, on_init)
    # Between mount(2) and libfuse installing its handlers a SIGTERM would kill us with the mount
    # left behind: hold such signals until the loop runs (on_init).
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        fuse.FUSE(
            ops,
            str(mountpoint),
            foreground=True,
            nothreads=True,
            debug=debug,
            allow_other=True,
            fsname=SUBTYPE,
            subtype=SUBTYPE,
            attr_timeout=0,
            entry_timeout=0,
            negative_timeout=0,
            direct_io=True,
        )
    except RuntimeError as exc:
        # libfuse's main loop reports "ended by a signal" as an error (fuse_main_real returns 8).
        if not mounted:
            print(f"simsysfs: mounting {mountpoint} failed: {exc}", file=sys.stderr)
            return 1
    finally:
        ready.unlink(missing_ok=True)
    if is_mounted(mountpoint) is not None:
        unmount(mountpoint)
    return 0


def _ready_file(root: str | Path) -> Path:
    return Path(root) / "simsysfs.ready"


def _is_up(root: str | Path, pid: int) -> bool:
    """True once the daemon ``pid`` has mounted ``root/sys`` and started serving it."""
    try:
        ready_pid = int(_ready_file(root).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return ready_pid == pid and is_mounted(Path(root) / "sys") == FSTYPE


def _prepare_mdevctl_dirs(root: Path) -> None:
    """The directories mdevctl checks under its ``MDEVCTL_ENV_ROOT`` (newer versions honour it)."""
    for sub in ("callouts", "notifiers"):
        (root / "etc" / "mdevctl.d" / "scripts.d" / sub).mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------------
# Mount bookkeeping (never touches the mounted tree itself: a dead daemon would block it)


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def is_mounted(path: str | Path) -> str | None:
    """The filesystem type mounted at ``path`` (from ``/proc/self/mountinfo``), or None."""
    want = os.path.abspath(path)
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            left, sep, right = line.partition(" - ")
            fields = left.split()
            if sep and len(fields) >= 5 and _unescape_mountinfo(fields[4]) == want:
                found = right.split()[0]  # the last mount on a path is the visible one
    return found


def unmount(path: str | Path, *, timeout: float = 10.0) -> None:
    """Unmount ``path`` lazily (works when the daemon is dead or hung). Bounded; idempotent."""
    if is_mounted(path) is None:
        return
    attempts = [["umount", "-l", str(path)], ["fusermount3", "-u", "-z", str(path)]]
    errors = []
    for argv in attempts:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            continue
        except subprocess.TimeoutExpired:
            errors.append(f"{argv[0]} timed out after {timeout:g} s")
            continue
        if proc.returncode == 0 or is_mounted(path) is None:
            return
        errors.append(f"{' '.join(argv)}: {proc.stderr.strip()}")
    if is_mounted(path) is not None:
        raise LabError(f"cannot unmount the simulated sysfs at {path}: {'; '.join(errors)}")


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(_POLL_S)
    return bool(predicate())


# --------------------------------------------------------------------------------------------
# The Python handle


class SimulatedSysfs:
    """Start the simulated sysfs daemon for ``root`` and stop it again; a context manager.

    ``start`` returns once ``root/sys`` is mounted (or raises :class:`LabError` with the daemon's
    stderr, within ``ready_timeout``). ``stop`` is idempotent and always leaves ``root/sys``
    unmounted: SIGTERM, then a lazy unmount, then SIGKILL, each bounded.
    """

    def __init__(
        self,
        root: str | Path,
        config: SimConfig | None = None,
        *,
        ready_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        python: str = sys.executable,
    ) -> None:
        self.root = Path(root)
        self.config = config or SimConfig()
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self.mount_time_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._up = False
        self._log = self.root / "simsysfs.log"

    @property
    def sys_dir(self) -> Path:
        return self.root / "sys"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> SimulatedSysfs:
        if self._proc is not None:
            raise LabError(f"simulated sysfs at {self.sys_dir} is already started")
        reason = fuse_unavailable_reason()
        if reason is not None:
            raise LabError(f"cannot start the simulated sysfs: {reason}")
        fstype = is_mounted(self.sys_dir)
        if fstype is not None:
            raise LabError(
                f"cannot start the simulated sysfs: {self.sys_dir} is already mounted ({fstype}); "
                "stop the daemon that serves it first"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [self.python, "-m", "mdevtest.lab.simsysfs", "--root", str(self.root)]
        argv += ["--config", self.config.to_json()]
        started = time.monotonic()
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        try:
            self._wait_mounted()
        except BaseException:
            self.stop()
            raise
        self.mount_time_s = time.monotonic() - started
        return self

    def _wait_mounted(self) -> None:
        proc = self._proc
        assert proc is not None
        _wait(lambda: _is_up(self.root, proc.pid) or proc.poll() is not None, self.ready_timeout)
        if _is_up(self.root, proc.pid):
            self._up = True
            return
        what = f"exited with {proc.returncode}" if proc.poll() is not None else "did not mount"
        raise LabError(
            f"simulated sysfs daemon for {self.sys_dir} {what} within {self.ready_timeout:g} s: "
            f"{self.log_tail() or 'no output'}"
        )

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = self._log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        """Stop our daemon and make sure its mount is gone. Idempotent.

        A handle that never started a daemon, or whose daemon gave up before mounting (someone
        else's mount was there), leaves the mount point alone.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        ours = self._up or proc.poll() is None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                _wait(lambda: proc.poll() is not None, self.stop_timeout)
        finally:
            try:
                if ours:
                    unmount(self.sys_dir, timeout=self.stop_timeout)
            finally:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=self.stop_timeout)
                self._up = False

    def set_in_use(self, uuid: str, in_use: bool = True) -> None:
        """Mark an mdev as opened by a VFIO user (``remove`` then fails with EBUSY), or clear it."""
        control = self.sys_dir / CONTROL_DIR / "in_use"
        with open(control, "w", encoding="ascii") as fh:
            fh.write(f"{'+' if in_use else '-'}{uuid}\n")

    def __enter__(self) -> SimulatedSysfs:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Command line


def _read_config(value: str | None) -> SimConfig:
    if value is None:
        return SimConfig()
    text = value if value.lstrip().startswith("{") else Path(value).read_text(encoding="utf-8")
    return SimConfig.from_json(text)


def _daemonize(args: argparse.Namespace) -> int:
    """Start the foreground server as a detached child, wait until it is mounted, write the pidfile."""
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    log_path = Path(args.log) if args.log else root / "simsysfs.log"
    argv = [sys.executable, "-m", "mdevtest.lab.simsysfs", "--root", str(root)]
    if args.config is not None:
        argv += ["--config", args.config]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    sys_dir = root / "sys"
    _wait(lambda: _is_up(root, proc.pid) or proc.poll() is not None, args.ready_timeout)
    if not _is_up(root, proc.pid):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            _wait(lambda: proc.poll() is not None, args.ready_timeout)
            with contextlib.suppress(LabError):
                unmount(sys_dir)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        print(f"simsysfs: daemon did not mount {sys_dir}: {' | '.join(tail)}", file=sys.stderr)
        return 1
    if args.pidfile:
        Path(args.pidfile).write_text(f"{proc.pid}\n")
    print(proc.pid)
    return 0


def _stop(args: argparse.Namespace) -> int:
    """Stop the daemon named by ``--pidfile`` and make sure ``root/sys`` is unmounted."""
    sys_dir = Path(args.root) / "sys"
    if args.pidfile and Path(args.pidfile).exists():
        pid = int(Path(args.pidfile).read_text().split()[0])
        if _is_our_daemon(pid, Path(args.root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _wait(lambda: not _alive(pid), args.ready_timeout)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        Path(args.pidfile).unlink(missing_ok=True)
    try:
        unmount(sys_dir)
    except LabError as exc:
        print(f"simsysfs: {exc}", file=sys.stderr)
        return 1
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours is not alive for this purpose
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return status != "Z"
    return True


def _is_our_daemon(pid: int, root: Path) -> bool:
    """True if ``pid`` runs this module for ``root`` (guards against a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return "mdevtest.lab.simsysfs" in args and str(root) in args


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mdevtest.lab.simsysfs",
        description="Serve a simulated mdev sysfs (GVT-g-like vGPU parent) at ROOT/sys.",
    )
    parser.add_argument("--root", required=True, help="sysfs root; the tree is mounted at ROOT/sys")
    parser.add_argument("--config", help="JSON text or a JSON file (default: one GVT-g-like parent)")
    parser.add_argument("--daemon", action="store_true", help="detach once mounted; print the pid")
    parser.add_argument("--pidfile", help="with --daemon: write the pid; with --stop: whom to stop")
    parser.add_argument("--log", help="with --daemon: log file (default ROOT/simsysfs.log)")
    parser.add_argument("--stop", action="store_true", help="stop the daemon and unmount ROOT/sys")
    parser.add_argument("--ready-timeout", type=float, default=15.0, help="seconds (default 15)")
    parser.add_argument("--print-config", action="store_true", help="print the config JSON and exit")
    parser.add_argument("--debug", action="store_true", help="libfuse debug output")
    args = parser.parse_args(argv)
    try:
        config = _read_config(args.config)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if args.print_config:
        print(config.to_json())
        return 0
    if args.stop:
        return _stop(args)
    if args.daemon:
        return _daemonize(args)
    reason = fuse_unavailable_reason()
    if reason is not None:
        print(f"simsysfs: {reason}", file=sys.stderr)
        return 1
    return serve(args.root, config, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
