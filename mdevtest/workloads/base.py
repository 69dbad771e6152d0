"""What every workload is: its definition, how the guest is reached, how it runs and what it reports.

A workload is two things kept apart (labgrid's resources vs drivers):

- a **definition** (:class:`WorkloadDefinition`, one YAML file per workload in the top-level
  ``workloads/`` folder): the command line, what the guest must have, how to install it;
- a **driver** (a :class:`Workload` subclass, one module per tool: ``glmark2``, ``heaven``,
  ``threedmark06``, ``media``, ``twod``, ``synthetic_def``) that starts the command in a guest,
  turns its output into :class:`Sample` s while it runs and into a :class:`WorkloadResult` after.

The guest is reached through :class:`GuestExec`, a small protocol with implementations over
qemu-guest-agent, over any host command runner (SSH into the guest) and over the serial console
only (:mod:`mdevtest.workloads.guestexec`).

Errors (all :class:`~mdevtest.errors.MdevtestError`)::

    WorkloadError                 a workload cannot be found, installed, started or read
     +-- UnknownWorkload          no definition of that name (``known`` lists what there is)
     +-- WorkloadDefinitionError  a definition file is invalid (file, one line per problem)
     +-- GuestExecError           the guest channel cannot do it, or answered nonsense
     +-- ResultParseError         the output holds none of the tool's result lines

Commands that exit non-zero or time out raise the usual :class:`~mdevtest.errors.CommandFailed`
and :class:`~mdevtest.errors.CommandTimedOut`, with the guest's name as host.
"""

from __future__ import annotations

import codecs
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from mdevtest.errors import INFRASTRUCTURE, CommandFailed, FailureClass, MdevtestError, StateError
from mdevtest.remote import quote_argv

__all__ = [
    "KINDS",
    "ExecResult",
    "GuestExec",
    "GuestExecError",
    "GuestOS",
    "GuestProcess",
    "Kind",
    "Phase",
    "ProcessOutput",
    "ProcessWorkload",
    "Reading",
    "Requirements",
    "ResultParseError",
    "Sample",
    "UnknownWorkload",
    "Workload",
    "WorkloadDefinition",
    "WorkloadDefinitionError",
    "WorkloadError",
    "WorkloadResult",
    "WorkloadRun",
    "split_lines",
]

Kind = Literal["3d", "media", "2d", "synthetic"]
KINDS: tuple[Kind, ...] = ("3d", "media", "2d", "synthetic")
GuestOS = Literal["linux", "windows"]

# -- errors -------------------------------------------------------------------------------------


class WorkloadError(MdevtestError):
    """A workload cannot be found, installed, started, sampled or read (``failure_class`` None:
    the lab's or the product's, depending on why)."""

    failure_class: FailureClass | None = None


class UnknownWorkload(WorkloadError):
    """No workload definition has that name; ``known`` holds the names there are."""

    failure_class: FailureClass | None = INFRASTRUCTURE  # the input is wrong, as InventoryError

    def __init__(self, name: str, known: Sequence[str], where: str) -> None:
        self.name = name
        self.known = tuple(known)
        listed = ", ".join(self.known) or "(none)"
        super().__init__(f"unknown workload {name!r}; known workloads ({where}): {listed}")


class WorkloadDefinitionError(WorkloadError):
    """A workload definition file is missing, unreadable or invalid: one line per problem."""

    failure_class: FailureClass | None = INFRASTRUCTURE  # the input is wrong, as InventoryError

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        super().__init__(
            "\n".join([f"invalid workload definition {path}:", *(f"  {p}" for p in problems)])
        )


class GuestExecError(WorkloadError):
    """The guest channel cannot do what was asked, or its answer does not have the expected shape."""


class ResultParseError(WorkloadError):
    """The text holds none of the result lines the tool prints; ``text`` is kept for the report."""

    def __init__(self, message: str, text: str) -> None:
        self.text = text
        tail = "\n".join(text.strip().splitlines()[-6:])
        super().__init__(
            message + (f"\n  last lines:\n    {tail.replace(chr(10), chr(10) + '    ')}" if tail else "")
        )


