"""The live-migration flow, its policy and its typed result.

:class:`Migrator` drives one migration from a running source to a destination started with
``-incoming defer``:

1. set the same capabilities on both sides (``events`` always, so ``MIGRATION`` and ``MIGRATION_PASS``
   events are emitted) and the policy's parameters on the source;
2. refuse to start if the source reports ``blocked-reasons`` (:class:`MigrationBlocked`);
3. ``migrate-incoming`` on the destination, then ``migrate`` on the source, with the event stream
   already being recorded (the QMP session keeps every event from connection time on);
4. poll ``query-migrate`` on the source into a timeline until a final state;
5. on timeout: ``migrate_cancel``, wait for ``cancelled``, and verify the source runs again
   (:class:`MigrationTimedOut`); on ``failed``: verify the same and raise :class:`MigrationFailed` with
   QEMU's ``error-desc``;
6. on ``completed``: wait for the destination to reach ``running``.

A source whose QMP stops answering for ``policy.stall_s`` mid-migration has its main loop blocked
writing to a dead migration socket (seen with the link cut during the switchover: QEMU holds its
main lock while it sends the device state, so neither ``query-migrate`` nor ``migrate_cancel`` is
answered until TCP gives up, minutes later). The Migrator then sends ``yank`` (migration instance)
out of band, which the monitor thread answers at once: the socket is shut down, the migration
fails, the source resumes, and :class:`MigrationTimedOut` says so.

The :class:`MigrationResult` is immutable and says, for every figure, how it was measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mdevtest.errors import (
    MachineError,
    MigrationBlocked,
    MigrationError,
    MigrationFailed,
    MigrationTimedOut,
    QmpError,
    QmpTimedOut,
    StateError,
)
from mdevtest.qemu.machine import RemoteMachine
from mdevtest.qemu.qmp import QmpEvent

FINAL_STATES = frozenset({"completed", "failed", "cancelled"})
#: The status of a result whose migration ended before QEMU reported a final status that
#: mdevtest saw (QMP or SSH lost, the controller interrupted): the error says why.
ABORTED = "aborted"

#: How each figure of a result is measured; copied into every report entry.
METHODS: dict[str, str] = {
    "total_time_ms": "QEMU query-migrate 'total-time' on the source (ms, QEMU's clock)",
    "setup_time_ms": "QEMU query-migrate 'setup-time' on the source (ms)",
    "downtime_ms": "QEMU query-migrate 'downtime' on the source: vCPUs stopped until the "
    "destination was told to run (ms)",
    "ram_transferred_bytes": "QEMU query-migrate 'ram.transferred' on the source (bytes)",
    "vfio_transferred_bytes": "QEMU query-migrate 'vfio.transferred' on the source (bytes); "
    "null when no migratable VFIO device took part",
    "passes": "QEMU query-migrate 'ram.dirty-sync-count' (RAM dirty bitmap syncs)",
    "wall_time_ms": "controller monotonic clock from `migrate` sent to the final state seen",
    "dirty_tracking_mode": "how QEMU tracked the pages the VFIO device dirtied: 'device' (its DMA "
    "log, QEMU's default) or 'off' (x-device-dirty-page-tracking=off: all pages the device can "
    "reach count as dirty at the switchover), chosen by preflight from the source host's kernel "
    "(CONFIG_IOMMUFD_DRIVER) and QEMU; null without a real VFIO device",
}


#: Options a test may give its policy (``@pytest.mark.policy(...)``), with what each means.
POLICY_OPTIONS: dict[str, str] = {
    "downtime_limit_ms": "QEMU downtime-limit parameter (ms)",
    "max_bandwidth_mib": "QEMU max-bandwidth parameter (MiB/s)",
    "multifd": "multifd capability (parallel migration channels)",
    "multifd_channels": "multifd-channels parameter (with multifd)",
    "auto_converge": "auto-converge capability (throttle vCPUs until the migration converges)",
    "switchover_ack": "switchover-ack capability (with return-path; the destination acks)",
    "pause_before_switchover": "pause-before-switchover capability (the test continues it)",
    "postcopy": "postcopy-ram capability on both sides (QEMU 9.0+ refuses it with a VFIO device)",
    "timeout_s": "cancel the migration after this many seconds",
}


#: Capabilities a policy may turn on; turned off again for a migration whose policy does not.
RESETTABLE_CAPABILITIES = (
    "multifd",
    "auto-converge",
    "switchover-ack",
    "return-path",
    "pause-before-switchover",
    "postcopy-ram",
)
#: Parameters a policy may set; restored to the source's first values otherwise.
POLICY_PARAMETERS = ("downtime-limit", "max-bandwidth", "multifd-channels")


@dataclass(frozen=True)
class MigrationPolicy:
    """How to migrate. ``None`` leaves QEMU's default."""

    timeout_s: float = 120.0
    downtime_limit_ms: int | None = None
    max_bandwidth_bytes: int | None = None
    capabilities: tuple[tuple[str, bool], ...] = ()
    parameters: tuple[tuple[str, Any], ...] = ()
    poll_interval_s: float = 0.05
    #: No QMP answer from the source for this long mid-migration: the migration is stuck (see the
    #: module doc) and is yanked. Longer than any healthy switchover's pause of the main loop.
    stall_s: float = 30.0

    @classmethod
    def from_options(cls, *, timeout_s: float = 120.0, **options: Any) -> MigrationPolicy:
        """Build a policy from test-facing options (see :data:`POLICY_OPTIONS`).

        Unknown options or bad values raise ``ValueError`` naming what is allowed.
        """
        unknown = sorted(set(options) - set(POLICY_OPTIONS))
        if unknown:
            allowed = ", ".join(sorted(POLICY_OPTIONS))
            raise ValueError(
                f"unknown migration policy option(s) {', '.join(unknown)}; allowed: {allowed}"
            )
        caps: dict[str, bool] = {}
        params: dict[str, Any] = {}
        for flag, capability in (
            ("multifd", "multifd"),
            ("auto_converge", "auto-converge"),
            ("switchover_ack", "switchover-ack"),
            ("pause_before_switchover", "pause-before-switchover"),
            ("postcopy", "postcopy-ram"),
        ):
            if flag in options:
                if not isinstance(options[flag], bool):
                    raise ValueError(
                        f"policy option {flag} must be true or false, got {options[flag]!r}"
                    )
                caps[capability] = options[flag]
        if caps.get("switchover-ack"):
            caps["return-path"] = True
        if "multifd_channels" in options:
            params["multifd-channels"] = _positive_int("multifd_channels", options["multifd_channels"])
        bandwidth = options.get("max_bandwidth_mib")
        downtime = options.get("downtime_limit_ms")
        return cls(
            timeout_s=float(timeout_s),
            downtime_limit_ms=None if downtime is None else _positive_int("downtime_limit_ms", downtime),
            max_bandwidth_bytes=None
            if bandwidth is None
            else _positive_int("max_bandwidth_mib", bandwidth) << 20,
            capabilities=tuple(caps.items()),
            parameters=tuple(params.items()),
        )

    def all_capabilities(self) -> list[dict[str, Any]]:
        caps = {"events": True, **dict(self.capabilities)}
        return [{"capability": k, "state": v} for k, v in caps.items()]

    def unsupported(self, available_capabilities: frozenset[str]) -> list[str]:
        """Capabilities this policy turns on that a QEMU does not have."""
        return [c for c, on in self.capabilities if on and c not in available_capabilities]

    def describe(self) -> dict[str, Any]:
        return {
            "timeout_s": self.timeout_s,
            "stall_s": self.stall_s,
            "downtime_limit_ms": self.downtime_limit_ms,
            "max_bandwidth_bytes": self.max_bandwidth_bytes,
            "capabilities": dict(self.capabilities),
            "parameters": dict(self.parameters),
        }


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"policy option {name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class TimelinePoint:
    t_ms: float  # controller time since `migrate` was sent
    status: str
    ram_transferred: int | None
    ram_remaining: int | None
    mbps: float | None
    dirty_pages_rate: int | None
    expected_downtime_ms: int | None

    @classmethod
    def from_query(cls, t_ms: float, info: dict[str, Any]) -> TimelinePoint:
        ram = info.get("ram", {})
        return cls(
            t_ms=round(t_ms, 1),
            status=str(info.get("status", "none")),
            ram_transferred=ram.get("transferred"),
            ram_remaining=ram.get("remaining"),
            mbps=ram.get("mbps"),
            dirty_pages_rate=ram.get("dirty-pages-rate"),
            expected_downtime_ms=info.get("expected-downtime"),
        )


