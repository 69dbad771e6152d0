"""A guest run by libvirtd on a lab host: :class:`LibvirtMachine`.

It is a :class:`~mdevtest.qemu.machine.RemoteMachine` to everything else (checks, guest agent,
console, VNC, reports): the same machine directory with the same sockets and logs, the same
``qmp.execute`` (through libvirt's ``qemu-monitor-command``, :class:`LibvirtMonitor`), so the
suites and checks run unchanged. What differs:

* the guest is a *transient* libvirt domain (``virDomainCreateXML``) named after the machine's tag:
  nothing stays defined on the host when it is destroyed, and the reaper finds what a dead run
  left by that name;
* a migration destination is not started by mdevtest: libvirt starts it as part of the migration
  (:mod:`mdevtest.virt.migration`); :meth:`LibvirtMachine.start` only prepares its directory, and
  :meth:`LibvirtMachine.adopt` takes the domain over once it runs there;
* the QEMU log is libvirt's (``/var/log/libvirt/qemu/<domain>.log``) and the pidfile libvirt's
  (``/run/libvirt/qemu/<domain>.pid``);
* shutting down is ``virDomainDestroy``.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mdevtest.errors import MachineError, MdevtestError, QmpError, QmpTimedOut
from mdevtest.qemu.cmdline import MachinePaths, MachineSpec, prepare_script
from mdevtest.qemu.machine import RemoteMachine
from mdevtest.qemu.qmp import QmpEvent, QmpSession
from mdevtest.remote import Remote
from mdevtest.virt.connection import LibvirtLink, error_text, libvirt_module
from mdevtest.virt.domain import USER_ALIAS, domain_xml

LIBVIRT_LOG_DIR = "/var/log/libvirt/qemu"
LIBVIRT_RUN_DIR = "/run/libvirt/qemu"


@dataclass(frozen=True)
class LibvirtPaths(MachinePaths):
    """The machine's directory, with libvirt's own QEMU log and pidfile of ``domain``."""

    domain: str = ""

    @property
    def qemu_log(self) -> str:
        return f"{LIBVIRT_LOG_DIR}/{self.domain}.log"

    @property
    def pidfile(self) -> str:
        return f"{LIBVIRT_RUN_DIR}/{self.domain}.pid"


class LibvirtMonitor(QmpSession):
    """QMP through libvirt: commands by ``virDomainQemuMonitorCommand``, QEMU's events by
    ``virConnectDomainQemuMonitorEventRegister`` (kept like :class:`QmpSession` keeps them).

    libvirt serialises monitor commands with its own jobs: one sent during a migration job
    waits for the job (the timeout then says so); use job statistics meanwhile."""

    def __init__(self, name: str, link: LibvirtLink, domain: Any, *, timeout: float = 30.0):
        # QmpSession's event list and condition are reused (events, event_count, wait_event).
        self.name = name
        self.timeout = timeout
        self._events: list[QmpEvent] = []
        self._cond = threading.Condition()
        self._closed = False
        self._link = link
        self._domain = domain
        import libvirt_qemu

        self._qemu = libvirt_qemu
        self._callback: int | None = link.call(
            libvirt_qemu.qemuMonitorEventRegister,
            link.conn,
            domain,
            None,
            self._on_event,
            None,
            0,
            what="register for QEMU events",
        )

    def _on_event(
        self, _conn: Any, _dom: Any, event: str, seconds: int, micros: int, details: Any, _o: Any
    ) -> None:
        data = json.loads(details) if isinstance(details, str) and details else {}
        with self._cond:
            self._events.append(QmpEvent(event, data, seconds + micros / 1e6, time.monotonic()))
            self._cond.notify_all()

    def execute(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        oob: bool = False,
    ) -> Any:
        if self._closed:
            raise QmpError(self.name, command, "session is closed")
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = dict(arguments)
        libvirt = libvirt_module()
        try:
            raw = self._link.call(
                self._qemu.qemuMonitorCommand,
                self._domain,
                json.dumps(message),
                0,
                what=f"qemu-monitor-command {command}",
                timeout=self.timeout if timeout is None else timeout,
            )
        except MachineError as exc:
            cause = exc.__cause__
            if isinstance(cause, libvirt.libvirtError):
                raise QmpError(self.name, command, error_text(cause)) from exc
            raise QmpTimedOut(self.name, command, str(exc)) from exc
        reply = json.loads(raw)
        if "error" in reply:
            error = reply["error"]
            raise QmpError(self.name, command, f"{error.get('class')}: {error.get('desc')}")
        return reply.get("return")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._callback is not None:
            with contextlib.suppress(Exception):  # the connection or the domain is gone
                self._qemu.qemuMonitorEventDeregister(self._link.conn, self._callback)
            self._callback = None


class LibvirtMachine(RemoteMachine):
    """One guest as a transient libvirt domain on one host (see the module doc)."""

    def __init__(
        self,
        remote: Remote,
        spec: MachineSpec,
        *,
        run_id: str,
        link: Callable[[], LibvirtLink],
        domain_name: str | None = None,
        domain_uuid: str | None = None,
    ) -> None:
        super().__init__(remote, spec, run_id=run_id)
        self.domain_name = domain_name or self.tag
        self.domain_uuid = domain_uuid or str(uuidlib.uuid4())
        self.paths = LibvirtPaths(self.paths.root, self.domain_name)
        self.xml_path = f"{self.paths.root}/domain.xml"  # for the report and a rerun by hand
        self._link_for = link
        self.domain: Any = None

    @property
    def link(self) -> LibvirtLink:
        return self._link_for()

    @property
    def argv(self) -> list[str]:
        """How to start it by hand: the domain XML is in the machine's directory."""
        return ["virsh", "-c", "qemu:///system", "create", self.xml_path]

    def xml(self) -> str:
        """The domain XML, this machine's paths and vGPU (a destination's differs from its
        source's in those only)."""
        return domain_xml(
            self.spec, self.paths, name=self.domain_name, uuid=self.domain_uuid,
            emulator=self.host.qemu_binary,
        )  # fmt: skip

    def start(self, *, timeout: float = 30.0) -> RemoteMachine:
        """Create the domain (a destination: only its directory and XML; libvirt starts it
        during the migration). libvirt's refusal comes with the QEMU log's tail."""
        root = shlex.quote(self.paths.root)
        prepare = prepare_script(self.spec, self.paths)
        self.remote.check_shell(
            f"mkdir -p {root} && cd {root}" + (f" && {prepare}" if prepare else ""), timeout=timeout
        )
        xml = self.xml()
        self.remote.write_text(self.xml_path, xml, timeout=timeout)
        if self.spec.incoming is not None:
            return self
        self.started_at = time.monotonic()
        try:
            domain = self.link.call(self.link.conn.createXML, xml, 0, what="create", timeout=timeout)
        except MachineError as exc:
            raise MachineError(
                f"{self.label}: libvirt did not start the domain {self.domain_name}: {exc}\n"
                f"  QEMU log: {self.log_tail().strip()}\n  domain XML: {self.xml_path}"
            ) from exc
        self.attach(domain, timeout=timeout)
        return self

    def attach(self, domain: Any, *, timeout: float = 30.0) -> None:
        """Take ``domain`` (running here) as this machine: its pid and its monitor."""
        self.domain = domain
        self.pid = self._read_pid(timeout)
        self._qmp = LibvirtMonitor(self.label, self.link, domain, timeout=timeout)
        if self.started_at is None:
            self.started_at = time.monotonic()

    def adopt(self, *, timeout: float = 30.0) -> None:
        """The destination after a migration: libvirt started the domain here."""
        link = self.link
        domain = link.call(link.conn.lookupByName, self.domain_name, what="look up", timeout=timeout)
        self.attach(domain, timeout=timeout)

    def _read_pid(self, timeout: float) -> int:
        res = self.remote.run(["cat", self.paths.pidfile], timeout=timeout)
        text = res.stdout.strip()
        if not text.isdigit():
            raise MachineError(f"{self.label}: libvirt's pidfile {self.paths.pidfile} is empty")
        return int(text)

    def connect_qmp(self, *, timeout: float = 30.0, attempts: int = 3) -> QmpSession:
        if self.domain is None:
            raise MachineError(f"{self.label}: the domain does not run here (yet)")
        self._qmp = LibvirtMonitor(self.label, self.link, self.domain, timeout=timeout)
        return self._qmp

    def status(self) -> str:
        """QEMU's run state; for a source libvirt ended after the migration completed (it does
        not keep a ``postmigrate`` QEMU around), ``postmigrate`` as QEMU's own events showed it
        (MIGRATION ``completed``, then libvirt's SHUTDOWN)."""
        try:
            return super().status()
        except (QmpError, MachineError):
            events = self._qmp.events if self._qmp is not None else []
            done = [e for e in events if e.name == "MIGRATION" and e.data.get("status") == "completed"]
            if done and not self.is_alive():
                return "postmigrate"
            raise

    def screendump_png(self, *, timeout: float = 30.0) -> bytes:
        if self.spec.display_device is None:
            return super().screendump_png(timeout=timeout)
        # the vGPU's console has libvirt's user alias as its QEMU id
        plain = self.spec
        assert plain.display_device is not None
        try:
            from dataclasses import replace

            self.spec = replace(plain, display_device=USER_ALIAS + plain.display_device)
            return super().screendump_png(timeout=timeout)
        finally:
            self.spec = plain

    def shutdown(self, *, timeout: float = 10.0) -> None:
        """``virDomainDestroy`` (the domain is transient: gone with it); a QEMU libvirt could not
        stop is killed by pid. Idempotent; never raises for a dead host or domain."""
        self._quit_requested = True
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self.domain is not None:
            with contextlib.suppress(MdevtestError):
                self.link.call(self.domain.destroy, what="destroy", timeout=timeout + 20)
            self.domain = None
        super().shutdown(timeout=timeout)  # the pid, if libvirt left it running


def reap_domains(remote: Remote, *, keep_run: str | None = None, timeout: float = 60.0) -> list[str]:
    """Destroy the libvirt domains an earlier run left on this host (named ``mdevtest-<run>-*``,
    the current run's spared) through ``virsh`` on the host; nothing when libvirtd is not there."""
    from mdevtest.qemu.machine import TAG_PREFIX

    sock = shlex.quote(remote.host.libvirt_socket)
    uri = shlex.quote(f"qemu+unix:///system?socket={remote.host.libvirt_socket}")
    keep = shlex.quote(f"{TAG_PREFIX}{keep_run}-") if keep_run else "''"
    script = f"""
[ -S {sock} ] && command -v virsh >/dev/null || exit 0
for d in $(timeout 30 virsh -q -c {uri} list --name 2>/dev/null); do
  case "$d" in {TAG_PREFIX}*) ;; *) continue;; esac
  [ -n {keep} ] && case "$d" in {keep}*) continue;; esac
  timeout 30 virsh -q -c {uri} destroy "$d" >/dev/null 2>&1 && echo "domain $d"
done
exit 0
"""
    return [line for line in remote.check_shell(script, timeout=timeout).stdout.splitlines() if line]
