"""The per-test deadline: state recorded, then the test fails (and only after the deadline)."""

from __future__ import annotations

import time

import pytest

from mdevtest.plugin.watchdog import DeadlineExceeded, deadline


def test_deadline_records_state_then_fails() -> None:
    recorded: list[str] = []
    with (
        pytest.raises(DeadlineExceeded, match=r"exceeded its deadline of 0\.2 s"),
        deadline(0.2, lambda: [], recorded.append, what="t"),
    ):
        time.sleep(5)
    assert recorded == ["{}"]


def test_no_alarm_after_the_block() -> None:
    with deadline(0.2, lambda: [], lambda _t: None):
        pass
    time.sleep(0.3)  # would raise here if the timer were still armed


def test_zero_disables_the_deadline() -> None:
    with deadline(0, lambda: [], lambda _t: None):
        time.sleep(0.05)
