"""The lab inventory: which hosts exist, which pairs migrate, which guest runs, which limits apply.

An inventory is a YAML file validated once, at load, into frozen models. Everything downstream
(remote, mdev, qemu, migration, the plugin) takes these models and may rely on what they guarantee:

* every field has the type and range its annotation and docstring state;
* host names are unique and safe to use in test ids and file names;
* every pair names two different hosts of the same inventory, and pair ids are unique;
* controller-side paths (SSH key, known_hosts, guest kernel/initrd/disk, local lab state dir) are
  absolute when the inventory came from :func:`load_inventory` (relative ones are resolved against
  the inventory file's directory). Whether those files exist is *not* checked here; that is the
  connect/boot step's job, so an inventory can be checked on a machine that lacks the keys.

Any bad input raises :class:`~mdevtest.errors.InventoryError` with one line per problem, each naming
the field path (``hosts[1].ssh.port``), the bad value and what is allowed. Pydantic's own messages,
tracebacks and URLs never reach the user.

Hostile files (written by hand or by a tool gone wrong) are refused before validation, quickly and
in bounded memory: only a regular file of at most :data:`MAX_FILE_BYTES` is read (a FIFO, a device
or a directory is refused without blocking on it); YAML is composed with at most :data:`MAX_NODES`
nodes, each alias counted as the nodes it stands for (an alias bomb stops there), at most
:data:`MAX_DEPTH` levels deep, with scalars of at most :data:`MAX_SCALAR_CHARS` characters and
integers that fit in 64 bits. Scalars follow the YAML 1.2 core schema: only ``true``/``false``
are booleans, and integer, boolean and number fields take only values of their own YAML type (no
``yes``, no ``22.0`` for a port, no quoted numbers). A value is shown in a message at most
:data:`MAX_SHOWN` characters long.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
import types
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from mdevtest.credentials import register as register_secret
from mdevtest.credentials import resolve as resolve_secret
from mdevtest.errors import InventoryError

__all__ = [
    "DiskImage",
    "GuestImageSpec",
    "GuestSpec",
    "Host",
    "HostPair",
    "Inventory",
    "KernelImage",
    "LabImage",
    "Limits",
    "LocalLabSpec",
    "ProvisionSpec",
    "SshConfig",
    "VgpuSpec",
    "describe",
    "load_inventory",
    "load_provision_spec",
    "parse_inventory",
]

#: Largest inventory file read. Real inventories are a few KiB; pure-Python YAML parses this much
#: in well under a second, whatever it holds.
MAX_FILE_BYTES = 256 * 1024
#: Most YAML nodes in one inventory, an alias counting as every node it stands for.
MAX_NODES = 10_000
#: Deepest nesting of mappings and sequences (an inventory needs 7).
MAX_DEPTH = 50
#: Longest scalar (key or value), in characters: more than any path or kernel command line.
MAX_SCALAR_CHARS = 4096
#: Longest rendering of a value inside an error message.
MAX_SHOWN = 200
#: Most problems listed for one file.
MAX_PROBLEMS = 50

#: Key of the validation context that carries the directory relative paths are resolved against.
_BASE_DIR = "base_dir"

_HOST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --------------------------------------------------------------------------------------------
# Field validators. Each raises ValueError("must be ...") so the loader can render
# "<path>: <value> is not allowed: must be ...".


def _check_host_name(value: str) -> str:
    if not _HOST_NAME.fullmatch(value):
        raise ValueError(
            "must be 1-63 characters of a-z, 0-9 and '-', not starting with '-' "
            "(host names appear in test ids and file names)"
        )
    return value


def _check_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return value
    name = value.removesuffix(".")
    labels = name.split(".")
    if (
        0 < len(name) <= 253
        and all(_DNS_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        return value
    raise ValueError("must be an IPv4/IPv6 address or a DNS name (no brackets, port or user@)")


def _reject_control_chars(value: str) -> str:
    # A NUL cannot be passed to the OS at all; other control characters in a path or name
    # are a generator's bug or an attack on whatever prints or runs them later.
    found = _CONTROL.search(value)
    if found is not None:
        raise ValueError(
            f"must not contain control characters (found {found.group()!r} at position "
            f"{found.start()}); remove it"
        )
    return value


def _check_remote_abspath(value: str) -> str:
    _reject_control_chars(value)
    if not value.startswith("/"):
        raise ValueError("must be an absolute path on the host (starting with '/')")
    return value


def _check_controller_path(value: object) -> object:
    if isinstance(value, str):
        # Path("") silently means ".", which is never what an inventory author wants.
        if not value.strip():
            raise ValueError("must be a file path, not an empty string")
        _reject_control_chars(value)
    return value


def _exactly_one(value: object) -> object:
    # Literal[1] alone takes true and 1.0 as 1.
    if value != 1 or isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be 1 (the only inventory format)")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Expand ``~`` and make a relative path absolute against the inventory file's directory."""
    value = value.expanduser()
    base = info.context.get(_BASE_DIR) if isinstance(info.context, Mapping) else None
    if value.is_absolute() or base is None:
        return value
    return Path(os.path.normpath(Path(base) / value))


