"""The embedded local lab's lifecycle: idempotent up, status, a down that leaves nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mdevtest.lab.local import LocalLab
from mdevtest.testbed import Testbed


def _mdevtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mdevtest.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _leftovers() -> list[str]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    found = [line for line in ns.splitlines() if line.startswith("mdt-")]
    found += [line.split(":")[1].strip() for line in links.splitlines() if ": mdt" in line]
    found += [p for p in procs.splitlines() if "/var/lib/mdevtest/local-lab" in p]
    return found


def test_up_twice_status_down_up_again(lab: Testbed) -> None:
    local = LocalLab(lab.inventory)
    lab.pool.close()  # our connections would outlive the sshd we are about to stop
    assert _mdevtest("lab", "up").returncode == 0
    again = _mdevtest("lab", "up")
    assert again.returncode == 0
    assert "already up" in again.stdout
    status = _mdevtest("lab", "status")
    assert status.returncode == 0
    assert "local lab: up" in status.stdout

    down = _mdevtest("lab", "down")
    assert down.returncode == 0, down.stderr
    assert _leftovers() == []
    assert not Path(str(local.state_dir)).exists()
    assert _mdevtest("lab", "status").returncode == 1
    assert _mdevtest("lab", "down").returncode == 0  # twice is fine

    # Leave the lab as the session found it, for the tests after this one.
    assert local.up() is True
    assert lab.remote("host-a").check(["true"]).rc == 0  # new host keys, reconnected


def test_up_undoes_faults_a_killed_run_left(lab: Testbed) -> None:
    """A fault run killed by SIGTERM never ran its cleanup, and someone fiddled inside the
    namespaces: the next `lab up` checks the lab's own state and repairs it, saying what."""
    from mdevtest.lab import faults
    from mdevtest.lab.common import sh

    local = LocalLab(lab.inventory)
    a, b = local.hosts[:2]
    faults.set_link(local, a.name, False)
    throttle = faults.throttled(local, b.name)
    throttle.__enter__()  # entered, never exited: as if the run had been killed
    sh(["ip", "-n", b.netns, "link", "set", "mig0", "mtu", "1280"])
    sh(["ip", "-n", a.netns, "link", "set", "mig0", "down"])
    assert b.mig_address is not None
    sh(["ip", "-n", b.netns, "addr", "del", f"{b.mig_address}/24", "dev", "mig0"])
    said: list[str] = []
    local.up(said.append, build_image=False)
    text = "\n".join(said)
    assert "local lab is already up; checking it" in text
    assert f"repaired: {a.name}: {a.mig_link} was down: set up" in text
    assert f"repaired: {b.name}: {b.mig_link} had a tbf qdisc: removed" in text
    assert f"repaired: {b.name}: mig0 (in {b.netns}) had MTU 1280: set to 1500" in text
    assert f"repaired: {a.name}: mig0 (in {a.netns}) was down: set up" in text
    assert f"repaired: {b.name}: mig0 (in {b.netns}) had lost {b.mig_address}/24: added" in text
    assert "lo (in" not in text, text  # the loopback keeps its own MTU (65536): nothing to repair
    assert local.repair() == []  # nothing left to repair
    for h in (a, b):
        lo = json.loads(sh(["ip", "-n", h.netns, "-j", "link", "show", "lo"]))[0]
        assert lo["mtu"] == 65536, lo
    # the repaired migration network carries traffic again, both ways
    for h, peer in ((a, b), (b, a)):
        sh(["ip", "netns", "exec", h.netns, "ping", "-c", "1", "-W", "2", str(peer.mig_address)])


def test_up_brings_a_killed_host_back(lab: Testbed) -> None:
    """A host whose links went down and whose processes all died: sshd again, links up."""
    from mdevtest.lab import faults

    local = LocalLab(lab.inventory)
    host = local.hosts[1]
    assert faults.kill_host(local, host.name) >= 1  # at least its sshd
    assert not local.status().up
    said: list[str] = []
    local.up(said.append, build_image=False)
    assert local.status().up, said
    assert "bringing the local lab up" in said, said
    lab.pool.close()  # our connections to it died with it
    assert lab.remote(host.name).check(["true"], timeout=30).rc == 0
