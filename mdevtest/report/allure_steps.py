"""Allure statuses by failure class, steps with a status of their own, steps renamed when they end.

allure-pytest decides a test's and a step's status by the exception's type alone
(``allure_pytest.utils.get_status``): an ``AssertionError`` or ``pytest.fail`` is ``failed`` (red), any
other exception ``broken`` (yellow). mdevtest knows better: :func:`mdevtest.errors.classify` says
whether a failure is the product's (a failed check, a migration QEMU failed, a downtime over its
limit) or the infrastructure's (SSH, a host that died, the lab). :func:`allure_status_of` maps that
onto Allure: product ``failed``, infrastructure ``broken``. It is applied where allure-pytest has
decided, not by changing the exceptions (their types stay what ``categories.json`` and callers
match on):

- a test: the plugin's ``pytest_runtest_makereport`` wrapper runs around allure-pytest's and calls
  :func:`correct_test_status` after it;
- a step: :class:`StatusPlugin`, registered with ``allure_commons``, wraps allure-pytest's
  ``stop_step`` and corrects the step it just closed.

Only errors mdevtest classifies are touched: an ``mdevtest.errors`` exception (or one carrying a
``failure_class``), and a ``pytest.fail`` raised while handling one (the fixtures'
``pytest.fail(f"boot on {host}: {exc}")``). A plain ``assert`` stays ``failed``, an unexpected
exception (a bug) ``broken``.

Both corrections reach the result objects through allure-pytest's reporter
(``AllureListener.allure_logger``, an ``allure_commons.reporter.AllureReporter``): its ``get_test`` and
``get_item`` are what allure's own ``allure.dynamic`` calls use. Without allure-pytest recording
everything here is a no-op.

:func:`closed_step` records a step with a status chosen by the caller (a check's result), and
:func:`step` one whose title can change after it ended (the migrate step, titled with its figures).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pytest
from allure_commons import hookimpl, plugin_manager

from mdevtest.credentials import mask, mask_data
from mdevtest.errors import INFRASTRUCTURE, PRODUCT, MdevtestError, classify

if TYPE_CHECKING:
    from mdevtest.checks.base import CheckResult

AllureStatus = Literal["failed", "broken"]
_FAILED_OR_BROKEN = ("failed", "broken")
#: Longest value of a step parameter; longer ones are cut (the whole value goes in an attachment).
PARAMETER_MAX = 120


def allure_status_of(exc: BaseException | None) -> AllureStatus | None:
    """``failed`` for a product failure, ``broken`` for an infrastructure one, None when mdevtest
    has no say (no exception, a skip or xfail, a plain assertion, an unexpected exception)."""
    if exc is None or isinstance(exc, (pytest.skip.Exception, pytest.xfail.Exception)):
        return None
    if isinstance(exc, pytest.fail.Exception):
        # pytest.fail() while handling an mdevtest error: the fixtures' "boot on host-a: ..."
        handled = exc.__cause__ or exc.__context__
        return allure_status_of(handled) if isinstance(handled, MdevtestError) else None
    pinned = getattr(exc, "failure_class", None)
    if not isinstance(exc, MdevtestError) and pinned not in (INFRASTRUCTURE, PRODUCT):
        return None
    return "failed" if classify(exc) == PRODUCT else "broken"


# -- allure-pytest's reporter --------------------------------------------------------------------


def _reporter() -> Any | None:
    """allure-pytest's ``AllureReporter`` while it records (``--alluredir``), else None."""
    for plugin in plugin_manager.get_plugins():
        logger = getattr(plugin, "allure_logger", None)
        if logger is not None and hasattr(logger, "get_item") and hasattr(logger, "get_test"):
            return logger
    return None


def current_test_result() -> Any | None:
    """The Allure ``TestResult`` of the running test (what ``allure.dynamic`` changes)."""
    reporter = _reporter()
    return reporter.get_test(None) if reporter is not None else None


@contextlib.contextmanager
def correct_test_status(excinfo: pytest.ExceptionInfo[BaseException] | None) -> Iterator[None]:
    """Around allure-pytest's ``pytest_runtest_makereport``: when it set the test's status from
    this phase's exception, set it by failure class (:func:`allure_status_of`) instead."""
    test = current_test_result()
    details_before = getattr(test, "statusDetails", None)
    yield
    if test is None or excinfo is None or test.statusDetails is details_before:
        return  # allure-pytest kept the status of an earlier phase
    status = allure_status_of(excinfo.value)
    if status is not None and test.status in _FAILED_OR_BROKEN:
        test.status = status


