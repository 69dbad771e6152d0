"""The guest images the embedded labs ship, by inventory kind (``guest.image.kind: lab-*``).

Each lab image knows how to build itself (cached) and what it is (:class:`BootImage`), and says
at collection time, without building anything, which workloads it certainly carries
(``workloads``; None: ask the running guest). Nothing outside this module tests lab kind strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    ),
    "lab-desktop": LabImageKind(
        "lab-desktop",
        "Debian disk image: X (Xvfb), Mesa llvmpipe, glmark2, x11perf, ffmpeg, GStreamer, "
        "qemu-guest-agent; the probe agent is deployed at boot",
        None,
        _desktop,
    ),
}


def lab_image(kind: str) -> LabImageKind:
    return LAB_IMAGES[kind]
