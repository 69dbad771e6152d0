"""A QEMU process on a lab host, driven over SSH and QMP.

Lifecycle: :meth:`RemoteMachine.start` launches QEMU detached (``setsid``) with a pidfile, waits for its
QMP socket and connects; :meth:`RemoteMachine.shutdown` asks QMP ``quit`` (recording that we asked, so
the EOF is not a crash), waits a bounded time, then kills by pid. Every machine lives in its own
directory ``<host state>/vms/<name>/`` (QMP and console sockets, serial log, QEMU log, pidfile), and its
``-name`` carries the tag ``mdevtest-<run>-<vm>`` so :func:`reap` can find what a crashed run left.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from types import TracebackType
from typing import Any

from mdevtest.errors import CommandFailed, MachineError, MdevtestError, QmpError, QmpTimedOut
from mdevtest.inventory import Host
from mdevtest.qemu.cmdline import MachinePaths, MachineSpec, build_argv, prepare_script
from mdevtest.qemu.qmp import QmpSession
from mdevtest.remote import Remote, UnixSocketBridge, quote_argv

TAG_PREFIX = "mdevtest-"


def vms_dir(host: Host) -> str:
    return f"{host.state_dir}/vms"


def alive_test(pid: int | str) -> str:
    """A shell test that is true while ``pid`` runs (a zombie counts as gone)."""
    return f"[ -d /proc/{pid} ] && ! grep -q '^State:.*Z' /proc/{pid}/status 2>/dev/null"


def process_alive(remote: Remote, pid: int) -> bool:
    return remote.run_shell(alive_test(pid), timeout=10).rc == 0


class RemoteMachine:
    """One QEMU on one host. Use as a context manager so it is always shut down."""

    def __init__(self, remote: Remote, spec: MachineSpec, *, run_id: str) -> None:
        self.remote = remote
        self.host = remote.host
        self.spec = spec
        self.tag = f"{TAG_PREFIX}{run_id}-{spec.name}"
        self.paths = MachinePaths(f"{vms_dir(self.host)}/{self.tag}")
        self.label = f"{self.host.name}/{spec.name}"
        self.pid: int | None = None
        self._bridge: UnixSocketBridge | None = None
        self._qmp: QmpSession | None = None
        self._quit_requested = False
        self._initial_params: dict[str, Any] | None = None
        self.reconnects = 0
        self.started_at: float | None = None
        self.os_info: dict[str, Any] | None = None  # guest-get-osinfo, for an agent's guest

    # -- start -----------------------------------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        return build_argv(self.host.qemu_binary, self.spec, self.paths, self.tag)

    def start(self, *, timeout: float = 30.0) -> RemoteMachine:
        """Launch QEMU and connect QMP. On failure the QEMU log's tail is in the error."""
        root = shlex.quote(self.paths.root)
        prepare = prepare_script(self.spec, self.paths)
        if prepare:
            try:
                self.remote.check_shell(f"mkdir -p {root} && cd {root} && {prepare}", timeout=timeout)
            except CommandFailed as exc:
                raise MachineError(
                    f"{self.label}: cannot prepare the machine's disk overlay / UEFI variables: "
                    f"{exc.stderr.strip()[-500:] or exc}; the host needs qemu-img (qemu-utils) "
                    "and, for UEFI, the host's ovmf_code/ovmf_vars files (package ovmf)"
                ) from exc
        script = (
            f"mkdir -p {root} && cd {root} && "
            f"setsid -f {quote_argv(self.argv)} </dev/null >>{shlex.quote(self.paths.qemu_log)} 2>&1"
        )
        self.remote.check_shell(script, timeout=timeout)
        self.started_at = time.monotonic()
        deadline = time.monotonic() + timeout
        while True:
            probe = self.remote.run_shell(
                f"cat {shlex.quote(self.paths.pidfile)} 2>/dev/null; "
                f"test -S {shlex.quote(self.paths.qmp)} && echo QMP",
                timeout=timeout,
            )
            words = probe.stdout.split()
            if "QMP" in words and words[0].isdigit():
                self.pid = int(words[0])
                break
            if words and not self._alive_pidfile():
                raise MachineError(
                    f"{self.label}: QEMU exited while starting: {self.log_tail().strip()}\n"
                    f"  command: {quote_argv(self.argv)}"
                )
            if time.monotonic() > deadline:
                raise MachineError(
                    f"{self.label}: QEMU did not come up within {timeout:g} s\n"
                    f"  command: {quote_argv(self.argv)}\n  log: {self.log_tail()}"
                )
            time.sleep(0.1)
        try:
            self.connect_qmp(timeout=timeout)
        except MachineError as exc:
            # QEMU makes its QMP socket and pidfile before it realizes the devices: one that
            # then refuses a device (an option, a migration blocker with enable-migration=on)
            # is gone by the time QMP is tried. Its own words are in its log.
            if not self._alive_pidfile():
                raise MachineError(
                    f"{self.label}: QEMU exited while starting: {self.log_tail().strip()}\n"
                    f"  command: {quote_argv(self.argv)}"
                ) from exc
            raise
        return self

    def _alive_pidfile(self) -> bool:
        res = self.remote.run_shell(
            f"kill -0 $(cat {shlex.quote(self.paths.pidfile)} 2>/dev/null) 2>/dev/null", timeout=10
        )
        return res.rc == 0

    def connect_qmp(self, *, timeout: float = 30.0, attempts: int = 3) -> QmpSession:
        """Open QMP through a socket bridge. A session that fails to establish (seen once on a
        just-booted nested host: a first message that was not QEMU's greeting) is retried on a
        new bridge, ``attempts`` times in all."""
        for attempt in range(1, attempts + 1):
            self._bridge = self.remote.open_unix_socket(self.paths.qmp, timeout=timeout)
            try:
                self._qmp = QmpSession(self.label, self._bridge.sock, timeout=timeout)
            except QmpError as exc:
                why = self._bridge.stderr()
                self._bridge.close()
                self._bridge = None
                if attempt == attempts or isinstance(exc, QmpTimedOut):
                    raise MachineError(f"{self.label}: cannot talk QMP: {exc} {why}".strip()) from exc
                time.sleep(0.5 * attempt)
                continue
            return self._qmp
        raise AssertionError("unreachable")

    @property
    def qmp(self) -> QmpSession:
        """The QMP session; re-opened if the SSH connection under it died (an sshd restart).

        Events QEMU sent while the session was down are lost; the reconnect is logged as an event.
        """
        if self._qmp is None:
            raise MachineError(f"{self.label}: QMP is not connected (machine not started?)")
        if self._bridge is not None and not self._bridge.alive and not self._quit_requested:
            self._qmp.close()
            self._bridge.close()
            self._qmp, self._bridge = None, None
            self.reconnects += 1
            return self.connect_qmp()
        return self._qmp

    # -- queries ---------------------------------------------------------------------------------

    def status(self) -> str:
        """The run state from ``query-status`` (running, inmigrate, postmigrate, paused...)."""
        reply: dict[str, Any] = self.qmp.execute("query-status")
        return str(reply["status"])

    def initial_migration_parameters(self) -> dict[str, Any]:
        """``query-migrate-parameters`` as this QEMU first answered it (remembered)."""
        if self._initial_params is None:
            self._initial_params = dict(self.qmp.execute("query-migrate-parameters"))
        return dict(self._initial_params)

    def is_alive(self) -> bool:
        return self.pid is not None and process_alive(self.remote, self.pid)

    def serial_log(self) -> str:
        return self.remote.run(["cat", self.paths.serial_log], timeout=30).stdout

    def log_tail(self, lines: int = 20) -> str:
        res = self.remote.run(["tail", "-n", str(lines), self.paths.qemu_log], timeout=10)
        return res.stdout.strip() or "(empty)"

    def screendump_png(self, *, timeout: float = 30.0) -> bytes:
        """A PNG of the display, taken by QMP ``screendump`` on the host and fetched."""
        path = f"{self.paths.root}/screen-{time.monotonic_ns()}.png"
        args: dict[str, str] = {"filename": path, "format": "png"}
        if self.spec.display_device is not None:  # the vGPU's console, not console 0
            args["device"] = self.spec.display_device
        self.qmp.execute("screendump", args, timeout=timeout)
        try:
            with self.remote._sftp(timeout) as sftp, sftp.open(path, "rb") as fh:
                data: bytes = fh.read()
        finally:
            self.remote.run(["rm", "-f", path], timeout=10)
        return data

    # -- shutdown --------------------------------------------------------------------------------

    def shutdown(self, *, timeout: float = 10.0) -> None:
        """Soft (QMP quit), then hard (SIGKILL by pid). Idempotent; never raises for a dead QEMU."""
        if self._qmp is not None:
            self._quit_requested = True
            # QEMU may close the monitor while answering quit, or be gone already.
            with contextlib.suppress(QmpError):
                self._qmp.execute("quit", timeout=timeout)
            self._qmp.close()
            self._qmp = None
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None
        if self.pid is not None:
            pid = str(self.pid)
            script = (
                f"for i in $(seq 50); do {alive_test(pid)} || exit 0; sleep 0.1; done; "
                f"kill -9 {pid} 2>/dev/null; exit 0"
            )
            # An unreachable host is left to `mdevtest lab reap` / the next run's reaper.
            with contextlib.suppress(MdevtestError):
                self.remote.run_shell(script, timeout=timeout + 10)
            self.pid = None

    def remove_files(self) -> None:
        self.remote.run(["rm", "-rf", self.paths.root], timeout=30)

    def __enter__(self) -> RemoteMachine:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()


def reap(remote: Remote, *, keep_run: str | None = None, timeout: float = 60.0) -> list[str]:
    """Kill QEMUs an earlier run left on this host and remove their directories.

    Only machines whose directory is under our ``vms`` dir and whose process command line carries our
    tag are touched. ``keep_run`` spares the current run. Returns the tags reaped.
    """
    base = shlex.quote(vms_dir(remote.host))
    skip = (
        f'case "$d" in {shlex.quote(f"{TAG_PREFIX}{keep_run}-")}*) continue;; esac' if keep_run else ""
    )
    script = f"""
cd {base} 2>/dev/null || exit 0
for d in {TAG_PREFIX}*; do
  [ -d "$d" ] || continue
  {skip}
  pid=$(cat "$d/qemu.pid" 2>/dev/null)
  if [ -n "$pid" ] && tr '\\0' ' ' </proc/$pid/cmdline 2>/dev/null | grep -q -- "-name $d"; then
    kill -9 "$pid" 2>/dev/null
    for i in $(seq 50); do {alive_test("$pid")} || break; sleep 0.1; done
  fi
  rm -rf "$d"
  echo "$d"
done
"""
    res = remote.check_shell(script, timeout=timeout)
    return res.stdout.split()
