"""Vendor profiles and QEMU capability probing, on real-format samples (``data/``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from mdevtest.checks.standard import VENDOR_CHECKS, vendor_checks
from mdevtest.errors import MdevError, MdevtestError
from mdevtest.lab.simsysfs import SimConfig, write_static_tree
from mdevtest.localexec import LocalExecutor
from mdevtest.mdev import MdevManager, MdevType, parse_mdevctl_types
from mdevtest.qemu.caps import QemuCaps, parse_device_help
from mdevtest.remote import CommandResult
from mdevtest.vendors import (
    ALL_CHECKS,
    UnknownVendorError,
    get_profile,
    known_vendors,
    run_probes,
    vfio_pci_device,
)
from mdevtest.vendors.gvt import GvtProfile, GvtTypeInfo
from mdevtest.vendors.mtty import MttyProfile, MttyTypeInfo
from mdevtest.vendors.nvidia import NvidiaProfile, NvidiaTypeInfo
from mdevtest.vendors.simulated import SimulatedProfile

DATA = Path(__file__).parent / "data"
UUID = "6d0d6c36-4b1f-4a7c-9d6e-0c1f2b3a4d01"
PATH = f"/sys/bus/mdev/devices/{UUID}"


def sysfs_types(tmp_path: Path, vendor: str) -> dict[str, MdevType]:
    """The types of ``vendor``'s sample host, read from a plain sysfs tree by MdevManager."""
    config = SimConfig.from_json((DATA / f"sim-{vendor}.json").read_text())
    write_static_tree(tmp_path / vendor, config)
    parents = MdevManager(LocalExecutor(), sysfs_root=str(tmp_path / vendor)).parents()
    return {t.type_id: t for p in parents for t in p.types}


def mdevctl_types(vendor: str) -> dict[str, MdevType]:
    """The same host's types as the real mdevctl printed them."""
    parents = parse_mdevctl_types((DATA / f"mdevctl-types-{vendor}.json").read_text())
    return {t.type_id: t for p in parents for t in p.types}


#: ``-device vfio-pci,help`` per QEMU: 7.2 captured from this machine's binary, 8.2 and 9.1
#: reconstructed by hand (see data/README.md; they wrongly list ``ramfb`` on vfio-pci).
VFIO_HELP = {
    "7.2": "qemu-7.2-vfio-pci-help.txt",
    "8.2": "qemu-8.2-vfio-pci-help.reconstructed.txt",
    "9.1": "qemu-9.1-vfio-pci-help.txt",
}


def caps(version: str) -> QemuCaps:
    return QemuCaps.from_probe(
        json.loads((DATA / f"qemu-{version}-query-version.json").read_text()),
        (DATA / VFIO_HELP[version]).read_text(),
        json.loads((DATA / f"qemu-{version}-qmp-schema.json").read_text()),
    )


# --------------------------------------------------------------------------------------------
# Registry


def test_profiles_are_found_by_name() -> None:
    assert known_vendors() == [
        "gvt",
        "mtty",
        "nvidia",
        "nvidia-vfio",
        "sim-nvidia-vfio",
        "sim-xe-sriov",
        "simulated",
        "vfio-variant",
        "xe-sriov",
    ]
    for name in known_vendors():
        profile = get_profile(name)
        assert profile.name == name
    assert isinstance(get_profile("gvt"), GvtProfile)
    assert get_profile("simulated").simulated is True
    assert not any(get_profile(n).simulated for n in ("gvt", "nvidia", "mtty"))
    assert all(get_profile(n).simulated for n in ("sim-xe-sriov", "sim-nvidia-vfio"))
    vf_vendors = ("xe-sriov", "nvidia-vfio", "vfio-variant", "sim-xe-sriov", "sim-nvidia-vfio")
    assert all(get_profile(n).device_kind == "vf" for n in vf_vendors)


