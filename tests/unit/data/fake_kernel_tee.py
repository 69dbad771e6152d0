"""A stand-in for ``tee`` that makes a plain (non-FUSE) sysfs tree answer writes like the kernel.

The unit tests put a ``tee`` wrapper running this file first on ``PATH``. :class:`MdevManager` writes
``create``/``remove`` through ``tee``; for a target inside a tree that has a ``fake-kernel.json``
next to its ``sys`` directory, the write is applied with :class:`mdevtest.lab.simsysfs.SimKernel` (the
same semantics the FUSE daemon serves: EINVAL, EEXIST, ENOSPC, EBUSY...) and the tree is re-rendered;
a refusal is reported the way GNU tee does (``tee: PATH: strerror``, exit 1). Any other target is
written like a plain ``tee`` would. State file: ``{"config": SimConfig JSON, "in_use": [uuids]}``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from mdevtest.lab.simsysfs import SimConfig, SimKernel, write_static_tree

STATE = "fake-kernel.json"


def find_root(real: Path) -> Path | None:
    for candidate in real.parents:
        if (candidate / STATE).is_file() and (candidate / "sys") in (real, *real.parents):
            return candidate
    return None


def load(root: Path) -> tuple[SimKernel, dict[str, object]]:
    state = json.loads((root / STATE).read_text())
    kernel = SimKernel(SimConfig.from_json(json.dumps(state["config"])))
    devices = root / "sys" / "bus" / "mdev" / "devices"
    for entry in sorted(devices.iterdir()) if devices.is_dir() else []:
        target = Path(os.path.realpath(entry / "mdev_type"))
        parent = kernel.config.parent(target.parent.parent.name)
        mtype = parent.type(target.name) if parent is not None else None
        if parent is None or mtype is None:
            raise SystemExit(f"fake kernel: {entry} has an unknown type {target}")
        kernel.create(parent, mtype, f"{entry.name}\n".encode())
    kernel.in_use = {str(u) for u in state.get("in_use", [])}
    return kernel, state


def save(root: Path, kernel: SimKernel, state: dict[str, object]) -> None:
    state["in_use"] = sorted(kernel.in_use)
    (root / STATE).write_text(json.dumps(state))
    devices = {u: f"{d.parent} {d.type_id}" for u, d in kernel.devices.items()}
    shutil.rmtree(root / "sys")
    write_static_tree(root, kernel.config, devices)


def main(argv: list[str]) -> int:
    data = sys.stdin.buffer.read()
    rc = 0
    for target in (a for a in argv[1:] if not a.startswith("-")):
        real = Path(os.path.realpath(target))
        root = find_root(real)
        if root is None:
            with open(target, "wb") as fh:
                fh.write(data)
            continue
        kernel, state = load(root)
        rel = str(real.relative_to(root / "sys"))
        try:
            if kernel.lookup(rel) is None:
                raise OSError(2, os.strerror(2))
            kernel.write(rel, data)
        except OSError as exc:
            print(f"tee: {target}: {os.strerror(exc.errno or 5)}", file=sys.stderr)
            rc = 1
            continue
        save(root, kernel, state)
    sys.stdout.buffer.write(data)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
