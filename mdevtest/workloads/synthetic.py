"""The synthetic GPU workload of the lab guest, seen from the controller.

The guest program (``workloads/synthetic/mdt-workload.c``) prints protocol lines on the serial
console and draws numbered frames on the display; this module reads both. The console protocol:

- ``MDT-NET iface=eth0 mode=dhcp addr=10.0.2.15/24``: init configured the network
  (``mode=none`` when off);
- ``MDT-BOOT uptime_ms=2430``: init, the guest's uptime as it starts the workload;
- ``MDT-READY fb=1280x800x32 stride=5120 buffers=2 api=drm fps=10 hb_ms=20 version=1``: the
  workload is set up (``fb=none reason=<why>`` without a display); nothing of it comes before;
- ``MDT-HB seq=<n> t=<CLOCK_MONOTONIC ns>``: every ``mdt.hb_ms`` ms, n = 1, 2, 3, ... with no gaps;
- ``MDT-FRAME n=<frame> t=<ns> late=<count>``: once a second, the frame just put on screen;
- ``MDT-WARN ...``, ``MDT-ERROR ...``, ``MDT-EXIT ...``: a problem; the workload ended.

Each line is written with one ``write()``, so a line is whole or absent; a kernel message may
still land between two lines. The parsers therefore take only lines that match exactly, and
ignore an unterminated last line (a log read while the guest is still writing).

Frame ``n`` is a pure function of ``(n, x, y)`` (see :func:`render_expected_frame`), with ``n``
encoded in its top 16 rows, so any capture can be decoded and then compared pixel by pixel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt
from PIL import Image

from mdevtest.errors import CheckFailed

#: Rows at the top of every frame that carry its number.
HEADER_ROWS = 16
#: Cells across the header: 8 sync bits, 32 bits of n, 16 CRC bits, 8 end bits.
HEADER_CELLS = 64
_SYNC = 0xB2
_END = 0x4D

_HB = re.compile(r"MDT-HB seq=(\d+) t=(\d+)")
_FRAME = re.compile(r"MDT-FRAME n=(\d+) t=(\d+)(?: late=(\d+))?")
_BOOT = re.compile(r"MDT-BOOT uptime_ms=(\d+)(?: .*)?")
_READY = re.compile(r"MDT-READY( .*)?")
_FB = re.compile(r"(\d+)x(\d+)x(\d+)")


@dataclass(frozen=True)
class Heartbeat:
    """One ``MDT-HB`` line: its sequence number and the guest's CLOCK_MONOTONIC in ns."""

    seq: int
    t_ns: int


@dataclass(frozen=True)
class FrameMark:
    """One ``MDT-FRAME`` line: the frame just shown, when, and how often drawing fell behind."""

    n: int
    t_ns: int
    late: int


@dataclass(frozen=True)
class FbInfo:
    """The framebuffer the workload draws on, from ``MDT-READY``."""

    width: int
    height: int
    bpp: int
    stride: int | None = None
    buffers: int | None = None


@dataclass(frozen=True)
class Ready:
    """The ``MDT-READY`` line: the display (None with ``reason`` when there is none) and all
    its ``key=value`` fields as printed."""

    fb: FbInfo | None
    reason: str | None
    fields: dict[str, str]


def _complete_lines(text: str) -> Iterator[str]:
    """Whole lines of ``text`` without their line endings; a last line without one is dropped."""
    lines = text.split("\n")
    for line in lines[:-1]:
        yield line.rstrip("\r")


def parse_heartbeats(text: str) -> list[Heartbeat]:
    """Every well-formed ``MDT-HB`` line of a console log, in log order."""
    beats = []
    for line in _complete_lines(text):
        m = _HB.fullmatch(line)
        if m:
            beats.append(Heartbeat(seq=int(m[1]), t_ns=int(m[2])))
    return beats


def heartbeat_gaps(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """The missing sequence numbers between the lowest and highest seen, as inclusive ranges.

    Order and repeats do not matter (two logs of one guest, before and after a migration, may
    overlap); numbers before the first one seen are not counted as missing.
    """
    seen = sorted(set(seqs))
    return [(a + 1, b - 1) for a, b in pairwise(seen) if b > a + 1]


def parse_frames(text: str) -> list[FrameMark]:
    """Every well-formed ``MDT-FRAME`` line of a console log, in log order."""
    marks = []
    for line in _complete_lines(text):
        m = _FRAME.fullmatch(line)
        if m:
            marks.append(FrameMark(n=int(m[1]), t_ns=int(m[2]), late=int(m[3] or 0)))
    return marks


def parse_boot_ms(text: str) -> int | None:
    """The guest uptime in ms when init started the workload (``MDT-BOOT``), if logged."""
    for line in _complete_lines(text):
        m = _BOOT.fullmatch(line)
        if m:
            return int(m[1])
    return None


def find_ready(text: str) -> Ready | None:
    """The first complete ``MDT-READY`` line of a console log, or None before there is one."""
    for line in _complete_lines(text):
        m = _READY.fullmatch(line)
        if m is None:
            continue
        fields = dict(tok.partition("=")[::2] for tok in (m[1] or "").split() if "=" in tok)
        fb_field = fields.get("fb", "none")
        fb_m = _FB.fullmatch(fb_field)
        if fb_m is None:
            return Ready(fb=None, reason=fields.get("reason", f"fb={fb_field}"), fields=fields)
        fb = FbInfo(
            width=int(fb_m[1]),
            height=int(fb_m[2]),
            bpp=int(fb_m[3]),
            stride=int(fields["stride"]) if fields.get("stride", "").isdigit() else None,
            buffers=int(fields["buffers"]) if fields.get("buffers", "").isdigit() else None,
        )
        return Ready(fb=fb, reason=None, fields=fields)
    return None


def parse_ready(text: str) -> FbInfo | None:
    """The display from the ``MDT-READY`` line; None before it, or when it says ``fb=none``
    (:func:`find_ready` tells which, and why)."""
    ready = find_ready(text)
    return ready.fb if ready is not None else None


# -- frames ---------------------------------------------------------------------------------


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), as the guest computes it."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def header_word(n: int) -> int:
    """The 64 header bits of frame ``n``: sync byte, n, CRC-16 of n, end byte (MSB first)."""
    if not 0 <= n <= 0xFFFFFFFF:
        raise ValueError(f"frame number {n} does not fit in 32 bits")
    return _SYNC << 56 | n << 24 | crc16_ccitt(n.to_bytes(4, "big")) << 8 | _END


