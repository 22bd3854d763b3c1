"""``Depends`` in jobs on persistent stores: the job is stored as any other (its callable by
name, its explicit arguments), and its dependencies are resolved where it runs, after a
restart too, for declared jobs and for jobs added at run time alike. (asyncio only, as the
SQL store.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi import Depends

from library.components.scheduling.task_scheduler import Outcome, SchedulerConfig, TaskScheduler

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: this file's store code runs the same on trio (ThreadedSQLStore shares
    SQLStore's and the history's code; test_sqlstore.py and test_persistence.py run on both),
    and the suite's time is kept down."""
    return "asyncio"


EVENTS: list[str] = []


@pytest.fixture(autouse=True)
def clear_events() -> Iterator[None]:
    EVENTS.clear()
    yield
    EVENTS.clear()


async def get_session() -> AsyncIterator[str]:
    EVENTS.append("open")
    try:
        yield "session"
    finally:
        EVENTS.append("close")


async def purge(db: str = Depends(get_session), days: int = 30) -> None:
    EVENTS.append(f"purge {days} days with {db}")


def scheduler_on(store: str) -> TaskScheduler:
    scheduler = TaskScheduler(SchedulerConfig(store=store))
    scheduler.cron("0 2 * * *", id="purge", kwargs={"days": 7})(purge)
    return scheduler


async def test_a_job_with_dependencies_is_stored_and_runs_after_a_restart(sql_url: str) -> None:
    first = scheduler_on(sql_url)
    async with first:
        await first.add_interval_job(purge, "added", hours=1)
        assert (await first.run_job("purge")).outcome is Outcome.success
        assert (await first.run_job("added")).outcome is Outcome.success
        before = (await first.get_job("purge")).next_run_time
    assert EVENTS == [
        "open", "purge 7 days with session", "close",
        "open", "purge 30 days with session", "close",
    ]  # fmt: skip
    EVENTS.clear()

    second = scheduler_on(sql_url)  # a restart: "added" is only in the store
    async with second:
        jobs = {job.id: job for job in await second.get_jobs()}
        assert set(jobs) == {"purge", "added"}
        assert jobs["purge"].next_run_time == before  # kept: the definition did not change
        assert (await second.run_job("purge")).outcome is Outcome.success
        assert (await second.run_job("added")).outcome is Outcome.success
    assert EVENTS == [
        "open", "purge 7 days with session", "close",
        "open", "purge 30 days with session", "close",
    ]  # fmt: skip
