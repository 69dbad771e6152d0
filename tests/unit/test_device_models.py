"""The vendors' ``-device`` lines against what real QEMU binaries list (``data/qemu-*-help.txt``).

Only help text captured from a binary by ``scripts/capture-qemu-help`` is used here (a captured
QEMU has a ``qemu-<M.m>-version.txt`` next to its help files): the hand-reconstructed help listed
``ramfb`` on plain vfio-pci and so hid that QEMU refuses the GVT-g line on every host. A wanted
QEMU that has not been captured on this machine shows up as a skipped test, not as a pass.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mdevtest.errors import MdevError
from mdevtest.qemu.caps import (
    GENERIC_DEVICE_KEYS,
    DeviceOptionError,
    QemuCaps,
    check_device_options,
    parse_device_help,
)
from mdevtest.vendors.gvt import GvtProfile
from mdevtest.vendors.nvidia import NvidiaProfile

DATA = Path(__file__).parent / "data"
PATH = "/sys/bus/mdev/devices/6d0d6c36-4b1f-4a7c-9d6e-0c1f2b3a4d01"

#: The controller's QEMU (Debian 12) and the nested lab hosts' (Debian trixie).
WANTED = ("7.2", "10.0")
CAPTURED = sorted(
    (p.name.removeprefix("qemu-").removesuffix("-version.txt") for p in DATA.glob("qemu-*-version.txt")),
    key=lambda v: tuple(int(x) for x in v.split(".")),
)
VERSIONS = [
    pytest.param(
        v,
        marks=[]
        if v in CAPTURED
        else pytest.mark.skip(
            reason=f"QEMU {v} help not captured here: run scripts/capture-qemu-help where the "
            "nested host chroot exists"
        ),
    )
    for v in sorted({*WANTED, *CAPTURED}, key=lambda v: tuple(int(x) for x in v.split(".")))
]


class Captured:
    """One QEMU's captured outputs."""

    def __init__(self, version: str) -> None:
        text = {
            what: (DATA / f"qemu-{version}-{what}.txt").read_text()
            for what in ("version", "vfio-pci-help", "vfio-pci-nohotplug-help", "machine-help")
        }
        match = re.search(r"QEMU emulator version (\d+)\.(\d+)\.(\d+)", text["version"])
        assert match, text["version"]
        self.version = tuple(int(x) for x in match.groups())
        self.vfio_help = text["vfio-pci-help"]
        self.nohotplug_help = text["vfio-pci-nohotplug-help"]
        self.machine_help = text["machine-help"]
        self.props = {
            "vfio-pci": parse_device_help(self.vfio_help),
            "vfio-pci-nohotplug": parse_device_help(self.nohotplug_help),
        }

    def caps(self, *, with_nohotplug: bool = True) -> QemuCaps:
        """Caps as the host probe builds them (the help texts one after the other)."""
        major, minor, micro = self.version
        help_text = self.vfio_help + (self.nohotplug_help if with_nohotplug else "")
        return QemuCaps.from_probe(
            {"qemu": {"major": major, "minor": minor, "micro": micro}}, help_text, []
        )


def split(device: str) -> tuple[str, list[str]]:
    """``DRIVER,opt,...`` -> driver and option keys (``,,`` is an escaped comma in a value)."""
    words = device.replace(",,", "\0").split(",")
    return words[0], [w.partition("=")[0] for w in words[1:]]


def assert_all_exist(device: str, captured: Captured) -> str:
    """Every option of the ``-device`` value is a property the captured help lists for its driver."""
    __tracebackhide__ = True
    driver, keys = split(device)
    known = captured.props[driver]
    missing = [k for k in keys if k not in known and k not in GENERIC_DEVICE_KEYS]
    assert not missing, f"{driver} of QEMU {captured.version} has no {missing}"
    return driver


# --------------------------------------------------------------------------------------------
# The captured data itself


