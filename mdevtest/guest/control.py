"""The synthetic workload's control channel (second UART, ``ctl.sock`` on the host) over SSH.

Each command is one short connection: connect through the SSH socket bridge, send the command with
a request id, read until the matching ``MDT-RESULT``, disconnect. Nothing stays connected, so the
guest's UART never blocks on a reader that went away (QEMU drops output while no one listens).
"""

from __future__ import annotations

import itertools
import time

from mdevtest.errors import GuestError
from mdevtest.qemu.machine import RemoteMachine
from mdevtest.workloads.synthetic import GuestReply, ReplyReader, encode_command

_ids = itertools.count(1)


def guest_command(machine: RemoteMachine, cmd: str, *args: str, timeout: float = 20.0) -> GuestReply:
    """Run one control-channel command in the guest running in ``machine``; return its reply."""
    request = f"r{next(_ids)}"
    deadline = time.monotonic() + timeout
    with machine.remote.open_unix_socket(machine.paths.ctl_sock, timeout=timeout) as bridge:
        sock = bridge.sock
        reader = ReplyReader()
        sock.sendall(encode_command(cmd, *args, request_id=request))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(min(remaining, 1.0))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise GuestError(f"{machine.label}: control channel broke during {cmd}: {exc}") from exc
            if not data:
                why = bridge.stderr().strip()
                raise GuestError(
                    f"{machine.label}: control channel closed during {cmd}" + (f": {why}" if why else "")
                )
            for reply in reader.feed(data):
                if reply.request_id == request:
                    return reply
    raise GuestError(
        f"{machine.label}: no reply to {cmd} within {timeout:g} s on {machine.paths.ctl_sock}"
    )


__all__ = ["guest_command"]
