"""The independent, guest-observed downtime: a UDP heartbeat seen from the controller.

The guest's workload sends a datagram every millisecond (sequence number + its own monotonic clock).
The observer timestamps every arrival with the controller's monotonic clock. The *observed*
downtime is the largest gap between consecutive arrivals inside a window around the switchover: the
time during which the guest's service was not heard from, whatever QEMU says. Lost sequence numbers
(never arrived) and duplicated ones (arrived twice) are counted.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from itertools import pairwise
from types import TracebackType

from mdevtest.workloads.synthetic import UDP_SIZE, parse_udp_heartbeat

METHOD = (
    "guest UDP heartbeat every 1 ms to the controller; largest gap between consecutive arrivals "
    "(controller monotonic clock) from 0.5 s before `migrate` to 2 s after the destination ran"
)


@dataclass(frozen=True)
class Arrival:
    seq: int
    guest_ns: int
    mono: float


@dataclass(frozen=True)
class ObservedDowntime:
    """What the observer saw in one window."""

    observed_downtime_ms: float | None  # None: no heartbeat arrived in the window
    gap_start_seq: int | None  # the last sequence number before the largest gap
    received: int
    lost: int
    duplicated: int
    window_s: float
    method: str = METHOD

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


class HeartbeatObserver:
    """A UDP listener on the controller. Start it before the guest boots; close it at the end."""

    def __init__(self, bind_address: str = "0.0.0.0", port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind((bind_address, port))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"udp observer :{self.port}", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            if len(data) != UDP_SIZE:
                continue
            try:
                beat = parse_udp_heartbeat(data)
            except ValueError:
                continue  # not ours (or damaged): ignore
            with self._lock:
                self._arrivals.append(Arrival(beat.seq, beat.t_ns, now))

    @property
    def arrivals(self) -> list[Arrival]:
        with self._lock:
            return list(self._arrivals)

    def count(self) -> int:
        with self._lock:
            return len(self._arrivals)

    def wait_for_beats(self, n: int = 10, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        start = self.count()
        while time.monotonic() < deadline:
            if self.count() - start >= n:
                return True
            time.sleep(0.05)
        return False

    def analyse(self, start: float, end: float) -> ObservedDowntime:
        """The observed downtime between controller monotonic times ``start`` and ``end``."""
        inside = [a for a in self.arrivals if start <= a.mono <= end]
        seqs = [a.seq for a in inside]
        unique = set(seqs)
        duplicated = len(seqs) - len(unique)
        lost = (max(unique) - min(unique) + 1 - len(unique)) if unique else 0
        best: tuple[float, int] | None = None
        for prev, nxt in pairwise(inside):
            gap = nxt.mono - prev.mono
            if best is None or gap > best[0]:
                best = (gap, prev.seq)
        return ObservedDowntime(
            observed_downtime_ms=None if best is None else round(best[0] * 1000, 3),
            gap_start_seq=None if best is None else best[1],
            received=len(inside),
            lost=lost,
            duplicated=duplicated,
            window_s=round(end - start, 3),
        )

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=2)

    def __enter__(self) -> HeartbeatObserver:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
