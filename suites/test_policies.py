"""Migration policies: the same migration under each policy completes, within the limits, intact.

One test per policy (``@pytest.mark.policy``), so the dashboard shows a row per policy and pair:
``test_migration_under_policy[host-a->host-b-GVTg_V5_4-multifd]``. A capability the source's QEMU lacks
(``switchover-ack`` before QEMU 8.0) skips that row, naming the QEMU version. Each migration's
policy is attached to its Allure step and recorded in ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Callable

import allure
import pytest

from mdevtest.guest import Guest
from mdevtest.migration import MigrationPolicy
from mdevtest.migration_run import MigrationOutcome


def _policy(name: str, **options: object) -> object:
    return pytest.param(name, marks=pytest.mark.policy(**options), id=name)


POLICIES = [
    _policy("downtime-limit-100ms", downtime_limit_ms=100),
    _policy("max-bandwidth-256MiB", max_bandwidth_mib=256),
    _policy("multifd-2", multifd=True, multifd_channels=2),
    _policy("switchover-ack-on", switchover_ack=True),
    _policy("switchover-ack-off", switchover_ack=False),
    _policy("auto-converge", auto_converge=True),
]


@allure.feature("migration policies")
@pytest.mark.parametrize("policy_name", POLICIES)
def test_migration_under_policy(
    policy_name: str,
    guest: Guest,
    migration_policy: MigrationPolicy,
    migrate: Callable[..., MigrationOutcome],
) -> None:
    allure.dynamic.parameter("policy", policy_name)
    outcome = migrate(guest)  # with migration_policy: the marker's options, the inventory's timeout
    result = outcome.result
    assert result is not None
    assert result.completed, f"{policy_name}: migration status {result.status}: {result.error_desc}"
    assert outcome.destination.status() == "running"
    # the policy really was applied: capabilities are set on both sides, so the destination shows them
    states = {
        c["capability"]: c["state"]
        for c in outcome.destination.qmp.execute("query-migrate-capabilities")
    }
    for capability, wanted in migration_policy.capabilities:
        assert states.get(capability, False) == wanted, (
            f"{capability} is not {wanted} on the destination"
        )
    outcome.raise_for_checks()
