"""``mdevtest report``: the HTML report, made by Allure 2's generator from the npm registry.

The generator is the npm package ``allure-commandline`` (Allure 2, a Java program behind a Node
launcher), so this needs ``node``, ``npm`` and ``java`` (17+). It is installed on first use into a
cache directory (default ``/var/cache/mdevtest/npm`` as root, else ``~/.cache/mdevtest/npm``),
with npm's own download cache beside it, and reused afterwards. The install goes to a staging
directory renamed into place once ``allure --version`` works, under a lock, so an interrupted or
concurrent install never leaves a half-installed generator behind.

Before generating, the previous report's ``history/`` is copied into the results (Allure 2 keeps
trends that way) and ``categories.json`` is written when the results have none. Every command
runs with a timeout in its own process group, killed whole when the timeout passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mdevtest.errors import MdevtestError
from mdevtest.filelock import give_up_after, locked
from mdevtest.report.allure_meta import CATEGORIES_FILE, copy_history, write_categories

#: What ``npm install`` is asked for: the newest Allure 2 generator.
ALLURE_PACKAGE = "allure-commandline@2"
SYSTEM_CACHE = Path("/var/cache/mdevtest/npm")

INSTALL_TIMEOUT_S = 600.0
GENERATE_TIMEOUT_S = 300.0
PROBE_TIMEOUT_S = 60.0

_INSTALL_DIR = "allure2"  # under the cache dir: the npm prefix with node_modules/
_APT_HINT = "apt-get install nodejs npm openjdk-17-jre-headless"

Progress = Callable[[str], None]


class ReportError(MdevtestError):
    """The HTML report could not be made: a missing tool, a failed install or generator run."""


class NoResults(ReportError):
    """The results directory is missing or holds no Allure results."""


@dataclass(frozen=True)
class Tools:
    """The programs the generator needs, as found on PATH."""

    node: str
    npm: str
    java: str
    java_version: str


@dataclass(frozen=True)
class AllureCli:
    """An installed generator: the ``allure`` launcher and its version."""

    path: Path
    version: str
    install_seconds: float | None  # None when it was already installed


@dataclass(frozen=True)
class GeneratedReport:
    """What :func:`generate_report` made."""

    out_dir: Path
    index: Path
    allure: AllureCli
    tests: int
    statistic: Mapping[str, int]
    history_files: int
    seconds: float


def default_cache_dir() -> Path:
    """``/var/cache/mdevtest/npm`` when it can be written, else the user's cache directory."""
    if os.geteuid() == 0 or os.access(SYSTEM_CACHE.parent, os.W_OK):
        return SYSTEM_CACHE
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mdevtest" / "npm"


