"""The probe agent (``mdt-workload``) in any Linux guest: built on the controller, copied in
through qemu-guest-agent, started detached.

The probe is the synthetic workload's program (``workloads/synthetic/mdt-workload.c``): it draws
checkable frames on the display of the device under test, keeps RAM, device-memory and DMA
integrity ledgers, answers ``VERIFY-*``/``STATE`` on its control channel and sends the UDP
heartbeat behind the guest-observed downtime. In the lab's initramfs guest the init starts it;
in any other Linux guest with qemu-guest-agent, :func:`deploy_probe` does:

1. ``guest-file-open``/``-write``/``-close`` the static binary to :data:`GUEST_PATH` (48 KiB
   chunks, base64), ``chmod 755`` it;
2. start it in a session of its own (``setsid`` in the background) so it outlives the agent's
   child handling, with options naming devices the way any guest has them, udev or not:
   ``ctl=vport:<name>`` (the virtio-serial port of that name), ``drm=pci:<vendor>[:<device>]``
   (the DRM card whose PCI device is the vGPU), ``dma_dev=serial:<serial>`` (the pattern disk,
   the block device whose ``/sys/block/*/serial`` is that);
3. the caller waits for its ``MDT-READY`` line on the console.

:func:`probe_binary` compiles it statically once per source and compiler (cached).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from mdevtest.data import data_dir
from mdevtest.errors import GuestError, LabError
from mdevtest.guest.qga import GuestAgent

__all__ = ["GUEST_PATH", "deploy_probe", "probe_binary"]

SOURCE = data_dir("workloads") / "synthetic" / "mdt-workload.c"
DEFAULT_CACHE_DIR = Path("/var/cache/mdevtest/probe")
GUEST_PATH = "/tmp/mdt-workload"
_CFLAGS = ("-std=c99", "-static", "-O2", "-s", "-Wall", "-Wextra")
_CHUNK = 48 * 1024


def probe_binary(cache_dir: Path = DEFAULT_CACHE_DIR, source: Path = SOURCE) -> Path:
    """The static ``mdt-workload`` for x86-64 Linux guests, compiled here once (cached by the
    source's and the compiler's digest). Needs gcc and libc6-dev."""
    try:
        cc = subprocess.run(
            ["gcc", "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.partition("\n")[0]
        code = source.read_bytes()
    except (OSError, subprocess.SubprocessError) as exc:
        raise LabError(
            f"probe agent: cannot build {source}: {exc}; install gcc and libc6-dev "
            "(apt-get install gcc libc6-dev)"
        ) from exc
    digest = hashlib.sha256(code + cc.encode() + " ".join(_CFLAGS).encode()).hexdigest()[:16]
    target = cache_dir / digest / "mdt-workload"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / "mdt-workload"
        proc = subprocess.run(
            ["gcc", *_CFLAGS, "-o", str(out), str(source)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            raise LabError(f"probe agent: gcc failed on {source}:\n{proc.stderr[-1500:]}")
        shutil.move(out, target)
    return target


def deploy_probe(
    agent: GuestAgent,
    binary: Path,
    options: Mapping[str, str],
    *,
    path: str = GUEST_PATH,
    timeout: float = 60.0,
) -> None:
    """Copy the probe into the guest and start it with ``options`` (``key=value`` arguments)."""
    data = binary.read_bytes()
    handle = agent.execute("guest-file-open", {"path": path, "mode": "w"}, timeout=timeout)
    try:
        for start in range(0, len(data), _CHUNK):
            chunk = base64.b64encode(data[start : start + _CHUNK]).decode()
            agent.execute("guest-file-write", {"handle": handle, "buf-b64": chunk}, timeout=timeout)
    finally:
        agent.execute("guest-file-close", {"handle": handle}, timeout=timeout)
    # A background setsid, not ``setsid -f`` (busybox's setsid has no -f): the shell exits at
    # once, the probe lives on in its own session, re-parented to init.
    argv = ["sh", "-c", 'chmod 755 "$1" && shift && { setsid "$@" </dev/null >/dev/null 2>&1 & }',
            "sh", path, path, *(f"{k}={v}" for k, v in options.items())]  # fmt: skip
    started = agent.execute(
        "guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": False}, timeout=timeout
    )
    pid = started.get("pid") if isinstance(started, dict) else None
    if not isinstance(pid, int):
        raise GuestError(f"{agent.name}: guest-exec of the probe returned {started!r}")
    _wait_exit(agent, pid, timeout)


def _wait_exit(agent: GuestAgent, pid: int, timeout: float) -> None:
    """The launcher (sh ... setsid -f) exits at once; its status says whether it could start."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = agent.execute("guest-exec-status", {"pid": pid}, timeout=timeout)
        if isinstance(status, dict) and status.get("exited"):
            code = status.get("exitcode", status.get("signal"))
            if code != 0:
                raise GuestError(f"{agent.name}: starting the probe agent failed (status {code})")
            return
        time.sleep(0.2)
    raise GuestError(f"{agent.name}: the probe's launcher did not exit within {timeout:g} s")
