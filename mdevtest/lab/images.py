"""The guest images the embedded labs ship, by inventory kind (``guest.image.kind: lab-*``).

Each lab image knows how to build itself (cached) and what it is (:class:`BootImage`), and says
at collection time, without building anything, which workloads it certainly carries
(``workloads``; None: ask the running guest). Nothing outside this module tests lab kind strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from mdevtest.guest.image import BootImage
from mdevtest.inventory import LabImage

__all__ = ["LAB_IMAGES", "LabImageKind", "lab_image"]

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    """Default progress sink."""


@dataclass(frozen=True)
class LabImageKind:
    kind: str
    summary: str
    workloads: frozenset[str] | None
    """The workloads it carries for sure; None: present() asks the guest."""
    build: Callable[[LabImage, Progress], BootImage]
    lacks: Mapping[str, str] = field(default_factory=dict)
    """Why a workload it does not carry cannot exist in it (the skip reason)."""
    lab: Literal["local", "nested"] = "local"
    """The lab whose hosts boot it (``lab up`` of that flavour builds it)."""

    def why_not(self, workload: str) -> str | None:
        """None when the image carries ``workload``; else why not, for the skip."""
        if self.workloads is None or workload in self.workloads:
            return None
        return self.lacks.get(workload, f"workload {workload} is not in the guest image ({self.kind})")


def _synthetic(_spec: LabImage, progress: Progress) -> BootImage:
    from mdevtest.lab.image import DEFAULT_CACHE_DIR, build_guest_image

    built = build_guest_image(DEFAULT_CACHE_DIR, progress=progress)
    return BootImage(
        digest=built.digest,
        description=f"mdevtest synthetic image {built.digest} (kernel {built.kernel_version})",
        kernel=built.kernel,
        initrd=built.initrd,
        append=built.append,
        probe="builtin",
        workload="synthetic",
    )


def _mtty(_spec: LabImage, progress: Progress) -> BootImage:
    from mdevtest.lab.nested_image import build_nested_images

    guest = build_nested_images(progress=progress).guest
    return BootImage(
        digest=guest.digest,
        description=f"mdevtest nested-lab mtty guest {guest.digest} (kernel {guest.kernel_version})",
        kernel=guest.kernel,
        initrd=guest.initrd,
        append=guest.append,
        workload="mtty",
    )


def _mtty_uefi(_spec: LabImage, progress: Progress) -> BootImage:
    from mdevtest.lab.mtty_disk import build_mtty_disk

    built = build_mtty_disk(progress=progress)
    return BootImage(
        digest=built.digest,
        description=f"{built.description}, uefi boot",
        disk=built.disk,
        disk_format="qcow2",
        disk_sha256=built.disk_sha256,
        firmware="uefi",
        agent=True,
        probe="deploy",
        workload="mtty",
        ready_marker=None,
        # The mtty workload keeps the console heartbeat (one MDT-HB stream per console). Under
        # TCG inside TCG the guest's one vCPU is saturated (the mtty loopback's and the console's
        # UART interrupts): the nice-19 RAM writer and DMA reader never ran and VERIFY-RAM said
        # writer-not-responding (seen 2026-12-04). Here they run at nice 0, at a tenth of the
        # rates, which still exercises every ledger. Right after the switchover the L2 guest
        # can be descheduled for seconds (a writer at nice 0 still missed the 5 s pause once,
        # 2026-12-05): a check waits up to 30 s for it.
        # Commands wait 90 s for the probe's reply (VERIFY-RAM alone may wait 30 s for the writer;
        # a STATE reply after the switchover took more than 20 s once, 2026-12-05).
        control_timeout_s=90.0,
        probe_defaults={
            "pause_ms": "30000",
            "hb_ms": "0",
            "bg_nice": "0",
            "fps": "1",
            "udp_us": "20000",
            "dirty_pps": "256",
            "dma_rps": "50",
        },
    )


def _desktop(spec: LabImage, progress: Progress) -> BootImage:
    from mdevtest.lab.desktop_image import build_desktop_image

    built = build_desktop_image(progress=progress)
    firmware = spec.firmware or "uefi"
    direct = firmware == "bios"  # SeaBIOS has no loader on this disk: boot its kernel directly
    return BootImage(
        digest=built.digest,
        description=f"{built.description}, {firmware} boot",
        kernel=built.kernel if direct else None,
        initrd=built.initrd if direct else None,
        append=built.append if direct else "",
        disk=built.disk,
        disk_format="qcow2",
        disk_sha256=built.disk_sha256,
        firmware=firmware,
        agent=True,
        probe="deploy",
        ready_marker=None,
        software_rendering=True,
    )


_NO_VIDEO_HARDWARE = (
    "needs a GPU's video engine ({api}); the lab's desktop image decodes and renders in software "
    "(its software-codec twins run instead)"
)
_DESKTOP_LACKS: dict[str, str] = {
    "heaven": "Unigine Heaven's licence does not allow mdevtest to put it in an image; unpack "
    "Unigine_Heaven-4.0.run into /opt of your own image (docs/workloads.md)",
    "3dmark06": "3DMark06 needs a Windows guest with qemu-guest-agent (docs/workloads.md)",
    "ffmpeg-vaapi-decode": _NO_VIDEO_HARDWARE.format(api="VA-API"),
    "ffmpeg-vaapi-encode": _NO_VIDEO_HARDWARE.format(api="VA-API"),
    "gst-vaapi-decode": _NO_VIDEO_HARDWARE.format(api="VA-API"),
    "gst-qsv-decode": _NO_VIDEO_HARDWARE.format(api="Intel QSV"),
    "synthetic": "the synthetic workload is the lab-synthetic image's own (read from its console); "
    "here its program runs as the probe agent behind the checks",
}

LAB_IMAGES: dict[str, LabImageKind] = {
    "lab-synthetic": LabImageKind(
        "lab-synthetic",
        "kernel + busybox initramfs with the synthetic GPU workload (built by the local lab)",
        frozenset({"synthetic"}),
        _synthetic,
    ),
    "lab-mtty": LabImageKind(
        "lab-mtty",
        "the nested lab's L2 guest with the mtty workload (built by the nested lab)",
        frozenset({"mtty"}),
        _mtty,
        lab="nested",
    ),
    "lab-mtty-uefi": LabImageKind(
        "lab-mtty-uefi",
        "the nested lab's L2 guest as a UEFI disk (systemd-boot, OVMF) with qemu-guest-agent; "
        "the mtty workload runs, the probe agent is deployed at boot",
        frozenset({"mtty"}),
        _mtty_uefi,
        lab="nested",
    ),
    "lab-desktop": LabImageKind(
        "lab-desktop",
        "Debian disk image: X (Xvfb), Mesa llvmpipe, glmark2, x11perf, ffmpeg, GStreamer, "
        "qemu-guest-agent; the probe agent is deployed at boot",
        frozenset({"glmark2", "x11perf", "ffmpeg-sw-decode", "ffmpeg-sw-encode", "gst-sw-decode"}),
        _desktop,
        _DESKTOP_LACKS,
    ),
}


def lab_image(kind: str) -> LabImageKind:
    return LAB_IMAGES[kind]
