"""Ways to reach a guest for its workloads: qemu-guest-agent, a host command runner, the console.

- :class:`QgaGuestExec` speaks the guest agent's commands (``guest-exec``, ``guest-exec-status``,
  ``guest-file-open/read/seek/close``) through any transport: it takes a callable
  ``qga(command, arguments, timeout)`` that returns the reply's ``return`` member (and raises on
  an ``error`` reply), so the same code runs over a virtio-serial socket bridged by SSH, a local
  socket or a test fake. Linux and Windows guests.
- :class:`ShellGuestExec` runs over an :class:`~mdevtest.localexec.Executor` whose commands run
  *in the guest* (a :class:`~mdevtest.remote.Remote` to a guest with sshd; a
  :class:`~mdevtest.localexec.LocalExecutor` in the framework's own tests). POSIX guests.
- :class:`ConsoleGuestExec` is a guest seen only through its serial console log (the lab's
  synthetic guest): no commands, only :meth:`~ConsoleGuestExec.console_text`.

qemu-guest-agent returns a process's output only once it has exited (``out-data`` of
``guest-exec-status``), so a long-running command's output is redirected to a log file in the
guest and read from there with the file commands; on Windows no shell is put in between and a
spawned process streams no output (its results come from a file).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mdevtest.errors import CommandTimedOut
from mdevtest.localexec import Executor
from mdevtest.remote import quote_argv
from mdevtest.workloads.base import (
    ExecResult,
    GuestExec,
    GuestExecError,
    GuestOS,
    GuestProcess,
    ProcessOutput,
)

__all__ = [
    "ConsoleGuestExec",
    "ConsoleReader",
    "QgaCall",
    "QgaGuestExec",
    "ShellGuestExec",
]

#: ``qga(command, arguments, timeout) -> reply["return"]``; raises on an ``error`` reply.
QgaCall = Callable[[str, Mapping[str, Any] | None, float], Any]

#: Largest guest file :meth:`read_file` returns (a result file, not a disk image).
MAX_FILE_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 1024 * 1024

# Spawned Linux commands: the shell replaces itself with the command, so the pid guest-exec
# returns is the command's; output appends to the log created beforehand.
_LINUX_SPAWN = 'exec "$@" >>"$0" 2>&1 </dev/null'
_KILL = 'kill -s "$1" "$2" 2>/dev/null; true'


@dataclass
class _Tracked:
    """What the agent side knows of one spawned process."""

    offset: int = 0
    exited: bool = False
    rc: int | None = None
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )


@dataclass(frozen=True)
class _Status:
    exited: bool
    rc: int | None
    out: bytes
    err: bytes
    truncated: bool


class QgaGuestExec:
    """:class:`~mdevtest.workloads.base.GuestExec` over qemu-guest-agent.

    ``call_timeout`` bounds each agent command; ``kill_grace_s`` is how long a process has to
    exit after SIGTERM (Linux) before SIGKILL. ``sleep`` and ``clock`` are for tests.
    """

    def __init__(
        self,
        qga: QgaCall,
        *,
        name: str = "guest",
        os: GuestOS = "linux",
        log_dir: str | None = None,
        call_timeout: float = 10.0,
        kill_grace_s: float = 5.0,
        poll_s: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._qga = qga
        self._name = name
        self._os: GuestOS = os
        self.log_dir = log_dir or ("C:\\Windows\\Temp" if os == "windows" else "/tmp")
        self.call_timeout = call_timeout
        self.kill_grace_s = kill_grace_s
        self.poll_s = poll_s
        self._sleep = sleep
        self._clock = clock
        self._procs: dict[int, _Tracked] = {}

    def __repr__(self) -> str:
        return f"QgaGuestExec({self._name!r}, os={self._os!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def os(self) -> GuestOS:
        return self._os

    # -- agent commands ---------------------------------------------------------------------------

    def _call(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        return self._qga(command, arguments, self.call_timeout)

    def _exec(self, argv: Sequence[str], *, capture: bool) -> int:
        args = [str(a) for a in argv]
        if not args:
            raise ValueError("empty argument vector")
        reply = self._call("guest-exec", {"path": args[0], "arg": args[1:], "capture-output": capture})
        pid = reply.get("pid") if isinstance(reply, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise GuestExecError(
                f"{self._name}: guest-exec of {quote_argv(args)} returned {reply!r}, no pid"
            )
        return pid

    def _status(self, pid: int) -> _Status:
        reply = self._call("guest-exec-status", {"pid": pid})
        if not isinstance(reply, dict) or not isinstance(reply.get("exited"), bool):
            raise GuestExecError(f"{self._name}: guest-exec-status of pid {pid} returned {reply!r}")
        if not reply["exited"]:
            return _Status(False, None, b"", b"", False)
        rc: int | None = reply.get("exitcode")
        if reply.get("signal") is not None:
            rc = 128 + int(reply["signal"])  # like a shell reports a command killed by a signal
        return _Status(
            exited=True,
            rc=rc,
            out=self._b64(reply.get("out-data", ""), f"out-data of pid {pid}"),
            err=self._b64(reply.get("err-data", ""), f"err-data of pid {pid}"),
            truncated=bool(reply.get("out-truncated") or reply.get("err-truncated")),
        )

    def _b64(self, data: Any, what: str) -> bytes:
        if not isinstance(data, str):
            raise GuestExecError(f"{self._name}: {what} is {type(data).__name__}, expected base64 text")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise GuestExecError(f"{self._name}: {what} is not valid base64: {exc}") from exc

    def _wait_exit(self, pid: int, timeout: float) -> _Status | None:
        """Poll until ``pid`` exits; None when it still runs after ``timeout`` seconds."""
        deadline = self._clock() + timeout
        delay = self.poll_s
        while True:
            status = self._status(pid)
            if status.exited:
                return status
            left = deadline - self._clock()
            if left <= 0:
                return None
            self._sleep(min(delay, left))
            delay = min(delay * 1.5, 0.5)

    def _signal(self, pid: int, signal: str) -> None:
        if self._os == "windows":
            # taskkill ends the whole tree; there is no soft variant for a GUI-less process.
            helper = self._exec(["taskkill", "/PID", str(pid), "/T", "/F"], capture=True)
        else:
            helper = self._exec(["sh", "-c", _KILL, "sh", signal, str(pid)], capture=True)
        self._wait_exit(helper, self.call_timeout)  # reaps the helper's entry in the agent

    # -- GuestExec --------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], timeout: float) -> ExecResult:
        pid = self._exec(argv, capture=True)
        status = self._wait_exit(pid, timeout)
        if status is None:
            self._signal(pid, "KILL")
            self._wait_exit(pid, self.kill_grace_s)
            raise CommandTimedOut(self._name, quote_argv(argv), timeout)
        err = status.err.decode("utf-8", errors="replace")
        if status.truncated:
            err += "\n[output truncated by qemu-guest-agent]"
        return ExecResult(
            rc=status.rc if status.rc is not None else -1,
            stdout=status.out.decode("utf-8", errors="replace"),
            stderr=err,
        )

    def spawn(self, argv: Sequence[str]) -> GuestProcess:
        args = tuple(str(a) for a in argv)
        if self._os == "windows":
            pid = self._exec(args, capture=False)
            self._procs[pid] = _Tracked()
            return GuestProcess(self._name, pid, args, None)
        log = f"{self.log_dir}/mdt-{uuid.uuid4().hex[:12]}.log"
        handle = self._open(log, "w")  # exists before the command starts, so reads never race it
        self._call("guest-file-close", {"handle": handle})
        pid = self._exec(["/bin/sh", "-c", _LINUX_SPAWN, log, *args], capture=False)
        self._procs[pid] = _Tracked()
        return GuestProcess(self._name, pid, args, log)

    def _tracked(self, proc: GuestProcess) -> _Tracked:
        try:
            return self._procs[proc.pid]
        except KeyError:
            raise GuestExecError(
                f"{self._name}: pid {proc.pid} was not spawned here or was released"
            ) from None

    def read_output(self, proc: GuestProcess) -> ProcessOutput:
        tracked = self._tracked(proc)
        if not tracked.exited:
            status = self._status(proc.pid)  # before reading: an exited process wrote everything
            tracked.exited, tracked.rc = status.exited, status.rc
        data = b""
        if proc.log is not None:
            data = self._read(proc.log, tracked.offset, MAX_FILE_BYTES)
            tracked.offset += len(data)
        text = tracked.decoder.decode(data, final=tracked.exited)
        return ProcessOutput(text, tracked.exited, tracked.rc)

    def kill(self, proc: GuestProcess) -> None:
        tracked = self._tracked(proc)
        if tracked.exited:
            return
        if self._os == "linux":
            self._signal(proc.pid, "TERM")
            status = self._wait_exit(proc.pid, self.kill_grace_s)
            if status is not None:
                tracked.exited, tracked.rc = True, status.rc
                return
        self._signal(proc.pid, "KILL")
        status = self._wait_exit(proc.pid, self.kill_grace_s)
        if status is None:
            raise GuestExecError(
                f"{self._name}: pid {proc.pid} ({quote_argv(proc.argv)}) survived SIGKILL"
            )
        tracked.exited, tracked.rc = True, status.rc

    def release(self, proc: GuestProcess) -> None:
        self._procs.pop(proc.pid, None)
        if proc.log is not None:
            helper = self._exec(["rm", "-f", proc.log], capture=True)
            self._wait_exit(helper, self.call_timeout)

    def read_file(self, path: str, timeout: float) -> bytes:
        deadline = self._clock() + timeout
        data = self._read(path, 0, MAX_FILE_BYTES, deadline=deadline)
        return data

    # -- files ------------------------------------------------------------------------------------

    def _open(self, path: str, mode: str) -> int:
        handle = self._call("guest-file-open", {"path": path, "mode": mode})
        if not isinstance(handle, int) or isinstance(handle, bool):
            raise GuestExecError(f"{self._name}: guest-file-open {path} returned {handle!r}, no handle")
        return handle

    def _read(self, path: str, offset: int, limit: int, *, deadline: float | None = None) -> bytes:
        handle = self._open(path, "rb" if self._os == "windows" else "r")
        try:
            if offset:
                self._call("guest-file-seek", {"handle": handle, "offset": offset, "whence": "set"})
            parts: list[bytes] = []
            size = 0
            while True:
                reply = self._call("guest-file-read", {"handle": handle, "count": _READ_CHUNK})
                if not isinstance(reply, dict) or not isinstance(reply.get("count"), int):
                    raise GuestExecError(f"{self._name}: guest-file-read of {path} returned {reply!r}")
                chunk = self._b64(reply.get("buf-b64", ""), f"buf-b64 of {path}")
                parts.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise GuestExecError(f"{self._name}: {path} is larger than {limit} bytes")
                if reply.get("eof") or not chunk:
                    return b"".join(parts)
                if deadline is not None and self._clock() > deadline:
                    raise GuestExecError(
                        f"{self._name}: reading {path} took too long ({size} bytes read)"
                    )
        finally:
            self._call("guest-file-close", {"handle": handle})


class ShellGuestExec:
    """:class:`~mdevtest.workloads.base.GuestExec` over a command runner whose commands run in a
    POSIX guest (SSH into the guest, or the controller itself in tests).

    A spawned command runs in its own session (``setsid``) with its output in a log under
    ``tmp_dir`` and its exit status in ``<log>.rc``; ``kill`` signals the whole session, so
    children go too. Output is read by byte offset and base64-encoded on the way, so a
    multi-byte character split between two reads is decoded whole.
    """

    _SPAWN = (
        'log=$1; shift; : >"$log"; '
        'setsid sh -c \'"$@" >>"$0" 2>&1 </dev/null; echo $? >"$0.rc"\' "$log" "$@" '
        ">/dev/null 2>&1 </dev/null & echo $!"
    )
    _READ = (
        "log=$1 off=$2 pid=$3; "
        'if [ -e "$log.rc" ]; then st="exited $(cat "$log.rc")"; '
        'elif kill -0 "$pid" 2>/dev/null && ! grep -qs "^State:[[:space:]]*Z" "/proc/$pid/status"; '
        "then st=running; else st=gone; fi; "
        'size=$(wc -c <"$log" 2>/dev/null || echo 0); echo "$size $st"; '
        'if [ "$size" -gt "$off" ]; then '
        'tail -c +$((off + 1)) "$log" | head -c $((size - off)) | base64; fi'
    )
    # A zombie answers kill -0, and a container's init may never reap one: check its state.
    _KILL_GROUP = (
        'alive() { kill -0 "$1" 2>/dev/null && ! grep -qs "^State:[[:space:]]*Z" "/proc/$1/status"; }; '
        'kill -s TERM -- -"$1" 2>/dev/null || exit 0; i=0; '
        'while alive "$1" && [ $i -lt "$2" ]; do sleep 0.1; i=$((i + 1)); done; '
        'kill -s KILL -- -"$1" 2>/dev/null; true'
    )

    def __init__(
        self,
        executor: Executor,
        *,
        name: str | None = None,
        tmp_dir: str = "/tmp",
        call_timeout: float = 15.0,
        kill_grace_s: float = 5.0,
    ) -> None:
        self.executor = executor
        self._name = name or executor.name
        self.tmp_dir = tmp_dir
        self.call_timeout = call_timeout
        self.kill_grace_s = kill_grace_s
        self._procs: dict[int, _Tracked] = {}

    def __repr__(self) -> str:
        return f"ShellGuestExec({self._name!r} via {self.executor!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def os(self) -> GuestOS:
        return "linux"

    def _sh(self, script: str, *args: str, timeout: float | None = None) -> ExecResult:
        result = self.executor.run(
            ["sh", "-c", script, "sh", *args], timeout=timeout or self.call_timeout
        )
        return ExecResult(result.rc, result.stdout, result.stderr)

    def run(self, argv: Sequence[str], timeout: float) -> ExecResult:
        result = self.executor.run([str(a) for a in argv], timeout=timeout)
        return ExecResult(result.rc, result.stdout, result.stderr)

    def spawn(self, argv: Sequence[str]) -> GuestProcess:
        args = tuple(str(a) for a in argv)
        if not args:
            raise ValueError("empty argument vector")
        log = f"{self.tmp_dir}/mdt-{uuid.uuid4().hex[:12]}.log"
        rc, out, err = self._sh(self._SPAWN, log, *args)
        if rc != 0 or not out.strip().isdigit():
            raise GuestExecError(
                f"{self._name}: could not start {quote_argv(args)} (rc={rc}): {err.strip()}"
            )
        pid = int(out.strip())
        self._procs[pid] = _Tracked()
        return GuestProcess(self._name, pid, args, log)

    def _tracked(self, proc: GuestProcess) -> _Tracked:
        try:
            return self._procs[proc.pid]
        except KeyError:
            raise GuestExecError(
                f"{self._name}: pid {proc.pid} was not spawned here or was released"
            ) from None

    def read_output(self, proc: GuestProcess) -> ProcessOutput:
        tracked = self._tracked(proc)
        assert proc.log is not None
        rc, out, err = self._sh(self._READ, proc.log, str(tracked.offset), str(proc.pid))
        head, _, body = out.partition("\n")
        fields = head.split()
        if rc != 0 or len(fields) < 2 or not fields[0].isdigit():
            raise GuestExecError(
                f"{self._name}: reading the output of pid {proc.pid} failed: {err.strip() or out!r}"
            )
        if fields[1] == "exited":
            tracked.exited = True
            tracked.rc = int(fields[2]) if len(fields) > 2 and fields[2].lstrip("-").isdigit() else None
        elif fields[1] == "gone":
            tracked.exited = True
        try:
            data = base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise GuestExecError(
                f"{self._name}: output of pid {proc.pid} arrived damaged: {exc}"
            ) from exc
        tracked.offset += len(data)
        return ProcessOutput(
            tracked.decoder.decode(data, final=tracked.exited), tracked.exited, tracked.rc
        )

    def kill(self, proc: GuestProcess) -> None:
        tracked = self._tracked(proc)
        if tracked.exited:
            return
        steps = max(1, int(self.kill_grace_s / 0.1))
        self._sh(
            self._KILL_GROUP, str(proc.pid), str(steps), timeout=self.kill_grace_s + self.call_timeout
        )

    def release(self, proc: GuestProcess) -> None:
        self._procs.pop(proc.pid, None)
        if proc.log is not None:
            self.executor.run(["rm", "-f", proc.log, f"{proc.log}.rc"], timeout=self.call_timeout)

    def read_file(self, path: str, timeout: float) -> bytes:
        rc, out, err = self._sh('base64 "$1"', path, timeout=timeout)
        if rc != 0:
            raise GuestExecError(f"{self._name}: cannot read {path}: {err.strip() or f'rc={rc}'}")
        try:
            return base64.b64decode("".join(out.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise GuestExecError(f"{self._name}: {path} arrived damaged: {exc}") from exc


@runtime_checkable
class ConsoleReader(Protocol):
    """A guest whose serial console log can be read (everything so far, in order)."""

    def console_text(self) -> str: ...


class ConsoleGuestExec:
    """A guest seen only through its console log (the lab's synthetic guest has no shell).

    ``read_console`` returns the whole console log so far; across a migration it should join
    the source's and the destination's logs in order (``Guest.history``). Every command
    method raises :class:`~mdevtest.workloads.base.GuestExecError`.
    """

    def __init__(self, read_console: Callable[[], str], *, name: str = "guest") -> None:
        self._read_console = read_console
        self._name = name

    def __repr__(self) -> str:
        return f"ConsoleGuestExec({self._name!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def os(self) -> GuestOS:
        return "linux"

    def console_text(self) -> str:
        return self._read_console()

    def _no(self, what: str) -> GuestExecError:
        return GuestExecError(
            f"{self._name}: cannot {what}: this guest is reached only through its serial console "
            "(no guest agent, no shell); use a workload that reports on the console, or give the "
            "guest qemu-guest-agent (QgaGuestExec) or sshd (ShellGuestExec)"
        )

    def run(self, argv: Sequence[str], timeout: float) -> ExecResult:
        raise self._no(f"run {quote_argv(argv)}")

    def spawn(self, argv: Sequence[str]) -> GuestProcess:
        raise self._no(f"start {quote_argv(argv)}")

    def read_output(self, proc: GuestProcess) -> ProcessOutput:
        raise self._no("read process output")

    def kill(self, proc: GuestProcess) -> None:
        raise self._no("kill a process")

    def release(self, proc: GuestProcess) -> None:
        raise self._no("release a process")

    def read_file(self, path: str, timeout: float) -> bytes:
        raise self._no(f"read {path}")


if TYPE_CHECKING:
    # mypy proves here that each implementation satisfies the protocol structurally.
    def _qga_is_guest_exec(g: QgaGuestExec) -> GuestExec:
        return g

    def _shell_is_guest_exec(g: ShellGuestExec) -> GuestExec:
        return g

    def _console_is_guest_exec(g: ConsoleGuestExec) -> GuestExec:
        return g
