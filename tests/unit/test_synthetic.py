"""The synthetic workload's console parsers and frame codec (mdevtest.workloads.synthetic)."""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mdevtest.errors import CheckFailed
from mdevtest.workloads.synthetic import (
    FbInfo,
    FrameMark,
    Heartbeat,
    crc16_ccitt,
    decode_frame_number,
    find_ready,
    heartbeat_gaps,
    parse_boot_ms,
    parse_frames,
    parse_heartbeats,
    parse_ready,
    render_expected_frame,
    verify_frame,
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
