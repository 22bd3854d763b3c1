"""The jobs of the multi-process tests, importable under one name by every process."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import anyio

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler


async def work(index: int) -> None:
    await anyio.sleep(0.01)


async def slow(pid_file: str) -> None:
    """Runs long; tells the test which process runs it, so that it can kill that one."""
    await anyio.Path(pid_file).write_text(str(os.getpid()))
    await anyio.sleep(20)


def build(store: str, start: datetime, jobs: int, pid_file: str | None = None) -> TaskScheduler:
    """The same declarations in every process: 20 jobs every second from ``start``, and
    with ``pid_file`` one slow job, at ``start`` + 1 s, retried once if it is lost."""
    scheduler = TaskScheduler(SchedulerConfig(store=store, shutdown_timeout=5))
    for index in range(jobs):
        scheduler.interval(seconds=1, start=start, id=f"job-{index}", args=[index])(work)
    if pid_file is not None:
        scheduler.interval(
            hours=1, start=start + timedelta(seconds=1), id="slow", args=[pid_file], retries=1
        )(slow)
    return scheduler
