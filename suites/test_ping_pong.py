"""Ping-pong: N round trips between the pair's hosts without rebooting the guest, checked each time."""

from __future__ import annotations

from collections.abc import Callable

import allure
import pytest

from mdevtest.guest import Guest
from mdevtest.inventory import HostPair
from mdevtest.migration_run import MigrationOutcome
from mdevtest.testbed import Testbed


@allure.feature("ping-pong")
def test_ping_pong(
    request: pytest.FixtureRequest,
    lab: Testbed,
    pair: HostPair,
    guest: Guest,
    migrate: Callable[..., MigrationOutcome],
) -> None:
    round_trips = int(request.config.getoption("mdevtest_round_trips"))
    back = lab.reverse(pair)
    for leg in range(2 * round_trips):
        route = pair if leg % 2 == 0 else back
        with allure.step(f"leg {leg + 1}/{2 * round_trips}: {route.id}"):
            outcome = migrate(guest, to=route)
            assert outcome.result is not None
            assert outcome.result.completed
            assert guest.machine is outcome.destination
            outcome.raise_for_checks()
    assert guest.machine.host.name == pair.source, "the guest should be home after whole round trips"
