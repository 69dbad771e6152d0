"""In-guest control: the logical guest that moves between hosts, and its control channel."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mdevtest.checks.observer import HeartbeatObserver
    from mdevtest.guest.qga import GuestAgent
    from mdevtest.qemu.machine import RemoteMachine
    from mdevtest.workloads.base import GuestExec


def synthetic_workload(console: str) -> bool:
    """Whether a console shows the synthetic workload: its ``MDT-READY`` line names a display,
    ``fb=`` (``fb=none`` too: the RAM and DMA probes run without one); other workloads, e.g. the
    nested lab's mtty one, print READY lines of their own."""
    return probe_verdict(console)[0] is True


def probe_verdict(console: str) -> tuple[bool | None, str]:
    """Whether the synthetic workload's probe agent runs, from a guest's console: True; False
    with why not; None with why, before the console has a complete ``MDT-READY`` line."""
    from mdevtest.workloads.synthetic import find_ready

    ready = find_ready(console)
    if ready is not None:
        return True, ""
    if any(line.startswith("MDT-READY ") for line in console.split("\n")[:-1]):
        return False, "its MDT-READY line is another workload's (no fb= field)"
    return None, "no MDT-READY line on its console (another image, or the workload never started)"


@dataclass
class Guest:
    """One guest across migrations: ``machine`` is the QEMU it runs in now.

    A migration moves the guest to another machine (:meth:`moved_to`); the heartbeat observer
    and everything the guest's workload does stay with the guest. ``history`` holds every machine
    it ran in, in order: the guest's console is their serial logs joined (:meth:`console`).
    """

    machine: RemoteMachine
    observer: HeartbeatObserver | None = None
    history: list[RemoteMachine] = field(default_factory=list)
    has_agent: bool = False
    """The guest runs qemu-guest-agent (its image says so): :attr:`agent` reaches it."""
    _agent: GuestAgent | None = field(default=None, init=False, repr=False, compare=False)
    _probe: bool | None = field(default=None, init=False, repr=False, compare=False)
    _no_probe_reason: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.history:
            self.history.append(self.machine)

    def moved_to(self, machine: RemoteMachine) -> None:
        self.machine = machine
        self.history.append(machine)

    @property
    def label(self) -> str:
        return self.machine.label

    @property
    def agent(self) -> GuestAgent | None:
        """The guest's qemu-guest-agent, wherever the guest runs now (None without one): every
        command goes to the current machine's socket, so it survives migrations."""
        if not self.has_agent:
            return None
        if self._agent is None:
            from mdevtest.guest.qga import GuestAgent

            self._agent = GuestAgent(lambda: self.machine)
        return self._agent

    def executor(self) -> GuestExec:
        """How workloads reach this guest: qemu-guest-agent when it has one, else its console
        (the lab's initramfs guest, which runs only its own workload)."""
        from mdevtest.workloads.guestexec import ConsoleGuestExec, QgaGuestExec

        agent = self.agent
        if agent is not None:
            return QgaGuestExec(agent, name=self.label)
        return ConsoleGuestExec(self.console, name=self.label)

    def console(self) -> str:
        """The guest's whole console so far: each machine's serial log, in the order the guest
        ran in them (a destination's log continues where its source's stopped, sometimes in the
        middle of a line). One machine's log alone misses what the guest printed before it came
        there: after a round trip's first leg, the boot and its ``MDT-READY`` line."""
        return "".join(machine.serial_log() for machine in self.history)

    @property
    def probe(self) -> bool:
        """Whether the synthetic workload's probe agent (``VERIFY-*``, ``STATE`` on the control
        channel) is known to run in this guest.

        Decided once, from the ``MDT-READY`` line of the guest's whole console
        (:func:`probe_verdict`), so the answer holds on every later leg wherever the guest runs.
        Until the console has a READY line it is False, and asked again the next time.
        """
        if self._probe is None:
            verdict, self._no_probe_reason = probe_verdict(self.console())
            if verdict is None:
                return False
            self._probe = verdict
        return self._probe

    @property
    def no_probe_reason(self) -> str:
        """Why :attr:`probe` said False (empty after True, or before it was asked)."""
        return "" if self._probe else self._no_probe_reason
