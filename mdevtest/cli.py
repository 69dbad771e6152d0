"""The ``mdevtest`` command.

    mdevtest inventory check PATH      validate an inventory and print the lab it describes
    mdevtest lab up|down|status|reap   manage the embedded local lab (root)

Exit codes: 0 success; 1 the lab is not up (``lab status``); 2 bad command line; 3 bad inventory;
4 the lab or a host failed; 130 interrupted. Errors are one short message, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from mdevtest.errors import InventoryError, MdevtestError

DEFAULT_INVENTORY = "inventory/local-lab.yaml"

EXIT_OK = 0
EXIT_NOT_UP = 1
EXIT_USAGE = 2
EXIT_INVENTORY = 3
EXIT_LAB = 4
EXIT_INTERRUPTED = 130


def _progress(message: str) -> None:
    print(f"[mdevtest] {message}", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdevtest", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    inv = sub.add_parser("inventory", help="inventory files")
    inv_sub = inv.add_subparsers(dest="action", required=True)
    check = inv_sub.add_parser("check", help="validate an inventory and print the lab")
    check.add_argument("path", metavar="PATH")

    lab = sub.add_parser("lab", help="the embedded local lab (needs root)")
    lab.add_argument("action", choices=["up", "down", "status", "reap"])
    lab.add_argument("--inventory", default=DEFAULT_INVENTORY, metavar="PATH",
                     help=f"local-lab inventory (default: {DEFAULT_INVENTORY})")  # fmt: skip
    lab.add_argument("--no-image", action="store_true", help="lab up: skip the guest image build")
    return parser


def _inventory_check(path: str) -> int:
    from mdevtest.inventory import describe, load_inventory

    inventory = load_inventory(path)
    print(describe(inventory))
    return EXIT_OK


def _lab(action: str, inventory_path: str, *, no_image: bool) -> int:
    from mdevtest.inventory import load_inventory
    from mdevtest.lab.local import LocalLab

    inventory = load_inventory(inventory_path)
    lab = LocalLab(inventory)
    if action == "status":
        status = lab.status()
        print(status.render())
        return EXIT_OK if status.up else EXIT_NOT_UP
    if action == "up":
        started = time.monotonic()
        lab.up(_progress, build_image=not no_image)
        _progress(f"lab up in {time.monotonic() - started:.1f} s")
        print(lab.status().render())
        return EXIT_OK
    if action == "down":
        lab.down(_progress)
        return EXIT_OK
    # reap: machines left by crashed runs, over SSH, without touching the lab itself
    from mdevtest.testbed import Testbed

    with Testbed(inventory, run_id="reaper") as testbed:
        for host, tags in testbed.reap().items():
            print(f"{host}: reaped {len(tags)} machine(s){': ' + ' '.join(tags) if tags else ''}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "inventory":
            return _inventory_check(args.path)
        return _lab(args.action, args.inventory, no_image=args.no_image)
    except InventoryError as exc:
        print(f"mdevtest: {exc}", file=sys.stderr)
        return EXIT_INVENTORY
    except MdevtestError as exc:
        print(f"mdevtest: {exc}", file=sys.stderr)
        return EXIT_LAB
    except KeyboardInterrupt:
        print("mdevtest: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
