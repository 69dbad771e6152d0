"""Who looks first at a failed migration: the diagnosis, against fake machines and hosts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from mdevtest.diagnose import diagnose, load_error, pin
from mdevtest.errors import ConnectFailed, MigrationFailed, MigrationTimedOut, QmpTimedOut, classify
from mdevtest.inventory import HostPair
from mdevtest.qemu.machine import RemoteMachine
from mdevtest.remote import CommandResult, Remote

ROUTE = HostPair(source="host-a", destination="host-b", migration_address="198.18.0.12")

# What QEMU 10.0's destination printed when mtty refused a mismatched state (nested lab,
# tests/lab/test_nested.py::test_port_count_mismatch_is_refused).
REFUSED = """\
qemu-system-x86_64: vfio: Cannot reset device 6105..., no available reset mechanism.
qemu-system-x86_64: error while loading state section id 2(0000:00:03.0/vfio)
qemu-system-x86_64: load of migration failed: Bad address
"""


@dataclass
class FakeQmp:
    answers: bool = True
    incoming: dict[str, Any] = field(default_factory=lambda: {"status": "active"})
    """The destination's own query-migrate (a kept-up destination's, QEMU 9.1+)."""

    def execute(self, cmd: str, args: Any = None, *, timeout: float = 0) -> Any:
        if not self.answers:
            raise QmpTimedOut("host-b/in1", cmd, "no answer")
        if cmd == "query-migrate":
            return self.incoming
        return {"status": "inmigrate"}


@dataclass
class FakeMachine:
    alive: bool | None  # None: its host is unreachable
    log: str = ""
    qmp: FakeQmp = field(default_factory=FakeQmp)
    label: str = "host-b/in1"

    def is_alive(self) -> bool:
        if self.alive is None:
            raise ConnectFailed("host-b", "cannot reach root@198.18.0.2:22 within 10 s")
        return self.alive

    def log_tail(self, lines: int = 20) -> str:
        return self.log


@dataclass
class FakeRemote:
    ping_rc: int = 0
    reachable: bool = True

    def run(self, argv: list[str], *, timeout: float = 0) -> CommandResult:
        if not self.reachable:
            raise ConnectFailed("host-a", "cannot reach")
        return CommandResult("host-a", " ".join(argv), self.ping_rc, "", "", 0.1)


def run(machine: FakeMachine, remote: FakeRemote | None = None, **kw: Any) -> Any:
    return diagnose(ROUTE, cast(Remote, remote or FakeRemote()), cast(RemoteMachine, machine), **kw)


def test_a_refused_device_state_is_the_products_with_qemus_words() -> None:
    found = run(FakeMachine(alive=False, log=REFUSED))
    assert found.failure_class == "product"
    assert "error while loading state section id 2(0000:00:03.0/vfio)" in found.text()
    assert "load of migration failed: Bad address" in found.text()
    assert load_error("qemu-system-x86_64: terminating on signal 15") is None
    # a stream cut short (the source died): not the device's refusal
    cut = "qemu-system-x86_64: load of migration failed: Input/output error\n"
    assert load_error(cut) is None
    assert load_error("error while loading state section id 2(ram)\n" + cut) is None
    post_load = "error while loading state for instance 0x0 of device '0000:00:03.0/vfio'\n"
    assert load_error(post_load) is not None


def test_a_refused_state_stays_the_products_even_when_the_link_is_down_too() -> None:
    assert run(FakeMachine(alive=False, log=REFUSED), FakeRemote(ping_rc=1)).failure_class == ("product")


def test_a_destination_that_vanished_without_a_word_is_infrastructure() -> None:
    found = run(FakeMachine(alive=False, log="qemu-system-x86_64: -incoming defer\n"))
    assert found.failure_class == "infrastructure"
    assert "is gone" in found.text()


def test_after_a_cancel_for_non_convergence_the_ended_destination_is_expected() -> None:
    """The cancel ends the destination: no infrastructure finding; the product did not converge."""
    found = run(FakeMachine(alive=False), cancelled=True)
    assert found.failure_class == "product"
    assert "ended with the cancel (expected)" in found.text()


def test_unreachable_hosts_are_infrastructure_and_never_raise() -> None:
    found = run(FakeMachine(alive=None), FakeRemote(reachable=False))
    assert found.failure_class == "infrastructure"
    assert "host-b unreachable over SSH" in found.text()
    assert "host-a cannot reach the migration address" in found.text()


def test_a_host_without_ping_is_not_taken_for_unreachable() -> None:
    """The nested lab's hosts have no ping (rc 127): that says nothing about the link."""
    found = run(FakeMachine(alive=False, log=REFUSED), FakeRemote(ping_rc=127))
    assert found.failure_class == "product"
    assert "cannot reach" not in found.text()
    assert "was not checked: host-a has no ping" in found.text()