def check_tools() -> Tools:
    """Find node, npm and a working java; :class:`ReportError` names every missing piece."""
    found = {name: shutil.which(name) for name in ("node", "npm", "java")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise ReportError(
            f"the Allure report generator needs {', '.join(missing)} on PATH, which "
            f"{'is' if len(missing) == 1 else 'are'} missing; on Debian: {_APT_HINT}"
        )
    java = str(found["java"])
    probe = _run([java, "-version"], timeout=PROBE_TIMEOUT_S, what="java -version")
    version = (probe.stderr or probe.stdout).strip().splitlines()
    return Tools(str(found["node"]), str(found["npm"]), java, version[0] if version else "?")


def ensure_allure(
    cache_dir: Path | None = None,
    *,
    tools: Tools | None = None,
    timeout_s: float = INSTALL_TIMEOUT_S,
    progress: Progress | None = None,
) -> AllureCli:
    """The Allure 2 generator from the cache, installed from the npm registry when absent."""
    tools = tools or check_tools()
    cache = (cache_dir or default_cache_dir()).resolve()
    say = progress or (lambda _m: None)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(
            f"cannot create the npm cache {cache}: {exc.strerror or exc}; pass --cache DIR"
        ) from exc
    final = cache / _INSTALL_DIR
    with _locked(cache / ".lock", timeout_s + 60):
        if (found := _installed(final)) is not None:
            return found
        shutil.rmtree(final, ignore_errors=True)  # a broken install: start again
        staging = cache / f"{_INSTALL_DIR}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        say(f"installing {ALLURE_PACKAGE} from the npm registry into {final}")
        started = time.monotonic()
        try:
            _run(
                [tools.npm, "install", "--prefix", str(staging), "--cache", str(cache / "_npm"),
                 "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error",
                 ALLURE_PACKAGE],
                timeout=timeout_s,
                what=f"npm install {ALLURE_PACKAGE}",
                hint="check access to the npm registry (npm config get registry)",
            )  # fmt: skip
            if _installed(staging) is None:
                raise ReportError(
                    f"npm installed {ALLURE_PACKAGE} into {staging}, but it has no working "
                    "node_modules/.bin/allure"
                )
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        cli = _installed(final)
        if cli is None:
            raise ReportError(f"{final}: the installed Allure generator does not run")
        seconds = time.monotonic() - started
        say(f"Allure {cli.version} installed in {seconds:.1f} s")
        return AllureCli(cli.path, cli.version, seconds)


def generate_report(
    results_dir: str | Path,
    out_dir: str | Path,
    *,
    history: bool = True,
    history_from: str | Path | None = None,
    cache_dir: Path | None = None,
    timeout_s: float = GENERATE_TIMEOUT_S,
    install_timeout_s: float = INSTALL_TIMEOUT_S,
    progress: Progress | None = None,
) -> GeneratedReport:
    """Generate the HTML report of ``results_dir`` into ``out_dir`` (replacing it).

    With ``history``, the trends of the previous report (``history_from``, default ``out_dir``)
    are carried over first.
    """
    started = time.monotonic()
    say = progress or (lambda _m: None)
    results, out = Path(results_dir).resolve(), Path(out_dir).resolve()
    _check_results(results)
    _check_out(out, results)
    allure = ensure_allure(cache_dir, timeout_s=install_timeout_s, progress=progress)
    copied = copy_history(Path(history_from or out), results) if history else 0
    if history:
        say(f"history: {copied} file(s) from the previous report" if copied else
            "history: no previous report; trends start with this run")  # fmt: skip
    if not (results / CATEGORIES_FILE).exists():
        write_categories(results)
    say(f"generating the report of {results} with Allure {allure.version}")
    _run(
        [str(allure.path), "generate", "--clean", "-o", str(out), str(results)],
        timeout=timeout_s,
        what="allure generate",
    )
    index = out / "index.html"
    if not index.is_file():
        raise ReportError(f"allure generate finished, but {index} does not exist")
    statistic = _statistic(out)
    return GeneratedReport(
        out_dir=out,
        index=index,
        allure=allure,
        tests=int(statistic.get("total", 0)),
        statistic=statistic,
        history_files=copied,
        seconds=time.monotonic() - started,
    )


def _check_results(results: Path) -> None:
    if not results.is_dir():
        raise NoResults(
            f"no Allure results: {results} does not exist; run pytest with --alluredir {results} "
            "(or --mdevtest-report-dir) first, or pass --results DIR"
        )
    if not any(results.glob("*-result.json")):
        raise NoResults(
            f"no Allure results in {results} (no *-result.json); did the test run use --alluredir?"
        )


def _check_out(out: Path, results: Path) -> None:
    """``allure generate --clean`` deletes the output directory: refuse anything but a report."""
    if out == results or results.is_relative_to(out):
        raise ReportError(f"--out {out} would delete the results {results}; pick another directory")
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a report directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "index.html").exists():
        raise ReportError(
            f"--out {out} is not empty and is not an Allure report; generating would delete it. "
            "Pick an empty or new directory"
        )


def _installed(prefix: Path) -> AllureCli | None:
    launcher = prefix / "node_modules" / ".bin" / "allure"
    if not launcher.exists():
        return None
    try:
        probe = _run([str(launcher), "--version"], timeout=PROBE_TIMEOUT_S, what="allure --version")
    except ReportError:
        return None
    version = probe.stdout.strip().splitlines()
    return AllureCli(launcher, version[-1] if version else "?", None)


def _statistic(out: Path) -> dict[str, int]:
    try:
        doc = json.loads((out / "widgets" / "summary.json").read_text())
        return {str(k): int(v) for k, v in doc.get("statistic", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _locked(path: Path, timeout_s: float) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock across processes (two CI jobs installing at once)."""
    return locked(
        path,
        poll_s=0.5,
        while_waiting=give_up_after(
            timeout_s,
            lambda: ReportError(
                f"{path} stayed locked for {timeout_s:g} s: another mdevtest report is "
                "installing the generator; try again when it is done"
            ),
        ),
    )


def _run(
    argv: Sequence[str], *, timeout: float, what: str, hint: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run a local command in its own process group; kill the whole group on timeout.

    npm and the Allure launcher start children that keep our pipes open, so killing only the
    direct child (what ``subprocess.run`` does) could still hang.
    """
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ReportError(f"{what}: {argv[0]} is not installed; on Debian: {_APT_HINT}") from exc
    except PermissionError as exc:
        raise ReportError(f"{what}: {argv[0]} is not executable: {exc}") from exc
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise ReportError(
            f"{what} did not finish within {timeout:g} s; killed" + (f"; {hint}" if hint else "")
        ) from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        tail = "\n  ".join((stderr.strip() or stdout.strip()).splitlines()[-12:])
        raise ReportError(
            f"{what} failed (rc={proc.returncode})" + (f"; {hint}" if hint else "") + f":\n  {tail}"
        )
    return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=10)