#: A path on the controller; relative paths resolve against the inventory file's directory.
ControllerPath = Annotated[Path, BeforeValidator(_check_controller_path), AfterValidator(_resolve_path)]
RemotePath = Annotated[str, AfterValidator(_check_remote_abspath)]
HostName = Annotated[str, AfterValidator(_check_host_name)]
Address = Annotated[str, AfterValidator(_check_address)]
# Strict: an int field takes a YAML integer only (not true, 22.0 or "22"), a bool field true or
# false only (not 1, "yes" or "true"), a number field an integer or a float (not true or "1").
Flag = Annotated[bool, Strict()]
Count = Annotated[int, Strict()]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
Seconds = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
#: A name, identifier or path-like text: not empty, no control characters.
NonEmptyStr = Annotated[str, Field(min_length=1), AfterValidator(_reject_control_chars)]
Firmware = Literal["bios", "uefi"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------
# The model


def _reject_inline_secret(value: object) -> object:
    if isinstance(value, (str, bytes, int)):
        register_secret(str(value))  # the error message must not repeat it
        raise ValueError(
            "secrets are given by reference, never inline: {env: VARIABLE} or {file: /path} "
            "(the value itself stays out of the inventory, logs and reports)"
        )
    return value


class SecretRef(_Model):
    """Where a secret is: an environment variable of the controller, or a file on it."""

    env: NonEmptyStr | None = None
    file: ControllerPath | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env and file")
        return self

    def resolve(self) -> str:
        """The secret's value (registered so every log, error and report masks it)."""
        return resolve_secret(env=self.env, file=self.file)


Secret = Annotated[SecretRef, BeforeValidator(_reject_inline_secret)]


class SshConfig(_Model):
    """How the controller reaches a host over SSH.

    Host keys are verified against ``known_hosts`` (``~/.ssh/known_hosts`` when unset): a host
    whose key is not there is refused, and so is one whose key differs from the recorded one.

    ``accept_unknown_host_keys`` (for throw-away labs only) accepts a host whose key is not
    recorded yet; it never skips the check of a recorded key. When ``known_hosts`` names an
    existing file, the accepted key is written to it (paramiko rewrites the file, dropping its
    comments) and enforced from then on: trust on first use. When ``known_hosts`` is unset
    (``~/.ssh/known_hosts`` is read, never written) or names a file that does not exist, nothing
    is recorded and an unrecorded host is accepted with whatever key it shows, on every connection.
    """

    user: NonEmptyStr = "root"
    port: Port = 22
    key_file: ControllerPath
    key_passphrase: Secret | None = None
    """The key file's passphrase, by reference: ``{env: NAME}`` or ``{file: PATH}``."""
    known_hosts: ControllerPath | None = None
    accept_unknown_host_keys: Flag = False
    connect_timeout_s: Seconds = 10.0
    command_timeout_s: Seconds = 300.0
    """Default timeout of one remote command."""
    keepalive_s: Annotated[Count, Field(ge=0)] = 15
    """SSH keepalive interval; 0 disables keepalives."""
    dead_after_s: Seconds = 30.0
    """The connection to a host ends when what was sent stays unacknowledged this long (its
    ``TCP_USER_TIMEOUT``; the keepalives make sure something is sent): a host that died wakes
    every waiting call within about ``keepalive_s + dead_after_s``. A host that then cannot be
    reached is taken for dead: calls to it fail at once (a quick probe of its SSH port, at
    most every second, tells when it is back)."""


# -- provisioning (mdevtest.provision) --------------------------------------------------------

_URL = re.compile(r"https?://[^\s]+")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _artifact_source(value: object, info: ValidationInfo) -> object:
    """An ``http(s)://`` URL as given, or a controller path made absolute like any other."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        raise ValueError("must be an http(s) URL or a file path, not an empty string")
    _reject_control_chars(value)
    if value.startswith(("http://", "https://")):
        if not _URL.fullmatch(value):
            raise ValueError("must be an http(s) URL without spaces")
        return value
    return str(_resolve_path(Path(value), info))


def _check_module_name(value: str) -> str:
    if not _MODULE_NAME.fullmatch(value):
        raise ValueError("must be a kernel module name (letters, digits, _ and -)")
    return value


def _check_sha256(value: str) -> str:
    if not _SHA256.fullmatch(value):
        raise ValueError("must be 64 lowercase hex digits (sha256sum's output)")
    return value


def _check_kernel_arg(value: str) -> str:
    if not value or any(c.isspace() for c in value) or "'" in value or '"' in value:
        raise ValueError("must be one kernel argument (no spaces or quotes), e.g. intel_iommu=on")
    return value


KernelArg = Annotated[str, AfterValidator(_check_kernel_arg)]


class Artifact(_Model):
    """One thing to put on a host: a ``deb`` package (``dpkg -i``), a ``tarball`` (extracted
    under ``dest``, default ``/``) or a ``file`` (copied to ``dest``). ``source`` is an
    ``http(s)://`` URL the controller downloads (cached by URL) or a controller path."""

    kind: Literal["deb", "tarball", "file"]
    source: Annotated[str, BeforeValidator(_artifact_source)]
    dest: RemotePath | None = None
    sha256: Annotated[str, AfterValidator(_check_sha256)] | None = None
    """When given, the fetched artifact must have this digest (checked on the controller)."""
    mode: Annotated[str, Field(pattern=r"^[0-7]{3,4}$")] | None = None
    """A ``file``'s permission bits (octal, e.g. ``0755``); default 0644."""

    @model_validator(mode="after")
    def _dest(self) -> Artifact:
        if self.kind == "file" and self.dest is None:
            raise ValueError("a file artifact needs dest: the absolute path it is copied to")
        if self.kind == "deb" and self.dest is not None:
            raise ValueError("a deb artifact has no dest: dpkg installs it where it says")
        if self.kind != "file" and self.mode is not None:
            raise ValueError("mode is for file artifacts only")
        return self

    @property
    def name(self) -> str:
        """The artifact's file name (the URL's or the path's last component)."""
        return self.source.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or self.kind


class KernelBoot(_Model):
    """The kernel to boot into after the artifacts are installed, and how.

    ``method: kexec`` loads ``image``/``initrd`` with the running command line, minus
    ``args_remove``, plus ``args_add``, and jumps into it (``systemctl kexec`` where systemd
    runs); ``reboot`` adds a one-shot boot entry (GRUB or systemd-boot) with those arguments
    and reboots, so the next plain reboot is the old kernel again."""

    release: NonEmptyStr
    """What ``uname -r`` must say once booted (the check that the build runs)."""
    image: RemotePath | None = None
    """Default ``/boot/vmlinuz-<release>``."""
    initrd: RemotePath | None = None
    """Default ``/boot/initrd.img-<release>`` (none when that file does not exist)."""
    args_add: tuple[KernelArg, ...] = ()
    args_remove: tuple[KernelArg, ...] = ()
    """Arguments to drop: ``name`` drops every ``name`` and ``name=...``; ``name=value`` that one."""
    method: Literal["kexec", "reboot"] = "kexec"


class ModuleLoad(_Model):
    """A kernel module (re)loaded after the boot: ``rmmod`` if loaded, then ``insmod path`` or
    ``modprobe name``, with ``params``; the loaded ``srcversion`` must be the file's."""

    name: Annotated[str, AfterValidator(_check_module_name)]
    path: RemotePath | None = None
    params: tuple[KernelArg, ...] = ()


class ProvisionSpec(_Model):
    """What ``mdevtest provision`` puts on a host, in this order: the ``artifacts``, the
    ``commands`` (e.g. build a module against the new kernel's headers), the ``kernel`` boot,
    the ``modules``, the ``after_boot`` commands; then it verifies (kernel release, command line,
    module srcversions, ``expect_qemu``) and records it all on the host. docs/provisioning.md."""

    artifacts: tuple[Artifact, ...] = ()
    commands: tuple[NonEmptyStr, ...] = ()
    kernel: KernelBoot | None = None
    modules: tuple[ModuleLoad, ...] = ()
    after_boot: tuple[NonEmptyStr, ...] = ()
    expect_qemu: NonEmptyStr | None = None
    """Text the first line of ``<qemu_binary> --version`` must contain (e.g. ``10.0.2``)."""
    step_timeout_s: Seconds = 1800.0
    """Bound of one install or command step on the host."""
    boot_timeout_s: Seconds = 900.0
    """From the boot command until the host answers SSH with the new kernel."""

    @model_validator(mode="after")
    def _something(self) -> ProvisionSpec:
        if not (self.artifacts or self.commands or self.kernel or self.modules or self.after_boot):
            raise ValueError(
                "nothing to provision: give at least one of artifacts, commands, kernel, "
                "modules, after_boot"
            )
        return self


class Host(_Model):
    """One machine that runs QEMU guests: a source, a destination, or both."""

    name: HostName
    address: Address
    """What the controller SSHes to (management network)."""
    ssh: SshConfig
    qemu_binary: NonEmptyStr = "qemu-system-x86_64"
    state_dir: RemotePath = "/var/lib/mdevtest"
    """Absolute path on the host (a ``str``: it is remote) for sockets, logs and leases."""
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    sysfs_root: RemotePath = "/"
    """Where the host's ``/sys`` is looked up (``/`` on real hosts; the local lab's simulated
    vGPU parent lives under the host's state dir)."""
    ovmf_code: RemotePath = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    """UEFI firmware code on the host (Debian's ``ovmf``; RHEL: /usr/share/edk2/ovmf/OVMF_CODE.fd)."""
    ovmf_vars: RemotePath = "/usr/share/OVMF/OVMF_VARS_4M.fd"
    """The matching variable store template; each UEFI guest gets its own copy."""
    provision: ProvisionSpec | None = None
    """This host's build (replaces the inventory's top-level ``provision`` for it)."""
    libvirt_socket: RemotePath = "/var/run/libvirt/libvirt-sock"
    """The libvirt daemon's socket on the host, for pairs with ``backend: libvirt``
    (``/var/run/libvirt/virtqemud-sock`` where the modular daemons run, e.g. RHEL 9)."""


_VF_VENDORS = frozenset({"xe-sriov", "nvidia-vfio", "vfio-variant", "sim-xe-sriov", "sim-nvidia-vfio"})
_PCI_ADDRESS = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


class VgpuSpec(_Model):
    """Which mediated device a pair's guests get (the vendor module interprets ``type``)."""

    vendor: Literal[
        "simulated",
        "gvt",
        "nvidia",
        "mtty",
        "xe-sriov",
        "nvidia-vfio",
        "vfio-variant",
        "sim-xe-sriov",
        "sim-nvidia-vfio",
    ]
    """mdev vendors: ``gvt``, ``nvidia``, ``mtty``, ``simulated``; SR-IOV VF vendors (a VF bound
    to a vfio-pci variant driver): ``xe-sriov``, ``nvidia-vfio``, ``vfio-variant`` and the local
    lab's ``sim-xe-sriov``, ``sim-nvidia-vfio``."""
    type: NonEmptyStr
    """mdev vendors: the mdev type id as in sysfs, e.g. ``i915-GVTg_V5_4``, ``mtty-2``,
    ``nvidia-222``. VF vendors: ``xe-sriov`` the VF profile (``auto``: the PF's fair share),
    ``nvidia-vfio`` the vGPU type id of ``creatable_vgpu_types`` (``1156``), ``vfio-variant`` the
    variant driver to bind (``mlx5_vfio_pci``)."""
    parent: NonEmptyStr | None = None
    """mdev: the parent device, e.g. ``0000:00:02.0``; None means any parent that offers
    ``type``. VF vendors: the PF's PCI address (required)."""
    vfs: Annotated[int, Strict(), Field(ge=1, le=256)] | None = None
    """VF vendors: VFs to enable on the PF when it has fewer (default 2); the PF's previous
    settings are restored after the run."""
    use_mdevctl: Flag = False
    limits: Limits | None = None
    """Limits for this vGPU profile, over the inventory's (a test's ``limits`` marker wins)."""

    @property
    def is_vf(self) -> bool:
        return self.vendor in _VF_VENDORS

    @model_validator(mode="after")
    def _vf_fields(self) -> VgpuSpec:
        if self.is_vf:
            if self.parent is None or not _PCI_ADDRESS.fullmatch(self.parent):
                raise ValueError(
                    f"vendor {self.vendor} takes an SR-IOV VF of a PF: set parent to the PF's "
                    "PCI address, e.g. parent: '0000:03:00.0' (lspci -D shows it)"
                )
            if self.use_mdevctl:
                raise ValueError(f"vendor {self.vendor} uses VFs, not mdevs: remove use_mdevctl")
        elif self.vfs is not None:
            raise ValueError(
                f"vfs applies to SR-IOV VF vendors ({', '.join(sorted(_VF_VENDORS))}); "
                f"{self.vendor} creates mdevs: remove vfs"
            )
        return self


class HostPair(_Model):
    """A directed migration path: guests start on ``source`` and move to ``destination``."""

    source: HostName
    destination: HostName
    migration_address: Address
    """Address of the destination on the migration network, where its QEMU listens."""
    migration_port: Port = 4444
    vgpu: VgpuSpec | None = None
    backend: Literal["qemu", "libvirt"] = "qemu"
    """Who runs the guests: ``qemu`` (mdevtest starts QEMU and drives QMP itself) or
    ``libvirt`` (the guest is a libvirt domain, migrated through libvirt's API; docs/libvirt.md)."""
    libvirt_peer_uri: NonEmptyStr | None = None
    """``backend: libvirt`` only: migrate peer-to-peer (the source's libvirtd drives it) to this
    libvirt URI of the destination as the *source host* reaches it, e.g.
    ``qemu+tcp://198.18.1.12/system``; unset: the controller drives both daemons (direct)."""

    @model_validator(mode="after")
    def _peer_uri_needs_libvirt(self) -> HostPair:
        if self.libvirt_peer_uri is not None and self.backend != "libvirt":
            raise ValueError(
                "libvirt_peer_uri applies to backend: libvirt only: set backend: libvirt or "
                "remove libvirt_peer_uri"
            )
        return self

    @property
    def id(self) -> str:
        """``source->destination``: unique within an inventory, used in test ids and leases."""
        return f"{self.source}->{self.destination}"


class LabImage(_Model):
    """A guest image the embedded lab's image builders produce (the lab owns what it ships,
    :mod:`mdevtest.lab.images`).

    ``lab-synthetic``: the local lab's kernel + initramfs with the synthetic GPU workload
    (:mod:`mdevtest.lab.image`); ``lab-mtty``: the nested lab's L2 guest, whose workload keeps
    the mtty serial ports busy (:mod:`mdevtest.lab.nested_image`); ``lab-mtty-uefi``: the same
    guest on a UEFI disk with qemu-guest-agent, the probe agent deployed at boot
    (:mod:`mdevtest.lab.mtty_disk`); ``lab-desktop``: a Debian disk image with X, Mesa, the GPU
    benchmarks and qemu-guest-agent, booted through UEFI (:mod:`mdevtest.lab.desktop_image`).
    """

    kind: Literal["lab-synthetic", "lab-mtty", "lab-mtty-uefi", "lab-desktop"]
    firmware: Firmware | None = None
    """Disk images only. ``lab-desktop``: ``uefi`` (default, boots its disk through OVMF and
    systemd-boot) or ``bios`` (SeaBIOS with the image's kernel booted directly, the same disk as
    root); ``lab-mtty-uefi``: ``uefi`` only."""

    @model_validator(mode="after")
    def _firmware_only_for_disks(self) -> LabImage:
        if self.firmware is None or self.kind == "lab-desktop":
            return self
        if self.kind == "lab-mtty-uefi":
            if self.firmware != "uefi":
                raise ValueError(
                    "lab-mtty-uefi boots through UEFI only (its disk has no BIOS loader): remove "
                    "firmware, or use kind lab-mtty for a direct kernel boot"
                )
            return self
        raise ValueError(
            f"firmware applies to disk images (lab-desktop, lab-mtty-uefi, disk); {self.kind} "
            "boots a kernel directly: remove firmware"
            + (" (or use kind lab-mtty-uefi, its UEFI disk)" if self.kind == "lab-mtty" else "")
        )


class KernelImage(_Model):
    """A kernel and initrd on the controller, booted directly (``-kernel``/``-initrd``)."""

    kind: Literal["kernel"]
    kernel: ControllerPath
    initrd: ControllerPath
    append: str = ""
    agent: Flag = False
    """The guest runs qemu-guest-agent on the virtio-serial port ``org.qemu.guest_agent.0``."""


class DiskImage(_Model):
    """A disk image file on the controller, copied once to each host (checked by size and
    sha256) and used through a per-guest qcow2 overlay, attached read-only (no shared storage:
    both hosts' overlays must stay identical while the guest migrates)."""

    kind: Literal["disk"]
    path: ControllerPath
    format: Literal["qcow2", "raw"] = "qcow2"
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """Expected sha256 of ``path`` (lower-case hex); checked before the first copy."""
    firmware: Firmware = "uefi"
    """``uefi``: OVMF (``ovmf_code``/``ovmf_vars`` of each host, a VARS copy per guest);
    ``bios``: SeaBIOS."""
    kernel: ControllerPath | None = None
    """Boot this kernel directly with the disk as root (needs ``initrd``); None: boot the disk."""
    initrd: ControllerPath | None = None
    append: str = ""
    cloud_init: ControllerPath | None = None
    """A NoCloud seed image (volume label ``cidata``), attached read-only as a second disk."""
    agent: Flag = True
    """The guest runs qemu-guest-agent on the virtio-serial port ``org.qemu.guest_agent.0``:
    readiness is its ``guest-ping`` + ``guest-get-osinfo``, and workloads run through it."""
    probe: Flag = True
    """Deploy the probe agent (``mdt-workload``) into the running guest through the agent, for
    the RAM/DMA/device-memory/device-state checks and the guest-observed downtime."""

    @model_validator(mode="after")
    def _combinations(self) -> DiskImage:
        if (self.kernel is None) != (self.initrd is None):
            raise ValueError("kernel and initrd go together: give both (direct boot) or neither")
        if self.append and self.kernel is None:
            raise ValueError("append needs kernel and initrd (a disk boot takes its own command line)")
        if self.probe and not self.agent:
            raise ValueError(
                "probe: true needs agent: true (the probe agent is deployed through "
                "qemu-guest-agent); set probe: false for a guest without qemu-guest-agent"
            )
        return self


GuestImageSpec = Annotated[LabImage | KernelImage | DiskImage, Field(discriminator="kind")]


class GuestSpec(_Model):
    """The guest every test of this inventory boots on the source host."""

    name: NonEmptyStr = "synthetic"
    image: GuestImageSpec
    memory_mib: Annotated[Count, Field(ge=64)] = 256
    vcpus: Annotated[Count, Field(ge=1)] = 1
    boot_timeout_s: Seconds = 180.0
    extra_append: str = ""
    """Appended to the kernel command line (kernel images only)."""


class Limits(_Model):
    """Pass/fail limits of one migration. Defaults come from the seed talk (< 500 ms, ~3 s)."""

    downtime_ms: Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)] = 500.0
    total_time_s: Seconds = 3.0
    migration_timeout_s: Seconds = 120.0
    """After this the migration is cancelled and the test fails."""


