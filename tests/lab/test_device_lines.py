"""The QEMU on this machine (7.2) accepts every ``-device`` line the vendor profiles build.

QEMU sets every property of a ``-device`` before it realizes the device: an unknown property
(``Property 'vfio-pci.ramfb' not found``) or a bad value (``Parameter 'display' does not accept
value ...``) ends it there, while a line whose properties are all accepted ends only at realize,
where the VFIO device itself is opened (``no such host device``: there is no vGPU here). So each
line must fail exactly at realize. The builder gets the capabilities of this very binary (the
captured 7.2 help, checked to be this QEMU's); QEMU 10.0 is held to the same in the nested lab
(``tests/lab/test_nested.py::test_qemu_10_accepts_every_device_line``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mdevtest.qemu.caps import QemuCaps
from mdevtest.vendors import get_profile
from mdevtest.vendors.gvt import GvtProfile

DATA = Path(__file__).resolve().parents[1] / "unit" / "data"
QEMU = "/usr/bin/qemu-system-x86_64"
MDEV = "/sys/bus/mdev/devices/83b8f4f2-0000-4000-8000-000000000001"
VF = "/sys/bus/pci/devices/0000:03:00.1"

#: (label, profile, the device's sysfs path): every real vendor line the framework can emit
LINES = [
    ("gvt display", GvtProfile(display=True), MDEV),
    ("gvt plain", GvtProfile(display=False), MDEV),
    ("nvidia", get_profile("nvidia"), MDEV),
    ("mtty", get_profile("mtty"), MDEV),
    ("xe-sriov", get_profile("xe-sriov"), VF),
    ("nvidia-vfio", get_profile("nvidia-vfio"), VF),
    ("vfio-variant", get_profile("vfio-variant"), VF),
]


def device_args_of(args: list[str]) -> list[str]:
    """Only the ``-device`` pairs (``-display egl-headless`` needs a GPU to open, not to parse)."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "-device":
            out += [arg, args[i + 1]]
    return out


def local_caps() -> QemuCaps:
    version = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True).stdout
    captured = (DATA / "qemu-7.2-version.txt").read_text()
    assert version.splitlines()[0] == captured.splitlines()[0], (
        "this QEMU is not the captured 7.2: recapture with scripts/capture-qemu-help"
    )
    help_text = (DATA / "qemu-7.2-vfio-pci-help.txt").read_text()
    help_text += (DATA / "qemu-7.2-vfio-pci-nohotplug-help.txt").read_text()
    reply = json.loads((DATA / "qemu-7.2-query-version.json").read_text())
    schema = json.loads((DATA / "qemu-7.2-qmp-schema.json").read_text())
    return QemuCaps.from_probe(reply, help_text, schema)


@pytest.mark.parametrize(("label", "profile", "path"), LINES, ids=[x[0] for x in LINES])
def test_qemu_72_accepts_every_device_line(label: str, profile: object, path: str) -> None:
    caps = local_caps()
    extra = ["x-device-dirty-page-tracking=off"] if "x-device-dirty-page-tracking" in (
        caps.vfio_properties
    ) else []  # fmt: skip
    args = device_args_of(profile.qemu_device_args(path, caps, extra=extra))  # type: ignore[attr-defined]
    assert args, f"{label}: no -device line"
    proc = subprocess.run(
        [QEMU, "-machine", "q35", "-nodefaults", "-display", "none", "-S", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    said = f"{label}: {args[1]}\n{proc.stderr}"
    assert proc.returncode != 0, f"{label}: QEMU started without a device behind {path}?"
    assert "Property '" not in proc.stderr, said  # an unknown property
    assert "does not accept" not in proc.stderr, said  # a bad value
    assert f"{path}: no such host device" in proc.stderr, said  # it got as far as the device
