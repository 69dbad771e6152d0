"""Our markers: validated at collection (a bad one is a usage error naming what is allowed),
turned into skips where a pair cannot run the test, and into xdist groups by host set."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import pytest
from pydantic import ValidationError

if TYPE_CHECKING:
    from mdevtest.inventory import HostPair, Inventory


class MarkerSession(Protocol):
    """What the markers read of the session (the plugin's ``SessionState`` has it). A protocol,
    so that this module needs nothing of the hooks that call it."""

    @property
    def inventory(self) -> Inventory | None: ...

    @property
    def allow_destructive(self) -> bool: ...


DESTRUCTIVE_SKIP = (
    "destructive (fault injection): only on the local lab or with --mdevtest-allow-destructive"
)


def _known_workloads() -> set[str]:
    try:
        registry = importlib.import_module("mdevtest.workloads.registry")
    except ImportError:  # the registry is optional; the lab's own workload always exists
        return {"synthetic"}
    return set(registry.known_workloads())


def _skip(item: pytest.Item, reason: str) -> None:
    item.add_marker(pytest.mark.skip(reason=reason))


def _check_policy_and_limits(item: pytest.Item) -> list[str]:
    from mdevtest.inventory import Limits
    from mdevtest.migration import MigrationPolicy

    problems = []
    for mark in item.iter_markers("policy"):
        if mark.args:
            problems.append(f"{item.nodeid}: policy takes keyword options only, got {mark.args}")
        try:
            MigrationPolicy.from_options(**mark.kwargs)
        except (TypeError, ValueError) as exc:
            problems.append(f"{item.nodeid}: policy{mark.kwargs}: {exc}")
    for mark in item.iter_markers("limits"):
        try:
            Limits.model_validate(mark.kwargs)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            allowed = ", ".join(Limits.model_fields)
            problems.append(
                f"{item.nodeid}: limits{mark.kwargs}: {where}: {first['msg']} (allowed: {allowed})"
            )
    return problems


def _check_pair_requirements(item: pytest.Item, pair: HostPair | None, vendors: set[str]) -> list[str]:
    problems = []
    type_mark = item.get_closest_marker("vgpu_type")
    if type_mark is not None:
        wanted = type_mark.args
        if not wanted or not all(isinstance(a, str) for a in wanted):
            problems.append(f"{item.nodeid}: vgpu_type needs type ids, e.g. vgpu_type('i915-GVTg_V5_4')")
        elif pair is not None and (pair.vgpu.type if pair.vgpu else None) not in wanted:
            have = pair.vgpu.type if pair.vgpu else "no vGPU"
            _skip(item, f"{pair.id} offers {have}, the test needs {' or '.join(wanted)}")
    vendor_mark = item.get_closest_marker("vendor")
    if vendor_mark is not None:
        wanted = vendor_mark.args
        if not wanted or any(a not in vendors for a in wanted):
            problems.append(f"{item.nodeid}: vendor{wanted}: allowed are {', '.join(sorted(vendors))}")
        elif pair is not None and (pair.vgpu.vendor if pair.vgpu else None) not in wanted:
            have = pair.vgpu.vendor if pair.vgpu else "none"
            _skip(item, f"{pair.id} has vendor {have}, the test needs {' or '.join(wanted)}")
    return problems


def _image_workloads(state: MarkerSession) -> Callable[[str], str | None] | None:
    """For a lab image: why a workload cannot run in it (None: it can); None for other images,
    whose guests are asked when the test runs."""
    from mdevtest.inventory import LabImage

    image = state.inventory.guest.image if state.inventory is not None else None
    if not isinstance(image, LabImage):
        return None
    from mdevtest.lab.images import lab_image

    return lab_image(image.kind).why_not


def pair_of(inventory: Inventory | None, pair_id: object) -> HostPair | None:
    """The inventory's pair of a test's ``pair`` parameter: the plugin parametrises by pair id
    (``pytest_generate_tests``); None without one."""
    if inventory is None or not isinstance(pair_id, str):
        return None
    return next((p for p in inventory.pairs if p.id == pair_id), None)


def apply_markers(state: MarkerSession, items: list[pytest.Item]) -> list[str]:
    from mdevtest.vendors import known_vendors

    problems: list[str] = []
    vendors = set(known_vendors())
    image_workloads = _image_workloads(state)
    local = state.inventory is not None and state.inventory.local_lab is not None
    for item in items:
        callspec = getattr(item, "callspec", None)
        pair = pair_of(state.inventory, callspec.params.get("pair") if callspec is not None else None)
        problems += _check_policy_and_limits(item)
        problems += _check_pair_requirements(item, pair, vendors)
        workload_mark = item.get_closest_marker("workload")
        if workload_mark is not None:
            known = _known_workloads()
            name = workload_mark.args[0] if len(workload_mark.args) == 1 else None
            if name not in known:
                problems.append(
                    f"{item.nodeid}: workload{workload_mark.args}: one of {', '.join(sorted(known))}"
                )
            elif image_workloads is not None and (why := image_workloads(name)) is not None:
                _skip(item, why)
        if item.get_closest_marker("destructive") is not None and not (local or state.allow_destructive):
            _skip(item, DESTRUCTIVE_SKIP)
        qemu_mark = item.get_closest_marker("qemu_args")
        if qemu_mark is not None and (
            qemu_mark.kwargs or not qemu_mark.args or not all(isinstance(a, str) for a in qemu_mark.args)
        ):
            problems.append(
                f"{item.nodeid}: qemu_args takes QEMU arguments as strings, e.g. "
                f"qemu_args('-device', 'nvme,serial=x'); got {qemu_mark.args} {qemu_mark.kwargs or ''}"
            )
        pairs_mark = item.get_closest_marker("pairs")
        if pairs_mark is not None and not all(isinstance(a, (int, str)) for a in pairs_mark.args):
            problems.append(f"{item.nodeid}: pairs takes pair ids or one count, got {pairs_mark.args}")
        if pair is not None:  # the host set as an xdist group (HostSetScheduling does the grouping)
            item.add_marker(
                pytest.mark.xdist_group(name="+".join(sorted({pair.source, pair.destination})))
            )
    return problems
