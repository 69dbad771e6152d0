"""The nested lab's pieces that need no VM: its model of the lab, the dirty-tracking decision,
the mtty workload's reports and the mtty device-state comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdevtest.checks.mtty import compare_reports
from mdevtest.checks.standard import standard_checks, synthetic_workload
from mdevtest.cli import EXIT_NOT_UP, main
from mdevtest.errors import LabError
from mdevtest.host import dirty_tracking
from mdevtest.inventory import load_inventory
from mdevtest.lab import make_lab
from mdevtest.lab.local import LocalLab
from mdevtest.lab.nested import NestedLab
from mdevtest.qemu.caps import QemuCaps
from mdevtest.vendors import get_profile
from mdevtest.workloads.mtty import find_mtty_ready, last_reports, parse_errors, parse_reports

REPO = Path(__file__).resolve().parents[2]
NESTED = REPO / "inventory" / "nested-mtty.yaml"

QEMU10 = QemuCaps(
    version=(10, 0, 13),
    vfio_migration_prop="enable-migration",
    switchover_ack=True,
    screendump_png=True,
    vfio_properties=frozenset({"enable-migration", "x-device-dirty-page-tracking"}),
)

# Real lines of the workload (nested lab, host-a -> host-b), trimmed to two reports per port.
READY = (
    "MDT-READY ports=ttyS4,ttyS5 hb_ms=100 report_ms=1000 baud=9600 parity=e stop=2 window=8 "
    "chunk=8 stall_ms=5000 version=1\n"
)
REPORT = (
    "MDT-MTTY n={n} port={port} pci=0000:00:03.0 tx={tx} rx={rx} err={err} bad=0 lost={lost} dup=0 "
    "extra=0 stalls=0 inflight=0 quiet=1 lcr={lcr} ier=0x05 iir=0xc1 mcr=0x0b lsr=0x60 msr=0xb3 "
    "scr={scr} scr_next={scr_next} scr_err={scr_err} reg_changes=0 div=12 baud=9600 t=8{n}000\n"
)


def report(n: int, *, port: str = "ttyS4", tx: int = 0, rx: int | None = None, **kw: str | int) -> str:
    values: dict[str, str | int] = {
        "n": n, "port": port, "tx": tx, "rx": tx if rx is None else rx, "err": 0, "lost": 0,
        "lcr": "0x1f", "scr": "0x00", "scr_next": "0x00", "scr_err": 0,
    }  # fmt: skip
    values.update(kw)
    return REPORT.format(**values)


# -- the lab model ---------------------------------------------------------------------------------


def test_the_factory_picks_the_flavour() -> None:
    assert isinstance(make_lab(load_inventory(NESTED)), NestedLab)
    assert isinstance(make_lab(load_inventory(REPO / "inventory" / "local-lab.yaml")), LocalLab)


def test_nested_hosts_come_from_the_inventory() -> None:
    lab = NestedLab(load_inventory(NESTED))
    a, b = lab.hosts
    assert (a.ssh_port, b.ssh_port) == (10221, 10222)
    assert (a.mig_address, b.mig_address) == ("198.18.1.11/24", "198.18.1.12/24")
    assert (a.link_port, a.peer_link_port, b.link_port, b.peer_link_port) == (10231, 10232, 10232, 10231)
    assert a.directory == Path("/var/lib/mdevtest/nested-lab/hosts/host-a")
    assert a.mac != b.mac


def test_nested_lab_refuses_what_it_cannot_build(tmp_path: Path) -> None:
    text = NESTED.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("address: 127.0.0.1", "address: 198.18.0.11", 1))
    with pytest.raises(LabError, match=r"host-a: address must be 127\.0\.0\.1"):
        NestedLab(load_inventory(bad))
    bad.write_text(text.replace("port: 10222", "port: 10221"))
    with pytest.raises(LabError, match=r"its own ssh\.port"):
        NestedLab(load_inventory(bad))


def test_status_of_a_lab_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "nested.yaml"
    inv.write_text(NESTED.read_text().replace("/var/lib/mdevtest/nested-lab", str(tmp_path / "lab")))
    assert main(["lab", "status", "--inventory", str(inv)]) == EXIT_NOT_UP
    out = capsys.readouterr().out
    assert out.startswith("nested lab: down")
    assert "host-a: qemu=- ssh=127.0.0.1:10221 (no answer)" in out
    with pytest.raises(SystemExit):
        main(["lab", "status", "--flavor", "sideways"])


def test_flavor_and_inventory_must_agree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "status", "--flavor", "netns", "--inventory", str(NESTED)]) == 4
    assert "describes a nested lab, not --flavor netns" in capsys.readouterr().err


# -- dirty tracking ------------------------------------------------------------------------------


def test_debian_612_runs_vfio_without_device_dirty_tracking() -> None:
    tracking = dirty_tracking("6.12.117+deb13-amd64", "", QEMU10)
    assert (tracking.mode, tracking.device_logging, tracking.usable) == ("off", False, True)
    assert tracking.vfio_options == ("x-device-dirty-page-tracking=off",)
    assert "CONFIG_IOMMUFD_DRIVER" in tracking.detail


@pytest.mark.parametrize(
    ("kernel", "line", "mode", "logging"),
    [
        ("6.12.1", "CONFIG_IOMMUFD_DRIVER=y", "device", True),
        ("6.1.0-28-amd64", "", "device", True),  # before 6.7 vfio has the helpers itself
        ("6.12.1", None, "device", None),  # no /boot/config: unknown, QEMU's default
    ],
)
def test_dirty_tracking_modes(kernel: str, line: str | None, mode: str, logging: bool | None) -> None:
    tracking = dirty_tracking(kernel, line, QEMU10)
    assert (tracking.mode, tracking.device_logging, tracking.usable) == (mode, logging, True)
    assert tracking.vfio_options == ()


def test_a_qemu_that_cannot_turn_device_tracking_off_cannot_migrate_there() -> None:
    old = QemuCaps((8, 0, 0), "x-enable-migration", False, True, frozenset({"x-enable-migration"}))
    tracking = dirty_tracking("6.12.1", "", old)
    assert not tracking.usable
    assert "no x-device-dirty-page-tracking property" in tracking.detail


def test_mtty_device_gets_the_off_mode_options() -> None:
    tracking = dirty_tracking("6.12.1", "", QEMU10)
    args = get_profile("mtty").qemu_device_args(
        "/sys/bus/mdev/devices/u", QEMU10, extra=tracking.vfio_options
    )
    assert args == [
        "-device",
        "vfio-pci,sysfsdev=/sys/bus/mdev/devices/u,id=vgpu0,enable-migration=on,x-device-dirty-page-tracking=off",
    ]


# -- the mtty workload and its check -------------------------------------------------------------


def test_reports_are_parsed_per_port() -> None:
    log = READY + report(1, tx=64) + report(1, port="ttyS5", tx=56) + "MDT-HB seq=3 t=1\n"
    log += "MDT-MTTY-ERR port=ttyS5 kind=scratch expected=0x69 got=0x00\n" + "MDT-MTTY n=2 port=tt"
    ready = find_mtty_ready(log)
    assert ready is not None
    assert ready.ports == ("ttyS4", "ttyS5")
    reports = parse_reports(log)
    assert [(r.port, r.n, r.tx) for r in reports] == [("ttyS4", 1, 64), ("ttyS5", 1, 56)]
    assert reports[0].registers["lcr"] == 0x1F
    assert set(last_reports(log)) == {"ttyS4", "ttyS5"}
    assert [(e.port, e.kind) for e in parse_errors(log)] == [("ttyS5", "scratch")]
    assert find_mtty_ready("MDT-READY fb=1280x800x32 stride=5120 ctl=ttyS1\n") is None


def test_the_synthetic_probes_skip_the_mtty_guest() -> None:
    assert not synthetic_workload(READY)
    assert synthetic_workload("MDT-READY fb=1280x800x32 stride=5120 buffers=2 ctl=ttyS1\n")
    names = [c.name for c in standard_checks(get_profile("mtty"))]
    assert "mtty-device-state" in names
    assert names.index("mtty-device-state") < names.index("host-logs")
    assert "mtty-device-state" not in [c.name for c in standard_checks()]


def test_a_migration_that_kept_the_device_state() -> None:
    before = parse_reports(report(7, tx=3152, scr="0x44", scr_next="0x69"))[0]
    after = parse_reports(
        report(8, tx=3480, scr="0x69", scr_next="0x8e") + report(9, tx=4168, scr="0x8e")
    )
    assert compare_reports(before, after) == []


def test_a_dropped_scratch_register_is_named() -> None:
    before = parse_reports(report(7, tx=3152, scr="0x44", scr_next="0x69"))[0]
    after = parse_reports(
        report(8, tx=3480, scr="0x00", scr_next="0x8e", err=1, scr_err=1)
        + report(9, tx=4168, err=1, scr_err=1)
    )
    problems = compare_reports(before, after)
    assert problems == [
        "1 scratch-register mismatch(es) since the migration (scr_err 0 -> 1)",
        "SCR 0x00 after the migration, but the guest wrote 0x69 before it "
        "(scratch register not migrated)",
    ]


def test_lost_bytes_reset_counters_and_changed_registers_are_named() -> None:
    before = parse_reports(report(7, tx=3152, lcr="0x1f"))[0]
    after = parse_reports(
        report(1, tx=8, lcr="0x03", scr_next="0x26") + report(2, tx=16, rx=8, lost=8, err=8)
    )
    problems = compare_reports(before, after)
    assert problems[0].startswith("counters went back: tx 3152 -> 8")
    assert "no byte looped back on the destination (rx stayed at 3152 over 2 reports)" not in problems
    assert "8 lost byte(s) since the migration (lost 0 -> 8)" in problems
    assert "LCR 0x1f before the migration, 0x03 after" in problems


def test_a_port_that_stopped_looping_is_named() -> None:
    before = parse_reports(report(7, tx=3152))[0]
    after = parse_reports(report(8, tx=3160, rx=3152) + report(9, tx=3160, rx=3152))
    assert compare_reports(before, after) == [
        "no byte looped back on the destination (rx stayed at 3152 over 2 reports)"
    ]
