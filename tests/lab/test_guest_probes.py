"""The synthetic workload's integrity probes, in a real guest (plain QEMU, TCG, on the controller).

Boots the lab image with what the probes need (the control channel on a second UART, the read-only
pattern disk, a UDP heartbeat to this process) and proves each check both ways: it passes on a
healthy guest, and it fails naming the right page, offset, slot or pixel after the guest injects
exactly that fault. Then one live migration to a second QEMU on this machine shows the probes, and
what they guard, survive it.

The QEMU arguments here are the ones the lab's machines need for the probes (see
:func:`qemu_argv`); nothing here uses the lab's namespaces or sshd.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mdevtest.errors import CheckFailed, QmpError
from mdevtest.lab.image import DEFAULT_CACHE_DIR, GuestImage, build_guest_image
from mdevtest.qemu.qmp import QmpSession
from mdevtest.workloads.synthetic import (
    GuestReply,
    Ready,
    ReplyReader,
    UdpBeat,
    compare_states,
    decode_frame_number,
    encode_command,
    find_ready,
    parse_frames,
    parse_state,
    parse_udp_heartbeat,
    verify_frame,
    write_pattern_disk,
)

pytestmark = pytest.mark.lab

QEMU = "qemu-system-x86_64"
DISK_MIB = 32
UDP_US = 1000
BOOT_TIMEOUT_S = 180.0
COMMAND_TIMEOUT_S = 30.0
QMP_TIMEOUT_S = 30.0
MIGRATION_TIMEOUT_S = 180.0
SO_RCVBUFFORCE = 33  # Linux; in the socket module from Python 3.12
FRAME_TIMEOUT_S = 20.0  # frames advance at 10 fps; generous for a starved TCG guest


def qemu_argv(
    image: GuestImage,
    workdir: Path,
    *,
    name: str,
    disk: Path | None,
    udp_port: int | None,
    incoming: bool = False,
    append: str = "mdt.hb_ms=20 mdt.fps=10",
) -> list[str]:
    """The guest as the lab runs it, plus what the probes need:

    - ``-chardev socket,...,logfile=ctl.log`` + ``-device isa-serial,index=1``: the control
      channel, ttyS1 in the guest;
    - ``-drive ...,readonly=on`` + ``-device virtio-blk-pci``: the pattern disk (/dev/vda);
    - ``mdt.udp=10.0.2.2:<port>``: slirp's host address, which reaches this machine's 127.0.0.1.
    """
    if udp_port is not None:
        append += f" mdt.udp=10.0.2.2:{udp_port} mdt.udp_us={UDP_US}"
    argv = [
        QEMU,
        "-name", name,
        "-machine", "q35",
        "-accel", "tcg",
        "-m", "256",
        "-smp", "1",
        "-nodefaults",
        "-no-user-config",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", f"{image.append} {append}",
        "-vga", "std",
        "-display", "none",
        "-chardev", f"socket,id=qmp0,path={workdir / 'qmp.sock'},server=on,wait=off",
        "-mon", "chardev=qmp0,mode=control",
        "-chardev", f"file,id=ser0,path={workdir / 'serial.log'}",
        "-serial", "chardev:ser0",
        "-chardev",
        f"socket,id=ctl0,path={workdir / 'ctl.sock'},server=on,wait=off,"
        f"logfile={workdir / 'ctl.log'}",
        "-device", "isa-serial,chardev=ctl0,index=1",
        "-netdev", "user,id=net0",
        "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
        "-no-reboot",
    ]  # fmt: skip
    if disk is not None:
        argv += [
            "-drive", f"file={disk},if=none,id=pat0,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=pat0",
        ]  # fmt: skip
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


@dataclass
class Vm:
    """One QEMU of this module: its files, QMP session and control channel."""

    name: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    qmp: QmpSession
    started: float
    command_s: dict[str, list[float]] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def console(self) -> str:
        return (self.workdir / "serial.log").read_bytes().decode(errors="replace")

    def ctl_log(self) -> str:
        path = self.workdir / "ctl.log"
        return path.read_bytes().decode(errors="replace") if path.exists() else ""

    def wait_ready(self, timeout_s: float = BOOT_TIMEOUT_S) -> Ready:
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout_s
        while (ready := find_ready(self.console())) is None:
            if self.proc.poll() is not None:
                log = (self.workdir / "qemu.log").read_text(errors="replace")
                pytest.fail(f"{self.name}: QEMU exited (rc={self.proc.returncode})\n{log}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name}: no MDT-READY within {timeout_s:g} s\n{_tail(self.console())}")
            time.sleep(0.05)
        return ready

    def command(self, cmd: str, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> GuestReply:
        """Connect to the control channel, send one command, read its reply, disconnect."""
        __tracebackhide__ = True
        request_id = f"{self.name}-{next(self._ids)}"
        reader = ReplyReader()
        start = time.monotonic()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(self.workdir / "ctl.sock"))
            sock.sendall(encode_command(cmd, *args, request_id=request_id))
            while True:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    data = b""
                if not data or time.monotonic() - start > timeout_s:
                    pytest.fail(
                        f"{self.name}: no reply to {cmd} {' '.join(args)} within {timeout_s:g} s\n"
                        f"--- ctl.log ---\n{self.ctl_log()[-2000:]}"
                    )
                for reply in reader.feed(data):
                    if reply.request_id == request_id:
                        self.command_s.setdefault(cmd, []).append(time.monotonic() - start)
                        return reply

    def screendump(self, name: str) -> Image.Image:
        path = self.workdir / name
        self.qmp.execute("screendump", {"filename": str(path), "format": "png"})
        with Image.open(path) as image:
            image.load()
            return image


def _tail(text: str, lines: int = 30) -> str:
    return "--- console tail ---\n" + "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def running_vm(name: str, argv: list[str], workdir: Path) -> Iterator[Vm]:
    """A QEMU with a QMP session; quit over QMP afterwards, killed if that does not work."""
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with (workdir / "qemu.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    qmp: QmpSession | None = None
    try:
        deadline = time.monotonic() + QMP_TIMEOUT_S
        while qmp is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(workdir / "qmp.sock"))
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
                continue
            qmp = QmpSession(name, sock, timeout=QMP_TIMEOUT_S)
        yield Vm(name, proc, workdir, qmp, started)
    finally:
        if qmp is not None:
            with contextlib.suppress(QmpError):  # gone already: the kill below
                qmp.execute("quit", timeout=10)
            qmp.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class UdpObserver:
    """Receives the guest's UDP heartbeats on 127.0.0.1, stamping each on the monotonic clock."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:  # beyond net.core.rmem_max (root): seconds of datagrams if this thread lags
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._beats: list[tuple[int, UdpBeat]] = []
        self.malformed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udp observer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(256)
            except TimeoutError:
                continue
            now = time.monotonic_ns()
            try:
                beat = parse_udp_heartbeat(data)
            except ValueError:
                self.malformed += 1
                continue
            with self._lock:
                self._beats.append((now, beat))

    def beats(self) -> list[tuple[int, UdpBeat]]:
        with self._lock:
            return list(self._beats)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


