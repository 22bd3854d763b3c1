"""Async task scheduling for FastAPI and any anyio program, built on APScheduler 4.

.. code-block:: python

    from library.components.scheduling.task_scheduler import TaskScheduler

    scheduler = TaskScheduler()

    @scheduler.interval(seconds=30)
    async def heartbeat() -> None: ...

    app = FastAPI(lifespan=scheduler.lifespan)
"""

from ._config import JobDefaults, SchedulerConfig
from ._errors import DuplicateJobError, JobNotFoundError, SchedulerStateError, TaskSchedulerError
from ._jobs import JobOptions
from ._models import (
    JobInfo,
    Outcome,
    RunCounts,
    RunInfo,
    SchedulerState,
    SchedulerStatus,
    TriggerInfo,
)
from ._scheduler import TaskScheduler

__all__ = [
    "DuplicateJobError",
    "JobDefaults",
    "JobInfo",
    "JobNotFoundError",
    "JobOptions",
    "Outcome",
    "RunCounts",
    "RunInfo",
    "SchedulerConfig",
    "SchedulerState",
    "SchedulerStateError",
    "SchedulerStatus",
    "TaskScheduler",
    "TaskSchedulerError",
    "TriggerInfo",
]
