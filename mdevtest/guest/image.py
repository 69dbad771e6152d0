"""What a guest boots, resolved on the controller: :class:`BootImage`.

The inventory says *which* image (``guest.image``: a lab's own, a kernel + initrd, a disk); a
:class:`BootImage` says what it *is*, so the rest of the framework asks the image instead of
testing kind strings: how it boots (``kernel``/``initrd``, ``disk`` through ``firmware``), how
readiness is seen (a console marker, or qemu-guest-agent), whether it has the agent, whether the
probe agent (``mdt-workload``) is built in, deployed at boot, or absent, and which workload it
runs by itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["BootImage", "ProbeMode", "sha256_file"]


def sha256_file(path: Path) -> str:
    """The sha256 of a (large) file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: ``builtin``: the image starts the probe itself (its console says ``MDT-READY``); ``deploy``:
#: the framework copies it in through qemu-guest-agent and starts it; ``none``: no probe.
ProbeMode = Literal["builtin", "deploy", "none"]


@dataclass(frozen=True)
class BootImage:
    """A guest image's files on the controller and what the guest can do."""

    digest: str
    description: str
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    disk: Path | None = None
    disk_format: Literal["qcow2", "raw"] = "qcow2"
    disk_sha256: str | None = None
    firmware: Literal["bios", "uefi"] = "bios"
    cloud_init: Path | None = None
    agent: bool = False
    probe: ProbeMode = "none"
    workload: str | None = None
    """The workload the image runs by itself (``synthetic``, ``mtty``), for the summary."""
    ready_marker: str | None = "MDT-READY"
    """The console line that means booted; None: the agent's ``guest-ping`` does."""
    probe_defaults: Mapping[str, str] = field(default_factory=dict)
    """Options a deployed probe gets in this image unless the test gives its own (e.g.
    ``hb_ms=0`` where the image's own workload prints the console heartbeat)."""
    control_timeout_s: float = 20.0
    """How long a check waits for the probe's reply to one command (``STATE``, ``VERIFY-*``):
    longer in images that run very slowly (the nested lab's L2 guests under TCG inside TCG)."""
    software_rendering: bool = False
    """The image renders OpenGL in software (Mesa llvmpipe) by design: the lab's desktop image,
    whose X server is Xvfb. A workload reporting llvmpipe fails elsewhere (a GPU was expected)."""

    @property
    def boots(self) -> str:
        """How it boots, for reports: ``kernel``, ``uefi disk``, ``bios disk``, ``kernel+disk``."""
        if self.kernel is not None:
            return "kernel+disk" if self.disk is not None else "kernel"
        return f"{self.firmware} disk"
