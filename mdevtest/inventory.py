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
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import types
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
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
    "SshConfig",
    "VgpuSpec",
    "describe",
    "load_inventory",
    "parse_inventory",
]

#: Key of the validation context that carries the directory relative paths are resolved against.
_BASE_DIR = "base_dir"

_HOST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


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


def _check_remote_abspath(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path on the host (starting with '/')")
    return value


def _reject_empty_path(value: object) -> object:
    # Path("") silently means ".", which is never what an inventory author wants.
    if isinstance(value, str) and not value.strip():
        raise ValueError("must be a file path, not an empty string")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Expand ``~`` and make a relative path absolute against the inventory file's directory."""
    value = value.expanduser()
    base = info.context.get(_BASE_DIR) if isinstance(info.context, Mapping) else None
    if value.is_absolute() or base is None:
        return value
    return Path(os.path.normpath(Path(base) / value))


#: A path on the controller; relative paths resolve against the inventory file's directory.
ControllerPath = Annotated[Path, BeforeValidator(_reject_empty_path), AfterValidator(_resolve_path)]
HostName = Annotated[str, AfterValidator(_check_host_name)]
Address = Annotated[str, AfterValidator(_check_address)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
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

    Host keys are verified against ``known_hosts`` (``~/.ssh/known_hosts`` when unset) unless
    ``accept_unknown_host_keys`` is set, which is meant for throw-away labs only.
    """

    user: NonEmptyStr = "root"
    port: Port = 22
    key_file: ControllerPath
    key_passphrase: Secret | None = None
    """The key file's passphrase, by reference: ``{env: NAME}`` or ``{file: PATH}``."""
    known_hosts: ControllerPath | None = None
    accept_unknown_host_keys: bool = False
    connect_timeout_s: Seconds = 10.0
    command_timeout_s: Seconds = 300.0
    """Default timeout of one remote command."""
    keepalive_s: Annotated[int, Field(ge=0)] = 15
    """SSH keepalive interval; 0 disables keepalives."""


class Host(_Model):
    """One machine that runs QEMU guests: a source, a destination, or both."""

    name: HostName
    address: Address
    """What the controller SSHes to (management network)."""
    ssh: SshConfig
    qemu_binary: NonEmptyStr = "qemu-system-x86_64"
    state_dir: Annotated[str, AfterValidator(_check_remote_abspath)] = "/var/lib/mdevtest"
    """Absolute path on the host (a ``str``: it is remote) for sockets, logs and leases."""
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    sysfs_root: Annotated[str, AfterValidator(_check_remote_abspath)] = "/"
    """Where the host's ``/sys`` is looked up (``/`` on real hosts; the local lab's simulated
    vGPU parent lives under the host's state dir)."""
    ovmf_code: Annotated[str, AfterValidator(_check_remote_abspath)] = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    """UEFI firmware code on the host (Debian's ``ovmf``; RHEL: /usr/share/edk2/ovmf/OVMF_CODE.fd)."""
    ovmf_vars: Annotated[str, AfterValidator(_check_remote_abspath)] = "/usr/share/OVMF/OVMF_VARS_4M.fd"
    """The matching variable store template; each UEFI guest gets its own copy."""


class VgpuSpec(_Model):
    """Which mediated device a pair's guests get (the vendor module interprets ``type``)."""

    vendor: Literal["simulated", "gvt", "nvidia", "mtty"]
    type: NonEmptyStr
    """The mdev type id as in sysfs, e.g. ``i915-GVTg_V5_4``, ``mtty-2``, ``nvidia-222``."""
    parent: NonEmptyStr | None = None
    """Parent device, e.g. ``0000:00:02.0``; None means any parent that offers ``type``."""
    use_mdevctl: bool = False
    limits: Limits | None = None
    """Limits for this vGPU profile, over the inventory's (a test's ``limits`` marker wins)."""


class HostPair(_Model):
    """A directed migration path: guests start on ``source`` and move to ``destination``."""

    source: HostName
    destination: HostName
    migration_address: Address
    """Address of the destination on the migration network, where its QEMU listens."""
    migration_port: Port = 4444
    vgpu: VgpuSpec | None = None

    @property
    def id(self) -> str:
        """``source->destination``: unique within an inventory, used in test ids and leases."""
        return f"{self.source}->{self.destination}"


class LabImage(_Model):
    """A guest image the embedded lab's image builders produce (the lab owns what it ships,
    :mod:`mdevtest.lab.images`).

    ``lab-synthetic``: the local lab's kernel + initramfs with the synthetic GPU workload
    (:mod:`mdevtest.lab.image`); ``lab-mtty``: the nested lab's L2 guest, whose workload keeps
    the mtty serial ports busy (:mod:`mdevtest.lab.nested_image`); ``lab-desktop``: a Debian
    disk image with X, Mesa, the GPU benchmarks and qemu-guest-agent, booted through UEFI
    (:mod:`mdevtest.lab.desktop_image`).
    """

    kind: Literal["lab-synthetic", "lab-mtty", "lab-desktop"]
    firmware: Firmware | None = None
    """``lab-desktop`` only: ``uefi`` (default, boots its disk through OVMF and systemd-boot) or
    ``bios`` (SeaBIOS with the image's kernel booted directly, the same disk as root)."""

    @model_validator(mode="after")
    def _firmware_only_for_disks(self) -> LabImage:
        if self.firmware is not None and self.kind != "lab-desktop":
            raise ValueError(
                f"firmware applies to disk images (lab-desktop, disk); {self.kind} boots a kernel "
                "directly: remove firmware"
            )
        return self


class KernelImage(_Model):
    """A kernel and initrd on the controller, booted directly (``-kernel``/``-initrd``)."""

    kind: Literal["kernel"]
    kernel: ControllerPath
    initrd: ControllerPath
    append: str = ""
    agent: bool = False
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
    agent: bool = True
    """The guest runs qemu-guest-agent on the virtio-serial port ``org.qemu.guest_agent.0``:
    readiness is its ``guest-ping`` + ``guest-get-osinfo``, and workloads run through it."""
    probe: bool = True
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
    memory_mib: Annotated[int, Field(ge=64)] = 256
    vcpus: Annotated[int, Field(ge=1)] = 1
    boot_timeout_s: Seconds = 180.0
    extra_append: str = ""
    """Appended to the kernel command line (kernel images only)."""


class Limits(_Model):
    """Pass/fail limits of one migration. Defaults come from the seed talk (< 500 ms, ~3 s)."""

    downtime_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 500.0
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

    version: Literal[1] = 1
    name: NonEmptyStr
    hosts: Annotated[tuple[Host, ...], Field(min_length=1)]
    pairs: Annotated[tuple[HostPair, ...], Field(min_length=1)]
    guest: GuestSpec
    limits: Limits = Limits()
    local_lab: LocalLabSpec | None = None
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
                f"hosts[{i}].name: {name!r} is already used by hosts[{first_index[name]}]; "
                "host names must be unique"
            )
        else:
            first_index[name] = i
    known = ", ".join(first_index) or "(none)"
    first_pair: dict[str, int] = {}
    for i, ends in enumerate(pair_ends):
        if ends is None:
            continue
        src, dst = ends
        for field, value in (("source", src), ("destination", dst)):
            if isinstance(value, str) and value not in first_index:
                problems.append(
                    f"pairs[{i}].{field}: {value!r} is not a host of this inventory; "
                    f"known hosts: {known}"
                )
        if not (isinstance(src, str) and isinstance(dst, str)):
            continue
        if src == dst:
            problems.append(
                f"pairs[{i}].destination: {dst!r} is also the source; a pair needs two different hosts"
            )
            continue
        pair_id = f"{src}->{dst}"
        if pair_id in first_pair:
            problems.append(f"pairs[{i}]: {pair_id} is already listed as pairs[{first_pair[pair_id]}]")
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
    input) listing every problem found.
    """
    shown = os.fspath(path)
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InventoryError(
            shown, ["file not found; pass the path of an inventory YAML file"]
        ) from None
    except IsADirectoryError:
        raise InventoryError(
            shown, ["is a directory; pass the path of an inventory YAML file"]
        ) from None
    except UnicodeDecodeError as exc:
        raise InventoryError(shown, [f"not UTF-8 text (byte {exc.start})"]) from None
    except OSError as exc:
        raise InventoryError(shown, [f"cannot read: {exc.strerror or exc}"]) from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise InventoryError(shown, [_yaml_problem(exc)]) from None
    except yaml.YAMLError as exc:
        raise InventoryError(shown, [f"not valid YAML: {exc}"]) from None
    absolute = Path(os.path.abspath(file))
    inventory = parse_inventory(data, source=shown, base_dir=absolute.parent)
    return inventory.model_copy(update={"source_path": absolute})


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
        raise InventoryError(source, list(dict.fromkeys(problems)))
    return inventory


_YAML_INT = "tag:yaml.org,2002:int"
_YAML_FLOAT = "tag:yaml.org,2002:float"


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys and reads no base-60 numbers (see below)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[object, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first defined on line {first})",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads unquoted 0000:00:02.0 (a PCI address) as a base-60 float and 52:54:00:12:34:56 (a
# MAC) as a base-60 int. Nobody writes sexagesimal numbers in an inventory, so drop those forms and
# keep such values strings, as YAML 1.2 does.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_YAML_INT, _YAML_FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
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
    what = exc.problem or exc.context or "cannot be parsed"
    if "<block end>" in what or "<block mapping start>" in what:
        what += " (check the indentation)"
    kind = "YAML error" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
    if mark is None:
        return f"{kind}: {what}"
    return f"{kind} at line {mark.line + 1}, column {mark.column + 1}: {what}"


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
    """Explain a text field that YAML turned into a bool or number (``no``, ``1.10``, ``0755``)."""
    if slot is None or not isinstance(value, bool | int | float):
        return ""
    annotation = _unwrap(slot.annotation)[0]
    wants_text = annotation in (str, Path) or (
        get_origin(annotation) is Literal and all(isinstance(v, str) for v in get_args(annotation))
    )
    if not wants_text:
        return ""
    read_as = "a boolean" if isinstance(value, bool) else "a number"
    return f" (YAML read the unquoted value as {read_as}; put it in quotes)"


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
            path = f"{path}.{item}" if path else item
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
        path += f"[{item}]" if isinstance(item, int) else f".{item}"
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
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
        if ssh.accept_unknown_host_keys:
            trust = "not checked (accept_unknown_host_keys)"
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