def _pacing(beats: list[tuple[int, UdpBeat]]) -> dict[str, Any]:
    """Sequence continuity and inter-arrival statistics of a run of datagrams."""
    seqs = [b.seq for _, b in beats]
    arrivals_ms = [(b[0] - a[0]) / 1e6 for a, b in itertools.pairwise(beats)]
    ordered = sorted(set(seqs))
    lost = sum(b - a - 1 for a, b in itertools.pairwise(ordered))
    pct = statistics.quantiles(arrivals_ms, n=100) if len(arrivals_ms) > 1 else [0.0] * 99
    return {
        "datagrams": len(beats),
        "lost": lost,
        "duplicated": len(seqs) - len(ordered),
        "reordered": sum(1 for a, b in itertools.pairwise(seqs) if b < a),
        "skipped_flags": sum(1 for _, b in beats if b.skipped),
        "median_ms": round(statistics.median(arrivals_ms), 3),
        "p1_ms": round(pct[0], 3),
        "p99_ms": round(pct[98], 3),
        "max_ms": round(max(arrivals_ms), 3),
    }


@dataclass(frozen=True)
class Setup:
    image: GuestImage
    build_s: float
    disk: Path
    udp: UdpObserver
    workdir: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    start = time.monotonic()
    image = build_guest_image(DEFAULT_CACHE_DIR)
    build_s = time.monotonic() - start
    workdir = tmp_path_factory.mktemp("probes")
    disk = write_pattern_disk(workdir / "pattern.img", DISK_MIB)
    udp = UdpObserver()
    try:
        yield Setup(image, build_s, disk, udp, workdir)
    finally:
        udp.close()


@pytest.fixture(scope="module")
def vm(setup: Setup) -> Iterator[Vm]:
    workdir = setup.workdir / "source"
    argv = qemu_argv(
        setup.image, workdir, name="mdt-test-probes-src", disk=setup.disk, udp_port=setup.udp.port
    )
    with running_vm("src", argv, workdir) as machine:
        yield machine


