"""Host leases over the lab's real SSH: exclusion, release, takeover of a crashed owner's lease."""

from __future__ import annotations

import shlex

import pytest

from mdevtest.lease import LeaseError, LeaseManager
from mdevtest.testbed import Testbed


def test_a_held_host_is_refused_to_another_worker_until_released(lab: Testbed) -> None:
    with LeaseManager(lab.pool, run_id="runA", worker="gw0", wait=1, poll=0.2) as first:
        first.hold(["host-b", "host-a"])
        assert first.held == ["host-a", "host-b"]
        with LeaseManager(lab.pool, run_id="runA", worker="gw1", wait=1, poll=0.2) as second:
            with pytest.raises(LeaseError, match=r"host-a: leased by runA gw0"):
                second.hold(["host-a", "host-b"])
            assert second.held == []
            first.hold([])  # moving on (to no host) frees a and b
            second.hold(["host-a", "host-b"])
            assert second.held == ["host-a", "host-b"]
    lease = f"{lab.inventory.host('host-a').state_dir}/lease"
    assert lab.remote("host-a").run(["test", "-e", lease]).rc != 0, "lease not released"


def test_a_dead_workers_lease_is_taken_over(lab: Testbed) -> None:
    import socket

    remote = lab.remote("host-a")
    lease = f"{remote.host.state_dir}/lease"
    dead = f"crashed gw9 {socket.gethostname()} 999999"  # a pid that does not exist
    remote.check_shell(
        f"mkdir -p {shlex.quote(lease)} && echo {shlex.quote(dead)} > {shlex.quote(lease)}/owner"
    )
    with LeaseManager(lab.pool, run_id="runB", worker="gw0", wait=5, poll=0.2) as manager:
        manager.hold(["host-a"])
        owner = remote.check(["cat", f"{lease}/owner"]).stdout
        assert owner.startswith("runB gw0 ")


def test_an_expired_lease_of_another_controller_is_taken_over(lab: Testbed) -> None:
    remote = lab.remote("host-a")
    lease = shlex.quote(f"{remote.host.state_dir}/lease")
    remote.check_shell(
        f"mkdir -p {lease} && echo 'elsewhere gw0 other-controller 42' > {lease}/owner"
        f" && touch -d '10 minutes ago' {lease}/owner"
    )
    with LeaseManager(lab.pool, run_id="runC", worker="gw0", ttl=60, wait=5, poll=0.2) as manager:
        manager.hold(["host-a"])
    assert remote.run_shell(f"test -e {lease}").rc != 0
