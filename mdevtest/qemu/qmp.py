"""A synchronous QMP session on top of qemu.qmp, with every event kept.

qemu.qmp is asyncio; the framework's flow (and pytest) is synchronous. :class:`QmpSession` runs a
private event loop in a thread and exposes blocking calls, each bounded by a timeout. A listener task
records *every* event QEMU sends, stamped with the controller's monotonic clock and QEMU's own
timestamp, so nothing arriving while a command waits for its reply is lost; the migration flow reads
them from :attr:`QmpSession.events` and puts them in the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from mdevtest.errors import QmpError, QmpTimedOut


@dataclass(frozen=True)
class QmpEvent:
    """One QMP event. ``mono`` is the controller's ``time.monotonic()`` at reception."""

    name: str
    data: Mapping[str, Any]
    qemu_timestamp: float  # QEMU's wall clock (seconds since the epoch, host side)
    mono: float

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.name,
            "data": dict(self.data),
            "qemu_timestamp": self.qemu_timestamp,
            "controller_monotonic": self.mono,
        }


class QmpSession:
    """One QMP connection to one QEMU, usable from any thread. Close it when done."""

    def __init__(self, name: str, sock: socket.socket, *, timeout: float = 30.0) -> None:
        self.name = name
        self.timeout = timeout
        self._events: list[QmpEvent] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"qmp {name}", daemon=True)
        self._thread.start()
        self._client = QMPClient(name)
        self._listener_task: asyncio.Future[None] | None = None
        self._closed = False
        try:
            self._call(self._connect(sock), timeout, "connect")
        except BaseException:
            self.close()
            raise

    async def _connect(self, sock: socket.socket) -> None:
        await self._client.connect(sock)
        self._listener_task = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        async for message in self._client.events:
            event: dict[str, Any] = dict(message)
            stamp: dict[str, Any] = event.get("timestamp") or {}
            qemu_ts = float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6
            with self._cond:
                self._events.append(
                    QmpEvent(str(event["event"]), dict(event.get("data", {})), qemu_ts, time.monotonic())
                )
                self._cond.notify_all()

    def _call(self, coro: Any, timeout: float, what: str) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout as exc:
            future.cancel()
            raise QmpTimedOut(self.name, what, f"no reply within {timeout:g} s") from exc
        except ExecuteError as exc:
            raise QmpError(self.name, what, f"{exc.error_class}: {exc.error.error.desc}") from exc
        except (QMPError, OSError, EOFError) as exc:
            raise QmpError(self.name, what, f"{type(exc).__name__}: {exc}") from exc

    def execute(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        oob: bool = False,
    ) -> Any:
        """Execute a QMP command; return its ``return`` value. Errors raise :class:`QmpError`.

        ``oob``: as ``exec-oob``, answered by QEMU's monitor thread even while its main loop is
        blocked (only commands QEMU allows out of band, e.g. ``yank``).
        """
        if self._closed:
            raise QmpError(self.name, command, "session is closed")
        args = dict(arguments) if arguments else None
        what = command if not args else f"{command} {args}"
        return self._call(
            self._client.execute(command, args, oob=oob),
            self.timeout if timeout is None else timeout,
            what,
        )

    # -- events ----------------------------------------------------------------------------------

    @property
    def events(self) -> list[QmpEvent]:
        """A copy of every event received so far, in arrival order."""
        with self._cond:
            return list(self._events)

    def event_count(self) -> int:
        with self._cond:
            return len(self._events)

    def wait_event(
        self,
        name: str,
        predicate: Callable[[QmpEvent], bool] = lambda _e: True,
        *,
        since: int = 0,
        timeout: float = 30.0,
    ) -> QmpEvent:
        """Wait for an event named ``name`` (index >= ``since``) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events[since:]:
                    if event.name == name and predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QmpError(self.name, f"wait {name}", f"no such event within {timeout:g} s")
                self._cond.wait(remaining)

    # -- lifecycle -------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        task, self._listener_task = self._listener_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.disconnect()

    def close(self) -> None:
        """Disconnect and stop the loop thread. Idempotent; never raises for a dead peer."""
        if self._closed:
            return
        self._closed = True
        try:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            fut.result(5)
        except (QMPError, OSError, EOFError, FutureTimeout):
            pass  # the peer is gone already; nothing more to release on its side
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
