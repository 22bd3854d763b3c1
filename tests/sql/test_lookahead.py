"""Fires claimed a little ahead on SQL stores: enqueued and acquired before they are due, each
run starts at its fire time, never before (SQLite and PostgreSQL, asyncio and trio).

The lookahead is widened here (0.1 s in production) so that each case is seen with margins.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import anyio
import pytest

from library.components.scheduling.task_scheduler import (
    Outcome,
    RunInfo,
    SchedulerConfig,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler._aps import sqlstore

pytestmark = pytest.mark.anyio

SEEN: list[datetime] = []


@pytest.fixture(autouse=True)
def clear_seen() -> Iterator[None]:
    SEEN.clear()
    yield
    SEEN.clear()


async def tick() -> None:
    SEEN.append(datetime.now(timezone.utc))


async def hold() -> None:
    await anyio.sleep(3.0)


def ahead(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    monkeypatch.setattr(sqlstore, "LOOKAHEAD", timedelta(seconds=seconds))


def soon(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


async def sleep_until(when: datetime) -> None:
    await anyio.sleep(max(0.0, (when - datetime.now(timezone.utc)).total_seconds()))


async def runs_of(scheduler: TaskScheduler, job_id: str, count: int) -> list[RunInfo]:
    with anyio.fail_after(15):
        while len(runs := await scheduler.get_runs(job_id)) < count:
            await anyio.sleep(0.05)
    return runs


async def test_a_fire_claimed_ahead_starts_at_its_fire_time(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ahead(monkeypatch, 1.5)
    fire_time = soon(2.0)  # claimed at once, or within 0.5 s
    scheduler = TaskScheduler(SchedulerConfig(store=sql_url))
    scheduler.at(fire_time, id="tick")(tick)
    async with scheduler:
        [run] = await runs_of(scheduler, "tick", 1)
    assert run.outcome is Outcome.success
    assert run.scheduled_at == fire_time
    assert run.started_at is not None and run.started_at >= fire_time
    assert len(SEEN) == 1 and SEEN[0] >= fire_time


async def test_a_job_paused_after_its_fire_was_claimed_records_it_skipped(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a fire that waited in the queue while the job was paused: recorded at its time,
    not run."""
    ahead(monkeypatch, 4.0)
    fire_time = soon(3.0)  # claimed at once
    scheduler = TaskScheduler(SchedulerConfig(store=sql_url))
    scheduler.at(fire_time, id="tick")(tick)
    async with scheduler:
        await sleep_until(fire_time - timedelta(seconds=1.0))
        await scheduler.pause_job("tick")
        [run] = await runs_of(scheduler, "tick", 1)
    assert (run.outcome, run.scheduled_at, run.started_at) == (Outcome.skipped, fire_time, None)
    assert run.error_message == "the job was paused"
    assert run.finished_at is not None and run.finished_at >= fire_time
    assert SEEN == []


async def test_a_fire_claimed_ahead_by_a_draining_process_is_left_for_the_next(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fire that comes due while its process drains is not started there, nor recorded
    as not started: it goes back to the queue, where the next process (another worker, or
    this one restarted) finds it. (With another worker running meanwhile:
    test_sqlstore.py::test_a_draining_process_leaves_new_fires_to_the_others.)"""
    ahead(monkeypatch, 4.0)
    fire_time = soon(2.5)  # claimed at once; due during the drain below

    def declare() -> TaskScheduler:
        scheduler = TaskScheduler(SchedulerConfig(store=sql_url))
        scheduler.at(fire_time, id="tick")(tick)
        scheduler.interval(hours=1, id="hold")(hold)
        return scheduler

    first = declare()
    async with first:
        await first.run_job("hold", wait=False)  # the drain waits ~2 s for it
        await anyio.sleep(1.0)  # the fire is claimed and acquired meanwhile
    assert SEEN == []
    assert await first.get_runs("tick") == []
    second = declare()
    async with second:
        [run] = await runs_of(second, "tick", 1)
    assert (run.outcome, run.scheduled_at) == (Outcome.success, fire_time)
    assert len(SEEN) == 1


async def test_a_draining_process_gives_a_fire_claimed_ahead_back_at_its_time(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given back when it comes due, with its job's running slot: another worker runs it
    while the first still drains (kept until the stop, the slot had the others skip it)."""
    ahead(monkeypatch, 4.0)
    fire_time = soon(2.5)

    def declare() -> TaskScheduler:
        scheduler = TaskScheduler(SchedulerConfig(store=pg_url))
        scheduler.at(fire_time, id="tick")(tick)
        scheduler.interval(hours=1, id="hold")(hold)
        return scheduler

    draining, other = declare(), declare()
    stop, stopped = anyio.Event(), anyio.Event()
    ended: list[datetime] = []

    async def drain() -> None:
        async with draining:
            await stop.wait()
            await draining.run_job("hold", wait=False)  # the drain lasts ~2 s past the fire
        ended.append(datetime.now(timezone.utc))
        stopped.set()

    async with anyio.create_task_group() as group:
        group.start_soon(drain)
        await anyio.sleep(1.0)  # the fire is claimed and acquired by the draining one
        async with other:
            stop.set()
            [run] = await runs_of(other, "tick", 1)
            here = (await other.get_status()).worker_id
            await stopped.wait()
    assert (run.outcome, run.scheduled_at, run.worker) == (Outcome.success, fire_time, here)
    assert run.started_at is not None and fire_time <= run.started_at < ended[0]


async def slow_tick() -> None:
    SEEN.append(datetime.now(timezone.utc))
    await anyio.sleep(1.2)


async def test_a_run_that_ends_before_the_next_fire_leaves_room_for_it(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next fire is claimed while the run before it still holds the job's one running
    slot (max_instances=1): whether it runs is decided when it is due, not when claimed
    (it was skipped: the job ran every other fire)."""
    ahead(monkeypatch, 1.5)
    scheduler = TaskScheduler(SchedulerConfig(store=sql_url))
    scheduler.interval(seconds=2, id="slow")(slow_tick)  # each run ends 0.8 s before the next
    async with scheduler:
        with anyio.fail_after(20):
            while len(runs := [r for r in await scheduler.get_runs("slow") if r.outcome]) < 2:
                await anyio.sleep(0.05)
    assert [run.outcome for run in runs] == [Outcome.success, Outcome.success], runs
    assert runs[0].scheduled_at - runs[1].scheduled_at == timedelta(seconds=2)