class LocalLabSpec(_Model):
    """Present only in the inventories of the embedded labs (``mdevtest lab``)."""

    state_dir: ControllerPath
    """On the controller: keys, known_hosts and the hosts' files (netns) or disks (nested)."""
    flavor: Literal["netns", "nested"] = "netns"
    """``netns``: hosts are network namespaces of the controller (:mod:`mdevtest.lab.local`);
    ``nested``: hosts are QEMU VMs on the controller with a real mdev (:mod:`mdevtest.lab.nested`)."""
    link_port: Port = 10231
    """Nested flavour: the migration link between the two host VMs is a UDP socket pair on
    127.0.0.1, ports ``link_port`` (first host) and ``link_port + 1`` (second host)."""
    boot_timeout_s: Seconds = 600.0
    """Nested flavour: how long ``lab up`` waits for a host VM to answer SSH."""


class Inventory(_Model):
    """A whole lab. Build it with :func:`load_inventory`; the module docstring lists guarantees."""

    version: Annotated[Literal[1], BeforeValidator(_exactly_one)] = 1
    name: NonEmptyStr
    hosts: Annotated[tuple[Host, ...], Field(min_length=1)]
    pairs: Annotated[tuple[HostPair, ...], Field(min_length=1)]
    guest: GuestSpec
    limits: Limits = Limits()
    local_lab: LocalLabSpec | None = None
    provision: ProvisionSpec | None = None
    """The build ``mdevtest provision`` puts on every host without a ``provision`` of its own."""
    source_path: Path | None = Field(default=None, exclude=True)
    """The file this inventory was loaded from; set by the loader, never read from YAML."""

    @model_validator(mode="after")
    def _check_references(self) -> Inventory:
        problems = _reference_problems(
            [h.name for h in self.hosts], [(p.source, p.destination) for p in self.pairs]
        )
        if problems:
            raise PydanticCustomError(
                "inventory_references", "{problems}", {"problems": "\n".join(problems)}
            )
        return self

    def host(self, name: str) -> Host:
        """The host called ``name``; raises :class:`InventoryError` listing the known hosts."""
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise InventoryError(self._where(), [f"no host named {name!r}; known hosts: {known}"])

    def pair(self, pair_id: str) -> HostPair:
        """The pair whose id is ``pair_id``; raises :class:`InventoryError` listing known ids."""
        for pair in self.pairs:
            if pair.id == pair_id:
                return pair
        known = ", ".join(p.id for p in self.pairs)
        raise InventoryError(self._where(), [f"no pair {pair_id!r}; known pairs: {known}"])

    def provision_of(self, name: str) -> ProvisionSpec | None:
        """The build for host ``name``: its own ``provision``, else the inventory's."""
        host = self.host(name)
        return host.provision if host.provision is not None else self.provision

    def _where(self) -> str:
        return str(self.source_path) if self.source_path else f"<inventory {self.name}>"


