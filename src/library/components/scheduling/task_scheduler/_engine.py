"""The APScheduler engine our scheduler drives: one place that builds it."""

from __future__ import annotations

import logging

from apscheduler import AsyncScheduler
from apscheduler.abc import DataStore, EventBroker

from ._executor import TaskExecutor

EXECUTOR_NAME = "task_scheduler"

engine_logger = logging.getLogger("library.components.scheduling.task_scheduler.engine")
if engine_logger.level == logging.NOTSET:
    # APScheduler logs every run at INFO; ours already does, once, with the outcome.
    engine_logger.setLevel(logging.WARNING)


def make_engine(
    *,
    data_store: DataStore,
    event_broker: EventBroker,
    executor: TaskExecutor,
    identity: str,
    max_concurrent_jobs: int,
) -> AsyncScheduler:
    """An ``AsyncScheduler`` whose only job executor is ours."""
    return AsyncScheduler(
        data_store=data_store,
        event_broker=event_broker,
        identity=identity,
        max_concurrent_jobs=max_concurrent_jobs,
        job_executors={EXECUTOR_NAME: executor},
        logger=engine_logger,
    )
