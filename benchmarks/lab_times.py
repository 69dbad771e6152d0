"""Measure the local lab's basic figures: lab up (cold, warm), guest boot, one migration.

Usage (root, nothing else using the lab):  .venv/bin/python benchmarks/lab_times.py [--cold]
    [--inventory inventory/local-lab-desktop.yaml] [--workload glmark2]

--cold removes the guest image cache (/var/cache/mdevtest) and takes the lab down first, so "lab up"
includes downloading the kernel package and building the image (Debian packages stay installed).
All times are wall-clock seconds on the controller's monotonic clock; migration figures are QEMU's
own (query-migrate). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from pathlib import Path

from mdevtest.guest import Guest
from mdevtest.inventory import load_inventory
from mdevtest.lab.image import DEFAULT_CACHE_DIR
from mdevtest.lab.local import LocalLab
from mdevtest.migration import Migrator
from mdevtest.testbed import Testbed
from mdevtest.workloads.registry import get_workload
from mdevtest.workloads.sampling import Sampler, dip, switchover_window

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="drop the image cache and the lab first")
    parser.add_argument("--inventory", default=str(REPO / "inventory" / "local-lab.yaml"))
    parser.add_argument(
        "--workload", help="run this workload across the migration (e.g. glmark2 on the desktop)"
    )
    args = parser.parse_args()
    inventory = load_inventory(args.inventory)
    lab = LocalLab(inventory)
    figures: dict[str, object] = {"cold": args.cold}

    lab.down()
    if args.cold:
        shutil.rmtree(DEFAULT_CACHE_DIR, ignore_errors=True)
    t = time.monotonic()
    lab.up()
    figures["lab_up_from_down_s"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    lab.up()
    figures["lab_up_warm_s"] = round(time.monotonic() - t, 2)

    with Testbed(inventory) as testbed:
        pair = inventory.pairs[0]
        testbed.facts(pair.source)
        testbed.facts(pair.destination)
        t = time.monotonic()
        testbed.image_on(pair.source)
        testbed.image_on(pair.destination)
        figures["image_to_hosts_s"] = round(time.monotonic() - t, 2)
        figures["guest_image"] = testbed.image().description
        destination = None
        t = time.monotonic()
        source = testbed.start_source(pair)  # console marker, or the agent + the deployed probe
        figures["guest_start_to_ready_s"] = round(time.monotonic() - t, 2)
        try:
            guest = Guest(source, has_agent=testbed.image().agent)
            run = workload = None
            if args.workload:
                workload = get_workload(args.workload)
                run = workload.start(guest.executor())
            with contextlib.ExitStack() as stack:
                sampler = None
                if workload is not None and run is not None:
                    sampler = stack.enter_context(Sampler(workload, run, interval_s=1.0))
                    t = time.monotonic()
                    sampler.wait_readings(10, timeout=300)
                    figures["workload_start_to_steady_s"] = round(time.monotonic() - t, 2)
                destination = testbed.start_destination(pair, source)
                result = Migrator(source, destination, uri=testbed.migration_uri(pair)).run()
                figures["migration"] = {"pair": pair.id, **result.figures()}
                if result.completed:
                    guest.moved_to(destination)  # the agent follows it there
                if sampler is not None and workload is not None:
                    time.sleep(10)
                    window = switchover_window(result.events, destination.qmp.events)
                    if window is not None:
                        figures["dip"] = dip(sampler.samples, *window).figures()
            if workload is not None and run is not None:
                workload.stop(run)
        finally:
            testbed.release(source)
            if destination is not None:
                testbed.release(destination)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
