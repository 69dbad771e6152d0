"""Display capture and image comparison for the graphics check.

Capture methods (chosen by the vendor profile): ``qmp`` — QMP ``screendump`` to PNG on the host,
fetched over SFTP (emulated and region displays); ``vnc`` — a framebuffer read from QEMU's VNC
server (dma-buf displays through egl-headless, where ``screendump`` has no surface).
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image

from mdevtest.checks.vnc import vnc_capture_png
from mdevtest.errors import CheckFailed
from mdevtest.qemu.machine import RemoteMachine
from mdevtest.workloads.synthetic import render_expected_frame

#: Documented threshold of :func:`perceptual_similarity` for "the same scene" (see docs/checks.md).
SIMILARITY_THRESHOLD = 0.6


def capture(machine: RemoteMachine, how: str) -> bytes:
    """A PNG of ``machine``'s display by method ``how`` (``qmp`` or ``vnc``)."""
    if how == "qmp":
        return machine.screendump_png()
    if how == "vnc":
        return vnc_capture_png(machine)
    raise CheckFailed(f"unknown capture method {how!r}; known: qmp, vnc")


def diff_image(image: Image.Image, frame: int) -> bytes:
    """A PNG showing where ``image`` differs from the expected render of ``frame`` (red on grey)."""
    got = np.asarray(image.convert("RGB"), dtype=np.int16)
    want = np.asarray(
        render_expected_frame(frame, image.size[0], image.size[1]).convert("RGB"), dtype=np.int16
    )
    bad = np.any(got != want, axis=2)
    out = (np.asarray(image.convert("L"), dtype=np.uint8) // 3)[..., None].repeat(3, axis=2)
    out[bad] = (255, 0, 0)
    buf = BytesIO()
    Image.fromarray(out.astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def perceptual_similarity(a: Image.Image, b: Image.Image, size: tuple[int, int] = (64, 40)) -> float:
    """1.0 for the same scene, towards 0 for unrelated ones.

    Both images are reduced to ``size`` greyscale thumbnails (so small motion and rendering noise
    vanish), normalised to zero mean and unit variance, and compared by normalised cross-correlation,
    mapped to 0..1. Unrelated scenes score about 0.5, a black frame against a scene 0.5, the same
    scene a frame later typically > 0.9; the graphics check asks for >= 0.6.
    """
    x = np.asarray(a.convert("L").resize(size, Image.Resampling.BOX), dtype=np.float64).ravel()
    y = np.asarray(b.convert("L").resize(size, Image.Resampling.BOX), dtype=np.float64).ravel()
    x -= x.mean()
    y -= y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    if denom == 0.0:
        return 1.0 if float(np.abs(x - y).sum()) == 0.0 else 0.5
    return (float((x * y).sum()) / denom + 1.0) / 2.0
