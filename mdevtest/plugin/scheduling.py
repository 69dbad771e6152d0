"""``--dist loadgroup`` by host set: every test of one pair of hosts goes to one xdist worker.

pytest-xdist's own ``loadgroup`` renames items (``nodeid@group``) from ``xdist_group`` markers,
which has no effect with pytest >= 9 (a node id is derived from its structured id there), so its
groups silently vanish and workers then queue on each other's host leases. This scheduler groups
by the host pair named in the test id instead (the plugin's ``pair`` parametrisation), which
needs nothing renamed: ``test_x[host-a->host-b-multifd]`` and ``test_x[host-b->host-a]`` share
the scope ``host-a+host-b``. Tests without a pair are scoped as xdist's ``loadgroup`` would
(their ``@group`` suffix if any, else the test itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xdist.scheduler import LoadGroupScheduling  # type: ignore[import-untyped]


def host_scope(nodeid: str, pairs: Sequence[tuple[str, str, str]]) -> str | None:
    """``source+destination`` (sorted) of the first ``(pair id, source, destination)`` whose id
    opens the test's parameters; None when no pair does."""
    _, bracket, params = nodeid.partition("[")
    if not bracket:
        return None
    for pair_id, source, destination in sorted(pairs, key=lambda p: -len(p[0])):
        if params.startswith(pair_id) and params[len(pair_id) : len(pair_id) + 1] in ("]", "-"):
            return "+".join(sorted({source, destination}))
    return None


class HostSetScheduling(LoadGroupScheduling):  # type: ignore[misc]  # xdist has no type hints
    """``LoadGroupScheduling`` whose scope of a test is its host set (see the module doc)."""

    def __init__(self, config: Any, log: Any, pairs: Sequence[tuple[str, str, str]]) -> None:
        super().__init__(config, log)
        self.pairs = tuple(pairs)

    def _split_scope(self, nodeid: str) -> str:
        scope = host_scope(nodeid, self.pairs)
        if scope is not None:
            return scope
        return str(super()._split_scope(nodeid))
