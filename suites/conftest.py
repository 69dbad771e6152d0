"""Suites write their reports to <repo>/reports unless --mdevtest-report-dir says otherwise."""

from pathlib import Path

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("mdevtest_report_dir"):
        config.option.mdevtest_report_dir = str(Path(__file__).resolve().parent.parent / "reports")