def _reference_problems(
    host_names: Sequence[object], pair_ends: Sequence[tuple[object, object] | None]
) -> list[str]:
    """Cross-field checks, on raw YAML data or on a model alike (hence ``object``)."""
    problems: list[str] = []
    first_index: dict[str, int] = {}
    for i, name in enumerate(host_names):
        if not isinstance(name, str):
            continue
        if name in first_index:
            problems.append(
                f"hosts[{i}].name: {_show(name)} is already used by hosts[{first_index[name]}]; "
                "host names must be unique"
            )
        else:
            first_index[name] = i
    known = _clip(", ".join(_printable(n) for n in first_index) or "(none)")
    first_pair: dict[str, int] = {}
    for i, ends in enumerate(pair_ends):
        if ends is None:
            continue
        src, dst = ends
        for field, value in (("source", src), ("destination", dst)):
            if isinstance(value, str) and value not in first_index:
                problems.append(
                    f"pairs[{i}].{field}: {_show(value)} is not a host of this inventory; "
                    f"known hosts: {known}"
                )
        if not (isinstance(src, str) and isinstance(dst, str)):
            continue
        if src == dst:
            problems.append(
                f"pairs[{i}].destination: {_show(dst)} is also the source; a pair needs two "
                "different hosts"
            )
            continue
        pair_id = f"{src}->{dst}"
        if pair_id in first_pair:
            problems.append(
                f"pairs[{i}]: {_clip(pair_id)} is already listed as pairs[{first_pair[pair_id]}]"
            )
        else:
            first_pair[pair_id] = i
    return problems