def test_unknown_vendor_lists_the_known_ones() -> None:
    with pytest.raises(UnknownVendorError) as info:
        get_profile("amd")
    assert isinstance(info.value, MdevtestError)
    assert str(info.value) == (
        "unknown vGPU vendor 'amd'; known vendors: gvt, mtty, nvidia, nvidia-vfio, "
        "sim-nvidia-vfio, sim-xe-sriov, simulated, vfio-variant, xe-sriov"
    )


def test_capture_methods_and_applicable_checks() -> None:
    expected = {"gvt": "vnc", "nvidia": "vnc", "mtty": "none", "simulated": "qmp"}
    expected |= {"xe-sriov": "vnc", "nvidia-vfio": "vnc", "vfio-variant": "vnc"}
    expected |= {"sim-xe-sriov": "qmp", "sim-nvidia-vfio": "qmp"}
    assert {n: get_profile(n).capture_method for n in known_vendors()} == expected
    assert not get_profile("mtty").applies("graphics")
    assert get_profile("mtty").applicable_checks == ALL_CHECKS - {"graphics"}
    assert all(get_profile(n).applies("graphics") for n in ("gvt", "nvidia", "simulated"))
    with pytest.raises(ValueError, match="unknown check"):
        get_profile("gvt").applies("grafics")


def test_vendor_checks_are_listed_for_known_vendors_only() -> None:
    """The vendor -> checks map lives with the checks; a name there that is no vendor (a typo, a
    renamed profile) would silently drop that vendor's checks."""
    assert set(VENDOR_CHECKS) <= set(known_vendors())
    assert [c.name for c in vendor_checks("mtty")] == ["mtty-device-state"]
    assert vendor_checks("gvt") == []


# --------------------------------------------------------------------------------------------
# Type parsing: sysfs and mdevctl renderings give the same typed info


@pytest.mark.parametrize("source", ["sysfs", "mdevctl"])
def test_gvt_types(tmp_path: Path, source: str) -> None:
    types = sysfs_types(tmp_path, "gvt") if source == "sysfs" else mdevctl_types("gvt")
    profile = GvtProfile()
    info = profile.parse_type(types["i915-GVTg_V5_4"])
    assert info == GvtTypeInfo(
        type_id="i915-GVTg_V5_4",
        parent="0000:00:02.0",
        name="GVTg_V5_4",
        gvt_version="V5",
        per_gpu=4,
        low_gm_mib=128,
        high_gm_mib=512,
        fence=4,
        resolution=(1920, 1200),
        weight=4,
    )
    # FACTS.md: _8 = 64/384 MB 1024x768 w2; _4 = 128/512 w4; _2 = 256/1024 w8; _1 = 512/2048 w16
    expected = {
        "i915-GVTg_V5_8": (64, 384, (1024, 768), 2),
        "i915-GVTg_V5_2": (256, 1024, (1920, 1200), 8),
        "i915-GVTg_V5_1": (512, 2048, (1920, 1200), 16),
    }
    for type_id, (low, high, res, weight) in expected.items():
        parsed = profile.parse_type(types[type_id])
        assert (parsed.low_gm_mib, parsed.high_gm_mib, parsed.resolution, parsed.weight) == (
            low, high, res, weight,
        )  # fmt: skip
    assert info.summary() == (
        "GVTg_V5_4: 128 MiB low GM, 512 MiB high GM, 4 fences, up to 1920x1200, weight 4"
    )


def test_gvt_rejects_foreign_and_garbled_types(tmp_path: Path) -> None:
    profile = GvtProfile()
    with pytest.raises(MdevError, match="not a GVT-g type"):
        profile.parse_type(mdevctl_types("mtty")["mtty-1"])
    garbled = replace(mdevctl_types("gvt")["i915-GVTg_V5_4"], description="low_gm_size: lots")
    with pytest.raises(MdevError, match=r"i915-GVTg_V5_4: not a GVT-g type .*check vgpu\.vendor"):
        profile.parse_type(garbled)