class StatusPlugin:
    """An ``allure_commons`` plugin: a step that ends in an mdevtest error gets the status of its
    failure class (allure-pytest's ``stop_step`` decides by type: ``broken`` for all of them).
    The pytest plugin registers one per session while allure-pytest records."""

    @hookimpl(hookwrapper=True)
    def stop_step(
        self, uuid: str, exc_type: Any, exc_val: BaseException | None, exc_tb: Any
    ) -> Generator[None, None, None]:
        reporter = _reporter()
        item = reporter.get_item(uuid) if reporter is not None and exc_val is not None else None
        yield  # allure-pytest's stop_step: status by the exception's type
        status = allure_status_of(exc_val)
        if item is not None and status is not None and item.status in _FAILED_OR_BROKEN:
            item.status = status


def register(plugin: StatusPlugin) -> Callable[[], None]:
    """Register ``plugin`` with ``allure_commons``; return what unregisters it (a pytest
    session's cleanup: pytester runs several sessions in one process)."""
    plugin_manager.register(plugin)

    def unregister() -> None:
        if plugin_manager.is_registered(plugin):
            plugin_manager.unregister(plugin)

    return unregister


# -- steps ---------------------------------------------------------------------------------------


@dataclass
class StepHandle:
    """A step of the running test; :meth:`retitle` renames it, also after it ended (until the
    test's result is written), e.g. with figures known only later."""

    title: str
    _item: Any | None = None  # allure_commons.model2.TestStepResult while Allure records

    def retitle(self, title: str) -> None:
        self.title = title
        if self._item is not None:
            self._item.name = mask(title)


@contextlib.contextmanager
def step(title: str, params: Mapping[str, object] | None = None) -> Iterator[StepHandle]:
    """``allure.step(title)`` with parameters, yielding a :class:`StepHandle`. An exception ends
    the step as allure-pytest would (then corrected by :class:`StatusPlugin`) and goes on."""
    hook = plugin_manager.hook
    step_id = str(uuid.uuid4())
    hook.start_step(uuid=step_id, title=mask(title), params=_parameters(params or {}))
    reporter = _reporter()
    handle = StepHandle(title, reporter.get_item(step_id) if reporter is not None else None)
    try:
        yield handle
    except BaseException as exc:
        hook.stop_step(uuid=step_id, exc_type=type(exc), exc_val=exc, exc_tb=exc.__traceback__)
        raise
    hook.stop_step(uuid=step_id, exc_type=None, exc_val=None, exc_tb=None)


class StepBroken(Exception):
    """How :func:`closed_step` ends a ``broken`` step (an infrastructure problem it reports)."""

    failure_class = INFRASTRUCTURE


StepStatus = Literal["passed", "failed", "broken", "skipped"]


def closed_step(
    title: str,
    status: StepStatus,
    *,
    message: str = "",
    params: Mapping[str, object] | None = None,
    attachment: tuple[str, Any] | None = None,
) -> None:
    """Record a step that already happened, with ``status`` and ``message`` (shown when the step
    is opened), ``params`` (values cut at :data:`PARAMETER_MAX`) and an optional JSON
    ``attachment`` ``(name, data)``. For a check's result: its figures at a glance, its verdict
    as the step's colour."""
    ending: BaseException | None = {
        "passed": None,
        "failed": AssertionError(message),  # allure-pytest: failed
        "broken": StepBroken(message),
        "skipped": pytest.skip.Exception(message or "skipped"),
    }[status]
    with contextlib.suppress(AssertionError, StepBroken, pytest.skip.Exception), step(title, params):
        if attachment is not None:
            import allure

            name, data = attachment
            text = json.dumps(mask_data(data), indent=2, sort_keys=True, default=str)
            allure.attach(text, name=name, attachment_type=allure.attachment_type.JSON)
        if ending is not None:
            raise ending


def check_step(result: CheckResult) -> None:
    """A check's result as a step of its own: ``check heartbeat: passed``, green, red
    (``failed``: the product) or yellow (``broken``: an infrastructure error met while checking),
    or skipped with the reason; its scalar figures as parameters, the whole result (values,
    method, message) as a short JSON attachment."""
    status: StepStatus = result.status
    if status == "failed" and result.values.get("infrastructure") is True:
        status = "broken"
    figures = {k: v for k, v in result.values.items() if k not in ("infrastructure", "phase")}
    params = {k: v for k, v in figures.items() if v is None or isinstance(v, (str, int, float))}
    if result.status != "skipped":
        params["seconds"] = round(result.seconds, 3)
    closed_step(
        f"check {result.name}: {status}",
        status,
        message=result.message,
        params=params,
        attachment=(f"check {result.name}", result.to_json()),
    )


def _parameters(params: Mapping[str, object]) -> dict[str, str]:
    """Step parameters as Allure shows them: strings, masked, not longer than PARAMETER_MAX."""
    out = {}
    for name, value in params.items():
        text = mask(value if isinstance(value, str) else json.dumps(value, default=str))
        out[str(name)] = text if len(text) <= PARAMETER_MAX else text[: PARAMETER_MAX - 1] + "…"
    return out
