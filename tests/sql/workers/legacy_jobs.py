"""Jobs of the store written by release 0.1.0 (tests/sql/data/store-0.1.0.sqlite).

``cd tests/sql && python -m workers.legacy_jobs PATH`` wrote that file with release 0.1.0 (run as a
module, so that the job added at run time is stored as ``workers.legacy_jobs:added``); the test that
loads it (test_compat.py) declares the same jobs and checks that every stored schedule, its
pause state, its next fire time and the job added at run time survive the upgrade.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import anyio

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler

START = datetime(2030, 1, 1, tzinfo=timezone.utc)
"""Every job fires first after this, so the stored next fire times are fixed."""


async def tick() -> None:
    """Declared jobs call this."""


async def added() -> None:
    """The job added at run time calls this."""


def build(store: str) -> TaskScheduler:
    """The declarations of release 0.1.0's store: one job of every trigger type, one paused."""
    scheduler = TaskScheduler(SchedulerConfig(store=store, timezone="America/New_York"))
    scheduler.interval(minutes=5, start=START, id="every-5-min")(tick)
    scheduler.cron("30 2 * * *", start=START, id="nightly")(tick)
    scheduler.cron(day_of_week="mon-fri", hour=9, start=START, id="weekdays", retries=2)(tick)
    scheduler.at(datetime(2031, 6, 1, 12, 0), id="once")(tick)
    scheduler.interval(hours=1, start=START, id="paused-job", paused=True)(tick)
    return scheduler


async def write(path: Path) -> None:
    scheduler = build(f"sqlite:///{path}")
    async with scheduler:
        await scheduler.add_cron_job(added, "added-at-run-time", "0 12 * * *", start=START)
        await scheduler.pause_job("every-5-min")


if __name__ == "__main__":
    from workers import legacy_jobs  # by its importable name, not as __main__

    anyio.run(legacy_jobs.write, Path(sys.argv[1]))