@pytest.mark.parametrize("source", ["sysfs", "mdevctl"])
def test_mtty_types(tmp_path: Path, source: str) -> None:
    types = sysfs_types(tmp_path, "mtty") if source == "sysfs" else mdevctl_types("mtty")
    profile = MttyProfile()
    one, two = profile.parse_type(types["mtty-1"]), profile.parse_type(types["mtty-2"])
    assert one == MttyTypeInfo(type_id="mtty-1", parent="mtty", name="Single port serial", ports=1)
    assert two.ports == 2
    assert two.summary() == "Dual port serial: 2 serial ports"
    # the older spelling some docs use still reads as two ports
    assert profile.parse_type(replace(types["mtty-2"], name="Dual-ports serial")).ports == 2


def test_mtty_rejects_other_types() -> None:
    with pytest.raises(MdevError, match="mtty type ids are 'mtty-<ports>'"):
        MttyProfile().parse_type(mdevctl_types("nvidia")["nvidia-231"])


@pytest.mark.parametrize("source", ["sysfs", "mdevctl"])
def test_nvidia_types(tmp_path: Path, source: str) -> None:
    types = sysfs_types(tmp_path, "nvidia") if source == "sysfs" else mdevctl_types("nvidia")
    profile = NvidiaProfile()
    assert profile.parse_type(types["nvidia-231"]) == NvidiaTypeInfo(
        type_id="nvidia-231",
        parent="0000:3b:00.0",
        name="GRID T4-2Q",
        board="T4",
        series="Q",
        framebuffer_mib=2048,
        heads=4,
        max_resolution=(7680, 4320),
        frl_fps=60,
        max_instances=8,
    )
    b = profile.parse_type(types["nvidia-222"])
    assert (b.series, b.framebuffer_mib, b.frl_fps, b.max_instances) == ("B", 1024, 45, 16)
    assert profile.parse_type(types["nvidia-234"]).framebuffer_mib == 16384
    assert profile.parse_type(types["nvidia-225"]).heads == 1


def test_nvidia_name_only_type() -> None:
    """Newer drivers (SR-IOV VFs as parents) keep the name; without a description the name suffices."""
    bare = MdevType("0000:41:00.4", "nvidia-558", "NVIDIA A40-4Q", "", "vfio-pci", 1)
    info = NvidiaProfile().parse_type(bare)
    assert (info.board, info.series, info.framebuffer_mib, info.heads) == ("A40", "Q", 4096, None)
    with pytest.raises(MdevError, match="no framebuffer"):
        NvidiaProfile().parse_type(replace(bare, name="mystery"))


def test_simulated_types_parse_as_gvt() -> None:
    sim = SimulatedProfile()
    config = SimConfig()
    t = config.parents[0].types[0]
    info = sim.parse_type(
        MdevType(config.parents[0].name, t.type_id, t.name or "", t.description or "", "vfio-pci", 2)
    )
    assert isinstance(info, GvtTypeInfo)
    assert info.resolution == (1920, 1200)
    other = sim.parse_type(MdevType("p", "sim-x", "X", "anything", "vfio-pci", 1))
    assert other.summary() == "X"


# --------------------------------------------------------------------------------------------
# QEMU capabilities from the three probes


def test_qemu_7_2_has_protocol_v1() -> None:
    c = caps("7.2")
    assert c.version == (7, 2, 22)
    assert c.vfio_migration_prop == "x-enable-migration"
    assert c.vfio_migration_protocol == 1
    assert c.vfio_migration_options() == ("x-enable-migration=on",)
    assert c.switchover_ack is False
    assert c.screendump_png is True
    assert "postcopy-ram" in c.migration_capabilities


def test_qemu_8_2_has_protocol_v2_and_switchover_ack() -> None:
    c = caps("8.2")
    assert c.version == (8, 2, 0)
    assert c.vfio_migration_prop == "enable-migration"
    assert c.vfio_migration_protocol == 2
    assert c.vfio_migration_options() == ("enable-migration=on",)
    assert c.switchover_ack is True
    assert "x-device-dirty-page-tracking" in c.vfio_properties
    assert "migration-events" not in c.vfio_properties


