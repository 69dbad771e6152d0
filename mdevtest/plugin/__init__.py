"""The mdevtest pytest plugin (entry point ``pytest11: mdevtest``).

Thin by design: options and session state live in :mod:`.hooks`, fixtures in :mod:`.fixtures`; the work
is done by the library (:class:`mdevtest.testbed.Testbed`, :class:`mdevtest.migration.Migrator`).
"""

from mdevtest.plugin.fixtures import (
    guest,
    lab,
    leases,
    migrate,
    migration_limits,
    migration_policy,
    pair,
    preflight,
)
from mdevtest.plugin.hooks import (
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_generate_tests,
    pytest_runtest_call,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_sessionstart,
    pytest_terminal_summary,
    pytest_xdist_make_scheduler,
)

__all__ = [
    "guest",
    "lab",
    "leases",
    "migrate",
    "migration_limits",
    "migration_policy",
    "pair",
    "preflight",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_runtest_call",
    "pytest_runtest_makereport",
    "pytest_sessionfinish",
    "pytest_sessionstart",
    "pytest_terminal_summary",
    "pytest_xdist_make_scheduler",
]
