"""SR-IOV in the simulated sysfs: physical functions whose virtual functions are bound to
vfio-pci variant drivers, the way Intel Xe (``xe-vfio-pci``), NVIDIA vGPU 17+ (a vGPU type per
VF, ``nvidia/current_vgpu_type``) and mlx5/virtio VFs are used for live migration.

:class:`SriovKernel` holds the state and the tree :class:`~mdevtest.lab.simsysfs.SimKernel`
shows for it (paths relative to the mounted ``sys``)::

    devices/<pf path>/                 vendor device revision class sriov_totalvfs sriov_vf_device
                                       sriov_numvfs (rw) sriov_drivers_autoprobe (rw)
                                       virtfnN -> ../<vf>   driver -> .../bus/pci/drivers/<drv>
    devices/<dir of pf>/<vf>/          vendor device revision class physfn -> ../<pf>
                                       driver_override (rw) driver -> ...
                                       nvidia/creatable_vgpu_types nvidia/current_vgpu_type (rw)
    bus/pci/devices/<addr>             -> ../../../devices/<path>
    bus/pci/drivers_probe (w)
    bus/pci/drivers/<drv>/             bind (w) unbind (w) <addr> -> ../../../../devices/<path>

Writes follow the kernel (``drivers/pci/iov.c`` ``sriov_numvfs_store``, ``drivers/pci/pci-sysfs.c``
``driver_override_store``, ``drivers/base/bus.c`` ``bind_store``/``unbind_store``/
``drivers_probe_store``):

* ``sriov_numvfs``: not a number -> ``EINVAL``; the current count -> nothing; ``0`` removes the
  VFs; another count while VFs exist -> ``EBUSY``; more than ``sriov_totalvfs`` -> ``ERANGE``. New
  VFs bind to the PF's driver when ``sriov_drivers_autoprobe`` is 1 (the default).
* ``driver_override``: the driver the device may bind to (empty clears it).
* ``drivers_probe``: an unknown address -> ``ENODEV``; an unbound device binds to its override, or
  without one to its default driver; a bound one stays.
* ``drivers/<drv>/bind``: the device must exist, be unbound and match (its override is ``drv``,
  or it has none and ``drv`` is its default) -> else ``ENODEV``; ``unbind``: bound elsewhere ->
  ``ENODEV``.
* ``nvidia/current_vgpu_type`` (only while the VF is bound to the NVIDIA driver): a type id from
  ``creatable_vgpu_types``, else ``EINVAL``; another type while one is set -> ``EBUSY``; ``0``
  clears it. Once a VF of a PF has a type, the others offer only that type (time-sliced vGPU).

Simplifications, each labelled: a device marked in use (QEMU has it open) refuses an unbind,
a type change and the removal of its VFs with ``EBUSY``, where the kernel blocks until the
user lets go. The format of ``creatable_vgpu_types`` is reconstructed from NVIDIA's
documentation (no NVIDIA host here): code proven only against it is unproven.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

from mdevtest.lab.sysfs_nodes import Attr, Dir, Link, Node

__all__ = ["DEFAULT_PFS", "NVIDIA_TYPES_HEADER", "SimPf", "SriovKernel", "parse_sim_pf"]

#: First line of ``creatable_vgpu_types`` (reconstructed, see the module docstring).
NVIDIA_TYPES_HEADER = "ID    : vGPU Name"
_MAX_VFS = 7  # VFs are functions 1..7 of the PF's slot here


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclass(frozen=True)
class SimPf:
    """A simulated SR-IOV physical function. Its VFs are functions 1..``total_vfs`` of the same
    slot (``0000:03:00.0`` -> ``0000:03:00.1``...). ``vgpu_types`` (NVIDIA only): ``(id, name)``
    pairs a VF offers in ``nvidia/creatable_vgpu_types``."""

    address: str
    device_path: str
    vendor: str
    device: str
    vf_device: str
    driver: str
    """The PF's driver, which is also the VFs' default driver (xe, nvidia, mlx5_core)."""
    variant_drivers: tuple[str, ...]
    """vfio-pci variant drivers loaded for its VFs (xe-vfio-pci, nvidia-vgpu-vfio, ...)."""
    revision: str = "0x00"
    pci_class: str = "0x030000"
    total_vfs: int = 4
    vgpu_types: tuple[tuple[int, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.address.endswith(".0") or len(self.address.split(":")) != 3:
            raise ValueError(f"PF {self.address!r}: give a function-0 address like 0000:03:00.0")
        if posixpath.basename(self.device_path) != self.address:
            raise ValueError(f"PF {self.address}: device_path {self.device_path!r} must end in it")
        if not 1 <= self.total_vfs <= _MAX_VFS:
            raise ValueError(f"PF {self.address}: total_vfs must be 1..{_MAX_VFS}")

    def vf_address(self, index: int) -> str:
        return f"{self.address[:-2]}.{index + 1}"

    @property
    def parent_dir(self) -> str:
        """The directory under ``devices/`` the PF and its VFs sit in."""
        return posixpath.dirname(f"devices/{self.device_path}")


#: What the local lab's simulated hosts offer beside the GVT-g-like mdev parent: an Intel GPU
#: whose VFs migrate through xe-vfio-pci, and an NVIDIA GPU with vGPU types per VF.
DEFAULT_PFS: tuple[SimPf, ...] = (
    SimPf(
        address="0000:03:00.0",
        device_path="pci0000:00/0000:00:01.0/0000:03:00.0",
        vendor="0x8086",
        device="0xe20b",  # Battlemage (Arc B580)
        vf_device="0xe20b",
        driver="xe",
        variant_drivers=("xe-vfio-pci", "vfio-pci"),
        total_vfs=4,
    ),
    SimPf(
        address="0000:04:00.0",
        device_path="pci0000:00/0000:00:01.1/0000:04:00.0",
        vendor="0x10de",
        device="0x26b9",  # L40S
        vf_device="0x26b9",
        driver="nvidia",
        variant_drivers=("vfio-pci",),
        revision="0xa1",
        pci_class="0x030200",
        total_vfs=4,
        vgpu_types=((1155, "NVIDIA L40S-12Q"), (1156, "NVIDIA L40S-24Q")),
    ),
)


def parse_sim_pf(obj: object) -> SimPf:
    """A :class:`SimPf` from its JSON form (``ValueError``/``TypeError`` on a bad one)."""
    if not isinstance(obj, dict):
        raise TypeError("pf must be an object")
    allowed = {f for f in SimPf.__dataclass_fields__}
    unknown = set(obj) - allowed
    if unknown:
        raise TypeError(f"pf: unknown keys {sorted(unknown)}")
    types = obj.get("vgpu_types") or []
    if not isinstance(types, list):
        raise TypeError("pf vgpu_types must be a list of [id, name]")
    drivers = obj.get("variant_drivers") or []
    if not isinstance(drivers, list):
        raise TypeError("pf variant_drivers must be a list")
    return SimPf(
        address=str(obj["address"]),
        device_path=str(obj["device_path"]),
        vendor=str(obj["vendor"]),
        device=str(obj["device"]),
        vf_device=str(obj["vf_device"]),
        driver=str(obj["driver"]),
        variant_drivers=tuple(str(d) for d in drivers),
        revision=str(obj.get("revision", "0x00")),
        pci_class=str(obj.get("pci_class", "0x030000")),
        total_vfs=int(str(obj.get("total_vfs", 4))),
        vgpu_types=tuple((int(str(t[0])), str(t[1])) for t in types),
    )


def sim_pf_json(pf: SimPf) -> dict[str, object]:
    return {
        "address": pf.address,
        "device_path": pf.device_path,
        "vendor": pf.vendor,
        "device": pf.device,
        "vf_device": pf.vf_device,
        "driver": pf.driver,
        "variant_drivers": list(pf.variant_drivers),
        "revision": pf.revision,
        "pci_class": pf.pci_class,
        "total_vfs": pf.total_vfs,
        "vgpu_types": [list(t) for t in pf.vgpu_types],
    }


@dataclass
class _Function:
    """A PCI function's mutable state."""

    pf: SimPf
    index: int | None  # None: the PF itself
    driver: str | None = None
    override: str = ""
    vgpu_type: int = 0