@dataclass(frozen=True)
class MigrationResult:
    """What one migration did, from QEMU's figures and the controller's own observations."""

    source: str
    destination: str
    uri: str
    status: str
    total_time_ms: int | None
    setup_time_ms: int | None
    downtime_ms: int | None
    ram_transferred_bytes: int | None
    ram_total_bytes: int | None
    vfio_transferred_bytes: int | None
    passes: int | None
    wall_time_ms: float
    error_desc: str | None
    final_stats: dict[str, Any]
    events: tuple[QmpEvent, ...]
    timeline: tuple[TimelinePoint, ...]
    methods: dict[str, str] = field(default_factory=lambda: dict(METHODS))

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def figures(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "total_time_ms": self.total_time_ms,
            "setup_time_ms": self.setup_time_ms,
            "downtime_ms": self.downtime_ms,
            "ram_transferred_bytes": self.ram_transferred_bytes,
            "vfio_transferred_bytes": self.vfio_transferred_bytes,
            "passes": self.passes,
            "wall_time_ms": round(self.wall_time_ms, 1),
        }


class Migrator:
    """Migrate ``source`` to ``destination`` once. Ask for :attr:`result` only after :meth:`run`."""

    def __init__(
        self,
        source: RemoteMachine,
        destination: RemoteMachine,
        *,
        uri: str,
        policy: MigrationPolicy | None = None,
        keep_failed_destination: bool = False,
    ) -> None:
        """``keep_failed_destination``: the destination's QEMU takes ``exit-on-error`` (9.1+):
        it is told to stay up when loading the state fails, so its own ``query-migrate`` says
        why (:func:`mdevtest.diagnose.diagnose` asks it)."""
        self.source = source
        self.destination = destination
        self.uri = uri
        self.policy = policy or MigrationPolicy()
        self.keep_failed_destination = keep_failed_destination
        self._state = "new"
        self._yanked: str | None = None  # why the migration was yanked (stuck source), if it was
        self._result: MigrationResult | None = None
        self._last_info: dict[str, Any] = {}  # the latest query-migrate reply

    @property
    def result(self) -> MigrationResult:
        if self._result is None:
            raise StateError(f"migration {self.uri} has no result yet (state: {self._state})")
        return self._result

    def prepare(self) -> None:
        """Capabilities on both sides, parameters on the source, destination listening.

        A QEMU keeps capabilities and parameters from one migration to the next (a guest that
        was migrated, or a cancelled attempt), so everything a policy can touch is set
        explicitly: policy values over the values the source had when first seen.
        """
        caps = self.policy.all_capabilities()
        for machine in (self.source, self.destination):
            known = {c["capability"] for c in machine.qmp.execute("query-migrate-capabilities")}
            wanted = {c["capability"] for c in caps}
            resets = [
                {"capability": c, "state": False} for c in RESETTABLE_CAPABILITIES if c in known - wanted
            ]
            # "off" for a capability this QEMU does not have is what it does anyway: not sent
            # (QEMU would refuse the unknown name). One it lacks but should turn on is sent,
            # and QEMU's refusal names it.
            sent = [c for c in caps if c["state"] or c["capability"] in known]
            machine.qmp.execute("migrate-set-capabilities", {"capabilities": resets + sent})
        defaults = self.source.initial_migration_parameters()
        params: dict[str, Any] = {k: v for k, v in defaults.items() if k in POLICY_PARAMETERS}
        params.update(self.policy.parameters)
        if self.policy.downtime_limit_ms is not None:
            params["downtime-limit"] = self.policy.downtime_limit_ms
        if self.policy.max_bandwidth_bytes is not None:
            params["max-bandwidth"] = self.policy.max_bandwidth_bytes
        if params:
            self.source.qmp.execute("migrate-set-parameters", params)
        blocked = self.source.qmp.execute("query-migrate").get("blocked-reasons") or []
        if blocked:
            raise MigrationBlocked(
                f"{self.source.label}: migration is blocked: {'; '.join(map(str, blocked))}"
            )
        incoming: dict[str, Any] = {"uri": self.uri}
        if self.keep_failed_destination:
            incoming["exit-on-error"] = False
        self.destination.qmp.execute("migrate-incoming", incoming)
        self._state = "prepared"

    def run(
        self,
        *,
        cancel_when: Callable[[TimelinePoint], bool] | None = None,
        on_point: Callable[[TimelinePoint], None] | None = None,
    ) -> MigrationResult:
        """Migrate; return the result of a completed migration or raise a MigrationError.

        ``cancel_when`` (a test's deliberate cancel): once it returns true for a timeline point,
        ``migrate_cancel`` is sent; the result then has status ``cancelled`` (not an error) after
        the source was verified running again. ``on_point`` sees every timeline point as it is
        polled (fault injection uses it to act at a chosen phase).
        """
        if self._state == "new":
            self.prepare()
        if self._state != "prepared":
            raise StateError(f"migration {self.uri} cannot run in state {self._state}")
        src = self.source
        first_event = src.qmp.event_count()
        timeline: list[TimelinePoint] = []
        started = time.monotonic()
        try:
            return self._run(timeline, started, first_event, cancel_when, on_point)
        except BaseException:
            # Whatever ended it (QMP or SSH lost, a cancel for time, Ctrl-C): keep what was
            # seen, so the summary has the migration with its timeline. Status: QEMU's last
            # final one, else ``aborted`` (it never reached one that mdevtest saw).
            if self._result is None:
                info = dict(self._last_info)
                if str(info.get("status")) not in FINAL_STATES:
                    info["status"] = ABORTED
                wall_ms = (time.monotonic() - started) * 1000
                events = list(src.qmp.events[first_event:])  # kept by the client, no round trip
                self._result = self._make_result(info, timeline, wall_ms, events)
            raise

    def _run(
        self,
        timeline: list[TimelinePoint],
        started: float,
        first_event: int,
        cancel_when: Callable[[TimelinePoint], bool] | None,
        on_point: Callable[[TimelinePoint], None] | None,
    ) -> MigrationResult:
        src, dst = self.source, self.destination
        src.qmp.execute("migrate", {"uri": self.uri})
        self._state = "running"
        deadline = started + self.policy.timeout_s
        info: dict[str, Any] = {}
        cancel_sent = False
        while True:
            info = self._query_migrate()
            point = TimelinePoint.from_query((time.monotonic() - started) * 1000, info)
            timeline.append(point)
            status = str(info.get("status", "none"))
            if status in FINAL_STATES:
                break
            if time.monotonic() > deadline:
                self._cancel(info)
            if on_point is not None:  # fault injection and observers act on each poll
                on_point(point)
            if cancel_when is not None and not cancel_sent and cancel_when(point):
                src.qmp.execute("migrate_cancel")
                cancel_sent = True
            time.sleep(self.policy.poll_interval_s)
        wall_ms = (time.monotonic() - started) * 1000
        if status == "completed":
            info = self._settled(info)
        self._result = self._make_result(info, timeline, wall_ms, src.qmp.events[first_event:])
        self._state = status
        if status == "failed" and self._yanked is not None:
            runs = self._require_source_running()
            raise MigrationTimedOut(
                f"{src.label} -> {dst.label}: stuck: {self._yanked}; the migration was yanked out "
                f"of band and failed ({info.get('error-desc', 'no error-desc')}); source {runs}"
            )
        if status == "failed":
            self._require_source_running()
            raise MigrationFailed(
                f"{src.label} -> {dst.label}: migration failed: "
                f"{info.get('error-desc', 'no error-desc from QEMU')}"
            )
        if status == "cancelled":
            self._require_source_running()
            if cancel_sent:
                return self._result
            raise MigrationError(f"{src.label} -> {dst.label}: migration was cancelled")
        self._wait_destination_running()
        return self._result

    def _settled(self, info: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """The final figures, once QEMU has computed them.

        QEMU sets ``completed`` a moment before it computes ``total-time`` and ``downtime`` (seen on
        7.2): a reply from that window reports both as 0. Re-query until ``total-time`` is set.
        """
        deadline = time.monotonic() + timeout
        while not info.get("total-time") and time.monotonic() < deadline:
            time.sleep(0.02)
            info = self.source.qmp.execute("query-migrate")
        if not info.get("total-time"):
            raise MigrationError(
                f"{self.source.label}: migration completed but QEMU reported no total-time "
                f"within {timeout:g} s: {info}"
            )
        return info

    def _query_migrate(self) -> dict[str, Any]:
        """``query-migrate`` on the source; unanswered for ``stall_s``: yank, then ask again."""
        try:
            info = dict(self.source.qmp.execute("query-migrate", timeout=self.policy.stall_s))
        except QmpTimedOut:
            self._yank(f"QMP did not answer query-migrate for {self.policy.stall_s:g} s")
            info = dict(self.source.qmp.execute("query-migrate", timeout=self.policy.stall_s))
        self._last_info = info
        return info

    def _yank(self, why: str) -> None:
        """Shut the migration's connection down out of band (answered while the main loop is stuck)."""
        try:
            self.source.qmp.execute("yank", {"instances": [{"type": "migration"}]}, oob=True, timeout=10)
        except QmpError as exc:
            raise MigrationError(
                f"{self.source.label}: {why}, and the out-of-band yank failed too: {exc}; the source "
                "QEMU is left as it is for the diagnosis"
            ) from exc
        self._yanked = why

    def _cancel(self, info: dict[str, Any]) -> None:
        src = self.source
        try:
            src.qmp.execute("migrate_cancel", timeout=self.policy.stall_s)
        except QmpTimedOut:
            self._yank(f"QMP did not answer migrate_cancel for {self.policy.stall_s:g} s")
        deadline = time.monotonic() + 30
        while str(self._query_migrate().get("status")) not in FINAL_STATES:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self._state = "cancelled"
        runs = self._require_source_running()
        raise MigrationTimedOut(
            f"{src.label} -> {self.destination.label}: not completed within "
            f"{self.policy.timeout_s:g} s (last status {info.get('status')}, "
            f"remaining {info.get('ram', {}).get('remaining')} bytes); cancelled, source {runs}"
        )

    def _require_source_running(self) -> str:
        return require_running_again(self.source)

    def _wait_destination_running(self, timeout: float = 30.0) -> None:
        wait_running(self.destination, timeout)

    def _make_result(
        self,
        info: dict[str, Any],
        timeline: list[TimelinePoint],
        wall_ms: float,
        events: list[QmpEvent],
    ) -> MigrationResult:
        return result_of(
            self.source, self.destination, self.uri, info,
            timeline=timeline, wall_ms=wall_ms, events=events,
        )  # fmt: skip


def require_running_again(source: RemoteMachine) -> str:
    """After a failed or cancelled migration the guest must run on the source again."""
    deadline = time.monotonic() + 15
    status = "unknown"
    while time.monotonic() < deadline:
        try:
            status = source.status()
        except (QmpError, MachineError) as exc:
            raise MigrationError(
                f"{source.label}: source unreachable after the migration stopped: {exc}"
            ) from exc
        if status == "running":
            return "is running again"
        time.sleep(0.2)
    raise MigrationError(
        f"{source.label}: guest did not resume on the source after the migration "
        f"stopped (status {status})"
    )


def wait_running(destination: RemoteMachine, timeout: float = 30.0) -> None:
    """After a completed migration the guest must run on the destination."""
    deadline = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < deadline:
        status = destination.status()
        if status == "running":
            return
        time.sleep(0.05)
    raise MigrationError(
        f"{destination.label}: destination is {status!r}, not running, "
        f"{timeout:g} s after the migration completed"
    )


def result_of(
    source: RemoteMachine,
    destination: RemoteMachine,
    uri: str,
    info: dict[str, Any],
    *,
    timeline: list[TimelinePoint],
    wall_ms: float,
    events: Sequence[QmpEvent],
    methods: dict[str, str] | None = None,
) -> MigrationResult:
    """The result from a ``query-migrate``-shaped ``info`` (``methods``: how its figures were
    measured, QEMU's :data:`METHODS` by default)."""
    ram = info.get("ram", {})
    vfio = info.get("vfio")
    return MigrationResult(
        source=source.host.name,
        destination=destination.host.name,
        uri=uri,
        status=str(info.get("status")),
        total_time_ms=info.get("total-time"),
        setup_time_ms=info.get("setup-time"),
        downtime_ms=info.get("downtime"),
        ram_transferred_bytes=ram.get("transferred"),
        ram_total_bytes=ram.get("total"),
        vfio_transferred_bytes=vfio.get("transferred") if isinstance(vfio, dict) else None,
        passes=ram.get("dirty-sync-count"),
        wall_time_ms=wall_ms,
        error_desc=info.get("error-desc"),
        final_stats=info,
        events=tuple(events),
        timeline=tuple(timeline),
        methods=dict(METHODS if methods is None else methods),
    )
