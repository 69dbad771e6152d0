"""Progress lines: what a long step is doing, shown as it happens, past pytest's output capture.

Each line says how long the session has been running, so a reader sees where the time goes::

    [mdevtest   3.2s] guest image 2db6: cached in /var/cache/mdevtest/images/2db6
    [mdevtest  41.7s] host-a->host-b migrated in 2.8 s, downtime 45 ms (observed 120 ms) [passed]

Under xdist a worker's lines do not reach the terminal (pytest-xdist shows no worker output).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pytest

from mdevtest.report.terminal import progress_line

#: When the session started (the plugin sets it when it configures): lines count from here.
STARTED = pytest.StashKey[float]()


def progress_writer(config: pytest.Config) -> Callable[[str], None]:
    """A function that writes one progress line to the terminal (nothing without one)."""
    plugins = config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    started = config.stash.get(STARTED, time.monotonic())

    def progress(message: str) -> None:
        if reporter is None:
            return
        quiet = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
        with quiet:
            reporter.write_line(progress_line(message, time.monotonic() - started))

    return progress