def test_qemu_9_1() -> None:
    c = caps("9.1")
    assert (c.vfio_migration_prop, c.switchover_ack, c.screendump_png) == (
        "enable-migration",
        True,
        True,
    )
    assert "migration-events" in c.vfio_properties
    assert "mapped-ram" in c.migration_capabilities
    assert "block" not in c.migration_capabilities


def test_qemu_8_0_x_enable_migration_is_already_v2() -> None:
    c = QemuCaps.from_probe(
        {"qemu": {"major": 8, "minor": 0, "micro": 4}, "package": ""},
        (DATA / "qemu-7.2-vfio-pci-help.txt").read_text(),
        json.loads((DATA / "qemu-7.2-qmp-schema.json").read_text())["return"],
    )
    assert (c.vfio_migration_prop, c.vfio_migration_protocol) == ("x-enable-migration", 2)


def test_qemu_without_vfio_migration() -> None:
    help_text = (DATA / "qemu-7.2-vfio-pci-help.txt").read_text()
    old = "\n".join(line for line in help_text.splitlines() if "enable-migration" not in line)
    schema = json.loads((DATA / "qemu-7.2-qmp-schema.json").read_text())
    for entry in schema["return"]:
        if entry["name"] == "286":  # the screendump format enum: pre-7.0 QEMU has no 'format'
            entry["values"] = ["ppm"]
            entry["members"] = [{"name": "ppm"}]
    c = QemuCaps.from_probe({"return": {"qemu": {"major": 5, "minor": 1, "micro": 0}}}, old, schema)
    assert c.vfio_migration_prop is None
    assert c.vfio_migration_protocol is None
    assert c.vfio_migration_options() == ()
    assert c.screendump_png is False


def test_schema_enums_with_members_only() -> None:
    schema = json.loads((DATA / "qemu-8.2-qmp-schema.json").read_text())
    for entry in schema["return"]:
        entry.pop("values", None)
    c = QemuCaps.from_probe(json.loads((DATA / "qemu-8.2-query-version.json").read_text()), "", schema)
    assert c.switchover_ack is True
    assert c.screendump_png is True
    assert c.vfio_migration_prop is None  # no -device help given


def test_device_help_parsing() -> None:
    props = parse_device_help((DATA / "qemu-7.2-vfio-pci-help.txt").read_text())
    assert props["sysfsdev"] == "str"
    assert props["display"] == "OnOffAuto"
    assert props["x-enable-migration"] == "bool"
    assert props["x-nv-gpudirect-clique"] == "uint4"  # no default shown: the line ends after it
    assert "ramfb" not in props  # 7.2's vfio-pci has none: only vfio-pci-nohotplug does
    assert "vfio-pci options" not in " ".join(props)
    assert len(props) == 36  # every "  name=<type>" line of the capture
    # QEMU before 2.x printed "driver.prop=type"
    assert parse_device_help("vfio-pci.x-enable-migration=bool\nvfio-pci.host=str\n") == {
        "x-enable-migration": "bool", "host": "str",
    }  # fmt: skip


def test_bad_query_version_reply() -> None:
    with pytest.raises(ValueError, match="not a query-version reply"):
        QemuCaps.from_probe({"error": {"class": "GenericError"}}, "", [])


# --------------------------------------------------------------------------------------------
# QEMU device arguments


def test_gvt_device_args_follow_the_qemu() -> None:
    gvt = GvtProfile()
    assert gvt.qemu_device_args(PATH, caps("7.2")) == [
        "-device",
        f"vfio-pci-nohotplug,id=vgpu0,sysfsdev={PATH},display=on,ramfb=on,x-igd-opregion=on,"
        "x-enable-migration=on",
        "-display",
        "egl-headless",
    ]
    assert gvt.qemu_device_args(PATH, caps("8.2"))[1].endswith("x-igd-opregion=on,enable-migration=on")
    assert GvtProfile(display=False).qemu_device_args(PATH, caps("7.2")) == [
        "-device", f"vfio-pci,id=vgpu0,sysfsdev={PATH},x-igd-opregion=on,x-enable-migration=on",
    ]  # fmt: skip


