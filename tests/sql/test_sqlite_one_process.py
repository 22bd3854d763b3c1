"""A SQLite store is for one process: a second one is refused, leftovers are repaired."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from library.components.scheduling.task_scheduler import (
    Outcome,
    SchedulerConfig,
    StoreUnavailableError,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio

CALLS: list[str] = []


async def tick() -> None:
    CALLS.append("tick")


def scheduler_on(path: Path) -> TaskScheduler:
    scheduler = TaskScheduler(SchedulerConfig(store=f"sqlite:///{path}"))
    # Not faster: on a busy machine a fire due while the last run is still being released
    # is (rightly) skipped at max_instances, and the repair test would see a skip.
    scheduler.interval(seconds=0.3, id="tick")(tick)
    return scheduler


async def test_a_second_process_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    """Two processes on one file (uvicorn --workers 4): 7 duplicated fires in 20 s, 7 of 10
    jobs stalled, and no error. The second now fails at start, naming the first."""
    path = tmp_path / "jobs.db"
    first, second = scheduler_on(path), scheduler_on(path)
    async with first:
        with pytest.raises(StoreUnavailableError) as info:
            await second.start()
        assert second.state == "stopped"
        await wait_for_runs(first, "tick", 2)  # the first keeps running normally
    assert str(info.value) == (
        f"the SQLite store sqlite:///{path} is in use by process {os.getpid()}: a SQLite "
        f"store is for one process; for several workers use PostgreSQL "
        f"(postgresql://user@host:port/db)"
    )
    async with second:  # once the first has stopped, the file is free
        await wait_for_runs(second, "tick", 1)


async def test_running_counts_left_in_the_file_are_repaired_at_start(tmp_path: Path) -> None:
    """A file two processes had shared kept running counts no job held: afterwards even a
    single process skipped the job's fires ('1 run(s) in progress across processes')."""
    path = tmp_path / "jobs.db"
    async with scheduler_on(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE tasks SET running_jobs = 1 WHERE id = 'tick'")
    scheduler = scheduler_on(path)
    async with scheduler:
        # Without the repair every fire is skipped; under load one may still be, rightly
        # (due while the last run's release is being written).
        await wait_for_runs(scheduler, "tick", 3, outcome=Outcome.success)
