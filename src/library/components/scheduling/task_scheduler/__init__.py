"""Async task scheduling for FastAPI and any anyio program, built on APScheduler 4.

.. code-block:: python

    from library.components.scheduling.task_scheduler import TaskScheduler

    scheduler = TaskScheduler()

    @scheduler.interval(seconds=30)
    async def heartbeat() -> None: ...

    app = FastAPI(lifespan=scheduler.lifespan)
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._config import JobDefaults, SchedulerConfig
from ._errors import (
    DuplicateJobError,
    InvalidTypeError,
    InvalidValueError,
    JobNotFoundError,
    MissingDependencyError,
    SchedulerStateError,
    StoreUnavailableError,
    TaskSchedulerError,
    UnsupportedError,
    WaitTimeoutError,
)
from ._jobs import JobOptions
from ._models import (
    JobInfo,
    Outcome,
    RunCounts,
    RunInfo,
    SchedulerState,
    SchedulerStatus,
    TriggerInfo,
    WorkerInfo,
)
from ._scheduler import TaskScheduler

try:
    __version__ = _version("fastapi-task-scheduler")
except _PackageNotFoundError:  # pragma: no cover - run from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
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
