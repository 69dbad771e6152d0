"""Which mdevtest made a report: the installed version and, from a source checkout, its commit.

A run's figures are only comparable with another's when one knows what measured them, so
``mdevtest --version``, Allure's environment (``mdevtest.version``, ``mdevtest.commit``) and the
docs name the same two facts. Both are looked up once per process and cached.

The commit is read only when the package sits at the top of a git working tree (an editable
install of a checkout): an installed wheel has none, and a virtualenv inside some other
repository must not report that repository's commit. ``git`` runs with a timeout; a missing
``git``, a slow one or any refusal (e.g. a checkout owned by another user) just means no commit.
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "mdevtest"
#: How long each ``git`` call may take (seconds); a version string is not worth a hang.
GIT_TIMEOUT_S = 5.0
#: The directory holding the ``mdevtest`` package: the checkout's top when it is one.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


@cache
def package_version() -> str:
    """The installed distribution's version (``0.1.0``); ``unknown`` when not installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


@cache
def source_commit() -> str | None:
    """The short commit of the source checkout the package runs from, ``abc1234`` or
    ``abc1234 dirty`` (tracked files changed); None when it is no checkout or git cannot tell."""
    return _git_commit(SOURCE_ROOT)


def version_string() -> str:
    """``mdevtest 0.1.0 (abc1234 dirty)``; ``mdevtest 0.1.0`` without a commit."""
    commit = source_commit()
    base = f"{DISTRIBUTION} {package_version()}"
    return f"{base} ({commit})" if commit else base


def _git_commit(root: Path) -> str | None:
    if not (root / ".git").exists():  # a directory, or a file in a worktree or submodule
        return None
    head = _git(root, "rev-parse", "--short", "HEAD")
    if not head:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    if status is None:  # git status failed or timed out (a huge tree): the commit alone
        return head
    return f"{head} dirty" if status else head


def _git(root: Path, *args: str) -> str | None:
    """``git -C root args`` stdout, stripped; None when git is missing, fails or times out."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
            # no index refresh written back: never contend with a git command running alongside
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None
