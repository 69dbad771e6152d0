"""Regenerate the ``mdevctl-*`` samples: the real mdevctl, run on plain trees made from ``sim-*.json``.

Run as root on a host with mdevctl (Debian 12: 1.2.0) from the repository root::

    .venv/bin/python tests/unit/data/regenerate_mdevctl_samples.py

mdevctl 1.2.0 ignores ``MDEVCTL_ENV_ROOT``, so it runs in a private mount namespace with the tree
bind-mounted over ``/sys`` (:func:`mdevtest.mdev.mdevctl_argv`). Not run by the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mdevtest.lab.simsysfs import SimConfig, write_static_tree
from mdevtest.mdev import mdevctl_argv

HERE = Path(__file__).resolve().parent

#: The mdevs each sample host has (uuid -> "parent type"); the unit tests use the same file.
DEVICES: dict[str, dict[str, str]] = json.loads((HERE / "sample-devices.json").read_text())


def main() -> int:
    for vendor, devices in DEVICES.items():
        config = SimConfig.from_json((HERE / f"sim-{vendor}.json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            write_static_tree(tmp, config, devices)
            for args, suffix in (
                (["types"], "types.txt"),
                (["types", "--dumpjson"], "types.json"),
                (["list"], "list.txt"),
                (["list", "--dumpjson"], "list.json"),
            ):
                proc = subprocess.run(
                    mdevctl_argv(tmp, *args), capture_output=True, text=True, timeout=30, check=True
                )
                (HERE / f"mdevctl-{suffix.replace('.', f'-{vendor}.', 1)}").write_text(proc.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
