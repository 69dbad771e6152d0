"""Sampler.wait_readings: a migration under load starts only once the workload reports steadily."""

from __future__ import annotations

import time
from typing import Any

import pytest

from mdevtest.lab.images import lab_image
from mdevtest.workloads.base import Sample, WorkloadError, WorkloadRun
from mdevtest.workloads.glmark2 import Glmark2Workload
from mdevtest.workloads.guestexec import ConsoleGuestExec
from mdevtest.workloads.registry import get_workload
from mdevtest.workloads.sampling import Sampler


class Scripted(Glmark2Workload):
    """Readings from a script: None (starting up, no reading yet) or a number."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__(get_workload("glmark2").definition)
        self.script = script
        self.calls = 0

    def sample(self, run: WorkloadRun) -> Sample:
        item = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return Sample(t=time.monotonic(), value=item, unit=self.unit)


def run_of(wl: Scripted) -> WorkloadRun:
    return WorkloadRun(wl, ConsoleGuestExec(str), None)


def test_waits_through_start_up_until_enough_readings() -> None:
    wl = Scripted([None, None, None, 10.0, 11.0, 12.0])
    with Sampler(wl, run_of(wl), interval_s=0.02) as sampler:
        sampler.wait_readings(3, timeout=5)
        assert sum(1 for s in sampler.samples if s.value is not None) >= 3
        assert sampler.samples[0].value is None  # the start-up is kept, as a gap


def test_a_workload_that_never_reports_fails_naming_it() -> None:
    wl = Scripted([None])
    with (
        Sampler(wl, run_of(wl), interval_s=0.02) as sampler,
        pytest.raises(WorkloadError, match=r"glmark2: fewer than 2 throughput readings within 0.3 s"),
    ):
        sampler.wait_readings(2, timeout=0.3)


def test_the_desktop_image_says_why_hardware_workloads_cannot_run_in_it() -> None:
    desktop = lab_image("lab-desktop")
    assert desktop.why_not("glmark2") is None
    assert desktop.why_not("gst-sw-decode") is None
    assert "VA-API" in (desktop.why_not("ffmpeg-vaapi-decode") or "")
    assert "licence" in (desktop.why_not("heaven") or "")
    assert "Windows" in (desktop.why_not("3dmark06") or "")
    assert lab_image("lab-synthetic").why_not("glmark2") == (
        "workload glmark2 is not in the guest image (lab-synthetic)"
    )
