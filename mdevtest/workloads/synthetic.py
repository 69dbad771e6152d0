"""The synthetic GPU workload of the lab guest, seen from the controller.

The guest program (``workloads/synthetic/mdt-workload.c``) prints protocol lines on the serial
console and draws numbered frames on the display; this module reads both. The console protocol:

- ``MDT-NET iface=eth0 mode=dhcp addr=10.0.2.15/24``: init configured the network
  (``mode=none`` when off);
- ``MDT-BOOT uptime_ms=2430``: init, the guest's uptime as it starts the workload;
- ``MDT-READY fb=1280x800x32 stride=5120 buffers=2 api=drm fps=10 hb_ms=20 ... version=2``: the
  workload is set up (``fb=none reason=<why>`` without a display), with one group of fields per
  probe (``vram_kib= vram_at=``, ``udp=``, ``dirty_mib=``, ``dma=``, ``ctl=``; a probe that is
  off says ``<probe>_reason=<why>``); nothing of the workload comes before;
- ``MDT-HB seq=<n> t=<CLOCK_MONOTONIC ns>``: every ``mdt.hb_ms`` ms, n = 1, 2, 3, ... with no gaps;
- ``MDT-FRAME n=<frame> t=<ns> late=<count>``: once a second, the frame just put on screen;
- ``MDT-WARN ...``, ``MDT-ERROR ...``, ``MDT-EXIT ...``: a problem; the workload ended.

Each line is written with one ``write()``, so a line is whole or absent; a kernel message may
still land between two lines. The parsers therefore take only lines that match exactly, and
ignore an unterminated last line (a log read while the guest is still writing).

Frame ``n`` is a pure function of ``(n, x, y)`` (see :func:`render_expected_frame`), with ``n``
encoded in its top 16 rows, so any capture can be decoded and then compared pixel by pixel.

Besides the console the workload has three more channels, each read here:

- **the control channel** (second serial port, ttyS1): the controller sends one command per line
  (``VERIFY-RAM``, ``VERIFY-VRAM``, ``VERIFY-DMA``, ``STATE``, ``FAULT <kind>``, ``PING``) and
  reads ``MDT-DETAIL`` lines and one final ``MDT-RESULT cmd=<CMD> status=ok|fail|skip ...``
  (:func:`encode_command`, :class:`ReplyReader`, :func:`parse_replies`, :class:`GuestReply`,
  :func:`parse_state`, :func:`compare_states`);
- **the UDP heartbeat** (``mdt.udp=<ipv4>:<port>``): a fixed 24-byte datagram every
  ``mdt.udp_us`` µs (:data:`UDP_FORMAT`, :func:`parse_udp_heartbeat`);
- **the pattern disk** (read-only virtio-blk): block ``i`` is a function of ``i``, which the guest's
  DMA reader checks after the device wrote it into guest RAM (:func:`write_pattern_disk`).
"""

from __future__ import annotations

import fnmatch
import os
import re
import struct
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

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
#: A kernel console message (``[   31.258220] random: crng init done``) that the kernel printed
#: between a workload line's text and its newline: the line is whole, the message follows it
#: (seen on the desktop guest's console; the newline then comes after the kernel's own).
_KMSG_TAIL = re.compile(r"\[\s*\d+\.\d+\] .*")
_FRAME = re.compile(r"MDT-FRAME n=(\d+) t=(\d+)(?: late=(\d+))?")
_BOOT = re.compile(r"MDT-BOOT uptime_ms=(\d+)(?: .*)?")
_READY = re.compile(r"MDT-READY( fb=.*)")  # other workloads (mtty) print READY lines too
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
    """Every well-formed ``MDT-HB`` line of a console log, in log order (also one the kernel's
    console wrote a message into before its newline, when its time is intact)."""
    beats: list[Heartbeat] = []
    for line in _complete_lines(text):
        m = _HB.fullmatch(line)
        if m:
            beats.append(Heartbeat(seq=int(m[1]), t_ns=int(m[2])))
            continue
        # A kernel message right after the line's text, before its newline. The time may have
        # been cut by the message ("t=26[  2.62] ..."): the line counts only when its time is
        # later than the previous heartbeat's with at least as many digits.
        m = _HB.match(line)
        if m and _KMSG_TAIL.fullmatch(line, m.end()) and beats:
            prev = beats[-1].t_ns
            if int(m[2]) > prev and len(m[2]) >= len(str(prev)):
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


