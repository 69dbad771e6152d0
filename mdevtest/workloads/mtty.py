"""The mtty workload of the nested lab's guest, seen from the controller (its console lines).

The guest program (``workloads/mtty/mdt-mtty.c``, protocol in ``workloads/mtty/README.md``)
keeps the guest's mtty serial ports looping a numbered byte stream back and prints, on the
console:

- ``MDT-READY ports=ttyS4,ttyS5 hb_ms=100 report_ms=1000 ... version=1`` once set up
  (``ports=none reason=...`` when the guest sees no mtty port);
- ``MDT-MTTY n=<report> port=<tty> tx= rx= err= bad= lost= dup= extra= stalls= inflight=
  quiet=<0|1> lcr= ier= iir= mcr= lsr= msr= scr= scr_next= scr_err= reg_changes= div= baud= t=``
  every report period, per port (``regs=none reason=...`` instead of the registers when it
  cannot read them);
- ``MDT-MTTY-ERR port=<tty> kind=bad|lost|dup|extra|stall|register|scratch|scratch-write ...``
  for the first problems of each kind;
- ``MDT-HB seq=<n> t=<ns>``: the same heartbeat as the synthetic workload's.

Lines are written whole (one ``write()``); as for the synthetic workload, an unterminated last
line (a log read while the guest writes) is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: The UART registers a report carries, in the order of the 16550's register file.
REGISTERS: tuple[str, ...] = ("ier", "iir", "lcr", "mcr", "lsr", "msr", "scr")
#: Registers the workload programs once and that must never change (LCR holds the line
#: settings, IER the interrupts it uses, MCR the modem control lines incl. OUT2).
STABLE_REGISTERS: tuple[str, ...] = ("lcr", "ier", "mcr")
#: Counters of bytes that went wrong (each is also in ``err``).
ERROR_COUNTERS: tuple[str, ...] = ("bad", "lost", "dup", "extra", "stalls", "scr_err", "reg_changes")

_READY = re.compile(r"MDT-READY (ports=.*)")
_REPORT = re.compile(r"MDT-MTTY (n=.*)")
_ERR = re.compile(r"MDT-MTTY-ERR port=(\S+) (.*)")
_INT_FIELDS = (
    "n", "tx", "rx", "err", "bad", "lost", "dup", "extra", "stalls", "inflight", "scr_err",
    "reg_changes", "div", "baud", "t",
)  # fmt: skip


def _fields(text: str) -> dict[str, str]:
    return dict(tok.partition("=")[::2] for tok in text.split() if "=" in tok)


def _complete_lines(text: str) -> list[str]:
    return [line.rstrip("\r") for line in text.split("\n")[:-1]]


@dataclass(frozen=True)
class MttyReady:
    """The workload's ``MDT-READY`` line: its ports (empty with ``reason`` when it has none)."""

    ports: tuple[str, ...]
    reason: str | None
    fields: dict[str, str]


@dataclass(frozen=True)
class MttyReport:
    """One ``MDT-MTTY`` line: a port's counters and, when readable, its registers."""

    n: int
    port: str
    pci: str
    tx: int
    rx: int
    err: int
    counters: dict[str, int]  # bad, lost, dup, extra, stalls, inflight, scr_err, reg_changes
    quiet: bool  # every byte in flight was back when the registers were read
    registers: dict[str, int] = field(default_factory=dict)  # empty when regs=none
    scr_next: int | None = None  # what the workload wrote to SCR after reading it
    div: int = 0
    baud: int = 0
    t_ns: int = 0

    def register_text(self) -> str:
        return " ".join(f"{k.upper()}=0x{v:02x}" for k, v in self.registers.items())


@dataclass(frozen=True)
class MttyError:
    """One ``MDT-MTTY-ERR`` line."""

    port: str
    kind: str
    text: str


def find_mtty_ready(text: str) -> MttyReady | None:
    """The first complete mtty ``MDT-READY`` line of a console log (None: none, or another
    workload's)."""
    for line in _complete_lines(text):
        m = _READY.fullmatch(line)
        if m is None:
            continue
        fields = _fields(m[1])
        ports = fields.get("ports", "none")
        if ports == "none":
            return MttyReady((), fields.get("reason", "none"), fields)
        return MttyReady(tuple(p for p in ports.split(",") if p), None, fields)
    return None


def parse_reports(text: str) -> list[MttyReport]:
    """Every well-formed ``MDT-MTTY`` line of a console log, in log order."""
    reports = []
    for line in _complete_lines(text):
        m = _REPORT.fullmatch(line)
        if m is None:
            continue
        f = _fields(m[1])
        try:
            ints = {k: int(f[k]) for k in _INT_FIELDS if k in f}
            regs = {k: int(f[k], 16) for k in REGISTERS if k in f}
            scr_next = int(f["scr_next"], 16) if "scr_next" in f else None
        except ValueError:
            continue  # a damaged line: not evidence of anything
        if not {"n", "tx", "rx", "err"} <= ints.keys() or "port" not in f:
            continue
        reports.append(
            MttyReport(
                n=ints["n"],
                port=f["port"],
                pci=f.get("pci", ""),
                tx=ints["tx"],
                rx=ints["rx"],
                err=ints["err"],
                counters={k: ints[k] for k in (*ERROR_COUNTERS, "inflight") if k in ints},
                quiet=f.get("quiet") == "1",
                registers=regs if len(regs) == len(REGISTERS) else {},
                scr_next=scr_next,
                div=ints.get("div", 0),
                baud=ints.get("baud", 0),
                t_ns=ints.get("t", 0),
            )
        )
    return reports


def parse_errors(text: str) -> list[MttyError]:
    """Every ``MDT-MTTY-ERR`` line of a console log, in log order."""
    errors = []
    for line in _complete_lines(text):
        m = _ERR.fullmatch(line)
        if m:
            kind = _fields(m[2]).get("kind", "?")
            errors.append(MttyError(port=m[1], kind=kind, text=m[2]))
    return errors


def last_reports(text: str) -> dict[str, MttyReport]:
    """The last report of each port in a console log."""
    found: dict[str, MttyReport] = {}
    for report in parse_reports(text):
        found[report.port] = report
    return found


__all__ = [
    "ERROR_COUNTERS",
    "REGISTERS",
    "STABLE_REGISTERS",
    "MttyError",
    "MttyReady",
    "MttyReport",
    "find_mtty_ready",
    "last_reports",
    "parse_errors",
    "parse_reports",
]