# -- reaching the guest -------------------------------------------------------------------------


class ExecResult(NamedTuple):
    """What one command in the guest did; unpacks as ``rc, stdout, stderr``."""

    rc: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class GuestProcess:
    """A process started by :meth:`GuestExec.spawn`: the guest it runs in, its id there, what it
    runs and the guest file its output goes to (None when the channel streams no output)."""

    guest: str
    pid: int
    argv: tuple[str, ...]
    log: str | None = None


@dataclass(frozen=True)
class ProcessOutput:
    """New output of a spawned process since the previous read (stdout and stderr merged, in the
    order written), and whether it has exited (``rc`` None when unknown, e.g. killed)."""

    text: str
    exited: bool
    rc: int | None = None


@runtime_checkable
class GuestExec(Protocol):
    """How a workload reaches a guest. Every call is bounded in time.

    ``run`` waits for a command and never raises for a non-zero exit; a timeout raises
    :class:`~mdevtest.errors.CommandTimedOut` after the command was killed. ``spawn`` starts a
    command in the background with its output going somewhere :meth:`read_output` can read it
    from, piece by piece. ``kill`` is soft then hard, and idempotent; ``release`` forgets the
    process and removes what ``spawn`` left in the guest.
    """

    @property
    def name(self) -> str:
        """The guest's name in results and error messages."""
        ...

    @property
    def os(self) -> GuestOS: ...

    def run(self, argv: Sequence[str], timeout: float) -> ExecResult: ...

    def spawn(self, argv: Sequence[str]) -> GuestProcess: ...

    def read_output(self, proc: GuestProcess) -> ProcessOutput: ...

    def kill(self, proc: GuestProcess) -> None: ...

    def release(self, proc: GuestProcess) -> None: ...

    def read_file(self, path: str, timeout: float) -> bytes: ...