def _raw_reference_problems(data: Mapping[Any, Any]) -> list[str]:
    hosts = data.get("hosts")
    pairs = data.get("pairs")
    if not isinstance(hosts, list):
        return []
    names = [h.get("name") if isinstance(h, dict) else None for h in hosts]
    ends: list[tuple[object, object] | None] = []
    if isinstance(pairs, list):
        ends = [(p.get("source"), p.get("destination")) if isinstance(p, dict) else None for p in pairs]
    return _reference_problems(names, ends)


# --------------------------------------------------------------------------------------------
# Loading


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read, validate and return the inventory at ``path``.

    Relative controller paths are resolved against the file's directory and ``source_path`` is set
    to the file's absolute path. Raises :class:`InventoryError` (never anything else for bad
    input) listing every problem found. The bounds in the module docstring are applied while
    reading and composing the YAML, before any validation.
    """
    shown = os.fspath(path)
    data_bytes = _read_bounded(shown)
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InventoryError(
            shown, [f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"]
        ) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise InventoryError(shown, [_yaml_problem(exc)]) from None
    except yaml.reader.ReaderError as exc:
        raise InventoryError(shown, [_reader_problem(exc, text)]) from None
    except yaml.YAMLError as exc:
        raise InventoryError(shown, [f"not valid YAML: {_clip(str(exc))}"]) from None
    absolute = Path(os.path.abspath(shown))
    inventory = parse_inventory(data, source=shown, base_dir=absolute.parent)
    return inventory.model_copy(update={"source_path": absolute})


def load_provision_spec(path: str | os.PathLike[str]) -> ProvisionSpec:
    """Read a build description (the ``provision:`` mapping of an inventory, alone in a file:
    what ``mdevtest premerge --deploy`` and ``mdevtest provision --spec`` take). Relative
    artifact paths resolve against the file's directory. Raises :class:`InventoryError` naming
    the file and every field that is wrong, as :func:`load_inventory` does."""
    shown = os.fspath(path)
    data_bytes = _read_bounded(shown)
    try:
        data = yaml.load(data_bytes.decode("utf-8"), Loader=_StrictLoader)
    except UnicodeDecodeError as exc:
        raise InventoryError(
            shown, [f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"]
        ) from None
    except yaml.MarkedYAMLError as exc:
        raise InventoryError(shown, [_yaml_problem(exc)]) from None
    except yaml.YAMLError as exc:
        raise InventoryError(shown, [f"not valid YAML: {_clip(str(exc))}"]) from None
    if isinstance(data, dict) and set(data) == {"provision"}:
        data = data["provision"]  # an inventory-style file with only that section
    if not isinstance(data, dict):
        raise InventoryError(
            shown,
            [f"the top level is {_kind(data)}; expected a mapping with keys {_keys(ProvisionSpec)}"],
        )
    base = Path(os.path.abspath(shown)).parent
    try:
        return ProvisionSpec.model_validate(data, context={_BASE_DIR: base})
    except ValidationError as exc:
        raise InventoryError(shown, _capped(list(dict.fromkeys(_translate(exc))))) from None


_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_regular(shown: str, info: os.stat_result) -> None:
    if stat.S_ISREG(info.st_mode):
        if info.st_size > MAX_FILE_BYTES:
            raise InventoryError(shown, [_too_large(info.st_size)])
        return
    kind = next((name for test, name in _NOT_REGULAR if test(info.st_mode)), "not a regular file")
    raise InventoryError(
        shown, [f"is {kind}, not a regular file; pass the path of an inventory YAML file"]
    )


def _too_large(size: int | None) -> str:
    amount = f"{size} bytes" if size is not None else f"more than {MAX_FILE_BYTES} bytes"
    return (
        f"the file is {amount}; an inventory is at most {MAX_FILE_BYTES // 1024} KiB "
        "(is this the right file?)"
    )


def _read_bounded(shown: str) -> bytes:
    """The content of ``shown`` if it is a regular file of at most :data:`MAX_FILE_BYTES`.

    The type is checked with ``stat`` before opening and again on the descriptor, which is opened
    non-blocking: a FIFO, a socket or a device is refused and never blocks or floods the caller.
    """
    try:
        _check_regular(shown, os.stat(shown))
        fd = os.open(shown, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InventoryError(
            shown, ["file not found; pass the path of an inventory YAML file"]
        ) from None
    except ValueError:  # the path itself holds a NUL byte
        raise InventoryError(
            shown, ["the path contains a NUL byte; pass the path of an inventory YAML file"]
        ) from None
    except OSError as exc:
        raise InventoryError(shown, [f"cannot read: {exc.strerror or exc}"]) from None
    chunks: list[bytes] = []
    size = 0
    try:
        _check_regular(shown, os.fstat(fd))  # replaced between stat and open?
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise InventoryError(shown, [f"cannot read: {exc.strerror or exc}"]) from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:  # it grew, or it is a file whose size stat does not know
        raise InventoryError(shown, [_too_large(None)])
    return b"".join(chunks)


def parse_inventory(
    data: object, *, source: str = "<inventory>", base_dir: str | os.PathLike[str] | None = None
) -> Inventory:
    """Validate already-parsed YAML data (a mapping) into an :class:`Inventory`.

    ``source`` names the data in error messages; relative controller paths are resolved against
    ``base_dir`` when given. Raises :class:`InventoryError` listing every problem.
    """
    if data is None:
        raise InventoryError(
            source, [f"the file is empty; expected a mapping with keys {_keys(Inventory)}"]
        )
    if not isinstance(data, dict):
        raise InventoryError(
            source,
            [f"the top level is {_kind(data)}; expected a mapping with keys {_keys(Inventory)}"],
        )
    problems: list[str] = []
    if "source_path" in data:
        problems.append("source_path: unknown key; mdevtest sets it from the file's location")
        data = {k: v for k, v in data.items() if k != "source_path"}
    context = {_BASE_DIR: Path(base_dir)} if base_dir is not None else {}
    try:
        inventory = Inventory.model_validate(data, context=context)
    except ValidationError as exc:
        problems.extend(_translate(exc))
    # The model checks references only once every field is valid; check the raw data as well so
    # that one run reports everything (duplicates of the model's findings are dropped below).
    problems.extend(_raw_reference_problems(data))
    if problems:
        raise InventoryError(source, _capped(list(dict.fromkeys(problems))))
    return inventory


def _capped(problems: list[str]) -> list[str]:
    """At most :data:`MAX_PROBLEMS` lines: a file that is wrong everywhere is not the inventory."""
    if len(problems) <= MAX_PROBLEMS:
        return problems
    rest = len(problems) - MAX_PROBLEMS
    return [*problems[:MAX_PROBLEMS], f"... and {rest} more problems (fix the ones above first)"]


_YAML_INT = "tag:yaml.org,2002:int"
_YAML_FLOAT = "tag:yaml.org,2002:float"
_YAML_BOOL = "tag:yaml.org,2002:bool"
_YAML_MERGE = "tag:yaml.org,2002:merge"
#: Implicit YAML 1.1 types that YAML 1.2's core schema dropped (dates, the ``=`` value key).
_YAML_DROPPED = ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")
_INT64 = range(-(2**63), 2**64)


class _Refused(yaml.MarkedYAMLError):
    """The YAML is well-formed but exceeds a bound of the loader (size, depth, aliases)."""


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader with bounds, YAML 1.2 core scalars and no duplicate keys.

    Composition is bounded (:data:`MAX_NODES` nodes with aliases expanded, :data:`MAX_DEPTH`
    levels, :data:`MAX_SCALAR_CHARS` per scalar), so neither an alias bomb nor deep nesting
    reaches the constructor, pydantic or the recursion limit. Each alias is charged the size and
    height of the node it repeats, computed once per anchored node, so checking costs time linear
    in the file.
    """

    #: ``!!bool`` takes YAML 1.2's true/false only (not yes/no/on/off).
    bool_values: ClassVar[dict[str, bool]] = {"true": True, "false": False}

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # level of the node being composed (the document's root is 1)
        self._reach = 0  # deepest level reached so far, aliases expanded
        self._nodes = 0  # nodes composed so far, aliases expanded
        self._shapes: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, height) once composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        level = self._depth + 1
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is the composer's own error
                shape = self._shapes.get(id(target))
                if shape is None:
                    raise _Refused(
                        problem=f"alias *{_clip(str(event.anchor))} repeats a node that contains "
                        "it (a cycle); an inventory is a tree: write the value out",
                        problem_mark=mark,
                    )
                self._charge(*shape, level, mark, alias=str(event.anchor))
            return super().compose_node(parent, index)
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
            what = "key" if isinstance(parent, yaml.MappingNode) and index is None else "value"
            raise _Refused(
                problem=f"a {what} of {len(event.value)} characters; keys and values are limited "
                f"to {MAX_SCALAR_CHARS} characters",
                problem_mark=mark,
            )
        self._charge(1, 1, level, mark)
        start, outer_reach = self._nodes, self._reach
        self._depth, self._reach = level, level
        node = super().compose_node(parent, index)
        if node is not None:
            self._shapes[id(node)] = (self._nodes - start + 1, self._reach - level + 1)
        self._depth, self._reach = level - 1, max(outer_reach, self._reach)
        return node

    def _charge(self, nodes: int, height: int, level: int, mark: Any, alias: str = "") -> None:
        """Count ``nodes`` more nodes reaching ``height`` levels below ``level``; refuse beyond
        the bounds, naming the alias that crossed one."""
        self._nodes += nodes
        self._reach = max(self._reach, level + height - 1)
        repeats = f"alias *{_clip(alias)} " if alias else ""
        if self._reach > MAX_DEPTH:
            nested = "makes the data nested" if alias else "nested"
            raise _Refused(
                problem=f"{repeats}{nested} more than {MAX_DEPTH} levels deep; an inventory "
                "needs fewer than 10",
                problem_mark=mark,
            )
        if self._nodes > MAX_NODES:
            where = f"{repeats}brings" if alias else "the file has"
            raise _Refused(
                problem=f"{where} more than {MAX_NODES} YAML nodes, counting each alias as the "
                "nodes it repeats (aliases of aliases multiply: an alias bomb?); an inventory "
                "needs far fewer: write repeated parts out or alias them less deeply",
                problem_mark=mark,
            )

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # An explicitly tagged scalar that does not parse (`!!int abc`, `!!bool maybe`) makes
        # SafeConstructor raise ValueError/KeyError instead of a YAML error.
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            raise yaml.constructor.ConstructorError(
                problem=f"{_show(node.value)} is not a valid {node.tag.rsplit(':', 1)[-1]}",
                problem_mark=node.start_mark,
            ) from None

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = super().construct_yaml_int(node)
        if value not in _INT64:
            raise _Refused(
                problem=f"an integer of {len(node.value)} characters is too large; numbers in an "
                "inventory fit in 64 bits",
                problem_mark=node.start_mark,
            )
        return value

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[object, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _YAML_MERGE:
                continue  # `<<: *base` merges a mapping; keys written next to it override it
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {_show(key)} (first defined on line {first})",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(_YAML_INT, _StrictLoader.construct_yaml_int)

# Scalars are resolved as in YAML 1.2's core schema. YAML 1.1 reads unquoted 0000:00:02.0 (a PCI
# address) as a base-60 float, 52:54:00:12:34:56 (a MAC) as a base-60 int, yes/no/on/off as
# booleans and 2024-01-01 as a date. Nobody means those in an inventory: keep such values strings.
_StrictLoader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in (_YAML_INT, _YAML_FLOAT, _YAML_BOOL, *_YAML_DROPPED)
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    _YAML_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_StrictLoader.add_implicit_resolver(
    _YAML_INT,
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""",
        re.VERBOSE,
    ),
    list("-+0123456789"),
)
_StrictLoader.add_implicit_resolver(
    _YAML_FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """One line: what YAML objected to and where (1-based line and column)."""
    mark = exc.problem_mark or exc.context_mark
    what = _clip(exc.problem or exc.context or "cannot be parsed", 2 * MAX_SHOWN)
    if "<block end>" in what or "<block mapping start>" in what:
        what += " (check the indentation)"
    if isinstance(exc, _Refused):
        kind = "refused"
    elif isinstance(exc, yaml.constructor.ConstructorError):
        kind = "YAML error"
    else:
        kind = "YAML syntax error"
    if mark is None:
        return f"{kind}: {what}"
    return f"{kind} at line {mark.line + 1}, column {mark.column + 1}: {what}"


def _reader_problem(exc: yaml.reader.ReaderError, text: str) -> str:
    """A character YAML does not allow in a file (a control character such as NUL)."""
    position = exc.position if isinstance(exc.position, int) else 0
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    char = exc.character if isinstance(exc.character, int) else 0
    return (
        f"YAML syntax error at line {line}, column {column}: character #x{char:04x} is not allowed "
        "in YAML text (write control characters as escapes in a double-quoted string)"
    )


# --------------------------------------------------------------------------------------------
# Translating pydantic errors into "path: problem" lines


@dataclass(frozen=True)
class _Slot:
    """What the schema expects at one location: an annotation and its constraints."""

    annotation: Any
    metadata: tuple[Any, ...] = ()


def _translate(exc: ValidationError) -> list[str]:
    errors = exc.errors(include_url=False)
    # pydantic reports "too short" for a list whose items all failed; the item errors say more.
    item_locs = {e["loc"][:n] for e in errors for n in range(len(e["loc"]))}
    problems: list[str] = []
    for error in errors:
        if error["type"] == "too_short" and error["loc"] in item_locs:
            continue
        if error["type"] == "inventory_references":
            problems.extend(str(error["ctx"]["problems"]).splitlines())
            continue
        problems.append(_problem(error))
    return problems


def _problem(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    path, slot, owner = _walk(error["loc"])
    where = path or "(top level)"
    if kind == "missing":
        return f"{where}: missing (required)"
    if kind == "extra_forbidden":
        return f"{where}: unknown key; {_key_hint(str(error['loc'][-1]), owner)}"
    if kind == "invalid_key":
        parent = _walk(error["loc"][:-1])[0] or "top level"
        return f"{parent}: key {_show(value)} is not allowed: keys must be names (text)"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = str(ctx.get("discriminator", "'kind'")).strip("'")
        expected = ctx.get("expected_tags") or _tags(slot)
        if kind == "union_tag_not_found":
            return f"{where}.{tag}: missing (required); must be one of {expected}"
        return f"{where}.{tag}: {_show(ctx.get('tag'))} is not allowed: must be one of {expected}"
    if kind == "value_error" and "error" in ctx:
        return f"{where}: {_got(value)}: {ctx['error']}"
    expectation = _expect(slot) if slot is not None else None
    if expectation is None:
        return f"{where}: {_got(value)}: {error['msg'][:1].lower()}{error['msg'][1:]}"
    return f"{where}: {_got(value)}: must be {expectation}{_quote_hint(slot, value)}"


def _quote_hint(slot: _Slot | None, value: object) -> str:
    """How to write the value so it is read as the type the slot wants.

    A text field that YAML turned into a bool or number (``1.10``, ``0755``) wants quotes; a
    boolean, integer or number field written as text, or as a number of the wrong kind
    (``"yes"``, ``1``, ``22.0``, ``"22"``), wants the plain YAML value.
    """
    if slot is None:
        return ""
    annotation = _unwrap(slot.annotation)[0]
    if annotation is bool and isinstance(value, str | int | float) and not isinstance(value, bool):
        return " (write true or false, unquoted; yes/no/on/off and 0/1 are not booleans here)"
    if annotation in (int, float) and isinstance(value, str):
        return " (write the number without quotes)" if _is_number(value) else ""
    if annotation is int and isinstance(value, float) and value.is_integer():
        return f" (write {int(value)}, without a decimal point)"
    if annotation in (int, float) and isinstance(value, bool):
        return " (YAML read the unquoted value as a boolean; write a number)"
    if not isinstance(value, bool | int | float):
        return ""
    wants_text = annotation in (str, Path) or (
        get_origin(annotation) is Literal and all(isinstance(v, str) for v in get_args(annotation))
    )
    if not wants_text:
        return ""
    read_as = "a boolean" if isinstance(value, bool) else "a number"
    return f" (YAML read the unquoted value as {read_as}; put it in quotes)"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _walk(loc: Iterable[int | str]) -> tuple[str, _Slot | None, type[BaseModel] | None]:
    """Follow a pydantic ``loc`` through the model.

    Returns the user-facing path (``hosts[0].ssh.port``; union tags that pydantic inserts are
    dropped), the slot at the end (None past an unknown key), and the model owning the last key.
    """
    path = ""
    slot: _Slot | None = _Slot(Inventory)
    owner: type[BaseModel] | None = None
    for item in loc:
        annotation = _unwrap(slot.annotation)[0] if slot is not None else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(item, str):
            owner = annotation
            shown = _clip(_printable(item), 60)  # an unknown key may be long or odd
            path = f"{path}.{shown}" if path else shown
            field = annotation.model_fields.get(item)
            if field is None or (annotation is Inventory and item == "source_path"):
                slot = None
            else:
                slot = _Slot(field.annotation, tuple(field.metadata))
            continue
        if isinstance(item, int) and get_origin(annotation) in (tuple, list):
            path += f"[{item}]"
            slot = _Slot(get_args(annotation)[0])
            continue
        member = _tagged_member(annotation, item)
        if member is not None:
            slot = _Slot(member)
            continue
        path += f"[{item}]" if isinstance(item, int) else f".{_clip(_printable(str(item)), 60)}"
        slot = None
    return path, slot, owner


def _unwrap(annotation: Any, metadata: tuple[Any, ...] = ()) -> tuple[Any, tuple[Any, ...], bool]:
    """Peel ``Annotated[...]`` and ``X | None`` off an annotation.

    Returns the bare annotation, all constraints found on the way, and whether None is allowed.
    """
    optional = False
    while True:
        if get_origin(annotation) is Annotated:
            base, *extra = get_args(annotation)
            for item in extra:
                metadata += tuple(item.metadata) if isinstance(item, FieldInfo) else (item,)
            annotation = base
            continue
        if _is_union(annotation):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                optional = True
                annotation = members[0]
                continue
        return annotation, metadata, optional


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    if not _is_union(annotation):
        return []
    return [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]


def _tagged_member(annotation: Any, tag: object) -> type[BaseModel] | None:
    for model in _models_of(annotation):
        for field in model.model_fields.values():
            if get_origin(field.annotation) is Literal and tag in get_args(field.annotation):
                return model
    return None


def _tags(slot: _Slot | None) -> str:
    tags: list[str] = []
    for model in _models_of(slot.annotation if slot else None):
        kind = model.model_fields.get("kind")
        if kind is not None:
            tags.extend(repr(t) for t in get_args(kind.annotation))
    return ", ".join(tags)


def _public_fields(model: type[BaseModel]) -> list[str]:
    return [name for name in model.model_fields if not (model is Inventory and name == "source_path")]


def _keys(model: type[BaseModel]) -> str:
    return ", ".join(_public_fields(model))


def _key_hint(key: str, owner: type[BaseModel] | None) -> str:
    if owner is None:
        return "remove it"
    fields = _public_fields(owner)
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.7)
    if close:
        return f"did you mean {close[0]!r}?"
    # A key that belongs one level down, e.g. "port" directly under a host instead of under "ssh".
    for name in fields:
        nested = _unwrap(owner.model_fields[name].annotation)[0]
        if isinstance(nested, type) and issubclass(nested, BaseModel) and key in nested.model_fields:
            return f"did you mean to put it under {name!r} ({name}.{key})?"
    return f"allowed keys: {', '.join(fields)}"


def _expect(slot: _Slot) -> str | None:
    """Describe in words what a slot accepts, e.g. "an integer between 1 and 65535"."""
    annotation, metadata, optional = _unwrap(slot.annotation, slot.metadata)
    text: str | None
    if get_origin(annotation) is Literal:
        values = [repr(v) for v in get_args(annotation)]
        text = values[0] if len(values) == 1 else "one of " + ", ".join(values)
    elif annotation is bool:
        text = "true or false"
    elif annotation is int:
        text = "an integer" + _range(metadata)
    elif annotation is float:
        finite = any(getattr(m, "allow_inf_nan", True) is False for m in metadata)
        text = ("a finite number" if finite else "a number") + _range(metadata)
    elif annotation is str:
        text = "a non-empty string" if _min_len(metadata) else "a string"
    elif annotation is Path:
        text = "a file path"
    elif get_origin(annotation) in (tuple, list):
        n = _min_len(metadata)
        text = "a list" + (f" with at least {n} {'entry' if n == 1 else 'entries'}" if n else "")
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        text = f"a mapping with keys {_keys(annotation)}"
    elif _models_of(annotation):
        text = f"a mapping with a 'kind' key (one of {_tags(slot)})"
    else:
        text = None
    if text is not None and optional:
        text += " (or null)"
    return text


def _range(metadata: Iterable[Any]) -> str:
    low: tuple[str, object] | None = None
    high: tuple[str, object] | None = None
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            low = ("ge", m.ge)
        elif isinstance(m, annotated_types.Gt):
            low = ("gt", m.gt)
        elif isinstance(m, annotated_types.Le):
            high = ("le", m.le)
        elif isinstance(m, annotated_types.Lt):
            high = ("lt", m.lt)
    if low and high and low[0] == "ge" and high[0] == "le":
        return f" between {low[1]} and {high[1]}"
    words = {"ge": "of at least", "gt": "greater than", "le": "of at most", "lt": "less than"}
    parts = [f"{words[b[0]]} {b[1]}" for b in (low, high) if b is not None]
    return (" " + " and ".join(parts)) if parts else ""


def _min_len(metadata: Iterable[Any]) -> int:
    for m in metadata:
        if isinstance(m, annotated_types.MinLen):
            return int(m.min_length)
    return 0


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _show(value: object) -> str:
    """Render a YAML scalar the way the user wrote it (roughly): 'abc', 70000, true, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 128:
        # repr() of a huge int is slow, and refused beyond 4300 digits
        return f"an integer of {value.bit_length()} bits"
    return _clip(repr(value), 60)


def _printable(text: str) -> str:
    """``text`` with control characters escaped (as in ``repr``), so a message cannot carry them."""
    return text if text.isprintable() else repr(text)[1:-1]


def _clip(text: str, limit: int = MAX_SHOWN) -> str:
    """``text``, shortened to ``limit`` characters if longer (saying how long it was)."""
    if len(text) <= limit:
        return text
    return f"{text[: max(limit - 25, 10)]}... ({len(text)} characters)"


def _got(value: object) -> str:
    if isinstance(value, dict | list | tuple):
        empty = "an empty " + _kind(value).removeprefix("a ") if not value else _kind(value)
        return f"{empty} is not allowed"
    return f"{_show(value)} is not allowed"


# --------------------------------------------------------------------------------------------
# Human-readable summary


def describe(inv: Inventory) -> str:
    """Render the lab for humans (``mdevtest inventory check``): hosts, pairs, guest, limits."""
    lines = [f"inventory {inv.name} ({inv.source_path or 'not loaded from a file'})"]
    lines.append("hosts:")
    for h in inv.hosts:
        ssh = h.ssh
        if ssh.accept_unknown_host_keys and ssh.known_hosts is not None:
            trust = (
                f"trust on first use: unknown keys accepted and recorded in {ssh.known_hosts} "
                "if it exists, recorded keys checked"
            )
        elif ssh.accept_unknown_host_keys:
            trust = "unknown keys accepted, never recorded; keys in ~/.ssh/known_hosts checked"
        else:
            trust = f"checked against {ssh.known_hosts or '~/.ssh/known_hosts'}"
        lines += [
            f"  {h.name}",
            f"    address    {h.address}",
            f"    ssh        {ssh.user}@{_host_port(h.address, ssh.port)}",
            f"    key        {ssh.key_file}",
            f"    host keys  {trust}",
            f"    qemu       {h.qemu_binary} (accel {h.accel})",
            f"    state_dir  {h.state_dir}",
        ]
    lines.append("pairs:")
    for p in inv.pairs:
        line = f"  {p.id}  migration to {_host_port(p.migration_address, p.migration_port)}"
        if p.vgpu is None:
            line += ", no vgpu"
        else:
            v = p.vgpu
            if v.is_vf:
                line += f", vgpu {v.vendor} {v.type} on a VF of PF {v.parent} ({v.vfs or 2} VFs)"
            else:
                line += f", vgpu {v.vendor} {v.type} on {v.parent or 'any parent'}"
            line += " via mdevctl" if v.use_mdevctl else ""
        lines.append(line)
    g = inv.guest
    image = g.image
    if isinstance(image, KernelImage):
        shown_image = f"kernel {image.kernel}, initrd {image.initrd}"
        shown_image += ", qemu-guest-agent" if image.agent else ", console only"
    elif isinstance(image, DiskImage):
        boot = f"kernel {image.kernel} (direct)" if image.kernel else f"{image.firmware} from the disk"
        shown_image = f"{image.format} disk {image.path}, {image.firmware} firmware, boots {boot}"
        shown_image += f", sha256 {image.sha256[:12]}..." if image.sha256 else ""
        shown_image += f", cloud-init seed {image.cloud_init}" if image.cloud_init else ""
        shown_image += ", qemu-guest-agent" if image.agent else ", no agent (console only)"
        shown_image += ", probe agent deployed" if image.probe else ", no probe agent"
    elif image.kind == "lab-mtty":
        shown_image = "lab-mtty (the nested lab's L2 guest, built by the nested lab)"
    elif image.kind == "lab-mtty-uefi":
        shown_image = (
            "lab-mtty-uefi (the nested lab's L2 guest on a UEFI disk with qemu-guest-agent, "
            "the probe agent deployed; built by the nested lab)"
        )
    elif image.kind == "lab-desktop":
        shown_image = (
            f"lab-desktop (Debian disk image with X, Mesa llvmpipe, glmark2, x11perf, ffmpeg, "
            f"GStreamer, qemu-guest-agent; {image.firmware or 'uefi'} boot; built by the lab)"
        )
    else:
        shown_image = "lab-synthetic (built by the local lab)"
    vcpus = f"{g.vcpus} vCPU" + ("s" if g.vcpus != 1 else "")
    lines += [
        f"guest: {g.name}, {g.memory_mib} MiB, {vcpus}, boot timeout {g.boot_timeout_s:g} s",
        f"  image {shown_image}",
    ]
    lim = inv.limits
    lines.append(
        f"limits: downtime < {lim.downtime_ms:g} ms, total time < {lim.total_time_s:g} s, "
        f"cancelled after {lim.migration_timeout_s:g} s"
    )
    if inv.local_lab is not None:
        lines.append(f"local lab: {inv.local_lab.flavor} flavour, state dir {inv.local_lab.state_dir}")
    return "\n".join(lines)


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
