"""qemu-guest-agent over the host's UNIX socket, through the SSH socket bridge.

QEMU exposes the guest's agent port (virtio-serial ``org.qemu.guest_agent.0``) as a UNIX socket
on the host (``qga.sock`` in the machine's directory). :class:`GuestAgent` is the ``qga``
callable :class:`~mdevtest.workloads.guestexec.QgaGuestExec` takes, and more:

- **One short connection per command**: connect through the bridge, resynchronise with
  ``guest-sync-delimited`` (the agent answers with a 0xFF byte, then the id: whatever an earlier,
  interrupted client left in the pipe is skipped), send the command, read its one reply,
  disconnect. Nothing stays connected, so nothing breaks when the guest moves.
- **It follows the guest**: the machine is looked up on every call (``machine()``), so after a
  migration the next command goes to the destination's socket.
- **Serialised**: QEMU serves one client per socket at a time; calls from a sampler thread and
  the test wait for each other (bounded by their own timeouts).

Errors: :class:`~mdevtest.errors.GuestError` (no reply in time, the connection broke, nonsense);
an agent error reply is :class:`AgentError` with the agent's class and description.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mdevtest.errors import GuestError

if TYPE_CHECKING:
    from mdevtest.qemu.machine import RemoteMachine

__all__ = ["AgentError", "GuestAgent", "recv_slice", "wait_agent_ready"]

_ids = itertools.count(int(time.time()) % 100000 * 1000)
_SYNC_MARK = b"\xff"


class AgentError(GuestError):
    """The agent answered with an error (``error_class``, ``desc``)."""

    def __init__(self, label: str, command: str, error_class: str, desc: str) -> None:
        self.command = command
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"{label}: qemu-guest-agent {command}: {error_class}: {desc}")


class GuestAgent:
    """The guest's qemu-guest-agent; ``machine`` returns the QEMU the guest runs in now."""

    def __init__(self, machine: Callable[[], RemoteMachine], *, name: str | None = None) -> None:
        self._machine = machine
        self._name = name
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name or self._machine().label

    def __call__(
        self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        return self.execute(command, arguments, timeout=timeout)

    def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, *, timeout: float = 10.0
    ) -> Any:
        """Run one agent command; return its ``return`` value."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            raise GuestError(f"{self.name}: qemu-guest-agent busy for {timeout:g} s ({command})")
        try:
            machine = self._machine()
            return self._execute(machine, command, arguments, deadline)
        finally:
            self._lock.release()

    def _execute(
        self,
        machine: RemoteMachine,
        command: str,
        arguments: Mapping[str, Any] | None,
        deadline: float,
    ) -> Any:
        label = machine.label
        path = machine.paths.qga_sock
        with machine.remote.open_unix_socket(path, timeout=max(1.0, deadline - time.monotonic())) as br:
            reader = _Reader(br.sock, label, command, deadline, br.stderr)
            sync_id = next(_ids)
            br.sock.sendall(_encode({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}))
            reader.skip_to_mark()
            while True:
                reply = reader.message()
                if reply.get("return") == sync_id:
                    break
            request: dict[str, Any] = {"execute": command}
            if arguments:
                request["arguments"] = dict(arguments)
            br.sock.sendall(_encode(request))
            reply = reader.message()
        if "error" in reply:
            err = reply["error"] if isinstance(reply["error"], dict) else {}
            raise AgentError(label, command, str(err.get("class", "?")), str(err.get("desc", "")))
        if "return" not in reply:
            raise GuestError(f"{label}: qemu-guest-agent {command}: unexpected reply {reply!r}")
        return reply["return"]


def recv_slice(
    sock: Any, remaining: float, *, label: str, channel: str, during: str, why: Callable[[], str]
) -> bytes | None:
    """One bounded read from a bridged guest channel: the bytes, or None when nothing came in
    the next second (the caller keeps its own deadline). A broken or closed channel raises
    :class:`GuestError` naming it, with the bridge's own stderr when it has one."""
    sock.settimeout(min(remaining, 1.0))
    try:
        data: bytes = sock.recv(65536)
    except TimeoutError:
        return None
    except OSError as exc:
        raise GuestError(f"{label}: {channel} channel broke during {during}: {exc}") from exc
    if not data:
        reason = why().strip()
        raise GuestError(
            f"{label}: {channel} channel closed during {during}" + (f": {reason}" if reason else "")
        )
    return data


def _encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


class _Reader:
    """Reads the agent's replies (one JSON object per line) under one deadline."""

    def __init__(
        self, sock: Any, label: str, command: str, deadline: float, why: Callable[[], str]
    ) -> None:
        self.sock = sock
        self.label = label
        self.command = command
        self.deadline = deadline
        self.why = why
        self.buf = b""

    def _more(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise GuestError(
                f"{self.label}: no reply from qemu-guest-agent to {self.command} in time "
                "(is qemu-ga running in the guest, on org.qemu.guest_agent.0?)"
            )
        data = recv_slice(
            self.sock, remaining, label=self.label, channel="agent", during=self.command, why=self.why
        )
        if data is not None:
            self.buf += data

    def skip_to_mark(self) -> None:
        while _SYNC_MARK not in self.buf:
            self.buf = b""
            self._more()
        self.buf = self.buf[self.buf.index(_SYNC_MARK) + 1 :]

    def message(self) -> dict[str, Any]:
        while True:
            line, sep, rest = self.buf.partition(b"\n")
            if sep:
                self.buf = rest
                text = line.strip().lstrip(_SYNC_MARK)
                if not text:
                    continue
                try:
                    value = json.loads(text)
                except ValueError as exc:
                    raise GuestError(
                        f"{self.label}: qemu-guest-agent sent non-JSON during {self.command}: "
                        f"{text[:200]!r}"
                    ) from exc
                if isinstance(value, dict):
                    return value
                continue
            self._more()


def wait_agent_ready(agent: GuestAgent, *, timeout: float, alive: Callable[[], bool]) -> dict[str, Any]:
    """Wait until the agent answers ``guest-ping``; return ``guest-get-osinfo``'s reply.

    ``alive`` tells whether QEMU still runs (a QEMU that died during boot ends the wait)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GuestError(
                f"{agent.name}: qemu-guest-agent did not answer guest-ping within {timeout:g} s "
                f"(last: {last})"
            )
        try:
            agent.execute("guest-ping", timeout=min(remaining, 5.0))
            info = agent.execute("guest-get-osinfo", timeout=min(max(remaining, 1.0), 10.0))
            return dict(info) if isinstance(info, dict) else {"reply": info}
        except GuestError as exc:
            last = str(exc)
        if not alive():
            raise GuestError(f"{agent.name}: QEMU exited while waiting for qemu-guest-agent")
        time.sleep(1.0)