def test_mtty_and_nvidia_device_args() -> None:
    # mtty's device line is what the embedded nested lab runs: unchanged, byte for byte
    mtty = MttyProfile()
    assert mtty.qemu_device_args(PATH, caps("7.2")) == [
        "-device", f"vfio-pci,sysfsdev={PATH},id=vgpu0,x-enable-migration=on",
    ]  # fmt: skip
    args = mtty.qemu_device_args(PATH, caps("9.1"), extra=["x-device-dirty-page-tracking=off"])
    assert args == [
        "-device",
        f"vfio-pci,sysfsdev={PATH},id=vgpu0,enable-migration=on,x-device-dirty-page-tracking=off",
    ]  # fmt: skip
    no_migration = replace(caps("8.2"), vfio_migration_prop=None)
    assert mtty.qemu_device_args(PATH, no_migration) == [
        "-device",
        f"vfio-pci,sysfsdev={PATH},id=vgpu0",
    ]

    nvidia = NvidiaProfile()
    assert nvidia.qemu_device_args(PATH, caps("7.2")) == [
        "-device", f"vfio-pci,id=vgpu0,sysfsdev={PATH},display=on,x-enable-migration=on",
    ]  # fmt: skip
    args = nvidia.qemu_device_args(PATH, caps("9.1"), extra=["x-device-dirty-page-tracking=off"])
    assert args == [
        "-device",
        f"vfio-pci,id=vgpu0,sysfsdev={PATH},display=on,enable-migration=on,"
        "x-device-dirty-page-tracking=off",
    ]
    without_display = replace(caps("7.2"), vfio_properties=caps("7.2").vfio_properties - {"display"})
    assert nvidia.qemu_device_args(PATH, without_display) == [
        "-device", f"vfio-pci,id=vgpu0,sysfsdev={PATH},x-enable-migration=on",
    ]  # fmt: skip


def test_simulated_adds_no_device() -> None:
    assert SimulatedProfile().qemu_device_args(PATH, caps("7.2")) == []


def test_commas_in_the_path_are_escaped() -> None:
    assert (
        vfio_pci_device("/lab/a,b/sys/x", ["display=on"])
        == "vfio-pci,sysfsdev=/lab/a,,b/sys/x,display=on"
    )


# --------------------------------------------------------------------------------------------
# Host checks


