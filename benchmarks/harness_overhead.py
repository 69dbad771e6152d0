"""Harness overhead per migration: mdevtest's path against a minimal hand-written qemu.qmp script.

Usage (root, local lab up or not; nothing else using the lab):
    .venv/bin/python benchmarks/harness_overhead.py [--runs 5]

Both do the same migration on the same lab (host-a -> host-b, same guest image, same QEMU command
line): start the destination with -incoming defer, migrate, wait for completion, stop the source.
* minimal: QEMUs started with `ip netns exec`, qemu.qmp connected straight to the QMP sockets (the
  namespaces share the filesystem), `migrate-incoming` + `migrate`, poll `query-migrate`, `quit`.
* mdevtest: Testbed.start_destination + Migrator.run + source shutdown, over SSH (the vGPU
  allocation, capability/parameter resets, the socket bridge and timeline included; checks not).
Times are wall-clock seconds on the controller's monotonic clock, from "source guest ready" to
"source stopped"; the guest boot is outside both. Prints one JSON document with medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import time
from pathlib import Path

from qemu.qmp import QMPClient

from mdevtest.inventory import load_inventory
from mdevtest.lab.local import LocalLab
from mdevtest.migration import Migrator
from mdevtest.qemu.cmdline import MachinePaths, build_argv
from mdevtest.testbed import Testbed

REPO = Path(__file__).resolve().parents[1]


def _netns_start(netns: str, argv: list[str], root: str) -> None:
    Path(root).mkdir(parents=True, exist_ok=True)
    quiet = subprocess.DEVNULL
    argv = ["ip", "netns", "exec", netns, "setsid", "-f", *argv]
    subprocess.run(argv, check=True, timeout=30, stdin=quiet, stdout=quiet, stderr=quiet)


def _wait_for(path: Path, marker: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and marker in path.read_text(errors="replace")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker} not in {path} within {timeout:g} s")
        time.sleep(0.2)


async def _minimal_migration(src_qmp: str, dst_qmp: str, uri: str) -> None:
    src, dst = QMPClient("src"), QMPClient("dst")
    for client, path in ((src, src_qmp), (dst, dst_qmp)):
        for _ in range(100):
            try:
                await client.connect(path)
                break
            except Exception:  # the socket is not there yet
                await asyncio.sleep(0.05)
    await dst.execute("migrate-incoming", {"uri": uri})
    await src.execute("migrate", {"uri": uri})
    while (status := (await src.execute("query-migrate"))["status"]) not in (  # type: ignore[index]
        "completed",
        "failed",
        "cancelled",
    ):
        await asyncio.sleep(0.05)
    if status != "completed":
        raise RuntimeError(f"the minimal migration ended {status}: its time would not compare")
    for client in (src, dst):
        await client.execute("quit")
        with contextlib.suppress(EOFError, ConnectionError):  # QEMU closes the monitor as it quits
            await client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    inventory = load_inventory(REPO / "inventory" / "local-lab.yaml")
    LocalLab(inventory).up()
    pair = inventory.pairs[0]
    minimal: list[float] = []
    harness: list[float] = []
    with Testbed(inventory) as lab:
        for i in range(args.runs):
            # mdevtest's path
            source = lab.start_source(pair)
            t = time.monotonic()
            destination = lab.start_destination(pair, source)
            try:
                Migrator(source, destination, uri=lab.migration_uri(pair)).run()
                source.shutdown()
                harness.append(time.monotonic() - t)
            finally:
                lab.release(source)
                lab.release(destination)
            # the minimal path: same image, same command line, no SSH
            spec = lab.machine_spec(pair.source, name=f"min{i}")
            qemu = inventory.host(pair.source).qemu_binary
            src = MachinePaths(f"{inventory.host(pair.source).state_dir}/vms/mdevtest-bench-min{i}")
            dst = MachinePaths(
                f"{inventory.host(pair.destination).state_dir}/vms/mdevtest-bench-min{i}-in"
            )
            _netns_start(
                f"mdt-{pair.source}", build_argv(qemu, spec, src, f"mdevtest-bench-min{i}"), src.root
            )
            _wait_for(Path(src.serial_log), "MDT-READY", timeout=300)
            t = time.monotonic()
            dst_argv = build_argv(qemu, spec.as_destination(), dst, f"mdevtest-bench-min{i}-in")
            _netns_start(f"mdt-{pair.destination}", dst_argv, dst.root)
            asyncio.run(_minimal_migration(src.qmp, dst.qmp, lab.migration_uri(pair)))
            minimal.append(time.monotonic() - t)
            subprocess.run(["rm", "-rf", src.root, dst.root], check=False, timeout=30)
    m_h, m_m = statistics.median(harness), statistics.median(minimal)
    print(json.dumps({
        "runs": args.runs,
        "mdevtest_s": [round(x, 3) for x in harness],
        "minimal_qemu_qmp_s": [round(x, 3) for x in minimal],
        "median_mdevtest_s": round(m_h, 3),
        "median_minimal_s": round(m_m, 3),
        "overhead_ratio": round(m_h / m_m, 2),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
