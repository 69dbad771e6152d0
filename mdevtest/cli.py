"""The ``mdevtest`` command.

    mdevtest inventory check PATH      validate an inventory and print the lab it describes
    mdevtest lab up|down|status|reap   manage an embedded lab (root): --flavor netns|nested
    mdevtest report                    make the HTML report from Allure results (Allure 2, npm)
    mdevtest workloads                 list the known workloads: name, kind, driver, description
    mdevtest provision --inventory PATH [--rollback|--status]
                                       put the inventory's build on its hosts, boot, verify;
                                       or roll it back, or show what each host carries
    mdevtest premerge --patch PATCH    judge an mtty driver change on the nested lab (root)
    mdevtest schema summary|inventory  print the JSON Schema of summary.json or of an inventory
    mdevtest export --format csv|influx SUMMARY   one line per migration, for a dashboard
    mdevtest --version                 the version, and the commit when run from a checkout

Exit codes: 0 success; 1 the lab is not up (``lab status``); 2 bad command line (``report``: no
results to report on; ``export``: the summary is missing or invalid); 3 bad inventory; 4 the lab
or a host failed (``report``: node, npm, java or the generator failed); 5 the driver change failed
the suite or regressed against the baseline (``premerge``); 130 interrupted. Errors are one short
message, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from mdevtest.errors import InventoryError, MdevtestError

DEFAULT_INVENTORY = "inventory/local-lab.yaml"
#: The inventory each lab flavour uses unless --inventory names another.
FLAVOR_INVENTORIES = {"netns": DEFAULT_INVENTORY, "nested": "inventory/nested-mtty.yaml"}
DEFAULT_RESULTS = "reports/allure-results"
DEFAULT_REPORT = "reports/allure-report"

EXIT_OK = 0
EXIT_NOT_UP = 1
EXIT_USAGE = 2
EXIT_INVENTORY = 3
EXIT_REJECTED = 5
EXIT_LAB = 4
EXIT_INTERRUPTED = 130


_STARTED = time.monotonic()


def _progress(message: str) -> None:
    """One progress line with the time since the command started (``[mdevtest   41.7s] ...``),
    as the plugin's progress lines have it."""
    from mdevtest.report.terminal import progress_line

    print(progress_line(message, time.monotonic() - _STARTED), flush=True)


