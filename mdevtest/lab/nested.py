"""The nested lab: two lab hosts as QEMU VMs on the controller, each with a real migratable mdev.

The controller's kernel has no VFIO, so the hosts (L1) are VMs that boot the image of
:mod:`mdevtest.lab.nested_image` (Debian trixie, kernel 6.12, QEMU 10, ``mtty.ko``) under the
controller's QEMU (TCG)::

    controller (runs pytest)
      +-- host-a  QEMU (TCG), qcow2 overlay over the shared rootfs.ext4
      |     eth0: user net, SSH at 127.0.0.1:<hosts[0].ssh.port> (hostfwd)
      |     eth1: 198.18.1.11/24 .... UDP socket pair on 127.0.0.1 (link_port, link_port + 1)
      +-- host-b  the same, 127.0.0.1:<hosts[1].ssh.port>, eth1 198.18.1.12/24

The guests (L2) run in the hosts and migrate between them over eth1. Everything derives from the
inventory: the SSH ports and known_hosts from ``hosts[].ssh``, each host's eth1 address from the
pairs' ``migration_address`` (the destination's address), the link ports and the boot timeout
from ``local_lab``. Each host gets its own host key, written into its config disk and into
``known_hosts`` before it boots, so SSH checks host keys from the first connection.

Guarantees (as :class:`~mdevtest.lab.local.LocalLab`): :meth:`NestedLab.up` is idempotent (a
running host is kept, a missing one started) and on failure stops what it started;
:meth:`NestedLab.down` stops every QEMU of the lab by pid (checked against its command line,
plus a sweep for ours whose pidfile is gone) and removes the state dir; a lock serialises both.
A host counts as up when its QEMU runs and its sshd answers; ``up`` also checks over SSH that
vfio, vfio_iommu_type1, mdev and mtty are loaded and the mtty parent offers mtty-1 and mtty-2.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mdevtest.errors import LabError, MdevtestError
from mdevtest.inventory import Host, Inventory, LabImage
from mdevtest.lab.common import Progress, lab_lock, sh
from mdevtest.lab.common import cmdline as _cmdline
from mdevtest.lab.common import pid_if_ours as _pid_if_ours
from mdevtest.lab.common import terminate as _terminate
from mdevtest.lab.nested_image import (
    CONFIG_DISK_SERIAL,
    NestedImages,
    build_nested_images,
    host_append,
    write_config_disk,
)
from mdevtest.lab.packages import ensure_packages

if TYPE_CHECKING:
    from mdevtest.remote import Remote

LOCK_PATH = Path("/run/lock/mdevtest-nested-lab.lock")

#: The controller's QEMU that runs the host VMs.
QEMU = "qemu-system-x86_64"

#: ``-name`` of a host VM is this plus the host's name (and the state dir is on its command line).
NAME_PREFIX = "mdevtest-nested-"

#: What the controller needs beyond the image builder's packages.
CONTROLLER_PACKAGES: tuple[str, ...] = ("qemu-system-x86", "qemu-utils", "openssh-client")

#: An L1 host VM: TCG (the controller's /dev/kvm is not usable for guests), as FACTS.md measured.
L1_MEMORY_MIB = 3072
L1_VCPUS = 2

#: Modules an L1 host must have loaded, and the mtty types its parent must offer.
REQUIRED_MODULES: tuple[str, ...] = ("vfio", "vfio_iommu_type1", "mdev", "mtty")
REQUIRED_TYPES: tuple[str, ...] = ("mtty-1", "mtty-2")

_PREFIXLEN = 24
_QEMU_START_TIMEOUT_S = 30.0
_CONSOLE_TAIL = 1500


def _quiet(_msg: str) -> None:
    """Default progress sink."""


@dataclass(frozen=True)
class NestedHost:
    """One L1 host VM as the lab builds it (derived from the inventory)."""

    host: Host
    index: int
    mig_address: str  # ADDR/PREFIX of eth1
    link_port: int  # this VM's end of the migration link (UDP, 127.0.0.1)
    peer_link_port: int
    directory: Path

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def ssh_port(self) -> int:
        return self.host.ssh.port

    @property
    def qemu_name(self) -> str:
        return f"{NAME_PREFIX}{self.name}"

    @property
    def mac(self) -> str:
        return f"52:54:00:00:01:{0x11 + self.index:02x}"

    @property
    def overlay(self) -> Path:
        return self.directory / "root.qcow2"

    @property
    def config_disk(self) -> Path:
        return self.directory / "config.tar"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def pidfile(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def qemu_log(self) -> Path:
        return self.directory / "qemu.log"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def console_sock(self) -> Path:
        return self.directory / "console.sock"

    @property
    def qmp_sock(self) -> Path:
        return self.directory / "qmp.sock"

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except OSError:
            return ""

    def console_tail(self, chars: int = _CONSOLE_TAIL) -> str:
        text = self.console()
        return text[-chars:] if text else "(no console output)"


@dataclass(frozen=True)
class NestedHostStatus:
    name: str
    qemu_pid: int | None
    ssh_port: int
    ssh_answers: bool
    console_ready: bool  # the init printed MDT-L1-READY

    @property
    def up(self) -> bool:
        return self.qemu_pid is not None and self.ssh_answers


@dataclass(frozen=True)
class NestedLabStatus:
    hosts: tuple[NestedHostStatus, ...]
    state_dir_exists: bool
    images: str | None  # the image digests the running hosts booted

    @property
    def up(self) -> bool:
        return bool(self.hosts) and all(h.up for h in self.hosts)

    @property
    def anything(self) -> bool:
        """Whether any piece of the lab exists (so ``down`` has work to do)."""
        return self.state_dir_exists or any(h.qemu_pid is not None for h in self.hosts)

    def render(self) -> str:
        state = "up" if self.up else "down" if not self.anything else "partial"
        lines = [f"nested lab: {state}" + (f" (images {self.images})" if self.images else "")]
        for h in self.hosts:
            lines.append(
                f"  {h.name}: qemu={h.qemu_pid or '-'} "
                f"ssh=127.0.0.1:{h.ssh_port} ({'answers' if h.ssh_answers else 'no answer'}) "
                f"console={'ready' if h.console_ready else '-'}"
            )
        return "\n".join(lines)


class NestedLab:
    """Bring the nested lab described by ``inventory`` up, inspect it, take it down."""

    def __init__(self, inventory: Inventory) -> None:
        spec = inventory.local_lab
        where = inventory.source_path or f"<inventory {inventory.name}>"
        if spec is None or spec.flavor != "nested":
            raise LabError(f"{where}: not a nested lab inventory (local_lab.flavor: nested)")
        self.inventory = inventory
        self.state_dir = Path(spec.state_dir)
        self.boot_timeout_s = spec.boot_timeout_s
        if len(inventory.hosts) != 2:
            raise LabError(
                f"{where}: the nested lab has exactly two hosts (its migration link is a UDP "
                f"socket pair); the inventory names {len(inventory.hosts)}"
            )
        first = inventory.hosts[0].ssh
        if first.known_hosts is None:
            raise LabError(f"{where}: the nested lab inventory must name ssh.known_hosts")
        self.key_file = Path(first.key_file)
        self.known_hosts = Path(first.known_hosts)
        problems = []
        for h in inventory.hosts:
            if h.address not in ("127.0.0.1", "localhost"):
                problems.append(f"{h.name}: address must be 127.0.0.1 (SSH is forwarded there)")
            if (h.ssh.key_file, h.ssh.known_hosts) != (first.key_file, first.known_hosts):
                problems.append(f"{h.name}: every host must use the same ssh.key_file and known_hosts")
            if h.sysfs_root != "/":
                problems.append(f"{h.name}: sysfs_root must be / (the host VMs have a real /sys)")
        if len({h.ssh.port for h in inventory.hosts}) != len(inventory.hosts):
            problems.append("each host needs its own ssh.port (they share 127.0.0.1)")
        if problems:
            raise LabError(f"{where}: " + "; ".join(problems))
        self.hosts = tuple(self._nested_hosts(spec.link_port, str(where)))

    def _nested_hosts(self, link_port: int, where: str) -> Iterator[NestedHost]:
        mig: dict[str, str] = {}
        for pair in self.inventory.pairs:
            mig.setdefault(pair.destination, pair.migration_address)
        for index, host in enumerate(self.inventory.hosts):
            addr = mig.get(host.name)
            if addr is None:
                raise LabError(
                    f"{where}: no pair migrates to {host.name}, so its migration address is "
                    "unknown; add a pair with it as the destination"
                )
            try:
                ipaddress.IPv4Address(addr)
            except ValueError as exc:
                raise LabError(
                    f"{where}: {host.name}'s migration address {addr!r} must be IPv4"
                ) from exc
            yield NestedHost(
                host=host,
                index=index,
                mig_address=f"{addr}/{_PREFIXLEN}",
                link_port=link_port + index,
                peer_link_port=link_port + 1 - index,
                directory=self.state_dir / "hosts" / host.name,
            )

    # -- lock ------------------------------------------------------------------------------------

    def _locked(self, timeout: float = 900.0) -> contextlib.AbstractContextManager[None]:
        return lab_lock(LOCK_PATH, timeout)

    # -- status ----------------------------------------------------------------------------------

    def _pid(self, h: NestedHost) -> int | None:
        return _pid_if_ours(h.pidfile, str(h.pidfile))

    def status(self) -> NestedLabStatus:
        hosts = []
        for h in self.hosts:
            pid = self._pid(h)
            hosts.append(
                NestedHostStatus(
                    name=h.name,
                    qemu_pid=pid,
                    ssh_port=h.ssh_port,
                    ssh_answers=pid is not None and _ssh_banner(h.ssh_port, 3.0),
                    console_ready=pid is not None and "MDT-L1-READY" in h.console(),
                )
            )
        images = None
        with contextlib.suppress(OSError, ValueError):
            images = str(json.loads((self.state_dir / "lab.json").read_text())["images"])
        return NestedLabStatus(tuple(hosts), self.state_dir.exists(), images)

    # -- up --------------------------------------------------------------------------------------

    def up(self, progress: Progress = _quiet, *, build_image: bool = True) -> bool:
        """Make the lab whole. Return whether it was not up before (so the caller owns it).

        The host images are always built or taken from the cache (the hosts boot from them);
        ``build_image`` (the CLI's ``--no-image`` turns it off) also builds the inventory's guest
        image when it is one of this lab's (``lab-mtty-uefi``: its disk).
        """
        if os.geteuid() != 0:
            raise LabError("the nested lab needs root (image build, /run/lock); run as root")
        ensure_packages(CONTROLLER_PACKAGES, progress)
        images = build_nested_images(progress=progress)
        guest_image = self.inventory.guest.image
        if build_image and isinstance(guest_image, LabImage):
            from mdevtest.lab.images import lab_image

            kind = lab_image(guest_image.kind)
            if kind.lab == "nested":
                kind.build(guest_image, progress)
        with self._locked():
            before = self.status()
            if before.up:
                progress("nested lab is already up")
                return False
            progress("bringing the nested lab up")
            self._make_keys()
            started: dict[str, float] = {}
            try:
                for h in self.hosts:
                    if self._pid(h) is None:
                        self._start_host(h, images, progress)
                        started[h.name] = time.monotonic()
                self._write_known_hosts()
                boot = self._wait_hosts(started, progress)
            except BaseException:
                for h in self.hosts:
                    if h.name in started:
                        pid = self._pid(h)
                        if pid is not None:
                            progress(f"{h.name}: stopping its VM (lab up failed)")
                            _terminate({pid})
                raise
            record = {"images": images.digest, "boot_s": boot, "mtty": images.host.mtty.srcversion}
            (self.state_dir / "lab.json").write_text(json.dumps(record, indent=2) + "\n")
        return True

    def _make_keys(self) -> None:
        for d in (self.state_dir, self.key_file.parent, *(h.directory for h in self.hosts)):
            d.mkdir(parents=True, exist_ok=True)
        self.key_file.parent.chmod(0o700)
        if not self.key_file.exists():
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mdevtest-nested-lab",
                "-f", str(self.key_file)])  # fmt: skip
        self.key_file.chmod(0o600)
        for h in self.hosts:
            if not h.host_key.exists():
                sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"mdevtest-{h.name}",
                    "-f", str(h.host_key)])  # fmt: skip
            h.host_key.chmod(0o600)

    def _write_known_hosts(self) -> None:
        lines = []
        for h in self.hosts:
            key_type, key = Path(f"{h.host_key}.pub").read_text().split()[:2]
            host = h.host.address if h.ssh_port == 22 else f"[{h.host.address}]:{h.ssh_port}"
            lines.append(f"{host} {key_type} {key}")
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def argv(self, h: NestedHost, images: NestedImages) -> list[str]:
        """The controller's QEMU command line of one host VM."""
        append = host_append(images.host, hostname=h.name, addresses={"eth1": h.mig_address})
        return [
            QEMU,
            "-name", f"{h.qemu_name},debug-threads=on",
            "-accel", "tcg,thread=multi", "-cpu", "max",
            "-smp", str(L1_VCPUS), "-m", str(L1_MEMORY_MIB),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(images.host.kernel), "-initrd", str(images.host.initrd),
            "-append", append,
            # the root disk first: the image boots with root=/dev/vda
            "-drive", f"file={h.overlay},format=qcow2,if=none,id=root,cache=unsafe",
            "-device", "virtio-blk-pci,drive=root",
            "-drive", f"file={h.config_disk},format=raw,if=none,id=cfg,readonly=on",
            "-device", f"virtio-blk-pci,drive=cfg,serial={CONFIG_DISK_SERIAL}",
            "-netdev", f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{h.ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=mgmt,romfile=",
            "-netdev",
            f"socket,id=mig,udp=127.0.0.1:{h.peer_link_port},localaddr=127.0.0.1:{h.link_port}",
            "-device", f"virtio-net-pci,netdev=mig,mac={h.mac},romfile=",
            "-chardev",
            f"socket,id=con,path={h.console_sock},server=on,wait=off,logfile={h.console_log}",
            "-serial", "chardev:con",
            "-qmp", f"unix:{h.qmp_sock},server=on,wait=off",
            "-pidfile", str(h.pidfile),
        ]  # fmt: skip

    def _start_host(self, h: NestedHost, images: NestedImages, progress: Progress) -> None:
        for path in (h.overlay, h.config_disk, h.pidfile, h.console_log, h.console_sock, h.qmp_sock):
            path.unlink(missing_ok=True)
        _require_free(h.ssh_port, socket.SOCK_STREAM, f"{h.name}'s ssh.port")
        _require_free(h.link_port, socket.SOCK_DGRAM, f"{h.name}'s migration link (local_lab.link_port)")
        sh(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(images.host.rootfs), "-F", "raw",
            str(h.overlay)])  # fmt: skip
        write_config_disk(
            h.config_disk,
            authorized_keys=Path(f"{self.key_file}.pub").read_text(),
            host_key=h.host_key,
        )
        argv = self.argv(h, images)
        progress(f"{h.name}: booting (ssh 127.0.0.1:{h.ssh_port}, eth1 {h.mig_address})")
        with h.qemu_log.open("ab") as log:
            subprocess.run(
                ["setsid", "-f", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=30,
                check=True,
            )
        deadline = time.monotonic() + _QEMU_START_TIMEOUT_S
        while self._pid(h) is None:
            if time.monotonic() > deadline:
                log_text = h.qemu_log.read_text(errors="replace").strip()[-800:]
                raise LabError(
                    f"{h.name}: the host VM did not start within {_QEMU_START_TIMEOUT_S:g} s; "
                    f"QEMU said: {log_text or '(nothing)'}"
                )
            time.sleep(0.1)

    def _wait_hosts(self, started: dict[str, float], progress: Progress) -> dict[str, float]:
        """Wait until every host answers SSH and has its mdev parent; the boot times in s."""
        from mdevtest.remote import Remote

        boot: dict[str, float] = {}
        for h in self.hosts:
            t0 = started.get(h.name)
            deadline = (t0 or time.monotonic()) + self.boot_timeout_s
            while not _ssh_banner(h.ssh_port, 3.0):
                if self._pid(h) is None:
                    raise LabError(
                        f"{h.name}: the host VM exited during boot; QEMU log: "
                        f"{h.qemu_log.read_text(errors='replace')[-600:] or '(empty)'}; "
                        f"console tail:\n{h.console_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise LabError(
                        f"{h.name}: sshd did not answer on 127.0.0.1:{h.ssh_port} within "
                        f"{self.boot_timeout_s:g} s of boot (TCG; raise local_lab.boot_timeout_s "
                        f"if the machine is busy); console tail:\n{h.console_tail()}"
                    )
                time.sleep(1.0)
            with Remote(h.host) as remote:
                try:
                    self._verify(h, remote)
                except MdevtestError as exc:
                    raise LabError(
                        f"{h.name}: {exc}\n  console (MDT-L1 lines): "
                        + " | ".join(ln for ln in h.console().splitlines() if "MDT-L1" in ln)
                    ) from exc
            if t0 is not None:
                boot[h.name] = round(time.monotonic() - t0, 1)
                ready = next(
                    (ln for ln in h.console().splitlines() if ln.startswith("MDT-L1-READY")), ""
                )
                progress(f"{h.name}: up in {boot[h.name]:.1f} s ({ready.strip() or 'no READY line'})")
        return boot

    @staticmethod
    def _verify(h: NestedHost, remote: Remote) -> None:
        """Over SSH: the VFIO modules and mtty are loaded and the parent offers both types."""
        script = (
            "for m in " + " ".join(REQUIRED_MODULES) + "; do "
            '[ -d "/sys/module/$m" ] && echo "module $m"; done; '
            "for t in /sys/class/mdev_bus/mtty/mdev_supported_types/*; do "
            '[ -d "$t" ] && echo "type ${t##*/} $(cat "$t/available_instances")"; done; true'
        )
        out = remote.check_shell(script, timeout=60).stdout.split("\n")
        modules = {ln.split()[1] for ln in out if ln.startswith("module ")}
        types = {ln.split()[1]: ln.split()[2] for ln in out if ln.startswith("type ")}
        missing = [m for m in REQUIRED_MODULES if m not in modules]
        if missing:
            raise LabError(f"modules not loaded in the host VM: {', '.join(missing)}")
        absent = [t for t in REQUIRED_TYPES if t not in types]
        if absent:
            raise LabError(
                f"/sys/class/mdev_bus/mtty offers {', '.join(sorted(types)) or 'no type'}, "
                f"not {', '.join(absent)}"
            )

    # -- down ------------------------------------------------------------------------------------

    def down(self, progress: Progress = _quiet) -> None:
        """Stop every host VM of the lab and remove its files. Idempotent."""
        if os.geteuid() != 0:
            raise LabError("taking the nested lab down needs root")
        with self._locked():
            pids: set[int] = set()
            for h in self.hosts:
                pid = self._pid(h)
                if pid is not None:
                    progress(f"{h.name}: stopping its VM (pid {pid})")
                    pids.add(pid)
            pids |= _sweep(self.state_dir)  # ours, whose pidfile is gone
            _terminate(pids, grace=10.0)
            if self.state_dir.exists():
                shutil.rmtree(self.state_dir)
            for path in (self.key_file, Path(f"{self.key_file}.pub"), self.known_hosts):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the parent, if nothing else lives there
                self.state_dir.parent.rmdir()
            progress("nested lab is down")


# -- helpers -------------------------------------------------------------------------------------


def _ssh_banner(port: int, timeout: float) -> bool:
    """Whether an SSH server answers on 127.0.0.1:``port``.

    A hostfwd port accepts connections while the VM has no sshd yet (the user-net stack then
    closes them), so a connect alone proves nothing: the server's banner must arrive.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _require_free(port: int, kind: socket.SocketKind, what: str) -> None:
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            # As QEMU's own listener (libslirp's hostfwd) does: connections of the previous lab
            # in TIME_WAIT do not hold the port (a `lab down; lab up` within a minute), a
            # listener still does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise LabError(
                f"127.0.0.1:{port} ({what}) is in use: {exc.strerror}; stop what uses it or "
                "change the port in the inventory"
            ) from exc


def _sweep(state_dir: Path) -> set[int]:
    """Host VMs of this lab (by ``-name`` and state dir on the command line) whatever their pidfile."""
    found: set[int] = set()
    marker = str(state_dir) + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        cmd = _cmdline(int(entry.name))
        if f"-name {NAME_PREFIX}" in cmd and marker in cmd:
            found.add(int(entry.name))
    return found


__all__ = ["NestedHost", "NestedHostStatus", "NestedLab", "NestedLabStatus"]
