"""In-guest control: the logical guest that moves between hosts, and its control channel."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mdevtest.checks.observer import HeartbeatObserver
    from mdevtest.qemu.machine import RemoteMachine


@dataclass
class Guest:
    """One guest across migrations: ``machine`` is the QEMU it runs in now.

    A migration moves the guest to another machine (:meth:`moved_to`); the heartbeat observer
    and everything the guest's workload does stay with the guest.
    """

    machine: RemoteMachine
    observer: HeartbeatObserver | None = None
    history: list[RemoteMachine] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.history:
            self.history.append(self.machine)

    def moved_to(self, machine: RemoteMachine) -> None:
        self.machine = machine
        self.history.append(machine)

    @property
    def label(self) -> str:
        return self.machine.label
