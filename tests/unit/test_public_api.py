"""The public surface: what ``__all__`` exports, and the exception tree users catch."""

from __future__ import annotations

import re

import pytest

import library.components.scheduling.task_scheduler as task_scheduler
from library.components.scheduling.task_scheduler import (
    DuplicateJobError,
    InvalidTypeError,
    InvalidValueError,
    JobNotFoundError,
    MissingDependencyError,
    SchedulerConfig,
    SchedulerStateError,
    StoreUnavailableError,
    TaskScheduler,
    TaskSchedulerError,
    UnsupportedError,
    WaitTimeoutError,
)

PUBLIC = [
    "DuplicateJobError",
    "InvalidTypeError",
    "InvalidValueError",
    "JobDefaults",
    "JobInfo",
    "JobNotFoundError",
    "JobOptions",
    "MissingDependencyError",
    "Outcome",
    "RunCounts",
    "RunInfo",
    "SchedulerConfig",
    "SchedulerState",
    "SchedulerStateError",
    "SchedulerStatus",
    "StoreUnavailableError",
    "TaskScheduler",
    "TaskSchedulerError",
    "TriggerInfo",
    "UnsupportedError",
    "WaitTimeoutError",
    "WorkerInfo",
    "__version__",
]


def test_all_is_exactly_the_public_names() -> None:
    """A name added to or dropped from the public API is a decision: update this list."""
    assert sorted(task_scheduler.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(task_scheduler, name) is not None
    public_attributes = {name for name in vars(task_scheduler) if not name.startswith("_")}
    assert public_attributes - set(PUBLIC) <= {"fastapi", "testing", "annotations"}


def test_version_is_the_installed_distributions() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", task_scheduler.__version__)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (JobNotFoundError, LookupError),
        (DuplicateJobError, ValueError),
        (InvalidValueError, ValueError),
        (InvalidTypeError, TypeError),
        (SchedulerStateError, RuntimeError),
        (UnsupportedError, RuntimeError),
        (StoreUnavailableError, ConnectionError),
        (MissingDependencyError, ImportError),
        (WaitTimeoutError, TimeoutError),
    ],
)
def test_every_error_is_ours_and_the_builtin_users_catch(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, TaskSchedulerError) and issubclass(error, builtin)


def noop() -> None:
    pass


@pytest.mark.parametrize(
    ("declare", "error"),
    [
        (lambda s: s.cron("61 * * * *")(noop), InvalidValueError),
        (lambda s: s.interval(seconds=-1)(noop), InvalidValueError),
        (lambda s: s.interval(seconds=1, nope=1)(noop), InvalidValueError),
        (lambda s: s.interval(seconds=1, id="")(noop), InvalidValueError),
        (lambda s: s.interval(seconds=1)(42), InvalidTypeError),
        (lambda s: s.at("tomorrow")(noop), InvalidTypeError),
    ],
)
def test_bad_declarations_raise_our_errors(declare: object, error: type[Exception]) -> None:
    scheduler = TaskScheduler()
    with pytest.raises(error):
        declare(scheduler)  # type: ignore[operator]


def test_a_bad_store_url_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="mysql://app:\\*\\*\\*@db/app"):
        SchedulerConfig(store="mysql://app:hunter2@db/app")


def test_the_fastapi_module_exports_exactly_its_public_names() -> None:
    from library.components.scheduling.task_scheduler import fastapi

    assert sorted(fastapi.__all__) == [
        "CSRF_HEADER",
        "ErrorDetail",
        "Health",
        "RunAccepted",
        "create_scheduler_router",
        "get_scheduler",
    ]
    assert fastapi.CSRF_HEADER == "X-Task-Scheduler"