def test_a_hung_destination_is_infrastructure() -> None:
    found = run(FakeMachine(alive=True, qmp=FakeQmp(answers=False)))
    assert found.failure_class == "infrastructure"
    assert "does not answer QMP" in found.text()


FAILED_LOAD = {"status": "failed", "error-desc": "load of migration failed: Bad address"}


def test_a_kept_up_destination_that_refused_the_state_is_the_products() -> None:
    """exit-on-error off (QEMU 9.1+): the destination stays up; its log and its own
    query-migrate say that the device refused the state."""
    found = run(FakeMachine(alive=True, log=REFUSED, qmp=FakeQmp(incoming=FAILED_LOAD)))
    assert found.failure_class == "product"
    assert "refused the device state: " in found.text()
    assert "section id 2(0000:00:03.0/vfio)" in found.text()
    assert "(load of migration failed: Bad address)" in found.text()


def test_a_kept_up_destination_whose_stream_broke_is_infrastructure() -> None:
    broke = {"status": "failed", "error-desc": "load of migration failed: Input/output error"}
    found = run(FakeMachine(alive=True, log="", qmp=FakeQmp(incoming=broke)))
    assert found.failure_class == "infrastructure"
    assert "no device refused: load of migration failed: Input/output error" in found.text()
    cancelled = run(FakeMachine(alive=True, qmp=FakeQmp(incoming=broke)), cancelled=True)
    assert cancelled.failure_class == "product"
    assert "ended with the cancel (expected)" in cancelled.text()


def test_migrate_incoming_exit_on_error_is_read_from_the_schema() -> None:
    from mdevtest.qemu.caps import QemuCaps

    # query-qmp-schema's layout (masked type names), constructed: the captured 7.2 and the
    # trimmed 8.2/9.1 files have no migrate-incoming; the nested lab checks QEMU 10.0's own
    def schema(*args: str) -> list[dict[str, Any]]:
        return [
            {"name": "migrate-incoming", "meta-type": "command", "arg-type": "17"},
            {"name": "17", "meta-type": "object",
             "members": [{"name": a, "type": "str"} for a in args]},
        ]  # fmt: skip

    version = {"qemu": {"major": 10, "minor": 0, "micro": 0}}
    assert QemuCaps.from_probe(version, "", schema("uri", "exit-on-error")).incoming_exit_on_error
    assert not QemuCaps.from_probe(version, "", schema("uri")).incoming_exit_on_error
    assert not QemuCaps.from_probe(version, "", []).incoming_exit_on_error


def test_pin_puts_the_class_on_any_error_and_in_its_message() -> None:
    for exc in (MigrationFailed("status failed"), MigrationTimedOut("not completed"),
                QmpTimedOut("host-a/vm1", "query-migrate", "no reply")):  # fmt: skip
        pin(exc, run(FakeMachine(alive=False, log=REFUSED)))
        assert classify(exc) == "product"
        assert str(exc).startswith("[product] ")