@pytest.fixture(scope="module")
def ready(vm: Vm) -> Ready:
    return vm.wait_ready()


def test_every_probe_is_set_up(
    setup: Setup, vm: Vm, ready: Ready, record_property: Callable[[str, object], None]
) -> None:
    boot_s = time.monotonic() - vm.started
    record_property("image_build_or_cache_s", round(setup.build_s, 2))
    record_property("boot_to_ready_s", round(boot_s, 2))
    print(f"\nimage: {setup.build_s:.2f} s; QEMU start to MDT-READY: {boot_s:.2f} s")
    print(find_ready(vm.console()))
    f = ready.fields
    assert f["version"] == "2"
    assert f["ctl"] == "ttyS1"
    assert f["udp"] == f"10.0.2.2:{setup.udp.port}"
    assert f["dirty_mib"] == "16"
    assert f["mlock"] == "1"
    assert f["dma"] == "vda"
    assert int(f["dma_blocks"]) == DISK_MIB * 256
    assert f["vram_kib"] == "2048"
    assert f["vram_at"].startswith("vram@0x"), "the device-memory pattern is not in video memory"
    text = vm.console()
    assert "MDT-WARN" not in text
    assert "MDT-ERROR" not in text


def test_every_check_passes_on_a_healthy_guest(
    vm: Vm, ready: Ready, record_property: Callable[[str, object], None]
) -> None:
    assert vm.command("PING").ok
    first = {cmd: vm.command(cmd).require_ok() for cmd in ("VERIFY-RAM", "VERIFY-VRAM", "VERIFY-DMA")}
    time.sleep(1.0)
    second = {cmd: vm.command(cmd).require_ok() for cmd in ("VERIFY-RAM", "VERIFY-VRAM", "VERIFY-DMA")}
    for reply in second.values():
        print(reply.line())
    assert second["VERIFY-RAM"].int_value("pages") == 16 * 256
    assert second["VERIFY-VRAM"].int_value("bytes") == 2048 * 1024
    assert second["VERIFY-VRAM"].values["where"] == ready.fields["vram_at"]
    assert second["VERIFY-DMA"].int_value("filled") == second["VERIFY-DMA"].int_value("slots")
    # the writer and the reader keep working between checks
    ram_rate = second["VERIFY-RAM"].int_value("writes") - first["VERIFY-RAM"].int_value("writes")
    dma_rate = second["VERIFY-DMA"].int_value("reads") - first["VERIFY-DMA"].int_value("reads")
    assert ram_rate > 100
    assert dma_rate > 10
    assert second["VERIFY-DMA"].int_value("errors") == 0
    times = {cmd: round(max(s), 3) for cmd, s in vm.command_s.items()}
    record_property("command_s_max", times)
    print(f"pages rewritten in ~1 s: {ram_rate}; DMA reads: {dma_rate}; command times (s): {times}")


def test_state_is_stable_and_interrupts_keep_arriving(vm: Vm, ready: Ready) -> None:
    before = parse_state(vm.command("STATE"))
    time.sleep(1.0)
    reply = vm.command("STATE")
    after = parse_state(reply)
    print("\n" + reply.describe())
    assert ready.fb is not None
    assert after.mode == f"{ready.fb.width}x{ready.fb.height}"
    ids = {p.ids for p in after.pci.values()}
    assert {"1234:1111", "1af4:1000", "1af4:1001"} <= ids  # VGA, virtio-net, virtio-blk
    names = set(after.irqs)
    assert {"ttyS0", "ttyS1", "LOC"} <= names
    assert any(n.startswith("virtio1-req") for n in names), names
    assert after.frame > before.frame
    assert compare_states(before, after) == []


def test_a_controller_may_leave_mid_line(vm: Vm) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(COMMAND_TIMEOUT_S)
        sock.connect(str(vm.workdir / "ctl.sock"))
        sock.sendall(b"VERIFY-R")  # and gone
    assert vm.command("PING").ok  # the next controller's leading newline ends the stray line


def test_a_skipped_page_write_fails_verify_ram_naming_the_page(vm: Vm) -> None:
    fault = vm.command("FAULT", "skip-page").require_ok()
    page, gen = fault.int_value("page"), fault.int_value("expected_gen")
    try:
        time.sleep(0.5)  # the writer keeps going; the skipped page must stay stale
        reply = vm.command("VERIFY-RAM")
        print("\n" + reply.describe())
        assert reply.status == "fail"
        assert reply.int_value("bad") == 1
        assert reply.detail_values() == [
            {"page": str(page), "expected_gen": str(gen), "found_gen": str(gen - 1), "reason": "stale"}
        ]
        with pytest.raises(CheckFailed, match=f"page={page} expected_gen={gen}"):
            reply.require_ok()
    finally:
        vm.command("FAULT", "clear").require_ok()
    vm.command("VERIFY-RAM").require_ok()


