"""The jobs of the multi-process tests, importable under one name by every process."""

from __future__ import annotations

from datetime import datetime

import anyio

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler


async def work(index: int) -> None:
    await anyio.sleep(0.01)


def build(store: str, start: datetime, jobs: int) -> TaskScheduler:
    """The same declarations in every process: 20 jobs every second from ``start``."""
    scheduler = TaskScheduler(SchedulerConfig(store=store, shutdown_timeout=5))
    for index in range(jobs):
        scheduler.interval(seconds=1, start=start, id=f"job-{index}", args=[index])(work)
    return scheduler
