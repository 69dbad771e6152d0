"""The embedded local lab: lab hosts as network namespaces on one Linux machine.

Topology (all names derive from the inventory, which stays the single source of truth)::

    controller (root namespace, runs pytest)
      |  198.18.0.1/24 on bridge mdt-mgmt ........... management network (SSH, QMP, consoles)
      +-- mdtm0 <-veth-> mgmt0  [netns mdt-host-a]  198.18.0.11  sshd
      +-- mdtm1 <-veth-> mgmt0  [netns mdt-host-b]  198.18.0.12  sshd
    bridge mdt-mig (no controller address) ........... migration network (hosts only)
      +-- mdtg0 <-veth-> mig0   [netns mdt-host-a]  198.18.1.11
      +-- mdtg1 <-veth-> mig0   [netns mdt-host-b]  198.18.1.12

The controller is the root namespace itself: it only needs the management bridge's address to reach the
hosts, so no process has to be started inside a namespace of its own. Each host runs a real OpenSSH
``sshd`` inside its namespace, with its own host key; the lab writes the client key, the
``authorized_keys`` and the ``known_hosts`` the inventory names. The namespaces share one filesystem, so
each host keeps its files under its own state dir (``<state>/hosts/<name>/``).

Guarantees: :meth:`LocalLab.up` is idempotent and repairs a half-made lab; :meth:`LocalLab.down` removes
every process (by pid, checked against its command line), namespace, link and file the lab made, even
after a crash of the run that made them; both hold a lock so two runs cannot race.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mdevtest.errors import LabError
from mdevtest.inventory import Inventory, LabImage
from mdevtest.lab.common import (
    Lab,
    Progress,
    cmdline,
    lab_lock,
    netns_pids,
    pid_if_ours,
    quiet,
    sh,
    terminate,
)
from mdevtest.lab.packages import ensure_packages

MGMT_BRIDGE = "mdt-mgmt"
MIG_BRIDGE = "mdt-mig"
NETNS_PREFIX = "mdt-"
LINK_PREFIX = "mdt"
LOCK_PATH = Path("/run/lock/mdevtest-local-lab.lock")
SSHD = "/usr/sbin/sshd"
_PREFIXLEN = 24


@dataclass(frozen=True)
class LabHost:
    """One lab host as the lab builds it (derived from the inventory)."""

    name: str
    index: int
    mgmt_address: str
    mig_address: str | None
    state_dir: Path
    sysfs_root: Path | None  # the simulated vGPU parent's tree; None on hosts with a real /sys

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.name}"

    @property
    def mgmt_link(self) -> str:
        return f"{LINK_PREFIX}m{self.index}"

    @property
    def mig_link(self) -> str:
        return f"{LINK_PREFIX}g{self.index}"

    @property
    def sshd_config(self) -> Path:
        return self.state_dir / "sshd_config"

    @property
    def sshd_pidfile(self) -> Path:
        return self.state_dir / "sshd.pid"

    @property
    def host_key(self) -> Path:
        return self.state_dir / "ssh_host_ed25519_key"

    @property
    def simsysfs_pidfile(self) -> Path:
        return self.state_dir / "simsysfs.pid"


@dataclass(frozen=True)
class HostStatus:
    name: str
    netns: bool
    sshd_pid: int | None
    ssh_port_open: bool
    processes: int
    vgpu_sim: bool | None  # simulated vGPU parent mounted (None: the host has a real /sys)

    @property
    def up(self) -> bool:
        sim_ok = self.vgpu_sim is not False
        return self.netns and self.sshd_pid is not None and self.ssh_port_open and sim_ok


@dataclass(frozen=True)
class LabStatus:
    hosts: tuple[HostStatus, ...]
    bridges: tuple[str, ...]
    state_dir_exists: bool

    @property
    def up(self) -> bool:
        return bool(self.hosts) and all(h.up for h in self.hosts) and len(self.bridges) == 2

    @property
    def anything(self) -> bool:
        """Whether any piece of the lab exists (so ``down`` has work to do)."""
        return self.state_dir_exists or bool(self.bridges) or any(h.netns for h in self.hosts)

    def render(self) -> str:
        lines = [f"local lab: {'up' if self.up else 'down' if not self.anything else 'partial'}"]
        lines.append(f"  bridges: {', '.join(self.bridges) or '-'}")
        for h in self.hosts:
            lines.append(
                f"  {h.name}: netns={'yes' if h.netns else 'no'} "
                f"sshd={h.sshd_pid or '-'} ssh-port={'open' if h.ssh_port_open else 'closed'} "
                f"processes={h.processes}"
                + ("" if h.vgpu_sim is None else f" simulated-vgpu={'mounted' if h.vgpu_sim else 'no'}")
            )
        return "\n".join(lines)


class LocalLab:
    """Bring the embedded local lab described by ``inventory`` up, inspect it, take it down."""

    def __init__(self, inventory: Inventory) -> None:
        if inventory.local_lab is None:
            raise LabError(
                f"{inventory.source_path}: this inventory has no local_lab section; "
                "`mdevtest lab` only manages the embedded local lab (inventory/local-lab.yaml)"
            )
        self.inventory = inventory
        self.state_dir = Path(inventory.local_lab.state_dir)
        first = inventory.hosts[0].ssh
        self.key_file = Path(first.key_file)
        if first.known_hosts is None:
            raise LabError("the local lab inventory must name ssh.known_hosts for its hosts")
        self.known_hosts = Path(first.known_hosts)
        self.hosts = tuple(self._lab_hosts())

    def _lab_hosts(self) -> Iterator[LabHost]:
        mig: dict[str, str] = {}
        for pair in self.inventory.pairs:
            mig.setdefault(pair.destination, pair.migration_address)
        for index, host in enumerate(self.inventory.hosts):
            for addr in (host.address, mig.get(host.name)):
                if addr is not None:
                    try:
                        ipaddress.IPv4Address(addr)
                    except ValueError as exc:
                        raise LabError(
                            f"{self.inventory.source_path}: local lab host {host.name} needs IPv4 "
                            f"addresses, got {addr!r}"
                        ) from exc
            yield LabHost(
                name=host.name,
                index=index,
                mgmt_address=host.address,
                mig_address=mig.get(host.name),
                state_dir=Path(host.state_dir),
                sysfs_root=None if host.sysfs_root == "/" else Path(host.sysfs_root),
            )

    @property
    def controller_address(self) -> str:
        """The controller's address on the management network (first host of the /24)."""
        net = ipaddress.IPv4Network(f"{self.hosts[0].mgmt_address}/{_PREFIXLEN}", strict=False)
        return str(next(net.hosts()))

    # -- lock ------------------------------------------------------------------------------------

    def _locked(self, timeout: float = 600.0) -> contextlib.AbstractContextManager[None]:
        return lab_lock(LOCK_PATH, timeout)

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> LabStatus:
        namespaces = set(_list_netns())
        links = set(_list_links())
        hosts = []
        for h in self.hosts:
            has_ns = h.netns in namespaces
            pid = pid_if_ours(h.sshd_pidfile, str(h.sshd_config))
            hosts.append(
                HostStatus(
                    name=h.name,
                    netns=has_ns,
                    sshd_pid=pid,
                    ssh_port_open=has_ns and _port_open(h.mgmt_address, 22, 1.0),
                    processes=len(netns_pids(h.netns)) if has_ns else 0,
                    vgpu_sim=None if h.sysfs_root is None else _is_mountpoint(h.sysfs_root / "sys"),
                )
            )
        bridges = tuple(b for b in (MGMT_BRIDGE, MIG_BRIDGE) if b in links)
        return LabStatus(tuple(hosts), bridges, self.state_dir.exists())

    # -- up --------------------------------------------------------------------------------------

    def up(self, progress: Progress = quiet, *, build_image: bool = True) -> bool:
        """Make the lab whole. Return whether it was not up before (so the caller owns it)."""
        if os.geteuid() != 0:
            raise LabError("the local lab needs root (network namespaces, sshd); run as root")
        ensure_packages(progress=progress)
        with self._locked():
            was_up = self.status().up
            if was_up:
                progress("local lab is already up; checking it")
            else:
                progress("bringing the local lab up")
                self._check_address_conflicts()
                self._make_files()
                self._make_network()
                for host in self.hosts:
                    # sshd's namespace copies the mounts present when it starts (mounts made later
                    # in the root namespace do not propagate), so the simulated sysfs comes first.
                    remounted = self._start_simulated_vgpu(host, progress)
                    self._start_sshd(host, restart=remounted)
                self._write_known_hosts()
                self._wait_ssh()
            for repaired in self.repair():
                progress(f"repaired: {repaired}")
        image = self.inventory.guest.image
        if build_image and isinstance(image, LabImage):
            from mdevtest.lab.images import lab_image

            kind = lab_image(image.kind)
            if kind.lab == "local":
                kind.build(image, progress)
        return not was_up

    def repair(self) -> list[str]:
        """Check what the lab set up, inside and outside the namespaces, and put back what is
        off: bridges and links up, veths on their bridge, MTU 1500, addresses, no tc qdisc left
        by fault injection (or anything else), sshd running. Returns what it repaired; the lab
        must exist (``up`` makes it first)."""
        repaired: list[str] = []
        for bridge in (MGMT_BRIDGE, MIG_BRIDGE):
            repaired += _repair_link(None, bridge, up=True, mtu=None, master=None, address=None)
        for h in self.hosts:
            wiring = [(h.mgmt_link, "mgmt0", MGMT_BRIDGE, h.mgmt_address)]
            if h.mig_address is not None:
                wiring.append((h.mig_link, "mig0", MIG_BRIDGE, h.mig_address))
            found = [f"{h.name}: {r}" for r in _repair_link(h.netns, "lo", up=True, mtu=None)]
            for outer, inner, bridge, addr in wiring:
                found += [f"{h.name}: {r}" for r in _repair_link(None, outer, master=bridge)]
                found += [
                    f"{h.name}: {r}"
                    for r in _repair_link(h.netns, inner, address=f"{addr}/{_PREFIXLEN}")
                ]
            if pid_if_ours(h.sshd_pidfile, str(h.sshd_config)) is None:
                self._start_sshd(h)
                found.append(f"{h.name}: sshd was not running: started")
            repaired += found
        if repaired:
            self._wait_ssh()
        return repaired

    def _check_address_conflicts(self) -> None:
        """Refuse to shadow a network the machine already uses (its uplink, say)."""
        ours = {
            ipaddress.IPv4Network(f"{h.mgmt_address}/{_PREFIXLEN}", strict=False) for h in self.hosts
        }
        ours |= {
            ipaddress.IPv4Network(f"{h.mig_address}/{_PREFIXLEN}", strict=False)
            for h in self.hosts
            if h.mig_address
        }
        for line in sh(["ip", "-o", "-4", "addr", "show"], check=False).splitlines():
            fields = line.split()
            dev, cidr = fields[1], fields[3]
            if dev.startswith(LINK_PREFIX):
                continue
            iface = ipaddress.IPv4Interface(cidr)
            for net in ours:
                if iface.network.overlaps(net):
                    raise LabError(
                        f"{self.inventory.source_path}: lab network {net} overlaps {cidr} on {dev}; "
                        "change the hosts' addresses in the inventory to a free range"
                    )

    def _make_files(self) -> None:
        for d in (self.state_dir, self.key_file.parent, *(h.state_dir for h in self.hosts)):
            d.mkdir(parents=True, exist_ok=True)
        self.key_file.parent.chmod(0o700)
        if not self.key_file.exists():
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mdevtest-local-lab",
                "-f", str(self.key_file)])  # fmt: skip
        self.key_file.chmod(0o600)
        authorized = self.state_dir / "authorized_keys"
        authorized.write_text(Path(f"{self.key_file}.pub").read_text())
        authorized.chmod(0o600)
        for h in self.hosts:
            if not h.host_key.exists():
                sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"mdevtest-{h.name}",
                    "-f", str(h.host_key)])  # fmt: skip
            h.host_key.chmod(0o600)
            h.sshd_config.write_text(
                "\n".join(
                    [
                        "# written by mdevtest lab up; removed by mdevtest lab down",
                        f"ListenAddress {h.mgmt_address}",
                        "Port 22",
                        f"HostKey {h.host_key}",
                        f"PidFile {h.sshd_pidfile}",
                        f"AuthorizedKeysFile {authorized}",
                        "PermitRootLogin prohibit-password",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "UsePAM no",
                        "UseDNS no",
                        "MaxSessions 64",
                        "MaxStartups 64:30:128",
                        "ClientAliveInterval 15",
                        # The lab's hosts share the controller's root account: bash run by
                        # sshd would source root's ~/.bashrc (on this kind of machine: pyenv
                        # init, which rehashes under a lock; a session killed mid-rehash, as
                        # the fault suite kills whole hosts, left the lock behind and every
                        # later command hung). bash skips it at shell level 2.
                        "SetEnv SHLVL=1",
                        "Subsystem sftp /usr/lib/openssh/sftp-server",
                        "",
                    ]
                )
            )

    def _make_network(self) -> None:
        links = set(_list_links())
        ctl = f"{self.controller_address}/{_PREFIXLEN}"
        for bridge, address in ((MGMT_BRIDGE, ctl), (MIG_BRIDGE, None)):
            if bridge not in links:
                sh(["ip", "link", "add", bridge, "type", "bridge"])
            if address is not None:
                sh(["ip", "addr", "replace", address, "dev", bridge])
            sh(["ip", "link", "set", bridge, "up"])
        namespaces = set(_list_netns())
        for h in self.hosts:
            if h.netns not in namespaces:
                sh(["ip", "netns", "add", h.netns])
            nsx = ["ip", "-n", h.netns]
            sh([*nsx, "link", "set", "lo", "up"])
            ns_links = set(_list_links(h.netns))
            wiring = [(h.mgmt_link, "mgmt0", MGMT_BRIDGE, h.mgmt_address)]
            if h.mig_address is not None:
                wiring.append((h.mig_link, "mig0", MIG_BRIDGE, h.mig_address))
            for outer, inner, bridge, addr in wiring:
                if outer not in links or inner not in ns_links:
                    sh(["ip", "link", "del", outer], check=False)
                    sh(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner,
                        "netns", h.netns])  # fmt: skip
                sh(["ip", "link", "set", outer, "master", bridge, "up"])
                sh([*nsx, "addr", "replace", f"{addr}/{_PREFIXLEN}", "dev", inner])
                sh([*nsx, "link", "set", inner, "up"])

    def _start_sshd(self, h: LabHost, *, restart: bool = False) -> None:
        pid = pid_if_ours(h.sshd_pidfile, str(h.sshd_config))
        if pid is not None and restart:
            terminate({pid})
        elif pid is not None:
            return
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sh(["ip", "netns", "exec", h.netns, SSHD, "-f", str(h.sshd_config),
            "-E", str(h.state_dir / "sshd.log")])  # fmt: skip

    def _start_simulated_vgpu(self, h: LabHost, progress: Progress) -> bool:
        """Mount the simulated GVT-g-like parent at the host's sysfs root; True if (re)mounted."""
        if h.sysfs_root is None or _is_mountpoint(h.sysfs_root / "sys"):
            return False
        progress(f"{h.name}: simulated vGPU parent at {h.sysfs_root}/sys")
        _simsysfs(h, "--daemon")
        return True

    def _write_known_hosts(self) -> None:
        lines = []
        for h in self.hosts:
            key_type, key = Path(f"{h.host_key}.pub").read_text().split()[:2]
            lines.append(f"{h.mgmt_address} {key_type} {key}")
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def _wait_ssh(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for h in self.hosts:
            while not _port_open(h.mgmt_address, 22, 1.0):
                if time.monotonic() > deadline:
                    log = h.state_dir / "sshd.log"
                    tail = log.read_text()[-800:] if log.exists() else "(no sshd log)"
                    raise LabError(f"{h.name}: sshd did not listen on {h.mgmt_address}:22 "
                                   f"within {timeout:g} s; sshd log:\n{tail}")  # fmt: skip
                time.sleep(0.1)

    # -- down ------------------------------------------------------------------------------------

    def down(self, progress: Progress = quiet) -> None:
        """Remove every process, namespace, link and file of the lab. Idempotent."""
        if os.geteuid() != 0:
            raise LabError("taking the local lab down needs root")
        with self._locked():
            namespaces = set(_list_netns())
            for h in self.hosts:
                pid = pid_if_ours(h.sshd_pidfile, str(h.sshd_config))
                pids = set(netns_pids(h.netns)) if h.netns in namespaces else set()
                if pid is not None:
                    pids.add(pid)
                if pids:
                    progress(f"{h.name}: stopping {len(pids)} process(es)")
                    terminate(pids)
            # Sweep by prefix too, so leftovers of an inventory that changed are found.
            for ns in _list_netns():
                if ns.startswith(NETNS_PREFIX):
                    terminate(set(netns_pids(ns)))
                    sh(["ip", "netns", "del", ns], check=False)
            for link in _list_links():
                if link.startswith(LINK_PREFIX):
                    sh(["ip", "link", "del", link], check=False)
            for h in self.hosts:
                if h.sysfs_root is not None:
                    _simsysfs(h, "--stop", check=False)
            # Simulated vGPU daemons of hosts this inventory does not name (a larger lab's).
            terminate({p for p in _all_pids() if "mdevtest.lab.simsysfs" in (c := cmdline(p))
                        and str(self.state_dir) in c})  # fmt: skip
            for mount in _mounts_under(self.state_dir):
                progress(f"unmounting {mount}")
                sh(["umount", "-l", mount], check=False)
            if _mounts_under(self.state_dir):
                raise LabError(f"mounts left under {self.state_dir}; not removing it: "
                               f"{', '.join(_mounts_under(self.state_dir))}")  # fmt: skip
            if self.state_dir.exists():
                shutil.rmtree(self.state_dir)
            for path in (self.key_file, Path(f"{self.key_file}.pub"), self.known_hosts):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the parent, if nothing else lives there
                self.state_dir.parent.rmdir()
            progress("local lab is down")


# -- helpers -------------------------------------------------------------------------------------


#: The MTU the lab's links have (veth and bridge default).
LAB_MTU = 1500


def _repair_link(
    netns: str | None,
    dev: str,
    *,
    up: bool = True,
    mtu: int | None = LAB_MTU,
    master: str | None = None,
    address: str | None = None,
) -> list[str]:
    """Put one link back as the lab made it; what was off, in words (nothing: it was fine)."""
    ip = ["ip", "-n", netns] if netns else ["ip"]
    where = f"{dev}" + (f" (in {netns})" if netns else "")
    shown = sh([*ip, "-j", "link", "show", "dev", dev], check=False)
    try:
        link = json.loads(shown)[0] if shown.strip() else None
    except (ValueError, IndexError):
        link = None
    if not isinstance(link, dict):
        return [f"{where} is missing: run `mdevtest lab down` and `lab up` to rebuild the lab"]
    fixed: list[str] = []
    if master is not None and link.get("master") != master:
        sh([*ip, "link", "set", dev, "master", master])
        fixed.append(f"{where} was not on {master}: attached")
    if mtu is not None and link.get("mtu") != mtu:
        sh([*ip, "link", "set", dev, "mtu", str(mtu)])
        fixed.append(f"{where} had MTU {link.get('mtu')}: set to {mtu}")
    if up and "UP" not in link.get("flags", []):
        sh([*ip, "link", "set", dev, "up"])
        fixed.append(f"{where} was down: set up")
    if address is not None:
        have = sh([*ip, "-j", "addr", "show", "dev", dev], check=False)
        want_ip, _, want_len = address.partition("/")
        present = any(
            a.get("local") == want_ip and str(a.get("prefixlen")) == want_len
            for entry in (json.loads(have) if have.strip() else [])
            for a in entry.get("addr_info", [])
        )
        if not present:
            sh([*ip, "addr", "replace", address, "dev", dev])
            fixed.append(f"{where} had lost {address}: added")
    tc = ["tc", "-n", netns] if netns else ["tc"]
    qdisc = sh([*tc, "-j", "qdisc", "show", "dev", dev, "root"], check=False)
    with contextlib.suppress(ValueError):
        for q in json.loads(qdisc) if qdisc.strip() else []:
            if q.get("root") and q.get("kind") in ("tbf", "netem", "htb", "prio", "red"):
                sh([*tc, "qdisc", "del", "dev", dev, "root"], check=False)
                fixed.append(f"{where} had a {q.get('kind')} qdisc: removed")
    return fixed


def _list_netns() -> list[str]:
    out = sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _list_links(netns: str | None = None) -> list[str]:
    argv = ["ip", "-o", "link", "show"] if netns is None else ["ip", "-n", netns, "-o", "link"]
    out = sh(argv, check=False)
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _simsysfs(h: LabHost, action: str, *, check: bool = True) -> None:
    """Start (``--daemon``) or stop (``--stop``) a host's simulated vGPU parent."""
    sh([sys.executable, "-m", "mdevtest.lab.simsysfs", "--root", str(h.sysfs_root), action,
        "--pidfile", str(h.simsysfs_pidfile)], timeout=60, check=check)  # fmt: skip


def _mounts_under(path: Path) -> list[str]:
    out = sh(["findmnt", "-rn", "-o", "TARGET"], check=False)
    prefix = str(path).rstrip("/") + "/"
    return sorted((m for m in out.split() if m.startswith(prefix)), reverse=True)


def _is_mountpoint(path: Path) -> bool:
    return str(path) in sh(["findmnt", "-rn", "-o", "TARGET"], check=False).split()


def _all_pids() -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]


def _port_open(address: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def started_by(lab: Lab) -> str | None:
    """The run id recorded by the test run that brought the lab up (None: brought up by hand)."""
    try:
        return (lab.state_dir / "started-by-run").read_text().strip() or None
    except OSError:
        return None


def record_started_by(lab: Lab, run_id: str) -> None:
    (lab.state_dir / "started-by-run").write_text(run_id + "\n")
