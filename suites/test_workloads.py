"""Migration under load: each workload runs in the guest across the migration, sampled every second.

One test per workload and pair (``test_migrate_under_load[host-a->host-b-GVTg_V5_4-glmark2]``).
The guest is reached through qemu-guest-agent when its image has one (the desktop image, real
labs' images), else through its console (the lab's initramfs guest runs only ``synthetic``). A
workload the guest does not have is skipped with the reason; one that is present is started,
sampled through the migration, stopped and parsed. The report gets its results, the samples and
the throughput dip at the switchover (STOP..RESUME). A workload that renders with a software
renderer (llvmpipe) fails unless the lab's image renders in software by design.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import allure
import pytest

from mdevtest.guest import Guest
from mdevtest.migration_run import MigrationOutcome
from mdevtest.report.attach import attach_json, attach_png
from mdevtest.report.plot import throughput_png
from mdevtest.testbed import Testbed
from mdevtest.workloads.glmark2 import renderer_problem
from mdevtest.workloads.registry import get_workload, known_workloads
from mdevtest.workloads.sampling import Sampler, dip, switchover_window

#: Readings before the migration starts: the dip's baseline is the median of the 10 s before.
STEADY_READINGS = 10
#: How long a workload may take to start reporting (a TCG guest compiles llvmpipe's shaders).
STARTUP_TIMEOUT_S = 240.0
#: Sampling after the migration, for the recovery figures.
AFTER_S = 10.0

WORKLOADS = [
    pytest.param(name, marks=pytest.mark.workload(name), id=name) for name in sorted(known_workloads())
]


@allure.feature("workloads")
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_migrate_under_load(
    workload_name: str, guest: Guest, lab: Testbed, migrate: Callable[..., MigrationOutcome]
) -> None:
    workload = get_workload(workload_name)
    executor = guest.executor()
    why = workload.present(executor)
    if why is not None:
        pytest.skip(f"{workload_name}: {why}")
    run = workload.start(executor)
    try:
        with Sampler(workload, run, interval_s=1.0) as sampler:
            with allure.step(f"wait until {workload_name} reports steadily"):
                if workload.progress_readings:
                    sampler.wait_readings(STEADY_READINGS, timeout=STARTUP_TIMEOUT_S)
                else:  # a benchmark that prints nothing until it ends: sampled as alive only
                    time.sleep(STEADY_READINGS)
            outcome = migrate(guest)
            time.sleep(AFTER_S)  # the recovery after the switchover, sampled
    finally:
        workload.stop(run)
    assert outcome.result is not None
    # the source's events of the migration (its QEMU is stopped by now) and the destination's
    window = switchover_window(outcome.result.events, outcome.destination.qmp.events)
    result = workload.result(run)
    samples = sampler.samples
    figures = {
        "result": result.figures(),
        "samples": [s.to_json() for s in samples],
        "switchover": list(window) if window is not None else None,
    }
    if window is not None:
        figures["dip"] = dip(samples, *window).figures()
    outcome.workload_run = figures  # into summary.json
    attach_json(f"workload {workload_name}", figures)
    attach_png(
        f"throughput {workload_name}",
        throughput_png(
            [(s.t, s.value) for s in samples],
            switchover=window,
            unit=workload.unit,
            title=f"{workload_name} across {outcome.pair.id}",
        ),
    )
    renderer = renderer_problem(result, expect_software=lab.image().software_rendering)
    if workload_name == "glmark2" and renderer is not None:
        pytest.fail(f"glmark2: {renderer}", pytrace=False)
    assert outcome.result.completed, f"migration status {outcome.result.status}"
    if workload.progress_readings:
        assert [s for s in samples if s.value is not None], f"{workload_name}: no progress sampled"
    else:
        assert samples, f"{workload_name}: not sampled"
        assert samples[-1].alive, f"{workload_name}: not running after the migration"
    outcome.raise_for_checks()
