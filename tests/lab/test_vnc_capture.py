"""The VNC capture path (the one dma-buf displays need) reads the same exact frames as screendump."""

from __future__ import annotations

import time
from io import BytesIO

from PIL import Image

from mdevtest.checks.vnc import vnc_capture_png
from mdevtest.testbed import Testbed
from mdevtest.workloads.synthetic import verify_frame


def test_vnc_and_screendump_both_read_exact_advancing_frames(lab: Testbed) -> None:
    pair = lab.inventory.pairs[0]
    machine = lab.start_source(pair)
    try:
        frames = []
        for capture in (vnc_capture_png, lambda m: m.screendump_png(), vnc_capture_png):
            with Image.open(BytesIO(capture(machine))) as img:
                frames.append(verify_frame(img.convert("RGB")))  # every pixel as expected
            time.sleep(0.5)
        assert frames == sorted(frames)
        assert frames[0] < frames[-1]
    finally:
        lab.release(machine)
