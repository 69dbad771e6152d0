"""Downtime against the size of the device state saved at the switchover (issue 11, item 6).

A STOP_COPY-only device (Intel's xe-vfio-pci VFs, any device without pre-copy) sends all of its
state while the guest is stopped, so the downtime grows with the provisioned device memory. The
nested lab's mtty saves a few hundred bytes; this benchmark deploys mtty with
tests/data/mtty-stopcopy-pad.patch (module parameter ``stop_copy_pad_kib``: that many KiB of
padding after the state, sent as VFIO state during the downtime) on both hosts through
``mdevtest provision`` (recorded, verified by srcversion, rolled back at the end), boots one
guest and migrates it back and forth, one migration per size, the parameter set on both hosts
before each. Per migration: QEMU's downtime, ``vfio.transferred``, total time.

Usage (root; the nested lab is brought up if it is not, and taken down again then):
    .venv/bin/python benchmarks/state_sweep.py [--sizes-kib 0,1024,4096,16384] [--repeat 1] \\
        [--out reports/state-sweep]

Writes <out>/state-sweep.json, .csv and .png (downtime and VFIO bytes against the size) and
prints a table. Under TCG inside TCG the link is slow (a few MB/s), so the slope is that link's,
not a real lab's: run it on a real pair (--inventory) with a real STOP_COPY device's sizes for
those figures; the method is the same.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mdevtest.errors import MdevtestError, MigrationTimedOut
from mdevtest.inventory import load_inventory, load_provision_spec
from mdevtest.lab.nested import NestedLab
from mdevtest.lab.nested_image import build_mtty_module, build_nested_images
from mdevtest.migration import MigrationPolicy, Migrator
from mdevtest.premerge import mtty_module_spec
from mdevtest.provision import provision_hosts, rollback_hosts
from mdevtest.testbed import Testbed

REPO = Path(__file__).resolve().parents[1]
PATCH = REPO / "tests" / "data" / "mtty-stopcopy-pad.patch"
PARAM = "/sys/module/mtty/parameters/stop_copy_pad_kib"


def say(message: str) -> None:
    print(f"[state-sweep {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sweep(
    inventory_path: Path, sizes: list[int], repeat: int, policy: MigrationPolicy
) -> list[dict[str, Any]]:
    inventory = load_inventory(inventory_path)
    pair = inventory.pairs[0]
    hosts = [pair.source, pair.destination]
    lab = NestedLab(inventory)
    started = lab.up(say)
    rows: list[dict[str, Any]] = []
    try:
        images = build_nested_images(progress=say)
        module = build_mtty_module(images.host.chroot, images.host.mtty_source, PATCH, progress=say)
        with tempfile.TemporaryDirectory() as tmp:
            spec = load_provision_spec(mtty_module_spec(module, Path(tmp) / "pad.yaml"))
            provision_hosts(inventory, hosts, spec=spec, progress=say, run_id="state-sweep")
        try:
            rows = _migrate_each(inventory_path, sizes * repeat, policy)
        finally:
            rollback_hosts(inventory, hosts, progress=say, run_id="state-sweep")
    finally:
        if started:
            lab.down()
    return rows


def _migrate_each(
    inventory_path: Path, sizes: list[int], policy: MigrationPolicy
) -> list[dict[str, Any]]:
    inventory = load_inventory(inventory_path)
    rows: list[dict[str, Any]] = []
    with Testbed(inventory) as testbed:
        testbed.reap()
        route = inventory.pairs[0]
        say(f"booting the guest on {route.source}")
        current = testbed.start_source(route)
        try:
            for size in sizes:
                for host in (route.source, route.destination):
                    testbed.remote(host).check_shell(f"echo {size} > {PARAM}", timeout=30)
                destination = testbed.start_destination(route, current)
                migrator = Migrator(
                    current,
                    destination,
                    uri=testbed.migration_uri(route),
                    policy=policy,
                    keep_failed_destination=True,
                )
                row: dict[str, Any] = {"pad_kib": size, "pair": route.id}
                try:
                    result = migrator.run()
                except MigrationTimedOut as exc:  # the guest stays on the source
                    row |= {"status": "not converged", "error": str(exc)[:300]}
                    rows.append(row)
                    say(f"{size} KiB over {route.id}: did not converge: {exc}")
                    testbed.release(destination)
                    continue
                except MdevtestError as exc:
                    row |= {"status": "failed", "error": str(exc)[:300]}
                    rows.append(row)
                    say(f"{size} KiB over {route.id}: FAILED {exc}")
                    testbed.release(destination)
                    continue
                row |= {"status": result.status, **result.figures()}
                rows.append(row)
                say(
                    f"{size:>6} KiB over {route.id}: downtime {result.downtime_ms} ms, "
                    f"vfio {result.vfio_transferred_bytes} B, total {result.total_time_ms} ms"
                )
                testbed.release(current)
                current, route = destination, testbed.reverse(route)
        finally:
            testbed.release(current)
    return rows


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Two panels over the pad sizes: QEMU's downtime (ms) and vfio.transferred (MiB)."""
    done = [r for r in rows if r.get("status") == "completed"]
    width, height, margin = 900, 620, 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    sizes = sorted({r["pad_kib"] for r in done})
    panels = [
        ("downtime (ms, QEMU)", "downtime_ms", 1.0),
        ("vfio.transferred (MiB)", "vfio_transferred_bytes", 1 / 2**20),
    ]
    panel_h = (height - 2 * margin) // 2
    for index, (title, key, scale) in enumerate(panels):
        top = margin + index * panel_h
        bottom = top + panel_h - 40
        values = [(r["pad_kib"], (r[key] or 0) * scale) for r in done if r.get(key) is not None]
        top_value = max([v for _, v in values] + [1.0])
        draw.rectangle([margin, top, width - margin, bottom], outline="black")
        draw.text((margin, top - 16), f"{title}, max {top_value:.1f}", fill="black")

        def x_of(size: int) -> float:
            if len(sizes) == 1:
                return width / 2
            return margin + 20 + sizes.index(size) * (width - 2 * margin - 40) / (len(sizes) - 1)

        def y_of(value: float, top: int = top, bottom: int = bottom, peak: float = top_value) -> float:
            return bottom - 5 - value / peak * (bottom - top - 10)

        for size in sizes:
            draw.text((x_of(size) - 15, bottom + 4), f"{size} KiB", fill="black")
        for size, value in values:
            x, y = x_of(size), y_of(value)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill="navy")
    draw.text((margin, height - 24), "STOP_COPY padding of mtty (stop_copy_pad_kib)", fill="black")
    img.save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inventory", type=Path, default=REPO / "inventory" / "nested-mtty.yaml")
    parser.add_argument("--sizes-kib", default="0,1024,4096,16384")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "state-sweep")
    parser.add_argument(
        "--downtime-limit-ms",
        type=int,
        default=0,
        help="QEMU's downtime-limit for every migration (0: QEMU's default, 300 ms). QEMU counts "
        "the device's STOP_COPY size in what must fit into it: a state larger than the link "
        "carries within the limit never converges (recorded as such). A large limit makes QEMU "
        "switch over at once, RAM and all, which hides the device's share",
    )
    parser.add_argument(
        "--timeout-s", type=float, default=120.0, help="a migration not converged by then is "
        "cancelled and recorded as not converged (default %(default)s)",
    )  # fmt: skip
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_kib.split(",")]
    policy = MigrationPolicy(timeout_s=args.timeout_s, downtime_limit_ms=args.downtime_limit_ms or None)
    rows = sweep(args.inventory, sizes, args.repeat, policy)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "method": "one guest migrated back and forth over the inventory's first pair and its "
        "reverse; before each migration mtty's stop_copy_pad_kib is set on both hosts; figures "
        "are QEMU's query-migrate on the source (downtime, vfio.transferred, total-time)",
        "policy": policy.describe(),
        "sizes_kib": sizes,
        "migrations": rows,
    }
    (args.out / "state-sweep.json").write_text(json.dumps(doc, indent=2) + "\n")
    with (args.out / "state-sweep.csv").open("w", newline="") as fh:
        keys = ["pad_kib", "pair", "status", "downtime_ms", "vfio_transferred_bytes", "total_time_ms"]
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "state-sweep.png")
    print(f"{'pad KiB':>8} {'pair':<16} {'downtime ms':>12} {'vfio bytes':>12} {'total ms':>9}")
    for r in rows:
        print(
            f"{r['pad_kib']:>8} {r['pair']:<16} {r.get('downtime_ms')!s:>12} "
            f"{r.get('vfio_transferred_bytes')!s:>12} {r.get('total_time_ms')!s:>9}"
        )
    print(f"written: {args.out}/state-sweep.json, .csv, .png")


if __name__ == "__main__":
    main()