@pytest.mark.parametrize("version", VERSIONS)
def test_captured_files_are_what_they_say(version: str) -> None:
    c = Captured(version)
    assert ".".join(map(str, c.version[:2])) == version
    assert c.vfio_help.startswith("vfio-pci options:\n")
    assert c.nohotplug_help.startswith("vfio-pci-nohotplug options:\n")
    assert "q35" in c.machine_help
    assert {"sysfsdev", "display", "x-igd-opregion", "romfile"} <= c.props["vfio-pci"].keys()


@pytest.mark.parametrize("version", VERSIONS)
def test_ramfb_is_only_on_vfio_pci_nohotplug(version: str) -> None:
    """FACTS.md: ``ramfb`` exists only on vfio-pci-nohotplug, which otherwise is vfio-pci."""
    c = Captured(version)
    assert "ramfb" not in c.props["vfio-pci"]
    assert c.props["vfio-pci-nohotplug"]["ramfb"] == "bool"
    assert c.props["vfio-pci"].keys() <= c.props["vfio-pci-nohotplug"].keys()


def test_inferred_nohotplug_properties_match_the_capture() -> None:
    """Live hosts probe only vfio-pci's help today; the inference must equal the real list."""
    c = Captured("7.2")
    inferred, how = c.caps(with_nohotplug=False).device_properties("vfio-pci-nohotplug")
    assert how.startswith("inferred")
    assert inferred == c.props["vfio-pci-nohotplug"].keys()
    probed, how = c.caps().device_properties("vfio-pci-nohotplug")
    assert (probed, how) == (frozenset(c.props["vfio-pci-nohotplug"]), "probed")


