"""One cross-process lock: an exclusive ``flock`` on a file, waited for in short polls."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["give_up_after", "locked"]


def _keep_waiting(_waited_s: float) -> None:
    """Wait as long as it takes."""


@contextlib.contextmanager
def locked(
    path: Path, *, poll_s: float = 0.2, while_waiting: Callable[[float], object] = _keep_waiting
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    While another process holds it, ``while_waiting(seconds waited so far)`` is called before each
    retry (its result is ignored); it raises to give up (see :func:`give_up_after`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with path.open("a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                while_waiting(time.monotonic() - started)
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def give_up_after(timeout_s: float, error: Callable[[], Exception]) -> Callable[[float], None]:
    """A ``while_waiting`` that raises ``error()`` once ``timeout_s`` have passed."""

    def check(waited_s: float) -> None:
        if waited_s > timeout_s:
            raise error()

    return check
