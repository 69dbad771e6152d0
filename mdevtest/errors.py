"""The one exception tree of mdevtest.

Every error the framework raises on purpose derives from :class:`MdevtestError`, so a caller (the
CLI, the pytest plugin) can tell "the lab or the input is wrong" from "mdevtest has a bug"::

    MdevtestError
     +-- InventoryError            bad inventory file: file, field path, value, what is allowed
     +-- LabError                  the embedded local lab cannot be brought up / down
 +-- ProvisionError            deploying a build to a host, booting it or verifying it failed
     +-- KeyFileError              an SSH private key file cannot be used (missing, wrong passphrase)
     +-- RemoteError               anything that happens over SSH (carries the host)
     |    +-- ConnectFailed        cannot reach or authenticate to a host
     |    +-- CommandFailed        a command exited non-zero (host, command, rc, stderr tail)
     |    +-- CommandTimedOut      a command did not finish within its timeout
     +-- QmpError                  a QMP command failed or timed out (command, arguments, reply)
     |    +-- QmpTimedOut          no reply within the call's timeout (QEMU busy or stuck)
     +-- MachineError              a remote QEMU could not be started or stopped
     +-- MdevError                 mdev lifecycle (host, parent, type, value)
     +-- PreflightFailed           a host pair is not fit for the test (every reason listed)
     +-- GuestError                the guest did not boot or its console says something is wrong
     +-- MigrationError            the migration flow
     |    +-- MigrationFailed      QEMU reported ``failed`` (with ``error-desc``)
     |    +-- MigrationTimedOut    not completed within its deadline; it was cancelled
     |    +-- MigrationBlocked     ``blocked-reasons`` is not empty
     +-- StateError                an object was asked for something its state does not allow
     +-- CheckFailed               a verification check found a product problem

Messages say what failed, where, and what to do. Exceptions keep their cause (``raise ... from``).

Who looks first at a failure is said by the class: each declares ``failure_class``,
``infrastructure`` (the lab failed: SSH, QEMU processes, the network, mdevs, leases, deadlines),
``product`` (what is under test failed: a check) or None (the class alone does not tell: a
migration that failed may be either). An instance may say otherwise (a diagnosis pins a
migration failure on the infrastructure, :func:`mdevtest.diagnose.pin`). :func:`classify` reads
that attribute, on any exception, and says ``product`` when it is None or absent; nothing
decides by class names or message text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

from mdevtest.credentials import mask

FailureClass = Literal["infrastructure", "product"]
INFRASTRUCTURE: Final = "infrastructure"
PRODUCT: Final = "product"


class MdevtestError(Exception):
    """Root of every error mdevtest raises on purpose. Its text never shows a registered secret
    or a private key (:func:`mdevtest.credentials.mask`).

    ``failure_class``: who looks first (see the module docstring); every subclass says.
    """

    failure_class: FailureClass | None = None

    def __str__(self) -> str:
        return mask(super().__str__())


class InventoryError(MdevtestError):
    """The inventory file is missing, unreadable or invalid.

    ``problems`` holds one line per bad field, each naming the field path, the bad value and what is
    allowed; ``str()`` gives the file name followed by those lines.
    """

    failure_class: FailureClass | None = INFRASTRUCTURE

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [f"invalid inventory {self.path}:"]
        lines.extend(f"  {p}" for p in self.problems)
        return "\n".join(lines)


class LabError(MdevtestError):
    """The embedded local lab could not be brought up, inspected or taken down."""

    failure_class: FailureClass | None = INFRASTRUCTURE


class ProvisionError(MdevtestError):
    """Putting a build on a host failed: an artifact could not be fetched or installed, the host
    did not come back from its boot, or what runs is not what was deployed (:mod:`mdevtest.provision`).
    The host has been rolled back when the message says so."""

    failure_class: FailureClass | None = INFRASTRUCTURE


class KeyFileError(MdevtestError):
    """An SSH private key file on the controller cannot be used: it does not exist, cannot be
    read, is not a private key, or its passphrase is missing or wrong. Carries ``path``.

    A lab problem, not a product one (:func:`classify`); :class:`~mdevtest.remote.Remote` reports
    it as :class:`ConnectFailed` of the host whose key it is.
    """

    failure_class: FailureClass | None = INFRASTRUCTURE

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


class RemoteError(MdevtestError):
    """Something went wrong talking to a host over SSH."""

    failure_class: FailureClass | None = INFRASTRUCTURE

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"{host}: {message}")


class ConnectFailed(RemoteError):
    """The host could not be reached or refused our credentials or host key."""


class CommandFailed(RemoteError):
    """A remote command exited with a non-zero status."""

    def __init__(self, host: str, command: str, rc: int, stderr: str) -> None:
        self.command = command
        self.rc = rc
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-8:])
        message = f"command failed (rc={rc}): {command}"
        if tail:
            message += f"\n  stderr: {tail}"
        super().__init__(host, message)


class CommandTimedOut(RemoteError):
    """A remote command did not finish within its timeout; it was abandoned."""

    def __init__(self, host: str, command: str, timeout: float) -> None:
        self.command = command
        self.timeout = timeout
        super().__init__(host, f"command timed out after {timeout:g} s: {command}")


class QmpError(MdevtestError):
    """A QMP command failed, timed out, or the monitor went away."""

    failure_class: FailureClass | None = INFRASTRUCTURE

    def __init__(self, machine: str, command: str, message: str) -> None:
        self.machine = machine
        self.command = command
        super().__init__(f"{machine}: QMP {command}: {message}")


class QmpTimedOut(QmpError):
    """No reply within the call's timeout: QEMU is busy or stuck (its main loop blocked)."""