@dataclass
class SriovKernel:
    """State of the simulated PCI functions, their drivers and the tree they imply."""

    pfs: tuple[SimPf, ...]
    in_use: Callable[[str], bool] = field(default=lambda _addr: False)
    functions: dict[str, _Function] = field(default_factory=dict)
    autoprobe: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for pf in self.pfs:
            self.functions[pf.address] = _Function(pf, None, driver=pf.driver)
            self.autoprobe[pf.address] = True

    # -- queries ----------------------------------------------------------------------------------

    def drivers(self) -> list[str]:
        names = {pf.driver for pf in self.pfs}
        for pf in self.pfs:
            names.update(pf.variant_drivers)
        return sorted(names)

    def vfs(self, pf: SimPf) -> list[_Function]:
        return sorted(
            (f for f in self.functions.values() if f.pf is pf and f.index is not None),
            key=lambda f: f.index or 0,
        )

    def path_of(self, address: str) -> str:
        """``devices/...`` of a function."""
        fn = self.functions[address]
        return f"{fn.pf.parent_dir}/{address}"

    def creatable(self, fn: _Function) -> list[tuple[int, str]]:
        """The vGPU types a VF offers now: all, or only the one its siblings run."""
        if fn.vgpu_type:
            return []
        running = {v.vgpu_type for v in self.vfs(fn.pf) if v.vgpu_type}
        return [t for t in fn.pf.vgpu_types if not running or t[0] in running]

    # -- writes -----------------------------------------------------------------------------------

    def set_numvfs(self, pf: SimPf, value: int | None) -> None:
        if value is None:
            raise _oserror(errno.EINVAL)
        current = self.vfs(pf)
        if value == len(current):
            return
        if value == 0:
            if any(self.in_use(self.address_of(v)) for v in current):
                raise _oserror(errno.EBUSY)  # the kernel would wait for the VFIO user
            for v in current:
                del self.functions[self.address_of(v)]
            return
        if current:
            raise _oserror(errno.EBUSY)
        if value > pf.total_vfs:
            raise _oserror(errno.ERANGE)
        for i in range(value):
            fn = _Function(pf, i)
            if self.autoprobe[pf.address]:
                fn.driver = pf.driver
            self.functions[pf.vf_address(i)] = fn

    def set_autoprobe(self, pf: SimPf, value: int | None) -> None:
        if value not in (0, 1):
            raise _oserror(errno.EINVAL)
        self.autoprobe[pf.address] = bool(value)

    def address_of(self, fn: _Function) -> str:
        return fn.pf.address if fn.index is None else fn.pf.vf_address(fn.index)

    def set_override(self, address: str, data: bytes) -> None:
        text = data.decode("ascii", errors="replace").strip()
        if len(text) >= 4096 or any(c.isspace() for c in text):
            raise _oserror(errno.EINVAL)
        self.functions[address].override = text

    def _default(self, fn: _Function) -> str:
        return fn.pf.driver

    def probe(self, data: bytes) -> None:
        address = data.decode("ascii", errors="replace").strip()
        fn = self.functions.get(address)
        if fn is None:
            raise _oserror(errno.ENODEV)
        if fn.driver is not None:
            return
        wanted = fn.override or self._default(fn)
        if wanted in self.drivers():
            fn.driver = wanted  # an override naming no loaded driver leaves it unbound

    def bind(self, driver: str, data: bytes) -> None:
        fn = self.functions.get(data.decode("ascii", errors="replace").strip())
        if fn is None or fn.driver is not None:
            raise _oserror(errno.ENODEV)
        if (fn.override or self._default(fn)) != driver:
            raise _oserror(errno.ENODEV)
        fn.driver = driver

    def unbind(self, driver: str, data: bytes) -> None:
        address = data.decode("ascii", errors="replace").strip()
        fn = self.functions.get(address)
        if fn is None or fn.driver != driver:
            raise _oserror(errno.ENODEV)
        if self.in_use(address):
            raise _oserror(errno.EBUSY)  # the kernel would wait for the VFIO user
        fn.driver = None
        fn.vgpu_type = 0

    def set_vgpu_type(self, address: str, data: bytes, value: int | None) -> None:
        fn = self.functions[address]
        if value is None:
            raise _oserror(errno.EINVAL)
        if value == 0:
            if fn.vgpu_type and self.in_use(address):
                raise _oserror(errno.EBUSY)
            fn.vgpu_type = 0
            return
        if fn.vgpu_type:
            raise _oserror(errno.EBUSY)
        if value not in {t for t, _ in self.creatable(fn)}:
            raise _oserror(errno.EINVAL)
        fn.vgpu_type = value

    # -- the tree ---------------------------------------------------------------------------------

    def by_path(self) -> dict[str, str]:
        """``devices/...`` path -> address, of every function present."""
        return {self.path_of(a): a for a in self.functions}

    def children(self, directory: str) -> list[str]:
        """Functions whose device directory sits in ``directory`` (``devices/...``)."""
        return sorted(a for a, f in self.functions.items() if f.pf.parent_dir == directory)

    def lookup_bus_pci(self, rest: list[str]) -> Node | None:
        """``bus/pci/...`` (``rest`` after ``pci``)."""
        n = len(rest)
        if n == 0:
            return Dir(("devices", "drivers", "drivers_probe"))
        head = rest[0]
        if head == "drivers_probe" and n == 1:
            return Attr(None, writable=True)
        if head == "devices":
            if n == 1:
                return Dir(tuple(sorted(self.functions)))
            if n == 2 and rest[1] in self.functions:
                return Link(f"../../../{self.path_of(rest[1])}")
            return None
        if head != "drivers":
            return None
        if n == 1:
            return Dir(tuple(self.drivers()))
        if rest[1] not in self.drivers():
            return None
        bound = sorted(a for a, f in self.functions.items() if f.driver == rest[1])
        if n == 2:
            return Dir(("bind", "unbind", *bound))
        if n == 3 and rest[2] in ("bind", "unbind"):
            return Attr(None, writable=True)
        if n == 3 and rest[2] in bound:
            return Link(f"../../../../{self.path_of(rest[2])}")
        return None

    def lookup_function(self, address: str, rest: list[str]) -> Node | None:
        """A function's directory (``rest``: the path below it)."""
        fn = self.functions[address]
        pf = fn.pf
        up = "../" * len(self.path_of(address).split("/"))  # back to the sysfs root
        attrs = {
            "vendor": pf.vendor,
            "device": pf.device if fn.index is None else pf.vf_device,
            "revision": pf.revision,
            "class": pf.pci_class,
        }
        links: dict[str, str] = {}
        rw: dict[str, str] = {}
        if fn.driver is not None:
            links["driver"] = f"{up}bus/pci/drivers/{fn.driver}"
        if fn.index is None:
            attrs["sriov_totalvfs"] = str(pf.total_vfs)
            attrs["sriov_vf_device"] = pf.vf_device.removeprefix("0x")
            rw["sriov_numvfs"] = str(len(self.vfs(pf)))
            rw["sriov_drivers_autoprobe"] = "1" if self.autoprobe[pf.address] else "0"
            for v in self.vfs(pf):
                links[f"virtfn{v.index}"] = f"../{self.address_of(v)}"
        else:
            links["physfn"] = f"../{pf.address}"
            rw["driver_override"] = fn.override or "(null)"
        nvidia = fn.index is not None and bool(pf.vgpu_types) and fn.driver == pf.driver
        if not rest:
            names = [*attrs, *links, *rw] + (["nvidia"] if nvidia else [])
            return Dir(tuple(sorted(names)))
        head = rest[0]
        if len(rest) == 1:
            if head in attrs:
                return Attr(attrs[head] + "\n")
            if head in rw:
                return Attr(rw[head] + "\n", writable=True)
            if head in links:
                return Link(links[head])
        if head == "nvidia" and nvidia:
            if len(rest) == 1:
                return Dir(("creatable_vgpu_types", "current_vgpu_type"))
            if len(rest) == 2 and rest[1] == "creatable_vgpu_types":
                lines = [NVIDIA_TYPES_HEADER] + [f"{t:<6}: {name}" for t, name in self.creatable(fn)]
                return Attr("\n".join(lines) + "\n")
            if len(rest) == 2 and rest[1] == "current_vgpu_type":
                return Attr(f"{fn.vgpu_type}\n", writable=True)
        return None

    def write(self, parts: list[str], data: bytes, number: Callable[[bytes], int | None]) -> bool:
        """A write to one of ours; False when the path is not ours. ``number``: kstrtoul."""
        if parts[:2] == ["bus", "pci"]:
            if parts[2:] == ["drivers_probe"]:
                self.probe(data)
                return True
            if len(parts) == 5 and parts[2] == "drivers" and parts[4] in ("bind", "unbind"):
                (self.bind if parts[4] == "bind" else self.unbind)(parts[3], data)
                return True
            return False
        paths = self.by_path()
        for cut in (1, 2):
            address = paths.get("/".join(parts[:-cut]))
            if address is None:
                continue
            fn = self.functions[address]
            leaf = "/".join(parts[-cut:])
            if fn.index is None and leaf == "sriov_numvfs":
                self.set_numvfs(fn.pf, number(data))
            elif fn.index is None and leaf == "sriov_drivers_autoprobe":
                self.set_autoprobe(fn.pf, number(data))
            elif fn.index is not None and leaf == "driver_override":
                self.set_override(address, data)
            elif leaf == "nvidia/current_vgpu_type":
                self.set_vgpu_type(address, data, number(data))
            else:
                raise _oserror(errno.EACCES)
            return True
        return False
