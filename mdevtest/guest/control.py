"""The synthetic workload's control channel (second UART, ``ctl.sock`` on the host) over SSH.

Each command is one short connection: connect through the SSH socket bridge, send the command with
a request id, read until the matching ``MDT-RESULT``, disconnect. Nothing stays connected, so the
guest's UART never blocks on a reader that went away (QEMU drops output while no one listens).
"""

from __future__ import annotations

import itertools
import time

from mdevtest.errors import GuestError
from mdevtest.guest.qga import recv_slice
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
            data = recv_slice(
                sock, remaining, label=machine.label, channel="control", during=cmd, why=bridge.stderr
            )
            if data is None:
                continue
            for reply in reader.feed(data):
                if reply.request_id == request:
                    return reply
    raise GuestError(
        f"{machine.label}: no reply to {cmd} within {timeout:g} s on {machine.paths.ctl_sock}"
    )


__all__ = ["guest_command"]
