"""A per-test deadline: when it passes, record what the lab looks like, then fail the test.

Every remote and QMP call is bounded already; the deadline bounds a whole test (a migration that
crawls, a guest that boots for ever). On expiry a SIGALRM handler in the main thread snapshots
each live machine (``query-status``, ``query-migrate``, its process, the tail of its logs) into
the report, then raises :class:`DeadlineExceeded`, so the test fails and its teardown still runs
(QEMUs stopped, mdevs removed, leases released).
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from mdevtest.errors import INFRASTRUCTURE, FailureClass, MdevtestError
from mdevtest.qemu.machine import RemoteMachine


class DeadlineExceeded(MdevtestError):
    """The test ran past its overall deadline (state recorded in the report)."""

    failure_class: FailureClass | None = INFRASTRUCTURE


def snapshot(machines: list[RemoteMachine]) -> dict[str, Any]:
    """What each machine is doing, as far as it can be read (never raises)."""
    state: dict[str, Any] = {}
    for machine in machines:
        entry: dict[str, Any] = {"pid": machine.pid, "dir": machine.paths.root}
        probes: dict[str, Callable[[], Any]] = {
            "status": machine.status,
            "query-migrate": functools.partial(machine.qmp.execute, "query-migrate", timeout=5),
            "alive": machine.is_alive,
            "qemu log": functools.partial(machine.log_tail, 30),
            "console": machine.serial_log,
        }
        for what, probe in probes.items():
            try:
                entry[what] = probe()
            except (MdevtestError, OSError) as exc:
                entry[what] = f"unreadable: {exc}"
        if isinstance(entry.get("console"), str):
            entry["console"] = entry["console"][-2000:]
        state[machine.label] = entry
    return state


@contextlib.contextmanager
def deadline(
    seconds: float,
    machines: Callable[[], list[RemoteMachine]],
    record: Callable[[str], None],
    *,
    what: str = "test",
) -> Iterator[None]:
    """Fail with :class:`DeadlineExceeded` after ``seconds`` (0 disables), recording state first."""
    if seconds <= 0:
        yield
        return

    def _expired(signum: int, frame: FrameType | None) -> None:
        record(json.dumps(snapshot(machines()), indent=2, default=str))
        raise DeadlineExceeded(
            f"{what} exceeded its deadline of {seconds:g} s; lab state is in the report"
        )

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