# --------------------------------------------------------------------------------------------
# The vendors' lines against each captured QEMU


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("probed_nohotplug", [True, False])
def test_gvt_line_exists_in_this_qemu(version: str, probed_nohotplug: bool) -> None:
    c = Captured(version)
    args = GvtProfile().qemu_device_args(PATH, c.caps(with_nohotplug=probed_nohotplug))
    assert args[0] == "-device"
    assert args[2:] == ["-display", "egl-headless"]
    assert assert_all_exist(args[1], c) == "vfio-pci-nohotplug"
    migration = c.caps().vfio_migration_options()
    assert args[1] == ",".join(
        ["vfio-pci-nohotplug", "id=vgpu0", f"sysfsdev={PATH}", "display=on", "ramfb=on",
         "x-igd-opregion=on", *migration]
    )  # fmt: skip
    # the same options on plain vfio-pci are not all there: this is what QEMU refused
    _, keys = split(args[1])
    assert [k for k in keys if k not in c.props["vfio-pci"] and k not in GENERIC_DEVICE_KEYS] == [
        "ramfb"
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_gvt_line_without_display_is_plain_vfio_pci(version: str) -> None:
    c = Captured(version)
    args = GvtProfile(display=False).qemu_device_args(PATH, c.caps())
    assert len(args) == 2  # no -display egl-headless without a display
    assert assert_all_exist(args[1], c) == "vfio-pci"
    assert "ramfb" not in args[1]
    assert "display=" not in args[1]
    assert args[1].startswith(f"vfio-pci,id=vgpu0,sysfsdev={PATH},x-igd-opregion=on")


@pytest.mark.parametrize("version", VERSIONS)
def test_nvidia_line_exists_in_this_qemu(version: str) -> None:
    c = Captured(version)
    args = NvidiaProfile().qemu_device_args(PATH, c.caps())
    assert assert_all_exist(args[1], c) == "vfio-pci"
    assert args[1].startswith(f"vfio-pci,id=vgpu0,sysfsdev={PATH},display=on")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("vendor", ["xe-sriov", "nvidia-vfio", "vfio-variant"])
def test_sriov_vf_line_exists_in_this_qemu(version: str, vendor: str) -> None:
    """A VF goes to QEMU as plain vfio-pci by its sysfs path, with the migration property."""
    from mdevtest.vendors import get_profile

    c = Captured(version)
    vf = "/sys/bus/pci/devices/0000:03:00.1"
    args = get_profile(vendor).qemu_device_args(vf, c.caps())
    assert assert_all_exist(args[1], c) == "vfio-pci"
    # a comma-free path; the migration property this QEMU has (7.2: x-enable-migration)
    assert args[1].startswith(f"vfio-pci,id=vgpu0,sysfsdev={vf}")
    assert c.caps().vfio_migration_options()[0] in args[1]
    assert get_profile(f"sim-{vendor}" if vendor != "vfio-variant" else "sim-xe-sriov") \
        .qemu_device_args(vf, c.caps()) == []  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
def test_dirty_tracking_option_is_checked_too(version: str) -> None:
    """The host's dirty-tracking option (``extra``) goes through the same check: 7.2 lacks it."""
    c = Captured(version)
    extra = ["x-device-dirty-page-tracking=off"]
    if "x-device-dirty-page-tracking" in c.props["vfio-pci"]:
        for profile in (GvtProfile(), NvidiaProfile()):
            assert assert_all_exist(profile.qemu_device_args(PATH, c.caps(), extra=extra)[1], c)
    else:
        with pytest.raises(DeviceOptionError, match="'x-device-dirty-page-tracking'"):
            GvtProfile().qemu_device_args(PATH, c.caps(), extra=extra)


# --------------------------------------------------------------------------------------------
# Refusals


def test_ramfb_on_vfio_pci_is_refused_naming_the_right_driver() -> None:
    c = Captured("7.2")
    with pytest.raises(DeviceOptionError) as info:
        check_device_options(
            "vfio-pci",
            ["id=vgpu0", f"sysfsdev={PATH}", "display=on", "ramfb=on"],
            c.props["vfio-pci"],
            qemu_version="7.2.22",
            elsewhere={"vfio-pci-nohotplug": c.props["vfio-pci-nohotplug"]},
        )
    err = info.value
    assert isinstance(err, MdevError)
    assert (err.driver, err.option, err.qemu_version) == ("vfio-pci", "ramfb=on", "7.2.22")
    assert str(err) == (
        "QEMU 7.2.22: -device vfio-pci has no property 'ramfb' (option 'ramfb=on'); ramfb is a "
        "property of vfio-pci-nohotplug only: use -device vfio-pci-nohotplug for it, or leave "
        "ramfb out"
    )
    # the same through the caps a host probe gives, with vfio-pci-nohotplug only inferred
    with pytest.raises(DeviceOptionError, match=r"QEMU 7\.2\.22: .*'ramfb'.*vfio-pci-nohotplug"):
        c.caps(with_nohotplug=False).check_device_options("vfio-pci", ["ramfb=on"])


def test_unknown_option_suggests_close_names() -> None:
    c = Captured("7.2")
    with pytest.raises(DeviceOptionError) as info:
        c.caps().check_device_options("vfio-pci-nohotplug", ["x-igd-opregoin=on"])
    assert str(info.value) == (
        "QEMU 7.2.22: -device vfio-pci-nohotplug has no property 'x-igd-opregoin' (option "
        "'x-igd-opregoin=on'); did you mean x-igd-opregion? QEMU would refuse to start; see "
        "`qemu-system-x86_64 -device vfio-pci-nohotplug,help`"
    )


def test_qemu_without_vfio_properties_is_refused() -> None:
    empty = QemuCaps((7, 2, 0), None, False, False)
    with pytest.raises(DeviceOptionError, match=r"lists no properties for vfio-pci .*built with VFIO"):
        NvidiaProfile().qemu_device_args(PATH, empty)
    with pytest.raises(DeviceOptionError, match=r"'sysfsdev'.*inferred: vfio-pci's properties"):
        GvtProfile().qemu_device_args(PATH, empty)


def test_generic_keys_and_bare_options_pass() -> None:
    check_device_options(
        "vfio-pci", ["id=x", "bus=pcie.0", "x-vga"], {"x-vga": "bool"}, qemu_version="7.2.22"
    )
    with pytest.raises(ValueError, match="no probed properties for -device virtio-vga"):
        QemuCaps((7, 2, 0), None, False, False).device_properties("virtio-vga")


# -- the machine type: versioned, the same on both hosts ---------------------------------------


def test_machine_types_are_read_from_the_captured_help() -> None:
    from mdevtest.qemu.caps import parse_machine_help

    old = parse_machine_help((DATA / "qemu-7.2-machine-help.txt").read_text())
    new = parse_machine_help((DATA / "qemu-10.0-machine-help.txt").read_text())
    assert {"q35", "pc-q35-7.2", "pc-q35-2.4", "none"} <= old
    assert "pc-q35-10.0" in new
    assert "pc-q35-7.2" in new
    assert "Supported" not in old


def test_a_pair_runs_the_older_qemus_newest_versioned_q35() -> None:
    from dataclasses import replace

    from mdevtest.qemu.caps import common_machine_type, parse_machine_help

    base = QemuCaps((7, 2, 0), "x-enable-migration", False, False)
    old = replace(
        base, machine_types=parse_machine_help((DATA / "qemu-7.2-machine-help.txt").read_text())
    )
    new = replace(
        base, machine_types=parse_machine_help((DATA / "qemu-10.0-machine-help.txt").read_text())
    )
    assert common_machine_type(old, new) == common_machine_type(new, old) == "pc-q35-7.2"
    assert common_machine_type(new, new) == "pc-q35-10.0"
    assert common_machine_type(base, new) == "q35"  # not probed: QEMU's own default
    assert common_machine_type(old, replace(base, machine_types=frozenset({"pc-q35-99.0"}))) == "q35"


def test_the_command_line_carries_the_spec_machine_type() -> None:
    from mdevtest.qemu.cmdline import MachinePaths, MachineSpec, build_argv

    spec = MachineSpec(name="vm1", memory_mib=256, vcpus=1, kernel="k", initrd="i", append="",
                       machine="pc-q35-7.2")  # fmt: skip
    argv = build_argv("qemu-system-x86_64", spec, MachinePaths("/tmp/vm1"), "mdevtest-x-vm1")
    assert argv[argv.index("-machine") + 1] == "pc-q35-7.2"


def test_a_vgpu_with_its_own_display_replaces_the_emulated_vga_and_gets_the_vnc() -> None:
    from mdevtest.qemu.cmdline import MachinePaths, MachineSpec, build_argv

    paths = MachinePaths("/tmp/vm1")
    plain = MachineSpec(name="vm1", memory_mib=256, vcpus=1, kernel="k", initrd="i", append="")
    argv = build_argv("qemu", plain, paths, "t")
    assert argv[argv.index("-vga") + 1] == "std"
    assert argv[argv.index("-vnc") + 1] == f"unix:{paths.vnc_sock}"
    assert argv[argv.index("-display") + 1] == "none"

    gvt = MachineSpec(name="vm1", memory_mib=256, vcpus=1, kernel="k", initrd="i", append="",
                      display_device="vgpu0",
                      extra_args=("-device", "vfio-pci-nohotplug,id=vgpu0,display=on",
                                  "-display", "egl-headless"))  # fmt: skip
    argv = build_argv("qemu", gvt, paths, "t")
    assert argv[argv.index("-vga") + 1] == "none"
    assert argv[argv.index("-vnc") + 1] == f"unix:{paths.vnc_sock},display=vgpu0"
    assert argv.count("-display") == 1  # egl-headless only, no "-display none" beside it
    assert argv[argv.index("-display") + 1] == "egl-headless"


def test_which_profiles_bring_their_own_display() -> None:
    from mdevtest.vendors import get_profile
    from mdevtest.vendors.gvt import GvtProfile

    caps = Captured("7.2").caps()
    gvt_display = GvtProfile(display=True)
    gvt_headless = GvtProfile(display=False)
    assert gvt_display.display_device(caps) == "vgpu0"
    assert gvt_headless.display_device(caps) is None
    nvidia = get_profile("nvidia").display_device(caps)
    assert nvidia == ("vgpu0" if "display" in caps.vfio_properties else None)
    assert get_profile("mtty").display_device(caps) is None
    assert get_profile("simulated").display_device(caps) is None