class MachineError(MdevtestError):
    """A remote QEMU process could not be started, reached or stopped."""

    failure_class: FailureClass | None = INFRASTRUCTURE


class MdevError(MdevtestError):
    """A mediated device could not be discovered, created or removed."""

    failure_class: FailureClass | None = INFRASTRUCTURE


class PreflightFailed(MdevtestError):
    """A host pair failed its preflight: the test cannot meaningfully run on it.

    ``failure_class`` None: which side is at fault depends on the reason (a missing module is the
    lab's, a QEMU or driver without VFIO migration may be the product's).
    """

    failure_class: FailureClass | None = None

    def __init__(self, pair: str, reasons: Sequence[str]) -> None:
        self.pair = pair
        self.reasons = tuple(reasons)
        super().__init__(f"{pair}: preflight failed: " + "; ".join(self.reasons))


class GuestError(MdevtestError):
    """The guest did not boot, or its console shows it is not healthy.

    ``failure_class`` None: a guest that does not boot may be the lab's or the product's; after
    a migration the checks judge the guest (:class:`CheckFailed`).
    """

    failure_class: FailureClass | None = None


class MigrationError(MdevtestError):
    """The migration flow failed before, during or after the migration itself.

    ``failure_class`` is set by a diagnosis (:mod:`mdevtest.diagnose`) when one ran.
    """

    failure_class: FailureClass | None = None


class MigrationFailed(MigrationError):
    """QEMU reported the migration as failed."""


class MigrationTimedOut(MigrationError):
    """The migration did not complete within its deadline and was cancelled."""


class MigrationBlocked(MigrationError):
    """QEMU reports ``blocked-reasons``: the migration cannot start."""


class StateError(MdevtestError):
    """An object was asked for something its current state does not allow (an mdevtest bug
    or a misuse of its API: ``failure_class`` None)."""

    failure_class: FailureClass | None = None


class CheckFailed(MdevtestError):
    """A verification check found a product problem (not an infrastructure one).

    ``values`` carries what was measured (which page, pixel, register differed) for the report.
    ``failure_class`` is ``infrastructure`` when every check failed only on an SSH/QMP error.
    """

    failure_class: FailureClass | None = PRODUCT

    def __init__(self, message: str, values: dict[str, object] | None = None) -> None:
        self.values = dict(values or {})
        super().__init__(message)


def classify(exc: BaseException) -> FailureClass:
    """``infrastructure`` or ``product``: who should look at this failure first. The exception's
    ``failure_class`` (its own, else its class's) when it has one, else ``product``."""
    pinned = getattr(exc, "failure_class", None)
    if pinned == INFRASTRUCTURE:
        return INFRASTRUCTURE
    return PRODUCT
