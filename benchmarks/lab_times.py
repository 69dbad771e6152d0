"""Measure the local lab's basic figures: lab up (cold, warm), guest boot, one migration.

Usage (root, nothing else using the lab):  .venv/bin/python benchmarks/lab_times.py [--cold]

--cold removes the guest image cache (/var/cache/mdevtest) and takes the lab down first, so "lab up"
includes downloading the kernel package and building the image (Debian packages stay installed).
All times are wall-clock seconds on the controller's monotonic clock; migration figures are QEMU's
own (query-migrate). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from mdevtest.inventory import load_inventory
from mdevtest.lab.image import DEFAULT_CACHE_DIR
from mdevtest.lab.local import LocalLab
from mdevtest.migration import Migrator
from mdevtest.testbed import Testbed, wait_ready

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="drop the image cache and the lab first")
    parser.add_argument("--inventory", default=str(REPO / "inventory" / "local-lab.yaml"))
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
        testbed.image_on(pair.source)
        testbed.image_on(pair.destination)
        spec = testbed.machine_spec(pair.source, name="bench")
        from mdevtest.qemu.machine import RemoteMachine

        source = RemoteMachine(testbed.remote(pair.source), spec, run_id=testbed.run_id)
        destination = None
        try:
            source.start()
            figures["guest_boot_to_ready_s"] = round(wait_ready(source, timeout=300), 2)
            destination = testbed.start_destination(pair, source)
            result = Migrator(source, destination, uri=testbed.migration_uri(pair)).run()
            figures["migration"] = {"pair": pair.id, **result.figures()}
        finally:
            testbed.release(source)
            if destination is not None:
                testbed.release(destination)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
