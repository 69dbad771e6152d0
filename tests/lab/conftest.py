"""Integration tests on the real embedded local lab (root): the plugin's ``lab`` fixture brings it up."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in item.nodeid:
            item.add_marker(pytest.mark.lab)
    # The nested lab's tests (host VMs, minutes each) run after everything on the local lab.
    items.sort(key=lambda item: item.get_closest_marker("nested") is not None)
