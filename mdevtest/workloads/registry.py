"""Workloads by name: the definitions in ``workloads/*.yaml`` bound to their drivers.

Each file defines one workload and is named after it (``workloads/glmark2.yaml`` defines
``glmark2``). A file is validated once when the folder is loaded: unknown keys, wrong types, a
driver that does not exist or does not fit, a name that differs from the file's; every problem
is reported at once as a :class:`~mdevtest.workloads.base.WorkloadDefinitionError`.

Drivers are found by name (testinfra's ``BACKENDS`` map) and imported only when used.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from mdevtest.data import data_dir
from mdevtest.workloads.base import (
    Requirements,
    UnknownWorkload,
    Workload,
    WorkloadDefinition,
    WorkloadDefinitionError,
)

__all__ = [
    "DEFINITIONS_DIR",
    "DRIVERS",
    "driver_class",
    "get_workload",
    "known_workloads",
    "load_definition",
    "load_definitions",
]

#: The definitions shipped with mdevtest: the checkout's top-level ``workloads/`` folder, or the
#: installed copy (:func:`mdevtest.data.data_dir`).
DEFINITIONS_DIR = data_dir("workloads")

#: Driver name -> ``module:class``, imported on first use.
DRIVERS: Mapping[str, str] = {
    "synthetic": "mdevtest.workloads.synthetic_def:SyntheticWorkload",
    "glmark2": "mdevtest.workloads.glmark2:Glmark2Workload",
    "heaven": "mdevtest.workloads.heaven:HeavenWorkload",
    "3dmark06": "mdevtest.workloads.threedmark06:ThreeDMark06Workload",
    "ffmpeg": "mdevtest.workloads.media:FfmpegWorkload",
    "gstreamer": "mdevtest.workloads.media:GstWorkload",
    "x11perf": "mdevtest.workloads.twod:X11perfWorkload",
}

_cache: dict[Path, dict[str, WorkloadDefinition]] = {}
_cache_lock = threading.Lock()


def driver_class(driver: str) -> type[Workload]:
    """The :class:`Workload` subclass of a driver name (KeyError for an unknown one)."""
    module, _, cls = DRIVERS[driver].partition(":")
    found = getattr(importlib.import_module(module), cls)
    assert isinstance(found, type)
    assert issubclass(found, Workload)
    return found


def load_definitions(directory: str | os.PathLike[str] | None = None) -> dict[str, WorkloadDefinition]:
    """Every ``*.yaml`` definition in ``directory`` (default :data:`DEFINITIONS_DIR`), by name.

    Loaded and validated once per folder per process; raises
    :class:`~mdevtest.workloads.base.WorkloadDefinitionError` for the first invalid file (with
    all of that file's problems).
    """
    folder = Path(directory if directory is not None else DEFINITIONS_DIR).resolve()
    with _cache_lock:
        if folder not in _cache:
            if not folder.is_dir():
                raise WorkloadDefinitionError(
                    str(folder), ["not a folder of workload definitions (*.yaml)"]
                )
            found = [load_definition(path) for path in sorted(folder.glob("*.yaml"))]
            _cache[folder] = {d.name: d for d in found}
        return dict(_cache[folder])


def known_workloads(directory: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """The names of the defined workloads, sorted."""
    return tuple(sorted(load_definitions(directory)))


def get_workload(name: str, directory: str | os.PathLike[str] | None = None) -> Workload:
    """The workload ``name``, ready to use; :class:`UnknownWorkload` lists the known names."""
    definitions = load_definitions(directory)
    try:
        definition = definitions[name]
    except KeyError:
        where = str(Path(directory)) if directory is not None else "workloads/*.yaml"
        raise UnknownWorkload(name, sorted(definitions), where) from None
    return driver_class(definition.driver)(definition)


def load_definition(path: str | os.PathLike[str]) -> WorkloadDefinition:
    """Read and validate one definition file; every problem is listed in the error."""
    shown = os.fspath(path)
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise WorkloadDefinitionError(shown, ["file not found"]) from None
    except UnicodeDecodeError as exc:
        raise WorkloadDefinitionError(shown, [f"not UTF-8 text (byte {exc.start})"]) from None
    except OSError as exc:
        raise WorkloadDefinitionError(shown, [f"cannot read: {exc.strerror or exc}"]) from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise WorkloadDefinitionError(
            shown, [f"YAML error{where}: {exc.problem or exc.context}"]
        ) from None
    except yaml.YAMLError as exc:
        raise WorkloadDefinitionError(shown, [f"not valid YAML: {exc}"]) from None
    return parse_definition(data, source=shown, stem=file.stem)


def parse_definition(
    data: object, *, source: str = "<definition>", stem: str | None = None
) -> WorkloadDefinition:
    """Validate already-parsed YAML into a :class:`WorkloadDefinition` (``stem``: the file's
    name, which must equal the workload's)."""
    keys = ", ".join(WorkloadDefinition.model_fields)
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise WorkloadDefinitionError(
            source, [f"the file is {kind}; expected a mapping with keys {keys}"]
        )
    try:
        definition = WorkloadDefinition.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(e) for e in exc.errors(include_url=False)]
        driver = data.get("driver")
        if isinstance(driver, str) and driver not in DRIVERS:
            problems.append(_unknown_driver(driver))
        raise WorkloadDefinitionError(source, problems) from None
    problems = []
    if stem is not None and definition.name != stem:
        problems.append(
            f"name: {definition.name!r} differs from the file name {stem!r}.yaml; rename one"
        )
    if definition.driver not in DRIVERS:
        problems.append(_unknown_driver(definition.driver))
    else:
        problems += driver_class(definition.driver).validate_definition(definition)
    if problems:
        raise WorkloadDefinitionError(source, problems)
    return definition


def _unknown_driver(driver: str) -> str:
    return f"driver: {driver!r} is not allowed: must be one of {', '.join(sorted(DRIVERS))}"


def _problem(error: ErrorDetails) -> str:
    """One pydantic error as ``path: value: what is wrong``."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    where = where or "(top level)"
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        return f"{where}: missing (required)"
    if kind == "extra_forbidden":
        return f"{where}: unknown key; allowed here: {_allowed(error['loc'])}"
    message = error["msg"][:1].lower() + error["msg"][1:]
    hint = ""
    if kind == "string_type" and isinstance(value, bool | int | float):
        read_as = "a boolean" if isinstance(value, bool) else "a number"
        hint = f" (YAML read the unquoted value as {read_as}; put it in quotes)"
    return f"{where}: {_show(value)}: {message}{hint}"


def _allowed(loc: tuple[int | str, ...]) -> str:
    model: Any = Requirements if len(loc) > 1 and loc[0] == "requires" else WorkloadDefinition
    return ", ".join(model.model_fields)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[object, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first defined on line {first})",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)