class ProbeExecutor:
    """Answers the probe script of :func:`run_probes` with canned (rc, output) per probe key."""

    name = "host-a"

    def __init__(self, answers: Mapping[str, tuple[int, str]]) -> None:
        self.answers = answers
        self.calls = 0

    def run_shell(
        self, script: str, *, timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        assert timeout is not None
        self.calls += 1
        mark = re.search(r"(@probe-[0-9a-f]+) begin", script)
        assert mark is not None
        out = []
        for key in re.findall(r"@probe-[0-9a-f]+ begin (\S+)'?", script):
            rc, text = self.answers[key.rstrip("'")]
            out += [f"{mark.group(1)} begin {key.rstrip(chr(39))}", text, f"{mark.group(1)} rc {rc}"]
        return CommandResult(self.name, script, 0, "\n".join(out) + "\n", "", 0.01)

    def run(
        self, argv: Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        raise AssertionError("host checks must use one probe script")

    def check(
        self, argv: Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        raise AssertionError("host checks must use one probe script")

    def check_shell(self, script: str, *, timeout: float | None = None) -> CommandResult:
        raise AssertionError("host checks must use one probe script")


GOOD_CMDLINE = (
    0,
    "BOOT_IMAGE=/vmlinuz-6.1.0-18-amd64 root=/dev/sda1 ro quiet intel_iommu=on i915.enable_gvt=1",
)


def test_gvt_host_checks_pass_on_a_good_host() -> None:
    ex = ProbeExecutor(
        {"enable_gvt": (0, "Y"), "kvmgt": (0, ""), "mdev": (0, ""), "cmdline": GOOD_CMDLINE,
         "iommu_groups": (0, "17")}
    )  # fmt: skip
    checks = GvtProfile().host_checks(ex)
    assert ex.calls == 1
    assert [c.name for c in checks] == [
        "i915 enable_gvt",
        "kvmgt loaded",
        "mdev core present",
        "IOMMU on",
    ]
    assert all(c.passed for c in checks)
    assert checks[3].detail == "kernel command line: intel_iommu=on"


def test_gvt_host_checks_say_what_to_do() -> None:
    ex = ProbeExecutor(
        {"enable_gvt": (0, "N"), "kvmgt": (1, ""), "mdev": (1, ""), "cmdline": (0, "ro quiet"),
         "iommu_groups": (0, "0")}
    )  # fmt: skip
    checks = {c.name: c for c in GvtProfile().host_checks(ex)}
    assert not any(c.passed for c in checks.values())
    assert checks["i915 enable_gvt"].detail == "enable_gvt=N"
    assert "modprobe kvmgt" in checks["kvmgt loaded"].detail
    assert "add intel_iommu=on" in checks["IOMMU on"].detail
    missing = ProbeExecutor({**ex.answers, "enable_gvt": (1, "cat: ...: No such file or directory")})
    gvt = next(c for c in GvtProfile().host_checks(missing) if c.name == "i915 enable_gvt")
    assert "i915.enable_gvt=1" in gvt.detail


def test_nvidia_host_checks() -> None:
    ex = ProbeExecutor(
        {"nvidia": (0, ""), "vgpu_vfio": (0, ""), "mgr": (0, "2211"), "version": (0, "535.104.06"),
         "cmdline": (0, "ro"), "iommu_groups": (0, "84")}
    )  # fmt: skip
    checks = {c.name: c for c in NvidiaProfile().host_checks(ex)}
    assert all(c.passed for c in checks.values())
    assert checks["nvidia module loaded"].detail == "driver 535.104.06"
    assert checks["nvidia-vgpu-mgr running"].detail == "pid 2211"
    assert checks["IOMMU on"].detail == "84 IOMMU groups (default on in this kernel)"
    down = ProbeExecutor({**ex.answers, "mgr": (1, "")})
    mgr = next(c for c in NvidiaProfile().host_checks(down) if c.name == "nvidia-vgpu-mgr running")
    assert not mgr.passed
    assert "systemctl start nvidia-vgpu-mgr" in mgr.detail


@pytest.mark.parametrize(
    ("release", "migrates"), [("6.12.43+deb13-amd64", True), ("6.1.0-18-amd64", False)]
)
def test_mtty_host_checks(release: str, migrates: bool) -> None:
    ex = ProbeExecutor(
        {"mtty": (0, ""), "mdev": (0, ""), "vfio": (0, ""), "type1": (0, ""), "kernel": (0, release)}
    )
    checks = {c.name: c for c in MttyProfile().host_checks(ex)}
    assert checks["mtty loaded"].passed
    assert checks["kernel supports mtty migration"].passed is migrates
    if not migrates:
        assert "from Linux 6.7" in checks["kernel supports mtty migration"].detail


def test_probes_really_run_in_one_script() -> None:
    ex = LocalExecutor("ctl")
    probes = run_probes(
        ex, {"ok": "echo hello", "fails": "echo oops >&2; exit 3", "quoted": "printf '%s' \"a b\""}
    )
    assert probes["ok"].ok
    assert probes["ok"].output == "hello"
    assert (probes["fails"].rc, probes["fails"].output) == (3, "oops")
    assert probes["quoted"].output == "a b"


def test_real_gvt_checks_run_here() -> None:
    """On this (GPU-less) machine the checks run and fail with reasons instead of raising."""
    checks = GvtProfile().host_checks(LocalExecutor("ctl"))
    assert [c.name for c in checks] == [
        "i915 enable_gvt",
        "kvmgt loaded",
        "mdev core present",
        "IOMMU on",
    ]
    assert all(c.detail for c in checks)


def test_simulated_checks_on_an_unmounted_tree(tmp_path: Path) -> None:
    write_static_tree(tmp_path, SimConfig())
    checks = {
        c.name: c for c in SimulatedProfile().host_checks(LocalExecutor("h"), sysfs_root=str(tmp_path))
    }
    assert not checks["simulated sysfs mounted"].passed
    assert "python -m mdevtest.lab.simsysfs" in checks["simulated sysfs mounted"].detail
    assert checks["simulated parent present"].passed
    assert checks["simulated parent present"].detail == "parents: 0000:00:02.0"


# --------------------------------------------------------------------------------------------
# Host log patterns

DMESG = {
    "gvt": [
        "[ 1234.567890] i915 0000:00:02.0: [drm] GPU HANG: ecode 9:1:85dffffb, in Xorg [1090]",
        "[ 1300.000001] gvt: vgpu 1: fail to emulate MMIO read 00002358 len 4",
        "[  512.100000] DMAR: [DMA Read NO_PASID] Request device [00:02.0] fault addr 0x7f000000",
        "[  600.000000] i915 0000:00:02.0: [drm] *ERROR* gvt: vgpu 2: invalid cmd",
    ],
    "nvidia": [
        "[ 4242.424242] NVRM: Xid (PCI:0000:3b:00): 43, pid=2211, name=nvidia-vgpu-mgr, Ch 00000008",
        "[ 4243.000000] nvidia-vgpu-mgr[2211]: error: vmiop_log: (0x0): Migration failed",
    ],
    "mtty": ["[  99.000000] mtty: mtty_save_state: error writing migration data"],
}
BENIGN = [
    "[    1.000000] vfio-pci 0000:01:00.0: enabling device (0000 -> 0003)",
    "[    2.000000] i915 0000:00:02.0: [drm] GuC firmware i915/kbl_guc_70.1.1.bin version 70.1",
    "[    3.000000] NVRM: loading NVIDIA UNIX x86_64 Kernel Module  535.104.06",
    "[    4.000000] mtty_dev: mtty_dev_init",
    "[    5.000000] DMAR: IOMMU enabled",
    "[    6.000000] 0000:00:03.0: ttyS4 at I/O 0xc080 (irq = 23, base_baud = 115200) is a 16550A",
]
COMMON = [
    "[ 777.000000] Call Trace:",
    "[ 778.000000] WARNING: CPU: 3 PID: 4321 at drivers/vfio/vfio_main.c:1234 vfio_df_close+0x1/0x2",
    "[ 779.000000] vfio-pci 0000:3b:00.0: vfio_bar_restore: reset recovery - restoring BARs failed",
    # the nested lab's guest after a switchover with its INTx stuck asserted (QEMU under TCG)
    '[ 780.000000] irq 23: nobody cared (try booting with the "irqpoll" option)',
    "[ 781.000000] Disabling IRQ #23",
]


@pytest.mark.parametrize("vendor", ["gvt", "nvidia", "mtty"])
def test_trouble_patterns(vendor: str) -> None:
    profile = get_profile(vendor)
    log = "\n".join([*BENIGN, *DMESG[vendor], *COMMON, DMESG[vendor][0]])
    found = profile.find_trouble(log)
    assert found == [*DMESG[vendor], *COMMON]  # in order, each once, nothing benign
    assert profile.find_trouble("\n".join(BENIGN)) == []


def test_vendor_patterns_stay_with_their_vendor() -> None:
    assert get_profile("simulated").find_trouble("\n".join(DMESG["nvidia"][:1] + DMESG["gvt"][:1])) == []
    assert get_profile("simulated").find_trouble(COMMON[0]) == [COMMON[0]]