# -- control channel ------------------------------------------------------------------------

#: The ``MDT-RESULT`` statuses: the check ran and passed, ran and failed, or could not run here
#: (``reason=`` says why, e.g. ``no-disk``).
STATUSES = ("ok", "fail", "skip")

_RESULT = re.compile(r"MDT-RESULT cmd=(\S+) status=(\S+)((?: \S+=\S*)*)")
_DETAIL = re.compile(r"MDT-DETAIL (.*)")
_KV = re.compile(r"(\S+?)=(\S*)")
_NAME = re.compile(r"[A-Za-z0-9_.:,@+-]+")  # a command or request id
_ARG = re.compile(r"[A-Za-z0-9_.:,@+=-]+")  # an argument: a word or key=value


def _key_values(text: str) -> dict[str, str]:
    return {m[1]: m[2] for m in _KV.finditer(text)}


@dataclass(frozen=True)
class GuestReply:
    """The answer to one control-channel command.

    ``values`` holds the ``key=value`` fields of the ``MDT-RESULT`` line (``id`` included when the
    command carried one); ``details`` the ``MDT-DETAIL`` lines before it, without their prefix,
    in order (for a failed check: which page, offset or slot differed).
    """

    cmd: str
    status: str
    values: dict[str, str]
    details: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def request_id(self) -> str | None:
        return self.values.get("id")

    def int_value(self, key: str) -> int:
        """``values[key]`` as an integer (``0x`` hexadecimal accepted)."""
        try:
            return int(self.values[key], 0)
        except KeyError:
            raise KeyError(f"{self.cmd} reply has no {key}=: {self.line()}") from None

    def detail_values(self) -> list[dict[str, str]]:
        """The ``key=value`` fields of each detail line."""
        return [_key_values(d) for d in self.details]

    def line(self) -> str:
        """The ``MDT-RESULT`` line as the guest printed it (field order aside)."""
        fields = " ".join(f"{k}={v}" for k, v in self.values.items())
        return f"MDT-RESULT cmd={self.cmd} status={self.status}" + (f" {fields}" if fields else "")

    def describe(self) -> str:
        """The result line and its details, one per line: what a failure message should show."""
        return "\n".join([self.line(), *(f"  {d}" for d in self.details)])

    def require_ok(self) -> GuestReply:
        """Return self when the guest's check passed; raise :class:`CheckFailed` naming what
        differed (the guest's detail lines) otherwise, a skip included."""
        __tracebackhide__ = True
        if not self.ok:
            raise CheckFailed(f"guest check {self.cmd} says {self.status}:\n{self.describe()}")
        return self


def parse_result(line: str, details: Iterable[str] = ()) -> GuestReply:
    """One ``MDT-RESULT`` line (without its line end); raises ValueError for anything else."""
    m = _RESULT.fullmatch(line.rstrip("\r\n"))
    if m is None:
        raise ValueError(f"not an MDT-RESULT line: {line!r}")
    if m[2] not in STATUSES:
        raise ValueError(f"MDT-RESULT with unknown status {m[2]!r}: {line!r}")
    return GuestReply(cmd=m[1], status=m[2], values=_key_values(m[3]), details=tuple(details))


def parse_replies(text: str) -> list[GuestReply]:
    """Every reply in a control-channel transcript (e.g. ``ctl.log``), in order.

    Detail lines belong to the next result line; an unterminated last line is ignored, as is
    anything that is neither (``MDT-CTL ready``, a stray partial line).
    """
    replies, details = [], []
    for line in _complete_lines(text):
        d = _DETAIL.fullmatch(line)
        if d is not None:
            details.append(d[1])
            continue
        try:
            replies.append(parse_result(line, details))
        except ValueError:
            continue
        details = []
    return replies


