"""The failure class is on the exception class (``failure_class``), read by ``classify``: an
infrastructure error, a product one and an undecided one are told apart by what the class
declares, an instance may override it, and no class is recognised by its name."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import mdevtest
from mdevtest import errors
from mdevtest.errors import (
    INFRASTRUCTURE,
    PRODUCT,
    CheckFailed,
    CommandFailed,
    ConnectFailed,
    GuestError,
    InventoryError,
    KeyFileError,
    LabError,
    MachineError,
    MdevError,
    MdevtestError,
    MigrationError,
    MigrationTimedOut,
    QmpError,
    StateError,
    classify,
)
from mdevtest.lease import LeaseError
from mdevtest.plugin.watchdog import DeadlineExceeded
from mdevtest.qemu.caps import DeviceOptionError


def _every_error_class() -> set[type[MdevtestError]]:
    for info in pkgutil.walk_packages(mdevtest.__path__, "mdevtest."):
        importlib.import_module(info.name)
    found: set[type[MdevtestError]] = set()
    todo: list[type[MdevtestError]] = [MdevtestError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_class_has_a_failure_class_classify_understands() -> None:
    classes = _every_error_class()
    assert LeaseError in classes
    assert DeadlineExceeded in classes
    bad = {c.__qualname__: c.failure_class for c in classes}
    bad = {k: v for k, v in bad.items() if v not in (INFRASTRUCTURE, PRODUCT, None)}
    assert bad == {}


def test_every_class_of_the_tree_declares_its_failure_class() -> None:
    """The tree in errors.py says it on each class, not by inheritance alone from the root."""
    tree = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, MdevtestError) and c.__module__ == errors.__name__
    ]
    direct = [c for c in tree if MdevtestError in c.__bases__]
    assert len(direct) >= 10
    assert [c.__name__ for c in direct if "failure_class" not in vars(c)] == []


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectFailed("host-b", "no route to host"), INFRASTRUCTURE),
        (CommandFailed("host-b", "true", 1, ""), INFRASTRUCTURE),
        (QmpError("host-a/vm1", "migrate", "socket closed"), INFRASTRUCTURE),
        (MachineError("host-a/vm1: QEMU exited"), INFRASTRUCTURE),
        (MdevError("host-b: no available instance"), INFRASTRUCTURE),
        (DeviceOptionError("x", driver="vfio-pci", option="o", qemu_version="8.2"), INFRASTRUCTURE),
        (LabError("down"), INFRASTRUCTURE),
        (InventoryError("lab.yaml", ["hosts: missing"]), INFRASTRUCTURE),
        (KeyFileError("/k", "wrong passphrase"), INFRASTRUCTURE),
        (LeaseError("host-a is held"), INFRASTRUCTURE),
        (DeadlineExceeded("past 600 s"), INFRASTRUCTURE),
        (CheckFailed("downtime: 900 ms > 300 ms"), PRODUCT),
        (MigrationTimedOut("not completed within 120 s"), PRODUCT),  # None: product unless pinned
        (GuestError("no READY line"), PRODUCT),
        (StateError("not migrated yet"), PRODUCT),
        (AssertionError("plain assert"), PRODUCT),
        (RuntimeError("unexpected"), PRODUCT),
    ],
)
def test_classify_reads_the_class(exc: BaseException, expected: str) -> None:
    assert classify(exc) == expected


def test_an_instance_overrides_its_class() -> None:
    """A diagnosis pins a migration failure on the lab; a check that met only SSH errors too."""
    migration = MigrationError("failed")
    migration.failure_class = INFRASTRUCTURE
    assert classify(migration) == INFRASTRUCTURE
    assert MigrationError.failure_class is None
    check = CheckFailed("host-logs: ssh: connection reset")
    check.failure_class = INFRASTRUCTURE
    assert classify(check) == INFRASTRUCTURE
    assert classify(CheckFailed("graphics: frozen")) == PRODUCT


def test_no_class_is_recognised_by_its_name() -> None:
    """Another class called LeaseError (a user's, a plugin's) is not the lease error."""

    class LeaseError(MdevtestError):
        pass

    class Pinned(Exception):
        failure_class = INFRASTRUCTURE

    assert classify(LeaseError("x")) == PRODUCT
    assert classify(Pinned()) == INFRASTRUCTURE  # any exception may say, mdevtest's or not
