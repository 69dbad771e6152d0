"""Fault injection on the embedded local lab (root, controller side). Every fault is a context
manager that undoes itself, so a failing test never leaves the lab broken for the next one."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

from mdevtest.errors import LabError
from mdevtest.lab.common import netns_pids, pid_if_ours, sh, terminate
from mdevtest.lab.local import LabHost, LocalLab


def _host(lab: LocalLab, name: str) -> LabHost:
    for h in lab.hosts:
        if h.name == name:
            return h
    raise LabError(f"the local lab has no host {name!r}")


def migration_link(lab: LocalLab, host: str) -> str:
    """The controller-side veth of ``host``'s migration network interface."""
    return _host(lab, host).mig_link


def set_link(lab: LocalLab, host: str, up: bool) -> None:
    sh(["ip", "link", "set", migration_link(lab, host), "up" if up else "down"])


@contextlib.contextmanager
def link_restored(lab: LocalLab, host: str) -> Iterator[None]:
    """Whatever the test does to ``host``'s migration link, it is up again afterwards."""
    try:
        yield
    finally:
        set_link(lab, host, True)


@contextlib.contextmanager
def throttled(lab: LocalLab, host: str, rate: str = "2mbit") -> Iterator[None]:
    """Throttle traffic towards ``host`` on the migration network with a tc token bucket."""
    dev = migration_link(lab, host)
    sh(
        [
            "tc",
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "32kbit",
            "latency",
            "400ms",
        ]
    )
    try:
        yield
    finally:
        sh(["tc", "qdisc", "del", "dev", dev, "root"], check=False)


def kill_host(lab: LocalLab, host: str) -> int:
    """``host`` dies: both its links go down (nothing answers, not even a TCP reset) and every
    process in its namespace is killed (SIGKILL: sshd, QEMU, socat). Returns how many.

    ``lab.up()`` brings it back (it repairs the links and starts sshd again); the simulated
    vGPU's sysfs lives outside the namespace, so mdevs created there survive, as on a host
    whose processes died."""
    h = _host(lab, host)
    for dev in (h.mgmt_link, h.mig_link):
        sh(["ip", "link", "set", dev, "down"], check=False)
    victims = set(netns_pids(h.netns))
    for pid in victims:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(victims)


def restart_sshd(lab: LocalLab, host: str) -> int:
    """Kill ``host``'s sshd and every SSH session in it (connections drop), start it again.

    Returns the number of sshd processes killed. QEMUs and other processes keep running.
    """
    h = _host(lab, host)
    listener = pid_if_ours(h.sshd_pidfile, str(h.sshd_config))
    sessions = {p for p in netns_pids(h.netns) if "sshd" in _comm(p)}
    victims = sessions | ({listener} if listener else set())
    terminate(victims)
    lab._start_sshd(h)
    lab._wait_ssh()
    return len(victims)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""