def encode_command(cmd: str, *args: str, request_id: str | None = None) -> bytes:
    """The bytes to send for one command. Starts with a newline, so a line left unfinished by an
    earlier controller is ended (as an unknown command) instead of swallowing this one."""
    names = [cmd] if request_id is None else [cmd, request_id]
    for word in names:
        if not _NAME.fullmatch(word):
            raise ValueError(
                f"control-channel command or id {word!r}: only [A-Za-z0-9_.:,@+-] are allowed"
            )
    for word in args:
        if not _ARG.fullmatch(word) or word.startswith("id="):
            raise ValueError(
                f"control-channel argument {word!r}: only [A-Za-z0-9_.:,@+=-] are allowed, "
                f"and id= is the request id"
            )
    words = [cmd, *args] + ([f"id={request_id}"] if request_id is not None else [])
    return ("\n" + " ".join(words) + "\n").encode()


class ReplyReader:
    """Turns the control channel's byte stream into replies, whatever the chunking.

    Feed it what the socket returns; it yields each reply once its ``MDT-RESULT`` line is
    complete. Bytes before the first newline after :meth:`resync` are dropped: a controller that
    connects while the guest is writing would otherwise parse half a line.
    """

    def __init__(self, *, synced: bool = True) -> None:
        self._buf = b""
        self._details: list[str] = []
        self._synced = synced

    def resync(self) -> None:
        self._buf, self._details, self._synced = b"", [], False

    def feed(self, data: bytes) -> list[GuestReply]:
        self._buf += data
        replies = []
        while b"\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n", 1)
            if not self._synced:
                self._synced = True
                continue
            line = raw.decode(errors="replace").rstrip("\r")
            d = _DETAIL.fullmatch(line)
            if d is not None:
                self._details.append(d[1])
                continue
            try:
                replies.append(parse_result(line, self._details))
            except ValueError:
                continue
            self._details = []
        return replies


# -- STATE: registers and interrupts ----------------------------------------------------------

#: Interrupts that must keep arriving while the workload runs (``fnmatch`` patterns on the
#: interrupt's name): the console UART (heartbeat lines), the pattern disk's request queue
#: (DMA reader; ``virtio1-req.0`` on Linux 6.1, ``virtio1-requests`` before 5.x) and the local
#: timer. Others (config change, the NIC's queues, the control UART) may legitimately idle; add
#: ``"virtio*-output*"`` when the UDP heartbeat is on.
LIVE_IRQS: tuple[str, ...] = ("ttyS0", "virtio*-req*", "LOC")


@dataclass(frozen=True)
class PciFunction:
    """One PCI function as STATE saw it: a CRC-32 of its first 64 config-space bytes (the
    interrupt-status bit of the Status register masked, as it follows INTx)."""

    bdf: str
    ids: str  # vendor:device, hex
    class_code: str
    cfg_crc: int
    cfg: bytes | None = None  # the 64 bytes (probe protocol 2 sends them; older ones did not)


@dataclass(frozen=True)
class IrqCount:
    """One ``/proc/interrupts`` line: its label (number or ``LOC``), name and total count."""

    irq: str
    name: str
    count: int


@dataclass(frozen=True)
class GuestState:
    """Guest-visible device state from a ``STATE`` reply."""

    mode: str | None  # "1280x800" as the display controller reports it; None when unset
    frame: int  # the frame on screen
    pci: Mapping[str, PciFunction]  # by BDF
    irqs: Mapping[str, IrqCount]  # by name (name@irq when a name repeats)
    values: Mapping[str, str] = field(default_factory=dict)


def parse_state(reply: str | GuestReply) -> GuestState:
    """The state in a ``STATE`` reply, given as the reply or the transcript holding it (the
    last STATE reply counts). Raises ValueError when there is none, or it did not succeed."""
    if isinstance(reply, str):
        states = [r for r in parse_replies(reply) if r.cmd == "STATE"]
        if not states:
            raise ValueError("no complete STATE reply in the text")
        reply = states[-1]
    if reply.cmd != "STATE" or not reply.ok:
        raise ValueError(f"not a successful STATE reply: {reply.line()}")
    pci: dict[str, PciFunction] = {}
    irqs: dict[str, IrqCount] = {}
    for fields in reply.detail_values():
        if "pci" in fields and "cfg_crc" in fields:
            bdf = fields["pci"]
            raw = fields.get("cfg", "")
            try:
                cfg = bytes.fromhex(raw) if raw else None
            except ValueError:
                cfg = None
            pci[bdf] = PciFunction(
                bdf,
                fields.get("id", "?"),
                fields.get("class", "?"),
                int(fields["cfg_crc"], 16),
                cfg,
            )
        elif "irq" in fields and "count" in fields:
            name = fields.get("name", fields["irq"])
            key = name if name not in irqs else f"{name}@{fields['irq']}"
            irqs[key] = IrqCount(fields["irq"], name, int(fields["count"]))
    mode = reply.values.get("mode")
    return GuestState(
        mode=None if mode in (None, "none") else mode,
        frame=int(reply.values.get("frame", "0")),
        pci=pci,
        irqs=irqs,
        values=dict(reply.values),
    )