def test_a_changed_vram_word_fails_verify_vram_naming_the_offset(vm: Vm) -> None:
    fault = vm.command("FAULT", "vram-word").require_ok()
    try:
        reply = vm.command("VERIFY-VRAM")
        print("\n" + reply.describe())
        assert reply.status == "fail"
        assert reply.int_value("bad") == 1
        [d] = reply.detail_values()
        assert d == {k: fault.values[k] for k in ("offset", "expected", "found")}
    finally:
        vm.command("FAULT", "clear").require_ok()
    vm.command("VERIFY-VRAM").require_ok()


def test_a_lost_dma_write_fails_verify_dma_naming_slot_and_block(vm: Vm) -> None:
    fault = vm.command("FAULT", "dma-skip").require_ok()
    try:
        time.sleep(0.5)
        reply = vm.command("VERIFY-DMA")
        print("\n" + reply.describe())
        assert reply.status == "fail"
        assert reply.int_value("bad") == 1
        [d] = reply.detail_values()
        assert d["slot"] == fault.values["slot"]
        assert d["block"] == fault.values["block"]
        assert d["offset"] == "0x0"  # the block header already differs
        assert d["found_block"] != d["block"]
    finally:
        vm.command("FAULT", "clear").require_ok()
    vm.command("VERIFY-DMA").require_ok()


def _frame_from(vm: Vm, first: int, name: str) -> Image.Image:
    """A capture of frame ``first`` or later: one drawn after the guest acted on a command."""
    __tracebackhide__ = True
    deadline = time.monotonic() + FRAME_TIMEOUT_S
    while True:
        image = vm.screendump(name)
        if decode_frame_number(image) >= first:
            return image
        if time.monotonic() > deadline:
            pytest.fail(f"the display did not reach frame {first} within {FRAME_TIMEOUT_S:g} s")
        time.sleep(0.2)


def _shown_frame(vm: Vm) -> int:
    return parse_state(vm.command("STATE")).frame


def test_a_corrupted_pixel_fails_the_exact_frame_check_naming_it(vm: Vm) -> None:
    verify_frame(vm.screendump("clean.png"))
    fault = vm.command("FAULT", "pixel").require_ok()
    x, y = fault.int_value("x"), fault.int_value("y")
    try:
        image = _frame_from(vm, fault.int_value("frame") + 2, "pixel.png")
        pixels = image.width * image.height
        with pytest.raises(CheckFailed, match=rf"1 of {pixels} pixels .* \({x}, {y}\)"):
            verify_frame(image)
    finally:
        cleared = vm.command("FAULT", "clear").require_ok()
    verify_frame(_frame_from(vm, cleared.int_value("frame") + 2, "cleared.png"))


def test_a_frozen_display_stops_advancing(vm: Vm) -> None:
    fault = vm.command("FAULT", "freeze").require_ok()
    try:
        deadline = time.monotonic() + FRAME_TIMEOUT_S
        frame = _shown_frame(vm)
        while True:  # frozen once the frame on screen stops changing (at most one more flip)
            time.sleep(0.5)
            frame, before = _shown_frame(vm), frame
            if frame == before or time.monotonic() > deadline:
                break
        assert frame <= fault.int_value("frame") + 1
        a = verify_frame(vm.screendump("frozen-a.png"))  # a whole, valid frame...
        time.sleep(1.0)
        b = decode_frame_number(vm.screendump("frozen-b.png"))
        assert a == b == frame  # ...that does not change
    finally:
        cleared = vm.command("FAULT", "clear").require_ok()
    assert verify_frame(_frame_from(vm, cleared.int_value("frame") + 2, "thawed.png")) > a


def test_udp_heartbeats_are_consecutive_and_paced(
    setup: Setup, vm: Vm, ready: Ready, record_property: Callable[[str, object], None]
) -> None:
    start = len(setup.udp.beats())
    time.sleep(3.0)
    beats = setup.udp.beats()[start:]
    stats = _pacing(beats)
    record_property("udp_pacing", stats)
    print(f"\nUDP heartbeat over 3 s (nominal every {UDP_US} us): {stats}")
    assert setup.udp.malformed == 0
    assert stats["lost"] == 0
    assert stats["duplicated"] == 0
    assert stats["reordered"] == 0
    assert stats["datagrams"] > 0.3 * 3.0 * 1e6 / UDP_US  # loose: TCG on a shared machine
    guest_ms = [(b.t_ns - a.t_ns) / 1e6 for (_, a), (_, b) in itertools.pairwise(beats)]
    assert 0.5 < statistics.median(guest_ms) < 2.0


