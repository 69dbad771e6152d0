"""The embedded local lab's lifecycle: idempotent up, status, a down that leaves nothing."""

from __future__ import annotations

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
    """A fault run killed by SIGTERM never ran its cleanup: the next `lab up` undoes it."""
    from mdevtest.lab import faults

    local = LocalLab(lab.inventory)
    host_a, host_b = (h.name for h in local.hosts[:2])
    faults.set_link(local, host_a, False)
    throttle = faults.throttled(local, host_b)
    throttle.__enter__()  # entered, never exited: as if the run had been killed
    undone: list[str] = []
    local.up(undone.append, build_image=False)
    assert f"undid a fault a killed run left: {host_a}: migration link " in "\n".join(undone)
    assert any(f"{host_b}: tbf qdisc removed" in line for line in undone), undone
    assert local.clear_faults() == []  # nothing left to undo
