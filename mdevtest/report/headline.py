"""One migration in one line: the migrate step's title in Allure, its terminal line, its labels.

The figures a reader looks for first (QEMU's downtime, the downtime the guest's heartbeats showed,
the total time) go where they are seen without a click::

    migrate host-a->host-b: downtime 45 ms (observed 120 ms), total 2.8 s        (Allure step)
    host-a->host-b migrated in 2.8 s, downtime 45 ms (observed 120 ms) [passed]  (terminal)

and a migration that did not complete says how it ended and whose failure it was::

    migrate host-a->host-b: failed after 3.1 s (product)
    host-a->host-b migration failed after 3.1 s [product]: host-a/vm1 -> host-b/vm1: migration ...
"""

from __future__ import annotations

from dataclasses import dataclass

from mdevtest.migration import MigrationResult

#: Longest error text on a terminal line (the whole error is in the report).
ERROR_MAX = 160


@dataclass(frozen=True)
class MigrationHeadline:
    """What one migration's line says. ``status`` is QEMU's (``completed``, ``failed``,
    ``cancelled``), None when QEMU never migrated (the vGPUs did not check out); ``total_ms`` is
    QEMU's total time, else the controller's wall time."""

    pair: str
    status: str | None
    total_ms: float | None = None
    downtime_ms: float | None = None
    observed_downtime_ms: float | None = None
    failure_class: str | None = None
    error: str | None = None

    @classmethod
    def of(
        cls,
        pair: str,
        result: MigrationResult | None,
        *,
        observed_downtime_ms: float | None = None,
        failure_class: str | None = None,
        error: str | None = None,
        wall_ms: float | None = None,
    ) -> MigrationHeadline:
        """The headline of a migration from its result (None: it failed before QEMU migrated)."""
        if result is None:
            return cls(pair, None, wall_ms, failure_class=failure_class, error=error)
        total = result.total_time_ms if result.total_time_ms is not None else result.wall_time_ms
        return cls(
            pair,
            result.status,
            total,
            result.downtime_ms,
            observed_downtime_ms,
            failure_class,
            error or result.error_desc,
        )

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def downtime(self) -> str | None:
        """``downtime 45 ms (observed 120 ms)``, whichever of the two is known; None: neither."""
        observed = self.observed_downtime_ms
        if self.downtime_ms is None:
            return None if observed is None else f"observed downtime {milliseconds(observed)}"
        text = f"downtime {milliseconds(self.downtime_ms)}"
        return text if observed is None else f"{text} (observed {milliseconds(observed)})"

    def ended(self) -> str:
        """How a migration that did not complete ended: ``failed``, ``cancelled``."""
        return "failed" if self.status in (None, "failed") else self.status

    def figures(self) -> str:
        """``downtime 45 ms (observed 120 ms), total 2.8 s``; what is unknown is left out.
        For a migration that did not complete: ``failed after 3.1 s (product)``."""
        if not self.completed:
            text = self.ended()
            if self.total_ms is not None:
                text += f" after {duration(self.total_ms)}"
            return f"{text} ({self.failure_class})" if self.failure_class else text
        parts = [self.downtime()]
        if self.total_ms is not None:
            parts.append(f"total {duration(self.total_ms)}")
        return ", ".join(p for p in parts if p) or "completed"

    def step_title(self) -> str:
        """The migrate step's title: ``migrate host-a->host-b: downtime 45 ms ..., total 2.8 s``."""
        return f"migrate {self.pair}: {self.figures()}"

    def terminal_line(self, verdict: str) -> str:
        """``host-a->host-b migrated in 2.8 s, downtime 45 ms (observed 120 ms) [passed]``;
        ``verdict`` is what the checks said (``passed``, ``failed: heartbeat``, ...)."""
        if self.completed:
            text = f"{self.pair} migrated"
            if self.total_ms is not None:
                text += f" in {duration(self.total_ms)}"
            downtime = self.downtime()
            return f"{text}, {downtime} [{verdict}]" if downtime else f"{text} [{verdict}]"
        text = f"{self.pair} migration {self.ended()}"
        if self.total_ms is not None:
            text += f" after {duration(self.total_ms)}"
        text += f" [{self.failure_class or self.ended()}]"
        first = self.error.strip().splitlines()[0] if self.error and self.error.strip() else ""
        if first:
            text += f": {first[: ERROR_MAX - 1]}…" if len(first) > ERROR_MAX else f": {first}"
        return text

    def labels(self) -> list[tuple[str, str]]:
        """Allure labels with the figures as plain numbers (ms): ``downtime_ms``,
        ``observed_downtime_ms``, ``total_time_ms`` (those known), for filters and widgets."""
        out = []
        for name, value in (
            ("downtime_ms", self.downtime_ms),
            ("observed_downtime_ms", self.observed_downtime_ms),
            ("total_time_ms", self.total_ms),
        ):
            if value is not None:
                out.append((name, _number(value)))
        return out


def milliseconds(value: float) -> str:
    """``45 ms``, ``61.5 ms``, ``1204 ms``: a downtime keeps its unit whatever its size."""
    return f"{value:.0f} ms" if value >= 100 or float(value).is_integer() else f"{value:.1f} ms"


def duration(ms: float) -> str:
    """``850 ms`` under a second, ``2.8 s`` above."""
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _number(value: float) -> str:
    """``45``, ``61.5``: a label's value as a plain number (no exponent)."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