def test_probes_survive_a_live_migration(
    setup: Setup, vm: Vm, ready: Ready, record_property: Callable[[str, object], None]
) -> None:
    """Source -> destination on this machine; then every check passes on the destination."""
    workdir = setup.workdir / "destination"
    argv = qemu_argv(
        setup.image,
        workdir,
        name="mdt-test-probes-dst",
        disk=setup.disk,
        udp_port=setup.udp.port,
        incoming=True,
    )
    with running_vm("dst", argv, workdir) as dst:
        with socket.socket() as probe:  # a free port for the migration stream
            probe.bind(("127.0.0.1", 0))
            uri = f"tcp:127.0.0.1:{probe.getsockname()[1]}"
        dst.qmp.execute("migrate-incoming", {"uri": uri})
        before = parse_state(vm.command("STATE"))
        udp_mark = len(setup.udp.beats())
        vm.qmp.execute("migrate", {"uri": uri})
        deadline = time.monotonic() + MIGRATION_TIMEOUT_S
        while (info := vm.qmp.execute("query-migrate"))["status"] not in ("completed", "failed"):
            if time.monotonic() > deadline:
                vm.qmp.execute("migrate_cancel")
                pytest.fail(f"migration did not complete within {MIGRATION_TIMEOUT_S:g} s: {info}")
            time.sleep(0.1)
        assert info["status"] == "completed", info
        dst.qmp.wait_event("RESUME", timeout=30)
        assert dst.qmp.execute("query-status")["status"] == "running"
        assert vm.qmp.execute("query-status")["status"] == "postmigrate"
        print(
            f"\nmigration: total {info.get('total-time')} ms, downtime {info.get('downtime')} ms, "
            f"ram transferred {info['ram']['transferred'] >> 20} MiB"
        )
        # Every check, through the destination's own control channel.
        for cmd in ("VERIFY-RAM", "VERIFY-VRAM", "VERIFY-DMA"):
            reply = dst.command(cmd).require_ok()
            print(reply.line())
        assert dst.command("VERIFY-VRAM").values["where"] == ready.fields["vram_at"]
        time.sleep(1.0)
        reply = dst.command("STATE")
        after = parse_state(reply)
        assert compare_states(before, after) == []
        # The workload kept going: frames on the destination's screen, UDP from the destination.
        verify_frame(dst.screendump("after.png"))
        beats = setup.udp.beats()[udp_mark:]
        stats = _pacing(beats)
        gap_ms = stats["max_ms"]
        record_property("migration_udp", stats)
        record_property("migration_downtime_ms", info.get("downtime"))
        print(f"UDP across the migration: {stats} (largest arrival gap {gap_ms} ms)")
        assert stats["duplicated"] == 0
        assert max(b.seq for _, b in beats) > min(b.seq for _, b in beats) + 500
        dst_frames = parse_frames(dst.console())
        assert dst_frames, "no MDT-FRAME line on the destination's console"


def test_probes_that_cannot_run_answer_skip(setup: Setup) -> None:
    """No disk, no display, no dirtier: each check says skip and why, rather than ok."""
    workdir = setup.workdir / "bare"
    argv = qemu_argv(
        setup.image,
        workdir,
        name="mdt-test-probes-bare",
        disk=None,
        udp_port=None,
        append="mdt.hb_ms=20 mdt.fps=0 mdt.dirty_mib=0",
    )
    with running_vm("bare", argv, workdir) as bare:
        ready = bare.wait_ready()
        assert ready.fields["dma"] == "none"
        assert ready.fields["dma_reason"] == "no-disk"
        assert ready.fields["udp"] == "off"
        expected = {
            ("VERIFY-DMA",): "no-disk",
            ("VERIFY-RAM",): "disabled",
            ("VERIFY-VRAM",): "no-vram",
            ("FAULT", "dma-skip"): "no-disk",
            ("FAULT", "skip-page"): "disabled",
            ("FAULT", "pixel"): "no-display",
        }
        for words, reason in expected.items():
            reply = bare.command(*words)
            assert (reply.status, reply.values.get("reason")) == ("skip", reason), reply.line()
            with pytest.raises(CheckFailed, match="says skip"):
                reply.require_ok()
        assert parse_state(bare.command("STATE")).mode is None
