"""The app of the cluster tests (test_cluster_processes.py): a FastAPI app with the scheduler's
router and one job, ``tick``, every second; every worker process imports it by this name.

The store comes from TASK_SCHEDULER_STORE, as in examples/multi_worker/app.py.
"""

from __future__ import annotations

from fastapi import FastAPI

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler.fastapi import create_scheduler_router

MAX_STALENESS = 5
"""Seconds without a success (on any worker) after which ``tick`` counts as stale."""

scheduler = TaskScheduler(SchedulerConfig(timezone="UTC", shutdown_timeout=5))


@scheduler.interval(seconds=1, id="tick", max_staleness=MAX_STALENESS)
async def tick() -> None:
    """Always succeeds."""


app = FastAPI(lifespan=scheduler.lifespan)
app.include_router(create_scheduler_router())