class _VersionAction(argparse.Action):
    """``--version``: like argparse's own, but asks git only when the option is given."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from mdevtest.version import version_string

        print(version_string())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdevtest", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print mdevtest's version and source commit (with 'dirty' if changed), then exit",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    inv = sub.add_parser("inventory", help="inventory files")
    inv_sub = inv.add_subparsers(dest="action", required=True)
    check = inv_sub.add_parser("check", help="validate an inventory and print the lab")
    check.add_argument("path", metavar="PATH")

    lab = sub.add_parser("lab", help="the embedded labs (need root)")
    lab.add_argument("action", choices=["up", "down", "status", "reap"])
    lab.add_argument("--flavor", choices=sorted(FLAVOR_INVENTORIES), default=None,
                     help="netns (hosts as network namespaces, simulated vGPU) or nested (hosts "
                     "as VMs with a real mtty mdev); picks its inventory "
                     f"({', '.join(f'{k}: {v}' for k, v in FLAVOR_INVENTORIES.items())}); "
                     "`lab status` without --flavor or --inventory shows both")  # fmt: skip
    lab.add_argument("--inventory", default=None, metavar="PATH",
                     help="the lab's inventory (default: the --flavor's)")  # fmt: skip
    lab.add_argument("--no-image", action="store_true", help="lab up: skip the guest image build")

    pre = sub.add_parser("premerge", help="judge an mtty driver change on the nested lab (root)")
    change = pre.add_mutually_exclusive_group(required=True)
    change.add_argument("--patch", metavar="PATCH",
                        help="a patch to samples/vfio-mdev/mtty.c (-p1, git's a/ b/ paths)")  # fmt: skip
    change.add_argument("--module", metavar="KO", help="an mtty.ko built for the hosts' kernel")
    change.add_argument("--deploy", metavar="SPEC",
                        help="a build (provision spec) to judge on any --inventory: baseline, "
                        "provision, suite, gate, rollback")  # fmt: skip
    pre.add_argument("--inventory", default=FLAVOR_INVENTORIES["nested"], metavar="PATH",
                     help=f"the nested lab (default: {FLAVOR_INVENTORIES['nested']})")  # fmt: skip
    pre.add_argument("--baseline", metavar="SUMMARY", default=None,
                     help="summary.json of a run with the unchanged driver (default: run the "
                     "suite with the image's own mtty.ko first)")  # fmt: skip
    pre.add_argument("--suite", default="suites/test_migration_basic.py", metavar="PATH",
                     help="what to run (default: suites/test_migration_basic.py)")  # fmt: skip
    pre.add_argument("--report-dir", default="reports/premerge", metavar="DIR",
                     help="baseline/ and patched/ go here (default: reports/premerge)")  # fmt: skip
    pre.add_argument(
        "--pairs",
        default="",
        metavar="IDS",
        help="only these pair ids, e.g. 'host-a->host-b' (default: all)",
    )
    pre.add_argument("--tolerance", default=None, metavar="SPEC",
                     help="the baseline gate's slack, e.g. relative=1.0,absolute_ms=10000 "
                     "(default: generous, for TCG timings)")  # fmt: skip
    pre.add_argument("--keep-lab", action="store_true", help="leave the nested lab up at the end")

    prov = sub.add_parser("provision", help="deploy a build to the hosts, boot and verify it; "
                          "--rollback undoes it")  # fmt: skip
    prov.add_argument("--inventory", required=True, metavar="PATH", help="the lab")
    prov.add_argument("--spec", default=None, metavar="FILE",
                      help="the build (a provision: mapping), instead of the inventory's")  # fmt: skip
    prov.add_argument("--hosts", default="", metavar="NAMES",
                      help="only these hosts, comma-separated (default: every host)")  # fmt: skip
    prov.add_argument("--pairs", default="", metavar="IDS",
                      help="only the hosts of these pair ids, e.g. 'host-a->host-b'")  # fmt: skip
    what = prov.add_mutually_exclusive_group()
    what.add_argument("--rollback", action="store_true",
                      help="undo the build each host records (kernel, files, packages)")  # fmt: skip
    what.add_argument("--status", action="store_true", help="show each host's build record")
    prov.add_argument("--no-rollback", action="store_true",
                      help="on failure, leave the hosts as they are (to inspect them)")  # fmt: skip

    sub.add_parser("workloads", help="list the known workloads (workloads/*.yaml)")

    schema = sub.add_parser("schema", help="print the JSON Schema of summary.json or of an inventory")
    schema.add_argument("which", choices=sorted(SCHEMAS), help="summary: a summary.json; "
                        "inventory: an inventory file (its YAML's structure)")  # fmt: skip

    export = sub.add_parser("export", help="summary.json as one line per migration (CSV, InfluxDB)")
    export.add_argument("--format", choices=["csv", "influx"], required=True,
                        help="csv: a header, then a row per migration; influx: InfluxDB line "
                        "protocol, measurement mdevtest_migration")  # fmt: skip
    export.add_argument("summary", metavar="SUMMARY", help="a summary.json")

    rep = sub.add_parser("report", help="make the HTML report from Allure results (Allure 2, npm)")
    rep.add_argument(
        "--results",
        default=DEFAULT_RESULTS,
        metavar="DIR",
        help=f"Allure results (default: {DEFAULT_RESULTS})",
    )
    rep.add_argument(
        "--out",
        default=DEFAULT_REPORT,
        metavar="DIR",
        help=f"the HTML report, replaced (default: {DEFAULT_REPORT})",
    )
    rep.add_argument(
        "--history",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="carry the trends over from the previous report (default: on)",
    )
    rep.add_argument(
        "--history-from",
        metavar="DIR",
        default=None,
        help="the previous report, if not --out (e.g. last night's, downloaded)",
    )
    rep.add_argument(
        "--cache",
        metavar="DIR",
        default=None,
        help="where the generator is installed (default: /var/cache/mdevtest/npm)",
    )
    return parser


def _inventory_check(path: str) -> int:
    from mdevtest.inventory import describe, load_inventory

    inventory = load_inventory(path)
    print(describe(inventory))
    return EXIT_OK


def _lab(action: str, inventory_path: str | None, flavor: str | None, *, no_image: bool) -> int:
    from pathlib import Path

    from mdevtest.errors import LabError
    from mdevtest.inventory import load_inventory
    from mdevtest.lab import make_lab

    if action == "status" and inventory_path is None and flavor is None:
        return _status_all()
    path = inventory_path or FLAVOR_INVENTORIES[flavor or "netns"]
    inventory = load_inventory(path)
    if inventory.local_lab is not None and flavor and inventory.local_lab.flavor != flavor:
        raise LabError(
            f"{Path(path)} describes a {inventory.local_lab.flavor} lab, not --flavor {flavor}; "
            "drop one of --flavor and --inventory"
        )
    lab = make_lab(inventory)
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


def _status_all() -> int:
    """``lab status`` of every flavour whose default inventory exists; 0 if any lab is up."""
    from pathlib import Path

    from mdevtest.inventory import load_inventory
    from mdevtest.lab import make_lab

    any_up = False
    for flavor, path in FLAVOR_INVENTORIES.items():
        if not Path(path).exists():
            print(f"{flavor} lab: no inventory at {path}")
            continue
        status = make_lab(load_inventory(path)).status()
        print(status.render())
        any_up = any_up or status.up
    return EXIT_OK if any_up else EXIT_NOT_UP


def _workloads() -> int:
    """One line per known workload; each is bound to its driver, so a broken one fails here."""
    from mdevtest.workloads.registry import DEFINITIONS_DIR, get_workload, known_workloads

    header = ("NAME", "KIND", "DRIVER", "DESCRIPTION")
    rows = [header]
    for name in known_workloads():
        definition = get_workload(name).definition
        summary = definition.description.strip().splitlines()[0]
        rows.append((definition.name, definition.kind, definition.driver, summary))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]]))
    print(f"{len(rows) - 1} workload(s) in {DEFINITIONS_DIR}")
    return EXIT_OK


#: ``mdevtest schema`` choices: the model whose JSON Schema each prints.
SCHEMAS = ("inventory", "summary")


def _schema(which: str) -> int:
    """The JSON Schema (draft 2020-12, as pydantic writes it) on stdout; docs/schema/ holds
    copies that a unit test keeps in step."""
    import json

    if which == "summary":
        from mdevtest.report.summary import summary_json_schema

        schema = summary_json_schema()
    else:
        from mdevtest.inventory import Inventory

        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **Inventory.model_json_schema(),
        }
    print(json.dumps(schema, indent=2))
    return EXIT_OK


def _export(fmt: str, path: str) -> int:
    from mdevtest.report.summary import SummaryError, export_csv, export_influx, read_summary

    try:
        summary = read_summary(path)
    except SummaryError as exc:
        print(f"mdevtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    export = export_csv if fmt == "csv" else export_influx
    sys.stdout.write(export(summary.migrations))
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mdevtest.report.html import NoResults, generate_report

    try:
        report = generate_report(
            args.results,
            args.out,
            history=args.history,
            history_from=args.history_from,
            cache_dir=Path(args.cache) if args.cache else None,
            progress=_progress,
        )
    except NoResults as exc:
        print(f"mdevtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    counts = ", ".join(f"{v} {k}" for k, v in report.statistic.items() if k != "total" and v)
    _progress(f"report of {report.tests} test(s) ({counts or 'none'}) in {report.seconds:.1f} s")
    print(report.index)
    return EXIT_OK


def _provision_hosts_of(args: argparse.Namespace) -> tuple[Any, list[str]]:
    from mdevtest.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    names = [h.name for h in inventory.hosts]
    if args.hosts:
        wanted = [n.strip() for n in args.hosts.split(",") if n.strip()]
        for n in wanted:
            inventory.host(n)  # an unknown name: InventoryError listing the known ones
        names = [n for n in names if n in wanted]
    if args.pairs:
        ids = [i.strip() for i in args.pairs.split(",") if i.strip()]
        hosts = {h for i in ids for h in (inventory.pair(i).source, inventory.pair(i).destination)}
        names = [n for n in names if n in hosts]
    return inventory, names


def _provision(args: argparse.Namespace) -> int:
    import json

    from mdevtest.host import describe_record
    from mdevtest.inventory import load_provision_spec
    from mdevtest.provision import provision_hosts, read_records, rollback_hosts

    inventory, names = _provision_hosts_of(args)
    if args.status:
        for name, record in read_records(inventory, names).items():
            print(f"{name}: {describe_record(record) if record else 'no build recorded'}")
        return EXIT_OK
    if args.rollback:
        for o in rollback_hosts(inventory, names, progress=_progress):
            print(f"{o.host}: {'rolled back' if o.rolled_back else 'nothing to roll back'}")
        return EXIT_OK
    spec = load_provision_spec(args.spec) if args.spec else None
    outcomes = provision_hosts(
        inventory, names, spec=spec, rollback_on_failure=not args.no_rollback, progress=_progress
    )
    for o in outcomes:
        print(f"{o.host}: {describe_record(o.record or {})}")
        print(json.dumps((o.record or {}).get("after", {}), sort_keys=True))
    return EXIT_OK


def _premerge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mdevtest.premerge import NESTED_TOLERANCE, premerge, premerge_deploy

    if args.deploy:
        result = premerge_deploy(
            Path(args.inventory),
            Path(args.deploy),
            baseline=Path(args.baseline) if args.baseline else None,
            suite=args.suite,
            report_dir=Path(args.report_dir),
            pytest_args=["--mdevtest-pairs", args.pairs] if args.pairs else [],
            tolerance=args.tolerance,
            keep_lab=args.keep_lab,
            progress=_progress,
        )
        print(result.render())
        return EXIT_OK if result.passed else EXIT_REJECTED
    result = premerge(
        Path(args.inventory),
        patch=Path(args.patch) if args.patch else None,
        module=Path(args.module) if args.module else None,
        baseline=Path(args.baseline) if args.baseline else None,
        suite=args.suite,
        report_dir=Path(args.report_dir),
        pytest_args=["--mdevtest-pairs", args.pairs] if args.pairs else [],
        tolerance=args.tolerance or NESTED_TOLERANCE,
        keep_lab=args.keep_lab,
        progress=_progress,
    )
    print(result.render())
    return EXIT_OK if result.passed else EXIT_REJECTED


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    # paramiko logs a failed connect (a host rebooting, a dead host) with a traceback through
    # logging's last-resort handler; the error that matters is ours, one line.
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    logging.getLogger("paramiko").propagate = False
    args = _parser().parse_args(argv)
    try:
        if args.command == "inventory":
            return _inventory_check(args.path)
        if args.command == "report":
            return _report(args)
        if args.command == "workloads":
            return _workloads()
        if args.command == "premerge":
            return _premerge(args)
        if args.command == "provision":
            return _provision(args)
        if args.command == "schema":
            return _schema(args.which)
        if args.command == "export":
            return _export(args.format, args.summary)
        return _lab(args.action, args.inventory, args.flavor, no_image=args.no_image)
    except InventoryError as exc:
        print(f"mdevtest: {exc}", file=sys.stderr)
        return EXIT_INVENTORY
    except MdevtestError as exc:
        print(f"mdevtest: {exc}", file=sys.stderr)
        return EXIT_LAB
    except KeyboardInterrupt:
        print("mdevtest: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `mdevtest lab status | head`: the reader left; not an error of ours
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes it at exit
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