# -- what a workload reports --------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One look at a running workload.

    ``t`` is the controller's ``time.monotonic()`` when the output was read (the clock QMP events
    carry, so samples line up with the switchover). ``value`` is the throughput in ``unit`` from
    the newest progress reading, None when there was no new reading since the previous sample
    (the guest paused, the tool prints no progress, or the read failed: ``error`` says why).
    ``counter`` is the tool's cumulative progress (frames, operations) when it reports one.
    """

    t: float
    value: float | None
    unit: str
    counter: float | None = None
    alive: bool = True
    detail: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 4),
            "value": self.value,
            "unit": self.unit,
            "counter": self.counter,
            "alive": self.alive,
            "detail": self.detail,
            "error": self.error,
        }


@dataclass(frozen=True)
class Phase:
    """One scene, test or stage of a run and its figure (``extra``: e.g. ``frame_time_ms``)."""

    name: str
    value: float
    unit: str
    extra: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))


@dataclass(frozen=True)
class WorkloadResult:
    """What a run measured, typed; every figure None when the tool did not report it.

    ``score`` is the tool's own overall figure (``score_unit`` names it), ``fps`` its average
    frame rate, ``phases`` the per-scene/per-test figures in output order, ``values`` any other
    named figure (e.g. ``sm2_score``, ``dropped``, ``speed``), ``info`` what the tool says about
    the setup (e.g. ``renderer``: a vGPU run that fell back to llvmpipe shows here), ``raw`` the
    text parsed.
    """

    workload: str
    score: float | None = None
    score_unit: str | None = None
    fps: float | None = None
    fps_min: float | None = None
    fps_max: float | None = None
    frames: int | None = None
    duration_s: float | None = None
    phases: tuple[Phase, ...] = ()
    values: Mapping[str, float] = field(default_factory=dict)
    info: Mapping[str, str] = field(default_factory=dict)
    raw: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        object.__setattr__(self, "info", MappingProxyType(dict(self.info)))

    def figures(self) -> dict[str, Any]:
        """Everything but ``raw``, JSON-ready (for the report's stats)."""
        return {
            "workload": self.workload,
            "score": self.score,
            "score_unit": self.score_unit,
            "fps": self.fps,
            "fps_min": self.fps_min,
            "fps_max": self.fps_max,
            "frames": self.frames,
            "duration_s": self.duration_s,
            "phases": [
                {"name": p.name, "value": p.value, "unit": p.unit, **p.extra} for p in self.phases
            ],
            "values": dict(self.values),
            "info": dict(self.info),
        }


@dataclass(frozen=True)
class Reading:
    """One progress line of a tool: its own current rate and/or its cumulative counter."""

    rate: float | None = None
    counter: float | None = None
    detail: str = ""


# -- definitions ----------------------------------------------------------------------------------

_Arg = Annotated[str, Field(min_length=1)]
_Argv = Annotated[tuple[_Arg, ...], Field(min_length=1)]
_NAME = r"^[a-z0-9][a-z0-9._-]*$"
_ENV_KEY = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Requirements(BaseModel):
    """What the guest must have for the workload to be present: executables found on PATH,
    paths that exist, and commands that must exit 0 (e.g. ``gst-inspect-1.0 --exists ...``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    commands: tuple[_Arg, ...] = ()
    paths: tuple[_Arg, ...] = ()
    checks: tuple[_Argv, ...] = ()


class WorkloadDefinition(BaseModel):
    """One ``workloads/<name>.yaml``: validated once at load, frozen.

    ``command`` runs in ``workdir`` with ``env`` added (Linux guests); ``install`` is a list of
    commands run in order (None: cannot be installed by mdevtest, ``install_hint`` says how);
    ``result_file`` is a guest file read after the run; ``options`` are the driver's own
    settings (each driver lists the ones it accepts).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=_NAME)]
    kind: Kind
    driver: Annotated[str, Field(min_length=1)]
    description: Annotated[str, Field(min_length=1)]
    guest_os: GuestOS = "linux"
    requires: Requirements = Requirements()
    install: tuple[_Argv, ...] | None = None
    install_hint: str | None = None
    command: _Argv | None = None
    workdir: _Arg | None = None
    env: dict[Annotated[str, Field(pattern=_ENV_KEY)], str] = Field(default_factory=dict)
    result_file: _Arg | None = None
    timeout_s: Annotated[float, Field(gt=0)] = 3600.0
    options: dict[str, str] = Field(default_factory=dict)

    def argv(self) -> tuple[str, ...]:
        """The command as the guest runs it: with ``workdir`` and ``env`` applied (Linux)."""
        if self.command is None:
            raise WorkloadError(f"workload {self.name} has no command (it is started by the guest)")
        argv: tuple[str, ...] = self.command
        if self.env:
            argv = ("env", *(f"{k}={v}" for k, v in self.env.items()), *argv)
        if self.workdir is not None:
            argv = ("sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", self.workdir, *argv)
        return argv


# -- one run ------------------------------------------------------------------------------------

#: Output kept per run, in characters; older output is dropped first (``dropped_chars``).
OUTPUT_LIMIT = 16 * 1024 * 1024
#: How often :meth:`ProcessWorkload.stop` looks whether a finite benchmark has ended, in seconds.
FINISH_POLL_S = 1.0
_LINE_END = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """Lines of ``text`` split at ``\\n``, ``\\r\\n`` and a lone ``\\r`` (ffmpeg and gst-launch
    rewrite their progress line with ``\\r``); a last line without an end is included."""
    lines = _LINE_END.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


