"""A libvirt connection to a lab host's libvirtd, through the host's own SSH connection.

libvirt-python talks to a daemon over a socket; mdevtest reaches hosts only through SSH (the
inventory's credentials, timeouts and host keys). :class:`LibvirtLink` therefore listens on a
private UNIX socket on the controller and bridges every connection libvirt makes to it to the
host's daemon socket (``socat`` over the SSH connection, as QMP is reached), and opens
``qemu+unix:///system?socket=<that socket>``. No libvirt TCP/TLS listener, no second SSH login.

libvirt's default event loop runs in one daemon thread of the controller (events of every
connection: QEMU's QMP events of a domain, keepalive); a dead host's connection is closed by the
keepalive after ~15 s, so no call waits on it for ever. Calls that can block take a timeout
(:meth:`LibvirtLink.call`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from mdevtest.errors import MachineError, MdevtestError
from mdevtest.remote import Remote, UnixSocketBridge

T = TypeVar("T")

#: The daemon socket of a host whose libvirtd is the monolithic daemon (Debian, Ubuntu); modular
#: daemons (RHEL 9, Fedora) serve the QEMU driver on ``/var/run/libvirt/virtqemud-sock``.
DEFAULT_SOCKET = "/var/run/libvirt/libvirt-sock"

_loop_lock = threading.Lock()
_loop_started = threading.Event()


def libvirt_module() -> Any:
    """``libvirt`` (libvirt-python), or a clear error when the controller lacks it."""
    try:
        import libvirt
    except ImportError as exc:  # an optional dependency: only the libvirt backend needs it
        raise MachineError(
            "a pair with `backend: libvirt` needs libvirt-python on the controller: "
            "apt-get install libvirt-dev pkg-config && pip install 'mdevtest[libvirt]' "
            "(./scripts/bootstrap does both)"
        ) from exc
    return libvirt


def ensure_event_loop() -> None:
    """Start libvirt's default event loop in a daemon thread (once per process); it must run
    before a connection is opened for keepalive and domain events to work."""
    libvirt = libvirt_module()
    with _loop_lock:
        if _loop_started.is_set():
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt events", daemon=True).start()
        _loop_started.set()


def _silence_stderr_errors() -> None:
    """libvirt prints every error to stderr by default; mdevtest raises them instead."""
    libvirt = libvirt_module()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtLink:
    """One libvirt connection to ``remote``'s daemon at ``socket_path``. Close it when done."""

    def __init__(self, remote: Remote, *, socket_path: str = DEFAULT_SOCKET, timeout: float = 30.0):
        self.remote = remote
        self.host = remote.name
        self.socket_path = socket_path
        self.timeout = timeout
        self._closed = threading.Event()
        self._bridges: list[UnixSocketBridge] = []
        self._dir = tempfile.mkdtemp(prefix="mdevtest-libvirt-")
        self.local_socket = os.path.join(self._dir, "libvirt.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.local_socket)
        self._listener.listen(8)
        self._accepter = threading.Thread(
            target=self._accept, name=f"libvirt bridge {self.host}", daemon=True
        )
        self._accepter.start()
        self.uri = f"qemu+unix:///system?socket={self.local_socket}"
        libvirt = libvirt_module()
        ensure_event_loop()
        _silence_stderr_errors()
        try:
            self.conn: Any = self.call(libvirt.open, self.uri, what="connect")
            self.conn.setKeepAlive(5, 3)
        except BaseException:
            self.close()
            raise

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                bridge = self.remote.open_unix_socket(
                    self.socket_path, timeout=self.timeout, attach=client
                )
            except MdevtestError:
                client.close()
                continue
            self._bridges.append(bridge)

    def call(self, fn: Callable[..., T], *args: Any, what: str, timeout: float | None = None) -> T:
        """``fn(*args)`` bounded by ``timeout``: a libvirt error or no answer in time is a
        :class:`MachineError` naming the host and ``what`` was asked (the call itself is
        abandoned in its thread; the keepalive ends a connection that hangs)."""
        libvirt = libvirt_module()
        limit = self.timeout if timeout is None else timeout
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # delivered to the caller below
                future.set_exception(exc)

        threading.Thread(target=run, name=f"libvirt {self.host} {what}", daemon=True).start()
        try:
            return future.result(timeout=limit)
        except FutureTimeout:
            raise MachineError(
                f"{self.host}: libvirt {what}: no answer within {limit:g} s "
                f"(libvirtd at {self.socket_path})"
            ) from None
        except libvirt.libvirtError as exc:
            raise MachineError(f"{self.host}: libvirt {what}: {error_text(exc)}") from exc

    def close(self) -> None:
        """Close the connection, the bridges and the private socket. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        conn = getattr(self, "conn", None)
        if conn is not None:
            with contextlib.suppress(Exception):  # a dead daemon: nothing to say goodbye to
                conn.close()
        with contextlib.suppress(OSError):
            self._listener.close()
        for bridge in self._bridges:
            bridge.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def error_text(exc: BaseException) -> str:
    """libvirt's own message of an error (``get_error_message``), else ``str(exc)``."""
    getter = getattr(exc, "get_error_message", None)
    message = getter() if callable(getter) else None
    return str(message or exc).strip()