#: The type-0 PCI header's registers in the first 64 bytes: offset -> (name, size).
PCI_HEADER: Mapping[int, tuple[str, int]] = {
    0x00: ("vendor", 2), 0x02: ("device", 2), 0x04: ("command", 2), 0x06: ("status", 2),
    0x08: ("revision", 1), 0x09: ("class", 3), 0x0C: ("cache line", 1), 0x0D: ("latency", 1),
    0x0E: ("header type", 1), 0x0F: ("BIST", 1), 0x10: ("BAR0", 4), 0x14: ("BAR1", 4),
    0x18: ("BAR2", 4), 0x1C: ("BAR3", 4), 0x20: ("BAR4", 4), 0x24: ("BAR5", 4),
    0x28: ("cardbus CIS", 4), 0x2C: ("subsystem vendor", 2), 0x2E: ("subsystem", 2),
    0x30: ("expansion ROM", 4), 0x34: ("capabilities", 1), 0x35: ("reserved", 7),
    0x3C: ("interrupt line", 1), 0x3D: ("interrupt pin", 1), 0x3E: ("min grant", 1),
    0x3F: ("max latency", 1),
}  # fmt: skip


def config_changes(before: bytes | None, after: bytes | None) -> str:
    """Which header registers differ, with both values (``BAR1 0x0000c001 -> 0x00000001``);
    empty when either side has no bytes."""
    if before is None or after is None or len(before) != len(after):
        return ""
    changed = []
    for offset, (name, size) in PCI_HEADER.items():
        a, b = before[offset : offset + size], after[offset : offset + size]
        if a != b:
            va, vb = int.from_bytes(a, "little"), int.from_bytes(b, "little")
            changed.append(f"{name} 0x{va:0{2 * size}x} -> 0x{vb:0{2 * size}x}")
    return ", ".join(changed)


def compare_states(
    before: GuestState,
    after: GuestState,
    *,
    live_irqs: Iterable[str] = LIVE_IRQS,
    rising: Collection[str] | None = None,
) -> list[str]:
    """What changed between two states that a user would call a migration bug, one sentence
    each (empty when nothing did): the display mode, a PCI function appearing, disappearing or
    changing its config space, an interrupt counter going backwards, and a live interrupt (see
    :data:`LIVE_IRQS`) that stopped arriving. ``rising`` (interrupt keys seen increasing right
    before the migration) narrows "live" to those: an idle device may stay still."""
    problems = []
    if before.mode != after.mode:
        problems.append(f"display mode changed: {before.mode} -> {after.mode}")
    for bdf in sorted(before.pci.keys() | after.pci.keys()):
        a, b = before.pci.get(bdf), after.pci.get(bdf)
        if a is None or b is None:
            present = b if a is None else a
            gone = "appeared" if a is None else "disappeared"
            problems.append(f"PCI {bdf} ({present.ids if present else '?'}) {gone}")
        elif a.ids != b.ids:
            problems.append(f"PCI {bdf} changed identity: {a.ids} -> {b.ids}")
        elif a.cfg_crc != b.cfg_crc:
            where = config_changes(a.cfg, b.cfg)
            problems.append(
                f"PCI {bdf} ({a.ids}) config space changed: crc 0x{a.cfg_crc:08x} -> 0x{b.cfg_crc:08x}"
                + (f" ({where})" if where else "")
            )
    patterns = tuple(live_irqs)
    for key, irq in before.irqs.items():
        live = any(fnmatch.fnmatchcase(irq.name, p) for p in patterns) and (
            rising is None or key in rising
        )
        now = after.irqs.get(key)
        if now is None:
            if live:
                problems.append(f"interrupt {irq.name} (irq {irq.irq}) is gone")
        elif now.count < irq.count:
            problems.append(
                f"interrupt counter {irq.name} (irq {irq.irq}) went backwards: "
                f"{irq.count} -> {now.count}"
            )
        elif live and now.count == irq.count:
            problems.append(f"interrupts stopped: {irq.name} (irq {irq.irq}) stayed at {irq.count}")
    return problems