class WorkloadRun:
    """One run of a workload in one guest: its process, its output so far, its state.

    Not thread-safe: while a :class:`~mdevtest.workloads.sampling.Sampler` samples it, only the
    sampler thread touches it; :meth:`Workload.stop` comes after the sampler stopped.
    """

    def __init__(
        self,
        workload: Workload,
        guest: GuestExec,
        process: GuestProcess | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workload = workload
        self.guest = guest
        self.process = process
        self.clock = clock
        self.started = clock()
        self.state: Literal["running", "stopped"] = "running"
        self.exited = False
        self.killed = False  # stop() had to end it: it had not ended by itself
        self.rc: int | None = None
        self.result_text: str | None = None
        self.dropped_chars = 0
        self._chunks: list[str] = []
        self._size = 0
        self._partial = ""
        self._last_counter: float | None = None
        self._last_counter_t: float | None = None

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"WorkloadRun({self.workload.name!r} in {self.guest.name!r}, pid={pid}, {self.state})"

    @property
    def output(self) -> str:
        """Everything the process wrote that was read so far (bounded by :data:`OUTPUT_LIMIT`)."""
        return "".join(self._chunks) + self._partial

    def require_running(self, what: str) -> None:
        if self.state != "running":
            raise StateError(
                f"{self.workload.name} in {self.guest.name}: cannot {what}: the run is {self.state}"
            )

    def feed(self, text: str) -> list[str]:
        """Add output; return the lines it completed (a trailing partial line waits for its end,
        except a ``\\r``-ended one, which is complete)."""
        if not text:
            return []
        pending = self._partial + text
        cut = max(pending.rfind("\n"), pending.rfind("\r"))
        if cut < 0:
            self._partial = pending
            return []
        done, self._partial = pending[: cut + 1], pending[cut + 1 :]
        self._keep(done)
        return split_lines(done)

    def flush(self) -> list[str]:
        """The trailing partial line as a line (the process ended without a line end)."""
        rest, self._partial = self._partial, ""
        if not rest:
            return []
        self._keep(rest)
        return [rest]

    def _keep(self, text: str) -> None:
        self._chunks.append(text)
        self._size += len(text)
        while self._size > OUTPUT_LIMIT and len(self._chunks) > 1:
            gone = self._chunks.pop(0)
            self._size -= len(gone)
            self.dropped_chars += len(gone)

    def make_sample(self, reading: Reading | None, *, alive: bool, unit: str) -> Sample:
        """A sample from the newest reading: the tool's own rate when it reports one, otherwise
        the counter's increase over the controller time since the previous counter reading."""
        now = self.clock()
        value: float | None = None
        counter = reading.counter if reading else None
        if reading is not None and reading.rate is not None:
            value = reading.rate
        elif counter is not None and self._last_counter is not None and self._last_counter_t is not None:
            dt = now - self._last_counter_t
            if dt > 0:
                value = max(0.0, counter - self._last_counter) / dt
        if counter is not None:
            self._last_counter, self._last_counter_t = counter, now
        return Sample(
            t=now,
            value=value,
            unit=unit,
            counter=counter,
            alive=alive,
            detail=reading.detail if reading else "",
        )


# -- the interface --------------------------------------------------------------------------------


class Workload(ABC):
    """A workload driver bound to one definition.

    Subclasses set :attr:`driver` (the name definitions use), :attr:`kinds` they can be,
    :attr:`unit` and :attr:`throughput_method` (said in every report), :attr:`options` they
    accept, and implement :meth:`start`, :meth:`sample`, :meth:`stop` and :meth:`parse_results`.

    What a caller may rely on is said by three more class attributes (all in :meth:`describe`):

    - :attr:`progress_readings`: False when the tool prints nothing while it runs (Heaven,
      3DMark06): its samples say only whether it is alive, none has a value, and there is no
      dip to measure. A caller asserting "throughput was sampled" asks this first.
    - :attr:`finite`: a benchmark that ends by itself and reports only at its end; :meth:`stop`
      waits for that end (bounded by the definition's ``timeout_s`` from the start) before it
      stops the program, so the results exist.
    - :attr:`proven`: False when the driver has never been run against the real program (its
      test fixtures are reconstructed); :attr:`unproven_reason` says what is not known, and
      every result carries it as ``info["unproven"]``.
    """

    driver: ClassVar[str]
    kinds: ClassVar[tuple[Kind, ...]]
    unit: ClassVar[str] = "fps"
    throughput_method: ClassVar[str] = ""
    options: ClassVar[Mapping[str, str]] = {}
    needs_command: ClassVar[bool] = True
    guest_oses: ClassVar[tuple[GuestOS, ...]] = ("linux",)
    progress_readings: ClassVar[bool] = True
    finite: ClassVar[bool] = False
    proven: ClassVar[bool] = True
    unproven_reason: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.proven and not cls.unproven_reason:
            raise TypeError(f"{cls.__name__}: proven = False needs an unproven_reason")

    def __init__(self, definition: WorkloadDefinition) -> None:
        self.definition = definition

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def kind(self) -> Kind:
        return self.definition.kind

    @classmethod
    def validate_definition(cls, definition: WorkloadDefinition) -> list[str]:
        """Problems of ``definition`` for this driver, one line each (empty when fine)."""
        problems = []
        if definition.kind not in cls.kinds:
            allowed = ", ".join(repr(k) for k in cls.kinds)
            problems.append(
                f"kind: {definition.kind!r} does not fit driver {cls.driver}: must be {allowed}"
            )
        if definition.guest_os not in cls.guest_oses:
            allowed = ", ".join(repr(o) for o in cls.guest_oses)
            problems.append(
                f"guest_os: driver {cls.driver} runs on {allowed} guests, not {definition.guest_os!r}"
            )
        if cls.needs_command and definition.command is None:
            problems.append(f"command: missing (required by driver {cls.driver})")
        if definition.guest_os == "windows" and (definition.env or definition.workdir):
            problems.append(
                "env/workdir: only for Linux guests; put them into the Windows task or program"
            )
        for key in definition.options:
            if key not in cls.options:
                known = ", ".join(f"{k} ({v})" for k, v in cls.options.items()) or "none"
                problems.append(
                    f"options.{key}: unknown option of driver {cls.driver}; allowed: {known}"
                )
        return problems

    def describe(self) -> dict[str, Any]:
        """What a report says about the workload: name, kind, driver, command line, method."""
        cmd = self.definition.command
        return {
            "name": self.name,
            "kind": self.kind,
            "driver": self.driver,
            "guest_os": self.definition.guest_os,
            "command": quote_argv(cmd) if cmd else None,
            "unit": self.unit,
            "throughput_method": self.throughput_method,
            "progress_readings": self.progress_readings,
            "finite": self.finite,
            "proven": self.proven,
            **({} if self.proven else {"unproven_reason": self.unproven_reason}),
        }

    def caveats(self) -> dict[str, str]:
        """What a result of this driver must say about itself: ``unproven`` when the driver was
        never run against the real program (merged into :attr:`WorkloadResult.info`)."""
        return {} if self.proven else {"unproven": self.unproven_reason}

    # -- presence and installation ----------------------------------------------------------------

    def present(self, guest: GuestExec) -> str | None:
        """None when the guest can run this workload; otherwise why not, as a skip reason."""
        missing = self._os_mismatch(guest) or self.missing(guest)
        if not missing:
            return None
        hint = self._install_hint()
        return f"{self.name} is not present in {guest.name}: {'; '.join(missing)}" + (
            f" ({hint})" if hint else ""
        )

    def _os_mismatch(self, guest: GuestExec) -> list[str]:
        if guest.os != self.definition.guest_os:
            return [f"it needs a {self.definition.guest_os} guest, this one runs {guest.os}"]
        return []

    def _install_hint(self) -> str:
        if self.definition.install is not None:
            return "install it with Workload.install(), or preinstall: " + "; ".join(
                quote_argv(step) for step in self.definition.install
            )
        return self.definition.install_hint or ""

    def missing(self, guest: GuestExec) -> list[str]:
        """What of :attr:`WorkloadDefinition.requires` the guest lacks, one item each."""
        req = self.definition.requires
        problems: list[str] = []
        items = [f"command:{c}" for c in req.commands] + [f"path:{p}" for p in req.paths]
        if items:
            problems += _missing_items(guest, items)
        for check in req.checks:
            rc, out, err = guest.run(check, timeout=60)
            if rc != 0:
                why = (err.strip() or out.strip()).splitlines()
                problems.append(
                    f"check failed (rc={rc}): {quote_argv(check)}" + (f": {why[-1]}" if why else "")
                )
        return problems

    def install(self, guest: GuestExec) -> None:
        """Install the workload with the definition's ``install`` commands, then check presence.

        Raises :class:`WorkloadError` when the definition has none (its ``install_hint`` says
        how to provide the workload), :class:`~mdevtest.errors.CommandFailed` for a failed step.
        """
        steps = self.definition.install
        if steps is None:
            hint = self.definition.install_hint or "provide it in the guest image"
            raise WorkloadError(f"{self.name}: mdevtest cannot install it into {guest.name}: {hint}")
        mismatch = self._os_mismatch(guest)
        if mismatch:
            raise WorkloadError(f"{self.name}: cannot install into {guest.name}: {mismatch[0]}")
        for step in steps:
            rc, _out, err = guest.run(step, timeout=self.definition.timeout_s)
            if rc != 0:
                raise CommandFailed(guest.name, quote_argv(step), rc, err)
        still = self.missing(guest)
        if still:
            raise WorkloadError(
                f"{self.name}: installed into {guest.name}, but still missing: {'; '.join(still)}"
            )

    # -- running ------------------------------------------------------------------------------------

    @abstractmethod
    def start(self, guest: GuestExec) -> WorkloadRun:
        """Start the workload in ``guest``; it keeps running until :meth:`stop` or its own end."""

    @abstractmethod
    def sample(self, run: WorkloadRun) -> Sample:
        """Read the run's progress now (see :class:`Sample`)."""

    @abstractmethod
    def stop(self, run: WorkloadRun) -> None:
        """Stop the run (soft, then hard), collect its last output and result file. Idempotent.

        A :attr:`finite` benchmark is first given until ``timeout_s`` after its start to end by
        itself; ``run.killed`` says whether it had to be stopped."""

    @abstractmethod
    def parse_results(self, text: str) -> WorkloadResult:
        """The figures in the tool's output or result file; :class:`ResultParseError` when the
        text holds none of its result lines."""

    def result(self, run: WorkloadRun) -> WorkloadResult:
        """The figures of a stopped run: from its result file when there is one, else its output."""
        if run.state != "stopped":
            raise StateError(f"{self.name}: results are read after stop(); the run is {run.state}")
        return self.parse_results(run.result_text if run.result_text is not None else run.output)

    def wait(self, run: WorkloadRun, timeout: float, *, interval_s: float = 1.0) -> list[Sample]:
        """Sample until the run ends by itself (a finite benchmark) or ``timeout`` seconds pass;
        return the samples. Does not stop the run."""
        samples = []
        deadline = run.clock() + timeout
        while True:
            sample = self.sample(run)
            samples.append(sample)
            if not sample.alive or run.clock() >= deadline:
                return samples
            time.sleep(min(interval_s, max(0.0, deadline - run.clock())))


def _missing_items(guest: GuestExec, items: list[str]) -> list[str]:
    """Check ``command:NAME`` / ``path:PATH`` items with one command in the guest."""
    if guest.os == "windows":
        problems = []
        for item in items:
            kind, _, what = item.partition(":")
            if kind == "command":
                rc, _out, _err = guest.run(["where", "/Q", what], timeout=60)
            else:
                folder, _, leaf = what.replace("/", "\\").rpartition("\\")
                rc, _out, _err = guest.run(["where", "/Q", f"{folder or '.'}:{leaf}"], timeout=60)
            if rc != 0:
                problems.append(f"missing {kind} {what}")
        return problems
    script = (
        "for item do case $item in "
        'command:*) command -v "${item#command:}" >/dev/null 2>&1 '
        '|| echo "missing command ${item#command:}";; '
        'path:*) [ -e "${item#path:}" ] || echo "missing path ${item#path:}";; '
        "esac; done"
    )
    rc, out, err = guest.run(["sh", "-c", script, "sh", *items], timeout=60)
    if rc != 0:
        raise GuestExecError(
            f"{guest.name}: checking {', '.join(items)} failed (rc={rc}): {err.strip()}"
        )
    return [line.strip() for line in out.splitlines() if line.strip()]


class ProcessWorkload(Workload):
    """A workload that is one guest process printing progress lines (most tools).

    :meth:`start` spawns :meth:`WorkloadDefinition.argv`; :meth:`sample` reads the new output,
    takes the newest line :meth:`parse_progress` understands and makes a :class:`Sample`;
    :meth:`stop` waits for a :attr:`finite` one to end (reading its output meanwhile), kills the
    process if it still runs, reads what it wrote last and the result file, if any.
    """

    @abstractmethod
    def parse_progress(self, line: str) -> Reading | None:
        """The progress in one output line, or None for any other line."""

    def readings(self, lines: Iterable[str]) -> list[Reading]:
        return [r for r in map(self.parse_progress, lines) if r is not None]

    def start(self, guest: GuestExec) -> WorkloadRun:
        mismatch = self._os_mismatch(guest)
        if mismatch:
            raise WorkloadError(f"{self.name}: cannot start in {guest.name}: {mismatch[0]}")
        return WorkloadRun(self, guest, guest.spawn(self.definition.argv()))

    def sample(self, run: WorkloadRun) -> Sample:
        run.require_running("sample it")
        assert run.process is not None
        out = run.guest.read_output(run.process)
        lines = run.feed(out.text)
        if out.exited:
            run.exited, run.rc = True, out.rc
            lines += run.flush()
        found = self.readings(lines)
        return run.make_sample(found[-1] if found else None, alive=not out.exited, unit=self.unit)

    def stop(self, run: WorkloadRun) -> None:
        if run.state == "stopped":
            return
        assert run.process is not None
        guest, proc = run.guest, run.process
        try:
            if self.finite and not run.exited:
                try:
                    self._await_end(run)
                except BaseException:  # interrupted or unreachable while waiting: leave nothing
                    run.killed = True
                    guest.kill(proc)
                    raise
            if not run.exited:
                guest.kill(proc)
                run.killed = True
            out = guest.read_output(proc)
            run.feed(out.text)
            run.flush()
            run.exited, run.rc = True, out.rc if out.exited else run.rc
            if self.definition.result_file is not None:
                run.result_text = decode_text(guest.read_file(self.definition.result_file, timeout=60))
        finally:
            run.state = "stopped"
            guest.release(proc)

    def _await_end(self, run: WorkloadRun) -> None:
        """Read the output until the process ends by itself, or until the run is ``timeout_s``
        old (the bound of a finite run)."""
        assert run.process is not None
        deadline = run.started + self.definition.timeout_s
        while True:
            out = run.guest.read_output(run.process)
            run.feed(out.text)
            if out.exited:
                run.exited, run.rc = True, out.rc
                return
            remaining = deadline - run.clock()
            if remaining <= 0:
                return
            time.sleep(min(FINISH_POLL_S, remaining))


def decode_text(data: bytes) -> str:
    """Text of a guest file: UTF-16 with a BOM (Windows tools), else UTF-8 (with a BOM or not),
    else Windows-1252 (older Windows tools write the ANSI code page)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def number(text: str) -> float:
    """A figure as a tool prints it (``1,234.5`` included)."""
    return float(text.replace(",", ""))
