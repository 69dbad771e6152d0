"""Run commands on the controller with the same surface as :class:`~mdevtest.remote.Remote`.

:class:`LocalExecutor` lets code written against a host (``MdevManager``, vendor host checks) run on
the controller itself: the embedded lab's helpers and the framework's own unit tests use it instead of
SSH. :class:`Executor` is the structural type both satisfy; take it wherever a host command runner is
needed.

What it guarantees, like :class:`~mdevtest.remote.Remote`:

* :meth:`LocalExecutor.run` / :meth:`~LocalExecutor.run_shell` return a frozen
  :class:`~mdevtest.remote.CommandResult` and never raise for a non-zero exit; ``check*`` raise
  :class:`~mdevtest.errors.CommandFailed` carrying host, command, rc and the tail of stderr;
* every call has a timeout; on expiry the whole process group is killed (a shell's children too) and
  :class:`~mdevtest.errors.CommandTimedOut` is raised;
* a missing executable is an ordinary result (rc 127, like a shell), not a Python exception.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mdevtest.errors import CommandFailed, CommandTimedOut
from mdevtest.remote import CommandResult, quote_argv

if TYPE_CHECKING:
    from mdevtest.remote import Remote

__all__ = ["DEFAULT_TIMEOUT_S", "Executor", "LocalExecutor"]

#: Default timeout of one local command, the same as a host's default ``command_timeout_s``.
DEFAULT_TIMEOUT_S = 300.0
_KILL_GRACE_S = 5.0


@runtime_checkable
class Executor(Protocol):
    """Anything that runs commands on one host: :class:`~mdevtest.remote.Remote`, :class:`LocalExecutor`.

    ``timeout=None`` means the executor's default; every implementation bounds every call.
    """

    @property
    def name(self) -> str:
        """The host name used in results and error messages."""
        ...

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult: ...

    def run_shell(
        self,
        script: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult: ...

    def check(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult: ...

    def check_shell(self, script: str, *, timeout: float | None = None) -> CommandResult: ...


class LocalExecutor:
    """Runs commands on this machine. Cheap to create; holds no resources."""

    def __init__(
        self,
        name: str = "localhost",
        *,
        default_timeout: float = DEFAULT_TIMEOUT_S,
        shell: str = "/bin/sh",
    ) -> None:
        if default_timeout <= 0:
            raise ValueError(f"default_timeout must be positive, got {default_timeout!r}")
        self.name = name
        self.default_timeout = default_timeout
        self.shell = shell

    def __repr__(self) -> str:
        return f"LocalExecutor({self.name!r})"

    # -- commands --------------------------------------------------------------------------------

    def run_shell(
        self,
        script: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``script`` with ``/bin/sh -c``.

        Only for scripts written in this package: every interpolated value must already be quoted
        (``shlex.quote``). Prefer :meth:`run` with an argument vector.
        """
        return self._execute([self.shell, "-c", script], script, timeout, env)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run an argument vector directly (no shell); never raises for a non-zero exit."""
        args = [str(a) for a in argv]
        if not args:
            raise ValueError("empty argument vector")
        return self._execute(args, quote_argv(args), timeout, env)

    def check(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Like :meth:`run`, but a non-zero exit raises :class:`CommandFailed`."""
        return self.raise_for(self.run(argv, timeout=timeout, env=env))

    def check_shell(self, script: str, *, timeout: float | None = None) -> CommandResult:
        """Like :meth:`run_shell`, but a non-zero exit raises :class:`CommandFailed`."""
        return self.raise_for(self.run_shell(script, timeout=timeout))

    @staticmethod
    def raise_for(result: CommandResult) -> CommandResult:
        if result.rc != 0:
            raise CommandFailed(result.host, result.command, result.rc, result.stderr)
        return result

    # -- the one place a process is started ------------------------------------------------------

    def _execute(
        self,
        args: list[str],
        shown: str,
        timeout: float | None,
        env: Mapping[str, str] | None,
    ) -> CommandResult:
        limit = self.default_timeout if timeout is None else timeout
        full_env = None if not env else {**os.environ, **env}
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                start_new_session=True,  # its own process group, so a timeout kills the children too
            )
        except FileNotFoundError as exc:
            return self._not_run(shown, 127, f"{args[0]}: not found ({exc.strerror})", started)
        except PermissionError as exc:
            return self._not_run(shown, 126, f"{args[0]}: cannot execute ({exc.strerror})", started)
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired as exc:
            self._kill_group(proc)
            raise CommandTimedOut(self.name, shown, limit) from exc
        except BaseException:
            self._kill_group(proc)
            raise
        return CommandResult(
            host=self.name,
            command=shown,
            rc=proc.returncode,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
            duration=time.monotonic() - started,
        )

    def _not_run(self, shown: str, rc: int, message: str, started: float) -> CommandResult:
        return CommandResult(self.name, shown, rc, "", message + "\n", time.monotonic() - started)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=_KILL_GRACE_S)


if TYPE_CHECKING:
    # mypy proves here that both runners satisfy the protocol structurally.
    def _remote_is_an_executor(remote: Remote) -> Executor:
        return remote

    def _local_is_an_executor(local: LocalExecutor) -> Executor:
        return local