# -- UDP heartbeat ----------------------------------------------------------------------------

#: The datagram, big-endian: magic, version, flags, seq (1, 2, 3, ... no gaps), the guest's
#: CLOCK_MONOTONIC in ns when it was sent.
UDP_FORMAT = ">4sHHQQ"
UDP_SIZE = struct.calcsize(UDP_FORMAT)
UDP_MAGIC = b"MDTU"
UDP_VERSION = 1
#: Flag: slots were skipped just before this datagram (the guest was starved or stalled); the
#: sequence number still follows the previous one.
UDP_FLAG_SKIPPED = 0x0001


@dataclass(frozen=True)
class UdpBeat:
    """One UDP heartbeat datagram."""

    seq: int
    t_ns: int
    flags: int
    version: int = UDP_VERSION

    @property
    def skipped(self) -> bool:
        return bool(self.flags & UDP_FLAG_SKIPPED)


def parse_udp_heartbeat(data: bytes) -> UdpBeat:
    """Decode one datagram; ValueError when it is not a heartbeat of this version."""
    if len(data) != UDP_SIZE:
        raise ValueError(f"UDP heartbeat is {UDP_SIZE} bytes, got {len(data)}")
    magic, version, flags, seq, t_ns = struct.unpack(UDP_FORMAT, data)
    if magic != UDP_MAGIC:
        raise ValueError(f"UDP heartbeat magic is {UDP_MAGIC!r}, got {magic!r}")
    if version != UDP_VERSION:
        raise ValueError(f"UDP heartbeat version {version} is not supported ({UDP_VERSION} is)")
    return UdpBeat(seq=seq, t_ns=t_ns, flags=flags, version=version)


# -- pattern disk (DMA) -----------------------------------------------------------------------

#: Block size of the pattern disk: the guest reads (and checks) whole blocks.
DISK_BLOCK = 4096
_WORDS = DISK_BLOCK // 8
_DISK_MAGIC = 0x4254444D  # b"MDTB" as a little-endian u32


def _mix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser, as the guest's ``mix64`` (wrapping uint64 arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _pattern_words(first: int, count: int) -> npt.NDArray[np.uint64]:
    blocks = np.arange(first, first + count, dtype=np.uint64)[:, np.newaxis]
    k = np.arange(_WORDS, dtype=np.uint64)[np.newaxis, :]
    with np.errstate(over="ignore"):
        words = _mix64((blocks << np.uint64(9)) | k)
    words[:, 0] = np.uint64(_DISK_MAGIC) | (blocks[:, 0] << np.uint64(32))
    return words


def pattern_block(index: int) -> bytes:
    """Block ``index`` of the pattern disk: 512 little-endian u64 words; word 0 is ``b"MDTB"``
    and ``index`` as a little-endian u32, word k (1..511) is ``mix64(index << 9 | k)``."""
    if not 0 <= index <= 0xFFFFFFFF:
        raise ValueError(f"block index {index} does not fit in 32 bits")
    return _pattern_words(index, 1).astype("<u8").tobytes()


def write_pattern_disk(path: str | os.PathLike[str], size_mib: int) -> Path:
    """Write the pattern disk image for the guest's DMA probe: ``size_mib`` MiB, raw, block i
    = :func:`pattern_block` (i). Deterministic, so the same file can be made on every host;
    written beside ``path`` and renamed into place, so a reader never sees half a disk."""
    if not 1 <= size_mib <= 4096:
        raise ValueError(f"pattern disk size {size_mib} MiB: allowed are 1..4096")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    blocks, chunk = size_mib * (1 << 20) // DISK_BLOCK, 1024
    try:
        with tmp.open("wb") as fh:
            for first in range(0, blocks, chunk):
                fh.write(_pattern_words(first, min(chunk, blocks - first)).astype("<u8").tobytes())
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
