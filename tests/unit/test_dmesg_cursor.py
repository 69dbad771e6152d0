"""The host-logs check's kernel-log cursor survives a full ring buffer.

CI found it: after 25 minutes of lab tests the (shared) kernel ring buffer was full, so ``dmesg |
wc -l`` stood still while lines arrived, and a cursor by line count saw nothing new. The commands
run here in a real shell and a real awk, against a stand-in for ``dmesg``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mdevtest.checks.standard import DmesgCursor, dmesg_cursor, dmesg_since_command

BEFORE = [
    "[ 9990.000001] veth0: entered promiscuous mode",
    "[ 9995.250000] mdt-bridge: port 2(mdtg1) entered forwarding state",
    "[10001.123456] mdev: 5e0a-...: created",
]
# the buffer is full: the oldest lines went out as new ones came in, so the count is the same
AFTER = [*BEFORE[2:], "[10002.000000] mdevtest negative test 42: Call Trace:", "  dump_stack+0x1/0x2"]


class FakeRemote:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def check_shell(self, command: str, timeout: float) -> Any:
        return SimpleNamespace(stdout=sh(command, self.log))


def sh(command: str, log: list[str]) -> str:
    fake = Path(__file__).parent  # any directory: the fake dmesg is a shell function
    script = 'dmesg() { for line in "$@"; do printf "%s\\n" "$line"; done; }\n'
    script += command.replace("dmesg", 'dmesg "$@"', 1)
    proc = subprocess.run(
        ["bash", "-c", script, "sh", *log], cwd=fake, capture_output=True, text=True, check=True
    )
    return proc.stdout


def test_the_cursor_is_the_last_lines_timestamp() -> None:
    cursor = dmesg_cursor(FakeRemote(BEFORE))  # type: ignore[arg-type]
    assert cursor == DmesgCursor(10001.123456, 3)


def test_lines_after_the_cursor_are_found_when_the_buffer_wrapped() -> None:
    cursor = dmesg_cursor(FakeRemote(BEFORE))  # type: ignore[arg-type]
    new = sh(dmesg_since_command(cursor), AFTER).splitlines()
    assert new == AFTER[-2:]  # the continuation line goes with its message
    # what a line count would have shown: nothing, as the count stood still
    assert sh(dmesg_since_command(DmesgCursor(None, 3)), AFTER) == ""


def test_nothing_new_nothing_printed() -> None:
    cursor = dmesg_cursor(FakeRemote(BEFORE))  # type: ignore[arg-type]
    assert sh(dmesg_since_command(cursor), BEFORE) == ""


def test_without_timestamps_the_count_is_the_cursor() -> None:
    plain = ["a", "b"]
    cursor = dmesg_cursor(FakeRemote(plain))  # type: ignore[arg-type]
    assert cursor == DmesgCursor(None, 2)
    assert sh(dmesg_since_command(cursor), [*plain, "c: Call Trace:"]) == "c: Call Trace:\n"


def test_an_empty_log() -> None:
    assert dmesg_cursor(FakeRemote([])) == DmesgCursor(None, 0)  # type: ignore[arg-type]
