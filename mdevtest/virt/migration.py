"""A live migration through libvirt: :class:`LibvirtMigrator`, the libvirt backend's
:class:`~mdevtest.migration.Migrator`.

How it migrates:

* ``direct`` (default): the controller holds both hosts' connections and calls
  ``virDomainMigrate3`` (``VIR_MIGRATE_LIVE``): libvirt starts the destination QEMU from the
  destination's domain XML (``VIR_MIGRATE_PARAM_DEST_XML``: its own mdev or VF, its own machine
  directory), QEMU migrates over ``VIR_MIGRATE_PARAM_URI`` (the pair's migration address and port),
  libvirt resumes the destination and ends the source;
* ``p2p`` (a pair's ``libvirt_peer_uri``, e.g. ``qemu+tcp://198.18.1.12/system``):
  ``virDomainMigrateToURI3`` with ``VIR_MIGRATE_PEER2PEER``: the source's libvirtd drives the
  migration and talks to the destination's itself, as OpenStack and oVirt deploy it.

The policy maps to libvirt: ``downtime_limit_ms`` -> ``virDomainMigrateSetMaxDowntime``,
``max_bandwidth_mib`` -> ``VIR_MIGRATE_PARAM_BANDWIDTH``, ``multifd`` -> ``VIR_MIGRATE_PARALLEL``
(+ connections), ``auto_converge`` -> ``VIR_MIGRATE_AUTO_CONVERGE``, ``postcopy`` ->
``VIR_MIGRATE_POSTCOPY``. ``switchover_ack`` and ``pause_before_switchover`` have no libvirt
equivalent (libvirt uses ``pause-before-switchover`` itself): such a policy is refused.

The figures (see :data:`METHODS`): libvirt's job statistics, polled during the migration
(``virDomainGetJobStats``, a query job libvirt allows while it migrates; a QMP command would
wait for the migration job) and, at the end, the completed job's statistics from libvirt's
``JOB_COMPLETED`` event on the source (libvirt 10.6+ includes ``vfio_data_transferred``). QEMU's
own events (MIGRATION, STOP, RESUME...) come through ``qemu-monitor-event``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from mdevtest.errors import (
    MachineError,
    MigrationBlocked,
    MigrationError,
    MigrationFailed,
    MigrationTimedOut,
    StateError,
)
from mdevtest.migration import (
    ABORTED,
    METHODS,
    MigrationPolicy,
    MigrationResult,
    TimelinePoint,
    require_running_again,
    result_of,
    wait_running,
)
from mdevtest.virt.connection import error_text, libvirt_module
from mdevtest.virt.machine import LibvirtMachine

#: How each figure is measured with the libvirt backend (replaces :data:`METHODS` entries).
LIBVIRT_METHODS: dict[str, str] = {
    **METHODS,
    "total_time_ms": "libvirt job statistics 'time_elapsed' of the completed outgoing "
    "migration job (ms, from libvirt's start of the job to its end, on the source host)",
    "setup_time_ms": "libvirt job statistics 'setup_time' (QEMU's setup-time, ms)",
    "downtime_ms": "libvirt job statistics 'downtime' of the completed job: from the source's "
    "vCPUs stopping to the destination's resuming, as libvirt measured it (ms; includes "
    "libvirt's own finish phase, so above QEMU's 'downtime' of the qemu backend; QEMU's "
    "STOP/MIGRATION events are in the report)",
    "ram_transferred_bytes": "libvirt job statistics 'memory_processed' (QEMU's ram.transferred, bytes)",
    "vfio_transferred_bytes": "libvirt job statistics 'vfio_data_transferred' (QEMU's "
    "vfio.transferred, bytes; libvirt 10.6+); null when libvirt did not report it",
    "passes": "libvirt job statistics 'memory_iteration' (QEMU's ram.dirty-sync-count)",
    "wall_time_ms": "controller monotonic clock from the libvirt migrate call to its return",
}

_POLICY_REFUSED = ("switchover-ack", "pause-before-switchover")
_JOB_NONE, _JOB_UNBOUNDED, _JOB_COMPLETED, _JOB_FAILED, _JOB_CANCELLED = 0, 2, 3, 4, 5


def query_info(stats: dict[str, Any], status: str) -> dict[str, Any]:
    """libvirt job statistics as the ``query-migrate`` reply the rest of mdevtest reads."""
    ram: dict[str, Any] = {
        "transferred": stats.get("memory_processed"),
        "remaining": stats.get("memory_remaining"),
        "total": stats.get("memory_total"),
        "dirty-pages-rate": stats.get("memory_dirty_rate"),
        "dirty-sync-count": stats.get("memory_iteration"),
    }
    bps = stats.get("memory_bps")
    if isinstance(bps, int):
        ram["mbps"] = round(bps * 8 / 1e6, 3)
    info: dict[str, Any] = {
        "status": status,
        "total-time": stats.get("time_elapsed"),
        "setup-time": stats.get("setup_time"),
        "downtime": stats.get("downtime"),
        "ram": {k: v for k, v in ram.items() if v is not None},
        "libvirt": dict(stats),
    }
    if "vfio_data_transferred" in stats:
        info["vfio"] = {"transferred": stats["vfio_data_transferred"]}
    return info


def libvirt_flags(policy: MigrationPolicy, *, p2p: bool) -> tuple[int, dict[str, Any]]:
    """The migrate flags and typed parameters of ``policy`` (without URI and XML)."""
    libvirt = libvirt_module()
    caps = dict(policy.capabilities)
    refused = [c for c in _POLICY_REFUSED if caps.get(c)]
    if refused:
        raise MigrationError(
            f"policy {', '.join(refused)}: libvirt has no such migration option (it uses "
            "pause-before-switchover itself); run this test on a pair with backend qemu"
        )
    flags = libvirt.VIR_MIGRATE_LIVE
    if p2p:
        flags |= libvirt.VIR_MIGRATE_PEER2PEER
    params: dict[str, Any] = {}
    if caps.get("auto-converge"):
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if caps.get("postcopy-ram"):
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if caps.get("multifd"):
        flags |= libvirt.VIR_MIGRATE_PARALLEL
        channels = dict(policy.parameters).get("multifd-channels")
        if channels is not None:
            params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = int(channels)
    if policy.max_bandwidth_bytes is not None:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = max(1, policy.max_bandwidth_bytes >> 20)
    return flags, params


class LibvirtMigrator:
    """Migrate ``source`` to ``destination`` once through libvirt (see the module doc)."""

    def __init__(
        self,
        source: LibvirtMachine,
        destination: LibvirtMachine,
        *,
        uri: str,
        policy: MigrationPolicy | None = None,
        peer_uri: str | None = None,
    ) -> None:
        """``uri``: QEMU's migration stream (``tcp:ADDR:PORT``); ``peer_uri``: the destination
        libvirtd as the source's libvirtd reaches it (peer-to-peer), None for direct."""
        self.source = source
        self.destination = destination
        self.uri = uri
        self.policy = policy or MigrationPolicy()
        self.peer_uri = peer_uri
        self._result: MigrationResult | None = None
        self._completed: Future[dict[str, Any]] = Future()
        self._last: dict[str, Any] = {}

    @property
    def result(self) -> MigrationResult:
        if self._result is None:
            raise StateError(f"migration {self.uri} has no result yet")
        return self._result

    @property
    def mode(self) -> str:
        return "p2p" if self.peer_uri else "direct"

    def run(
        self,
        *,
        cancel_when: Callable[[TimelinePoint], bool] | None = None,
        on_point: Callable[[TimelinePoint], None] | None = None,
    ) -> MigrationResult:
        """Migrate; the result of a completed (or deliberately cancelled) migration, else a
        :class:`MigrationError` after the guest was verified running on the source."""
        libvirt = libvirt_module()
        src, dst = self.source, self.destination
        flags, params = libvirt_flags(self.policy, p2p=self.peer_uri is not None)
        blocked = src.qmp.execute("query-migrate").get("blocked-reasons") or []
        if blocked:
            raise MigrationBlocked(f"{src.label}: migration is blocked: {'; '.join(map(str, blocked))}")
        link = src.link
        if self.policy.downtime_limit_ms is not None:
            link.call(src.domain.migrateSetMaxDowntime, self.policy.downtime_limit_ms, 0,
                      what="migrate-setmaxdowntime")  # fmt: skip
        params[libvirt.VIR_MIGRATE_PARAM_URI] = self.uri.replace("tcp:", "tcp://", 1)
        params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = dst.xml()
        callback = link.call(
            link.conn.domainEventRegisterAny,
            src.domain,
            libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
            self._on_job_completed,
            None,
            what="register for JOB_COMPLETED",
        )
        first_event = src.qmp.event_count()
        timeline: list[TimelinePoint] = []
        started = time.monotonic()
        outcome: Future[None] = Future()
        threading.Thread(
            target=self._migrate, args=(flags, params, outcome), name=f"migrate {src.label}",
            daemon=True,
        ).start()  # fmt: skip
        try:
            return self._watch(
                outcome, timeline=timeline, started=started, first_event=first_event,
                cancel_when=cancel_when, on_point=on_point,
            )  # fmt: skip
        except BaseException:
            if self._result is None:
                info = dict(self._last) or {"status": ABORTED}
                info["status"] = (
                    ABORTED if info.get("status") not in ("failed", "cancelled") else info["status"]
                )
                self._result = self._make_result(info, timeline, started, first_event)
            raise
        finally:
            with_suppressed(lambda: link.conn.domainEventDeregisterAny(callback))

    def _on_job_completed(self, _conn: Any, _dom: Any, stats: dict[str, Any], _opaque: Any) -> None:
        if not self._completed.done():
            self._completed.set_result(dict(stats))

    def _migrate(self, flags: int, params: dict[str, Any], outcome: Future[None]) -> None:
        try:
            domain = self.source.domain
            if self.peer_uri is not None:
                domain.migrateToURI3(self.peer_uri, params, flags)
            else:
                domain.migrate3(self.destination.link.conn, params, flags)
            outcome.set_result(None)
        except BaseException as exc:  # delivered to the watching thread
            outcome.set_exception(exc)

    def _watch(
        self,
        outcome: Future[None],
        *,
        timeline: list[TimelinePoint],
        started: float,
        first_event: int,
        cancel_when: Callable[[TimelinePoint], bool] | None,
        on_point: Callable[[TimelinePoint], None] | None,
    ) -> MigrationResult:
        libvirt = libvirt_module()
        src, dst = self.source, self.destination
        deadline = started + self.policy.timeout_s
        cancel_sent = timed_out = False
        while not outcome.done():
            stats = self._job_stats()
            if stats is not None and stats.get("type") == _JOB_UNBOUNDED:
                info = query_info(stats, "active")
                self._last = info
                point = TimelinePoint.from_query((time.monotonic() - started) * 1000, info)
                timeline.append(point)
                if on_point is not None:
                    on_point(point)
                if cancel_when is not None and not cancel_sent and cancel_when(point):
                    self._abort()
                    cancel_sent = True
            if not timed_out and time.monotonic() > deadline:
                self._abort()
                timed_out = True
            outcome_wait(outcome, self.policy.poll_interval_s)
        error = outcome.exception()
        if error is None:
            stats = self._final_stats()
            info = query_info(stats, "completed")
            self._result = self._make_result(info, timeline, started, first_event)
            dst.adopt()
            self._wait_destination_running()
            return self._result
        text = error_text(error) if isinstance(error, libvirt.libvirtError) else repr(error)
        status = "cancelled" if cancel_sent or timed_out else "failed"
        info = {**self._last, "status": status, "error-desc": text}
        self._result = self._make_result(info, timeline, started, first_event)
        runs = self._require_source_running()
        if timed_out:
            raise MigrationTimedOut(
                f"{src.label} -> {dst.label}: not completed within {self.policy.timeout_s:g} s; "
                f"libvirt aborted the job ({text}); source {runs}"
            )
        if cancel_sent:
            return self._result
        raise MigrationFailed(f"{src.label} -> {dst.label}: migration failed: {text}")

    def _job_stats(self) -> dict[str, Any] | None:
        try:
            stats: dict[str, Any] = self.source.link.call(
                self.source.domain.jobStats, 0, what="domjobinfo", timeout=self.policy.stall_s
            )
        except MachineError:
            return None  # the domain is gone at the very end (libvirt ended the source)
        return stats

    def _abort(self) -> None:
        with contextlib.suppress(MachineError):  # finished meanwhile: the outcome says how
            self.source.link.call(self.source.domain.abortJob, what="domjobabort", timeout=30)

    def _final_stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """The completed job's statistics: the source's JOB_COMPLETED event, else the
        destination's completed job (libvirt hands the statistics over in its cookie)."""
        with contextlib.suppress(Exception):
            return self._completed.result(timeout=timeout)
        libvirt = libvirt_module()
        dst = self.destination
        link = dst.link
        domain = link.call(link.conn.lookupByName, dst.domain_name, what="look up")
        flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
        stats: dict[str, Any] = link.call(domain.jobStats, flags, what="domjobinfo --completed")
        if not stats.get("time_elapsed"):
            raise MigrationError(
                f"{self.source.label}: libvirt reported the migration complete but no statistics "
                f"of it (no JOB_COMPLETED event, destination job: {stats})"
            )
        return stats

    def _require_source_running(self) -> str:
        return require_running_again(self.source)

    def _wait_destination_running(self) -> None:
        wait_running(self.destination)

    def _make_result(
        self, info: dict[str, Any], timeline: list[TimelinePoint], started: float, first_event: int
    ) -> MigrationResult:
        events = self.source.qmp.events[first_event:] if self.source._qmp else []
        info = {**info, "backend": "libvirt", "libvirt_mode": self.mode}
        wall_ms = (time.monotonic() - started) * 1000
        return result_of(
            self.source, self.destination, self.uri, info,
            timeline=timeline, wall_ms=wall_ms, events=events, methods=LIBVIRT_METHODS,
        )  # fmt: skip


def outcome_wait(outcome: Future[None], seconds: float) -> None:
    """Sleep up to ``seconds``, less when ``outcome`` is done first."""
    with contextlib.suppress(Exception):
        outcome.exception(timeout=seconds)


def with_suppressed(fn: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):  # a connection that went away took its callbacks
        fn()
