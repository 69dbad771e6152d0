"""The synthetic workload's console parsers and frame codec (mdevtest.workloads.synthetic)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mdevtest.errors import CheckFailed
from mdevtest.workloads.synthetic import (
    DISK_BLOCK,
    LIVE_IRQS,
    UDP_FLAG_SKIPPED,
    UDP_FORMAT,
    UDP_MAGIC,
    UDP_SIZE,
    UDP_VERSION,
    FbInfo,
    FrameMark,
    GuestReply,
    Heartbeat,
    ReplyReader,
    UdpBeat,
    compare_states,
    crc16_ccitt,
    decode_frame_number,
    encode_command,
    find_ready,
    heartbeat_gaps,
    parse_boot_ms,
    parse_frames,
    parse_heartbeats,
    parse_ready,
    parse_replies,
    parse_result,
    parse_state,
    parse_udp_heartbeat,
    pattern_block,
    render_expected_frame,
    verify_frame,
    write_pattern_disk,
)

WORKLOAD_C = Path(__file__).resolve().parents[2] / "workloads" / "synthetic" / "mdt-workload.c"

# A console log as the guest writes it: kernel messages, CRLF line ends, a kernel line that
# landed inside the protocol stream, a damaged heartbeat, and a last line still being written.
LOG = (
    "[    2.181888] [drm] Found bochs VGA, ID 0xb0c5.\r\n"
    "MDT-NET iface=eth0 mode=dhcp addr=10.0.2.15/24\r\n"
    "MDT-BOOT uptime_ms=2530\r\n"
    "MDT-READY fb=1280x800x32 stride=5120 buffers=2 api=drm fps=10 hb_ms=20 version=1\r\n"
    "MDT-HB seq=1 t=2563390848\r\n"
    "MDT-HB seq=2 t=2583006153\r\n"
    "[    2.601234] random: crng init done\r\n"
    "MDT-HB seq=3 t=2603269754\r\n"
    "MDT-HB seq=4 t=26[    2.62] clocksource: tsc unstable\r\n"
    "MDT-HB seq=5 t=2643026778\r\n"
    "garbage MDT-HB seq=6 t=2663103681\r\n"
    "MDT-FRAME n=10 t=3476407497 late=0\r\n"
    "MDT-HB seq=9 t=2722997838\r\n"
    "MDT-HB seq=10 t=27430"
)


def test_heartbeats_are_taken_from_whole_well_formed_lines_only() -> None:
    beats = parse_heartbeats(LOG)
    assert beats == [
        Heartbeat(1, 2563390848),
        Heartbeat(2, 2583006153),
        Heartbeat(3, 2603269754),
        Heartbeat(5, 2643026778),
        Heartbeat(9, 2722997838),
    ]


def test_an_unterminated_last_line_is_ignored_until_it_is_complete() -> None:
    assert parse_heartbeats(LOG)[-1].seq == 9
    assert parse_heartbeats(LOG + "781\n")[-1] == Heartbeat(10, 27430781)


def test_gaps_are_the_missing_ranges_between_seen_numbers() -> None:
    assert heartbeat_gaps(h.seq for h in parse_heartbeats(LOG)) == [(4, 4), (6, 8)]
    assert heartbeat_gaps([]) == []
    assert heartbeat_gaps([7]) == []
    assert heartbeat_gaps(range(100, 200)) == []


def test_gaps_ignore_order_and_overlap_of_two_logs() -> None:
    source = [1, 2, 3, 4, 5]
    destination = [5, 6, 9, 10]  # a line repeated after the switchover, then two lost
    assert heartbeat_gaps(destination + source) == [(7, 8)]


def test_ready_line_gives_the_display() -> None:
    assert parse_ready(LOG) == FbInfo(1280, 800, 32, stride=5120, buffers=2)
    ready = find_ready(LOG)
    assert ready is not None
    assert ready.fields["hb_ms"] == "20"
    assert ready.fields["api"] == "drm"
    assert ready.reason is None


def test_ready_without_a_display_says_why() -> None:
    text = "MDT-READY fb=none reason=no-device errno=2 hb_ms=20 version=1\n"
    assert parse_ready(text) is None
    ready = find_ready(text)
    assert ready is not None
    assert ready.fb is None
    assert ready.reason == "no-device"


def test_no_ready_before_the_line_is_complete() -> None:
    assert find_ready("MDT-BOOT uptime_ms=1\nMDT-READY fb=640x48") is None
    assert find_ready("") is None


def test_frame_marks_and_boot_time() -> None:
    assert parse_frames(LOG) == [FrameMark(10, 3476407497, 0)]
    assert parse_frames("MDT-FRAME n=20 t=5\n") == [FrameMark(20, 5, 0)]
    assert parse_boot_ms(LOG) == 2530
    assert parse_boot_ms("MDT-HB seq=1 t=2\n") is None


def test_crc_is_ccitt_false() -> None:
    assert crc16_ccitt(b"123456789") == 0x29B1  # the standard check value


@pytest.mark.parametrize(("n", "size"), [(1, (640, 480)), (70, (1280, 800)), (2**32 - 1, (128, 17))])
def test_rendered_frame_decodes_to_its_number(n: int, size: tuple[int, int]) -> None:
    image = render_expected_frame(n, *size)
    assert image.size == size
    assert image.mode == "RGB"
    assert decode_frame_number(image) == n
    assert verify_frame(image) == n


def test_decoding_survives_a_png_round_trip_and_rgba() -> None:
    buf = BytesIO()
    render_expected_frame(12345, 800, 600).save(buf, format="PNG")
    buf.seek(0)
    image = Image.open(buf)
    assert verify_frame(image.convert("RGBA")) == 12345


def test_frames_differ_from_one_number_to_the_next() -> None:
    a = np.asarray(render_expected_frame(5, 640, 480))
    b = np.asarray(render_expected_frame(6, 640, 480))
    assert (a[16:] != b[16:]).any(axis=2).all()  # every body pixel changes


def test_black_image_does_not_decode() -> None:
    with pytest.raises(CheckFailed, match="markers"):
        decode_frame_number(Image.new("RGB", (1280, 800)))


def test_random_image_does_not_decode() -> None:
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), mode="RGB")
    with pytest.raises(CheckFailed, match="not a frame"):
        decode_frame_number(noise)


def test_random_black_and_white_header_fails_the_crc_or_markers() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        frame = np.asarray(render_expected_frame(1, 640, 480)).copy()
        bits = rng.integers(0, 2, 64, dtype=np.uint8) * 255
        frame[:16, : 64 * 10] = np.repeat(bits, 10)[np.newaxis, :, np.newaxis]
        with pytest.raises(CheckFailed, match="cannot decode"):
            decode_frame_number(Image.fromarray(frame, mode="RGB"))


def test_one_flipped_number_bit_is_caught_by_the_crc() -> None:
    frame = np.asarray(render_expected_frame(1000, 640, 480)).copy()
    cell = 8 + 31  # the lowest bit of n
    frame[:16, cell * 10 : cell * 10 + 10] ^= 255
    with pytest.raises(CheckFailed, match="CRC"):
        decode_frame_number(Image.fromarray(frame, mode="RGB"))


def test_too_small_image_does_not_decode() -> None:
    with pytest.raises(CheckFailed, match="at least"):
        decode_frame_number(Image.new("RGB", (100, 100)))


def test_a_torn_frame_is_reported_with_where_it_differs() -> None:
    top = np.asarray(render_expected_frame(41, 640, 480))
    bottom = np.asarray(render_expected_frame(40, 640, 480))
    torn = np.concatenate([top[:300], bottom[300:]])
    with pytest.raises(CheckFailed, match=r"frame 41: 115200 of 307200 pixels differ.*y=300\.\.479"):
        verify_frame(Image.fromarray(torn, mode="RGB"))


@pytest.fixture(scope="module")
def guest_workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guest workload built for the controller (its --render mode needs no framebuffer)."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the guest workload")
    binary = tmp_path_factory.mktemp("workload") / "mdt-workload"
    subprocess.run(
        ["gcc", "-std=c99", "-O2", "-o", str(binary), str(WORKLOAD_C)],
        check=True,
        timeout=120,
    )
    return binary


@pytest.mark.parametrize(("n", "size"), [(1, "640x480"), (123457, "1280x800"), (4294967295, "100x40")])
def test_guest_renderer_matches_the_python_one(guest_workload: Path, n: int, size: str) -> None:
    ppm = subprocess.run(
        [str(guest_workload), "--render", str(n), size],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    width, height = (int(v) for v in size.split("x"))
    got = np.asarray(Image.open(BytesIO(ppm)))
    want = np.asarray(render_expected_frame(n, width, height))
    assert got.shape == want.shape
    assert (got == want).all()


# -- the control channel ----------------------------------------------------------------------

# A ctl.log as the guest wrote it (from a lab run): the channel's greeting, a passing and a
# failing check with its details, a reply to a line an earlier controller left unfinished, and a
# last line still being written.
CTL_LOG = (
    "MDT-CTL ready version=2\r\n"
    "MDT-RESULT cmd=VERIFY-RAM status=ok id=src-4 pages=4096 writes=4000 bad=0 poisoned=0 "
    "check_ms=13\r\n"
    "MDT-RESULT cmd=FAULT status=ok id=src-9 fault=skip-page page=327 expected_gen=4\r\n"
    "MDT-DETAIL page=327 expected_gen=4 found_gen=3 reason=stale\r\n"
    "MDT-RESULT cmd=VERIFY-RAM status=fail id=src-11 pages=4096 writes=10399 bad=1 poisoned=1 "
    "check_ms=16\r\n"
    "MDT-RESULT cmd=VERIFY-R status=fail reason=unknown-command known=PING,VERIFY-RAM\r\n"
    "MDT-DETAIL slot=224 block=1645 offset=0x0 expected=0x0000066d4254444d "
    "found=0x000009974254444d found_block=2455\r\n"
    "MDT-RESULT cmd=VERIFY-DMA status=fail id=src-19 slots=256 filled=256 reads=2798 errors=0 "
    "bad=1 poisoned=1 check_ms=3\r\n"
    "MDT-RESULT cmd=VERIFY-DMA status=skip reason=no-disk\r\n"
    "MDT-RESULT cmd=PING status=ok uptime_ms=33"
)


def test_a_result_line_gives_command_status_and_values() -> None:
    reply = parse_result(
        "MDT-RESULT cmd=VERIFY-VRAM status=ok id=src-5 bytes=2097152 bad=0 where=vram@0x3e8000 "
        "check_ms=5\r"
    )
    assert reply == GuestReply(
        cmd="VERIFY-VRAM",
        status="ok",
        values={
            "id": "src-5",
            "bytes": "2097152",
            "bad": "0",
            "where": "vram@0x3e8000",
            "check_ms": "5",
        },
    )
    assert reply.ok
    assert reply.request_id == "src-5"
    assert reply.int_value("bytes") == 2 << 20
    assert reply.require_ok() is reply


@pytest.mark.parametrize(
    "line",
    [
        "MDT-RESULT cmd=PING status=maybe",  # not a status
        "MDT-RESULT status=ok cmd=PING",  # order is fixed
        "MDT-RESULT cmd=PING status=ok junk",  # every field is key=value
        "xMDT-RESULT cmd=PING status=ok",
        "MDT-DETAIL page=1",
        "",
    ],
)
def test_anything_but_a_result_line_is_rejected(line: str) -> None:
    with pytest.raises(ValueError, match="MDT-RESULT"):
        parse_result(line)


def test_replies_collect_the_detail_lines_before_them() -> None:
    replies = parse_replies(CTL_LOG)
    assert [(r.cmd, r.status) for r in replies] == [
        ("VERIFY-RAM", "ok"),
        ("FAULT", "ok"),
        ("VERIFY-RAM", "fail"),
        ("VERIFY-R", "fail"),
        ("VERIFY-DMA", "fail"),
        ("VERIFY-DMA", "skip"),
    ]  # the unterminated PING is not a reply yet
    ram = replies[2]
    assert ram.details == ("page=327 expected_gen=4 found_gen=3 reason=stale",)
    assert ram.detail_values() == [
        {"page": "327", "expected_gen": "4", "found_gen": "3", "reason": "stale"}
    ]
    assert ram.int_value("bad") == 1
    dma = replies[4]
    assert dma.detail_values()[0]["found_block"] == "2455"
    assert dma.int_value("bad") == 1
    assert replies[1].details == ()  # details do not leak into the reply after
    assert parse_replies(CTL_LOG + "\n")[-1].cmd == "PING"


def test_a_failed_or_skipped_check_raises_naming_what_differed() -> None:
    replies = parse_replies(CTL_LOG)
    with pytest.raises(CheckFailed, match=r"(?s)VERIFY-RAM says fail.*page=327 expected_gen=4"):
        replies[2].require_ok()
    with pytest.raises(CheckFailed, match=r"(?s)VERIFY-DMA says skip.*reason=no-disk"):
        replies[5].require_ok()


def test_int_value_names_the_missing_key() -> None:
    with pytest.raises(KeyError, match="no pages="):
        parse_result("MDT-RESULT cmd=PING status=ok uptime_ms=1").int_value("pages")


def test_commands_are_one_line_after_a_newline() -> None:
    assert encode_command("VERIFY-RAM") == b"\nVERIFY-RAM\n"
    assert encode_command("FAULT", "pixel", "x=3", request_id="dst-7") == b"\nFAULT pixel x=3 id=dst-7\n"
    for bad in ("VERIFY RAM", "PING\n", "a=b", ""):
        with pytest.raises(ValueError, match="control-channel command"):
            encode_command(bad)
    with pytest.raises(ValueError, match="control-channel command or id"):
        encode_command("PING", request_id="x=y")
    for arg in ("x y", "id=7", "a\nb"):
        with pytest.raises(ValueError, match="control-channel argument"):
            encode_command("FAULT", arg)


def test_the_reader_yields_replies_whatever_the_chunking() -> None:
    data = CTL_LOG.encode() + b"\n"
    whole = ReplyReader().feed(data)
    assert whole == parse_replies(CTL_LOG + "\n")
    for size in (1, 2, 7, 64):
        reader = ReplyReader()
        got = []
        for i in range(0, len(data), size):
            got += reader.feed(data[i : i + size])
        assert got == whole


def test_the_reader_drops_a_partial_line_after_resync() -> None:
    reader = ReplyReader()
    reader.resync()  # connected while the guest was writing
    tail = b"ok id=old-1 pages=4096\r\nMDT-RESULT cmd=PING status=ok id=new-1 uptime_ms=5\r\n"
    [reply] = reader.feed(b"MDT-RESULT cmd=VERIFY-RAM status=" + tail)
    assert reply.request_id == "new-1"


# -- STATE ------------------------------------------------------------------------------------

STATE = (
    "MDT-DETAIL pci=0000:00:00.0 id=8086:29c0 class=060000 cfg_crc=0x7d4c7ddb\n"
    "MDT-DETAIL pci=0000:00:01.0 id=1234:1111 class=030000 cfg_crc=0xb55e69b7\n"
    "MDT-DETAIL pci=0000:00:02.0 id=1af4:1000 class=020000 cfg_crc=0x1049ab00\n"
    "MDT-DETAIL pci=0000:00:03.0 id=1af4:1001 class=010000 cfg_crc=0xabfd1390\n"
    "MDT-DETAIL irq=3 name=ttyS1 count=87\n"
    "MDT-DETAIL irq=4 name=ttyS0 count=454\n"
    "MDT-DETAIL irq=24 name=virtio0-config count=0\n"
    "MDT-DETAIL irq=25 name=virtio0-input.0 count=4\n"
    "MDT-DETAIL irq=26 name=virtio0-output.0 count=2112\n"
    "MDT-DETAIL irq=28 name=virtio1-req.0 count=1848\n"
    "MDT-DETAIL irq=LOC name=LOC count=3806\n"
    "MDT-RESULT cmd=STATE status=ok id=src-8 mode=1280x800 frame=22 pci=4 irqs=7 udp_sent=2109 "
    "udp_errors=0 udp_stalls=8 ram_writes=8256 dma_reads=1842 uptime_ms=5434\n"
)


def _later(text: str, counts: dict[str, int]) -> str:
    """STATE text with the counters of the named interrupts replaced."""
    lines = []
    for line in text.splitlines():
        name = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f).get("name", "")
        if name in counts:
            lines.append(line.rsplit(" count=", 1)[0] + f" count={counts[name]}")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


#: Counters after a while of a healthy guest: the live ones moved.
LIVE_MOVED = {"ttyS0": 500, "LOC": 4000, "virtio1-req.0": 1900}


def test_state_gives_mode_pci_functions_and_interrupts() -> None:
    state = parse_state(STATE)
    assert state.mode == "1280x800"
    assert state.frame == 22
    assert set(state.pci) == {"0000:00:00.0", "0000:00:01.0", "0000:00:02.0", "0000:00:03.0"}
    vga = state.pci["0000:00:01.0"]
    assert (vga.ids, vga.class_code, vga.cfg_crc) == ("1234:1111", "030000", 0xB55E69B7)
    assert state.irqs["virtio1-req.0"].count == 1848
    assert state.irqs["LOC"].irq == "LOC"
    assert state.values["udp_sent"] == "2109"
    assert parse_state(parse_replies(STATE)[0]) == state


def test_state_needs_a_successful_state_reply() -> None:
    with pytest.raises(ValueError, match="no complete STATE"):
        parse_state(CTL_LOG)
    with pytest.raises(ValueError, match="not a successful STATE"):
        parse_state(parse_result("MDT-RESULT cmd=STATE status=fail reason=x"))
    none = parse_state("MDT-RESULT cmd=STATE status=ok mode=none frame=0 pci=0 irqs=0\n")
    assert none.mode is None
    assert none.pci == {}


def test_a_healthy_pair_of_states_has_no_differences() -> None:
    later = _later(STATE, {**LIVE_MOVED, "ttyS1": 90, "virtio0-output.0": 2200})
    assert compare_states(parse_state(STATE), parse_state(later)) == []


def test_idle_interrupts_are_fine_but_live_ones_must_advance() -> None:
    # Only the console UART, the disk's queue and the timer are required to move by default.
    later = _later(STATE, LIVE_MOVED)
    assert compare_states(parse_state(STATE), parse_state(later)) == []
    stalled = _later(STATE, {"ttyS0": 500, "LOC": 4000})
    assert compare_states(parse_state(STATE), parse_state(stalled)) == [
        "interrupts stopped: virtio1-req.0 (irq 28) stayed at 1848"
    ]
    with_net = (*LIVE_IRQS, "virtio*-output*")
    assert compare_states(parse_state(STATE), parse_state(later), live_irqs=with_net) == [
        "interrupts stopped: virtio0-output.0 (irq 26) stayed at 2112"
    ]


def test_an_idle_disk_need_not_advance_when_it_was_not_rising_before() -> None:
    # A desktop guest's read-only root disk idles: only what rose before the migration is live.
    stalled = _later(STATE, {"ttyS0": 500, "LOC": 4000})
    before = parse_state(STATE)
    keys_without_disk = {k for k, v in before.irqs.items() if v.name != "virtio1-req.0"}
    assert compare_states(before, parse_state(stalled), rising=keys_without_disk) == []
    assert compare_states(before, parse_state(stalled), rising=set(before.irqs)) == [
        "interrupts stopped: virtio1-req.0 (irq 28) stayed at 1848"
    ]


def test_config_space_mode_and_device_changes_are_named() -> None:
    later = _later(STATE, LIVE_MOVED)
    changed = (
        later.replace("cfg_crc=0xb55e69b7", "cfg_crc=0xdeadbeef")
        .replace("mode=1280x800", "mode=1024x768")
        .replace("MDT-DETAIL pci=0000:00:03.0 id=1af4:1001 class=010000 cfg_crc=0xabfd1390\n", "")
        .replace("name=ttyS1 count=87", "name=ttyS1 count=3")
    )
    assert compare_states(parse_state(STATE), parse_state(changed)) == [
        "display mode changed: 1280x800 -> 1024x768",
        "PCI 0000:00:01.0 (1234:1111) config space changed: crc 0xb55e69b7 -> 0xdeadbeef",
        "PCI 0000:00:03.0 (1af4:1001) disappeared",
        "interrupt counter ttyS1 (irq 3) went backwards: 87 -> 3",
    ]


def test_a_vanished_live_interrupt_is_named() -> None:
    before = parse_state(STATE)
    after = replace(before, irqs={k: v for k, v in before.irqs.items() if k != "ttyS0"})
    after = replace(after, irqs={k: replace(v, count=v.count + 1) for k, v in after.irqs.items()})
    assert compare_states(before, after) == ["interrupt ttyS0 (irq 4) is gone"]


# -- UDP heartbeat ----------------------------------------------------------------------------


def test_udp_heartbeat_layout_is_fixed_big_endian() -> None:
    assert UDP_SIZE == 24
    data = bytes.fromhex("4d44545500010001000000000000010200000000988ad2c0")
    assert data == struct.pack(UDP_FORMAT, UDP_MAGIC, UDP_VERSION, UDP_FLAG_SKIPPED, 258, 2559234752)
    beat = parse_udp_heartbeat(data)
    assert beat == UdpBeat(seq=258, t_ns=2559234752, flags=UDP_FLAG_SKIPPED, version=1)
    assert beat.skipped
    assert not parse_udp_heartbeat(struct.pack(UDP_FORMAT, UDP_MAGIC, 1, 0, 1, 5)).skipped


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"MDTU" + bytes(19), "24 bytes"),
        (struct.pack(UDP_FORMAT, UDP_MAGIC, 1, 0, 1, 2) + b"\0", "24 bytes"),
        (struct.pack(UDP_FORMAT, b"MDTX", 1, 0, 1, 2), "magic"),
        (struct.pack(UDP_FORMAT, UDP_MAGIC, 2, 0, 1, 2), "version 2"),
    ],
)
def test_a_foreign_datagram_is_rejected(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_udp_heartbeat(data)


# -- pattern disk -----------------------------------------------------------------------------


def test_pattern_blocks_carry_their_index_and_differ() -> None:
    b0, b1 = pattern_block(0), pattern_block(1)
    assert len(b0) == DISK_BLOCK
    assert b1[:8] == b"MDTB\x01\x00\x00\x00"
    assert pattern_block(0xFFFFFFFF)[:8] == b"MDTB\xff\xff\xff\xff"
    words0 = np.frombuffer(b0, dtype="<u8")
    words1 = np.frombuffer(b1, dtype="<u8")
    assert (words0 != words1).all()
    assert len(set(words0[1:].tolist())) == 511  # no repeated words inside a block
    with pytest.raises(ValueError, match="32 bits"):
        pattern_block(-1)


def test_pattern_disk_is_the_blocks_in_order(tmp_path: Path) -> None:
    path = write_pattern_disk(tmp_path / "pattern.img", 5)  # 1280 blocks: a partial last chunk
    data = path.read_bytes()
    assert len(data) == 5 << 20
    for i in (0, 1, 1023, 1024, 1279):
        assert data[i * DISK_BLOCK : (i + 1) * DISK_BLOCK] == pattern_block(i)
    assert [p.name for p in tmp_path.iterdir()] == ["pattern.img"]  # no temporary left
    again = write_pattern_disk(tmp_path / "again.img", 5)
    assert again.read_bytes() == data  # deterministic: the same file on every host
    with pytest.raises(ValueError, match=r"1\.\.4096"):
        write_pattern_disk(tmp_path / "x.img", 0)


@pytest.mark.parametrize("index", [0, 1, 777, 123456, 2**32 - 1])
def test_guest_disk_pattern_matches_the_python_one(guest_workload: Path, index: int) -> None:
    block = subprocess.run(
        [str(guest_workload), "--disk-block", str(index)],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    assert block == pattern_block(index)


def test_ready_skips_another_workloads_ready_line() -> None:
    """The nested UEFI disk guest runs the mtty workload and the deployed probe on one console:
    the probe's READY is the one whose first field is the display's."""
    mtty = "MDT-READY ports=ttyS4,ttyS5 hb_ms=100 report_ms=1000 version=1\n"
    ready = find_ready(mtty + LOG)
    assert ready is not None
    assert ready.fields["api"] == "drm"
    assert find_ready(mtty) is None


def test_a_config_space_change_is_named_by_register() -> None:
    from mdevtest.workloads.synthetic import config_changes

    before = bytes(64)
    after = bytearray(before)
    after[0x14:0x18] = (0xC001).to_bytes(4, "little")
    assert config_changes(before, bytes(after)) == "BAR1 0x00000000 -> 0x0000c001"
    assert config_changes(None, bytes(after)) == ""


def test_a_heartbeat_the_kernel_printed_into_before_its_newline_counts() -> None:
    # Captured from the desktop guest's console in a CI run (suites/test_workloads.py,
    # ffmpeg-sw-encode): the kernel's message came between the line and its newline.
    log = (
        "MDT-HB seq=350 t=31204158165\n"
        "MDT-HB seq=351 t=31223874261[   31.258220] random: crng init done\n"
        "\n"
        "MDT-HB seq=352 t=31243901861\n"
    )
    assert [b.seq for b in parse_heartbeats(log)] == [350, 351, 352]
    assert parse_heartbeats(log)[1] == Heartbeat(351, 31223874261)
