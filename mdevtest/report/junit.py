"""A test's migrations as JUnit XML ``<property>`` elements (``--junitxml``).

A CI system that reads JUnit XML and nothing else can then chart downtimes and sort failures
without ``summary.json``. The ``migrate`` fixture appends :func:`junit_properties` to
the test's ``user_properties``, which is what ``record_property`` does, so pytest writes::

    <testcase name="test_ping_pong[host-a->host-b-GVTg_V5_4]" ...>
      <properties>
        <property name="m1.pair" value="host-a->host-b"/>
        <property name="m1.downtime_ms" value="57"/>
        ...
        <property name="m2.pair" value="host-b->host-a"/>

One migration's names have no prefix (``downtime_ms``); with several, each is ``m<n>.`` with
``n`` counting the test's migrations from 1, in the order it made them (as the Allure coverage
lines number them). A value the migration lacks is left out: no ``failure_class`` when it did not
fail, no figures when it failed before QEMU migrated anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mdevtest.report.summary import SummaryEntry

#: Summary-entry fields that become properties, in this order.
FIELDS = ("pair", "downtime_ms", "observed_downtime_ms", "total_time_ms", "failure_class")


def junit_properties(
    migrations: Sequence[SummaryEntry | Mapping[str, Any]],
) -> list[tuple[str, object]]:
    """``(name, value)`` pairs for a test's ``migrations`` (summary entries, or for a migration
    that produced none, what is known of it: ``pair`` and ``failure_class``)."""
    props: list[tuple[str, object]] = []
    for i, entry in enumerate(migrations, 1):
        prefix = f"m{i}." if len(migrations) > 1 else ""
        values = entry if isinstance(entry, Mapping) else entry.to_json()
        props += [(prefix + name, values[name]) for name in FIELDS if values.get(name) is not None]
    return props
