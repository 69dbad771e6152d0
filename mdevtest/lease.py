"""Host leases: one test process at a time uses a host, across processes and controllers.

A lease is a directory ``<host state dir>/lease`` created with an atomic ``mkdir`` on the host,
holding an ``owner`` file (run id, worker, controller host name and pid, time). The holder touches
it every few seconds; a lease whose owner is a dead process on this controller, or whose owner file
has not been touched for ``ttl`` seconds (a crashed or unreachable controller), is stale and is
taken over. A pair's hosts are always leased in name order, and a worker gives up the hosts it
holds before leasing a different set, so two workers can never wait for each other.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from mdevtest.errors import INFRASTRUCTURE, FailureClass, MdevtestError
from mdevtest.remote import Remote, RemotePool


class LeaseError(MdevtestError):
    """A host could not be leased in time (another test process holds it)."""

    failure_class: FailureClass | None = INFRASTRUCTURE


@dataclass(frozen=True)
class Owner:
    run_id: str
    worker: str
    controller: str
    pid: int

    def line(self) -> str:
        return f"{self.run_id} {self.worker} {self.controller} {self.pid}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        parts = text.split()
        if len(parts) < 4 or not parts[3].isdigit():
            return None
        return cls(parts[0], parts[1], parts[2], int(parts[3]))


def _lease_dir(remote: Remote) -> str:
    return f"{remote.host.state_dir}/lease"


class LeaseManager:
    """The leases one test process holds. Close it (or use ``with``) to release them all."""

    def __init__(
        self,
        pool: RemotePool,
        *,
        run_id: str,
        worker: str,
        ttl: float = 60.0,
        wait: float = 900.0,
        poll: float = 1.0,
        on_acquire: Callable[[str], None] | None = None,
    ) -> None:
        self.pool = pool
        self.owner = Owner(run_id, worker, socket.gethostname(), os.getpid())
        self.ttl = ttl
        self.wait = wait
        self.poll = poll
        self.held: list[str] = []
        self.on_acquire = on_acquire  # e.g. reap what a dead run left on the host
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="lease heartbeat", daemon=True)
        self._beat.start()

    # -- acquire / release -------------------------------------------------------------------------

    def hold(self, hosts: Sequence[str]) -> None:
        """Hold exactly ``hosts`` (re-entrant for the same set)."""
        wanted = sorted(set(hosts))
        with self._lock:
            if wanted == self.held:
                return
            self._release_all()
            try:
                for host in wanted:
                    self._acquire(host)
                    self.held.append(host)
                    if self.on_acquire is not None:
                        self.on_acquire(host)
            except BaseException:
                self._release_all()
                raise

    def _acquire(self, host: str) -> None:
        remote = self.pool[host]
        lease = _lease_dir(remote)
        q = shlex.quote
        script = (
            f"mkdir -p {q(remote.host.state_dir)} && "
            f"if mkdir {q(lease)} 2>/dev/null; then echo {q(self.owner.line())} > {q(lease)}/owner; "
            f"echo ACQUIRED; else cat {q(lease)}/owner 2>/dev/null; echo; "
            f"echo AGE $(( $(date +%s) - $(stat -c %Y {q(lease)}/owner 2>/dev/null || date +%s) )); fi"
        )
        deadline = time.monotonic() + self.wait
        while True:
            out = remote.check_shell(script, timeout=30).stdout
            if "ACQUIRED" in out:
                return
            holder = Owner.parse(out.split("AGE")[0])
            age = int(out.rsplit("AGE", 1)[-1].strip() or 0) if "AGE" in out else 0
            if holder == self.owner:
                return  # ours already (a retried acquire)
            if self._stale(holder, age):
                remote.check_shell(f"rm -rf {q(lease)}", timeout=30)
                continue
            if time.monotonic() > deadline:
                who = holder.line() if holder else "an unknown owner"
                raise LeaseError(
                    f"{host}: leased by {who} for {age} s; waited {self.wait:g} s. If that run is "
                    f"gone, its lease expires {self.ttl:g} s after its last heartbeat"
                )
            time.sleep(self.poll)

    def _stale(self, holder: Owner | None, age: int) -> bool:
        if holder is None:
            return age > self.ttl  # half-written owner: stale only after the ttl
        if holder.controller == self.owner.controller and not _pid_alive(holder.pid):
            return True  # a crashed worker of this controller
        return age > self.ttl

    def _release_all(self) -> None:
        for host in reversed(self.held):
            remote = self.pool[host]
            lease = shlex.quote(_lease_dir(remote))
            mine = shlex.quote(self.owner.line())
            remote.run_shell(
                f'[ "$(cat {lease}/owner 2>/dev/null)" = {mine} ] && rm -rf {lease}; true', timeout=30
            )
        self.held = []

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            with self._lock:
                for host in self.held:
                    remote = self.pool[host]
                    # An unreachable host is the test's to report; the lease then simply ages.
                    with contextlib.suppress(MdevtestError):
                        remote.run(["touch", f"{_lease_dir(remote)}/owner"], timeout=30)

    def close(self) -> None:
        """Release every lease and stop the heartbeat. Idempotent."""
        self._stop.set()
        self._beat.join(timeout=5)
        with self._lock:
            self._release_all()

    def __enter__(self) -> LeaseManager:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