def render_expected_frame(n: int, width: int, height: int) -> Image.Image:
    """Frame ``n`` exactly as the guest draws it, as an RGB image of ``width`` x ``height``.

    Header (rows 0-15): 64 cells of ``width // 64`` pixels, white for a 1 bit of
    :func:`header_word` (MSB first), black for 0; black right of the last cell.
    Body: R = (x + 2n) mod 256, G = (y + n) mod 256, B = ((x xor y) + 3n) mod 256.
    """
    if width < HEADER_CELLS or height <= HEADER_ROWS:
        raise ValueError(f"a frame needs at least {HEADER_CELLS}x{HEADER_ROWS + 1} pixels")
    x = np.arange(width, dtype=np.int64)[np.newaxis, :]
    y = np.arange(height, dtype=np.int64)[:, np.newaxis]
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = (x + 2 * n) & 255
    rgb[..., 1] = (y + n) & 255
    rgb[..., 2] = ((x ^ y) + 3 * n) & 255

    word = header_word(n)
    cell = width // HEADER_CELLS
    bits = np.array([(word >> (63 - c)) & 1 for c in range(HEADER_CELLS)], dtype=np.uint8)
    header = np.zeros(width, dtype=np.uint8)
    header[: cell * HEADER_CELLS] = np.repeat(bits * 255, cell)
    rgb[:HEADER_ROWS] = header[np.newaxis, :, np.newaxis]
    return Image.fromarray(rgb, mode="RGB")


def _rgb_array(image: Image.Image) -> npt.NDArray[np.uint8]:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_frame_number(image: Image.Image) -> int:
    """The frame number carried in the header of a captured frame.

    Reads the middle of each header cell (so a slightly blurred capture still decodes) and
    requires the sync and end bytes and the CRC to match. Raises :class:`CheckFailed` saying why
    when the image does not carry a frame (black screen, console text, another program).
    """
    width, height = image.size
    cell = width // HEADER_CELLS
    if cell < 2 or height < HEADER_ROWS:
        raise CheckFailed(
            f"cannot decode a frame number from a {width}x{height} image: the synthetic "
            f"workload's header needs at least {2 * HEADER_CELLS}x{HEADER_ROWS} pixels"
        )
    pixels = _rgb_array(image)[2 : HEADER_ROWS - 2].astype(np.float64)
    word = 0
    for c in range(HEADER_CELLS):
        lo, hi = c * cell + cell // 4, c * cell + max(cell // 4 + 1, (3 * cell) // 4)
        level = float(pixels[:, lo:hi].mean())
        if level >= 192:
            bit = 1
        elif level <= 63:
            bit = 0
        else:
            raise CheckFailed(
                f"cannot decode a frame number: header cell {c} (x={lo}..{hi - 1}) has mean "
                f"level {level:.0f}, neither black nor white; the image is not a frame of the "
                f"synthetic workload"
            )
        word = word << 1 | bit
    sync, n, crc, end = word >> 56, (word >> 24) & 0xFFFFFFFF, (word >> 8) & 0xFFFF, word & 0xFF
    if sync != _SYNC or end != _END:
        raise CheckFailed(
            f"cannot decode a frame number: header markers are 0x{sync:02X}/0x{end:02X}, "
            f"expected 0x{_SYNC:02X}/0x{_END:02X}; the image is not a frame of the synthetic "
            f"workload (black screen, console text or another program?)"
        )
    want = crc16_ccitt(n.to_bytes(4, "big"))
    if crc != want:
        raise CheckFailed(
            f"cannot decode a frame number: header says n={n} with CRC 0x{crc:04X}, but that "
            f"n has CRC 0x{want:04X}; the header is damaged (torn or corrupted frame)"
        )
    return n


def verify_frame(image: Image.Image) -> int:
    """Decode the frame number and require the whole image to equal that frame exactly.

    Returns the frame number; raises :class:`CheckFailed` with the number of differing pixels
    and their bounding box otherwise.
    """
    n = decode_frame_number(image)
    got = _rgb_array(image)
    want = _rgb_array(render_expected_frame(n, image.size[0], image.size[1]))
    diff = np.any(got != want, axis=2)
    count = int(diff.sum())
    if count:
        ys, xs = np.nonzero(diff)
        fy, fx = int(ys[0]), int(xs[0])  # the first in raster order
        raise CheckFailed(
            f"frame {n}: {count} of {diff.size} pixels differ from the expected frame, within "
            f"x={int(xs.min())}..{int(xs.max())} y={int(ys.min())}..{int(ys.max())}; the first "
            f"at ({fx}, {fy}) is {tuple(int(v) for v in got[fy, fx])}, expected "
            f"{tuple(int(v) for v in want[fy, fx])}"
        )
    return n
