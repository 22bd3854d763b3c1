"""scheduler.preview(): the next fire times a job will really have."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import anyio
import pytest
from helpers import noop

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio

NY = ZoneInfo("America/New_York")


async def test_cron_preview_is_in_the_configured_zone(anyio_backend: str) -> None:
    scheduler = TaskScheduler(SchedulerConfig(timezone="America/New_York"))
    scheduler.cron("30 2 * * *", id="nightly")(noop)
    async with scheduler:
        times = await scheduler.preview("nightly", count=400)
        info = await scheduler.get_job("nightly")
    assert len(times) == 400
    assert times[0] == info.next_run_time
    assert all(t.tzinfo == NY for t in times)
    assert times == sorted(times) and len(set(times)) == 400
    # 02:30 every day, except the spring-forward day, when 02:30 does not exist: 03:00.
    assert {(t.hour, t.minute) for t in times} == {(2, 30), (3, 0)}
    assert sum((t.hour, t.minute) == (3, 0) for t in times) == 1
    assert info.trigger.description == "At 02:30 every day (America/New_York)"


async def test_interval_preview_continues_the_live_schedule(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    scheduler.interval(minutes=5, id="five")(noop)
    async with scheduler:
        first, second, third = await scheduler.preview("five", count=3)
        info = await scheduler.get_job("five")
        again = await scheduler.preview("five", count=3)
    assert first == info.next_run_time
    assert second - first == third - second == timedelta(minutes=5)
    assert again == [first, second, third]  # previewing does not advance the job


async def test_preview_before_start_and_from_a_later_start(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=3)
    scheduler.interval(hours=1, start=start, id="later")(noop)
    times = await scheduler.preview("later", count=2)
    assert times == [start, start + timedelta(hours=1)]


async def test_preview_of_a_finished_job_is_empty(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    scheduler.at(datetime(2020, 1, 1), id="past")(noop)
    async with scheduler:
        assert await scheduler.preview("past") == []
        run_at = datetime.now(timezone.utc) + timedelta(milliseconds=50)
        await scheduler.add_date_job(noop, "soon", run_at=run_at)
        assert await scheduler.preview("soon") == [run_at]
        await wait_for_runs(scheduler, "soon")
        assert await scheduler.preview("soon") == []


async def test_preview_of_a_paused_job_is_what_resuming_now_gives(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    async with scheduler:
        await scheduler.add_interval_job(noop, "fast", seconds=0.1)
        await scheduler.pause_job("fast")
        await anyio.sleep(0.35)  # three fire times pass while paused
        now = datetime.now(timezone.utc)
        times = await scheduler.preview("fast", count=3)
        assert all(t >= now for t in times)
        resumed = await scheduler.resume_job("fast")
    assert resumed.next_run_time == times[0]


@pytest.mark.parametrize("count", [0, 1001, -1])
async def test_preview_count_is_bounded(anyio_backend: str, count: int) -> None:
    scheduler = TaskScheduler()
    scheduler.interval(seconds=5, id="j")(noop)
    with pytest.raises(ValueError, match=f"count must be an integer from 1 to 1000, got {count}"):
        await scheduler.preview("j", count=count)


async def test_descriptions(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    scheduler.interval(minutes=5, id="a")(noop)
    scheduler.cron(day_of_week="mon", hour=9, id="b")(noop)
    scheduler.cron("*/15 * * * *", id="c")(noop)
    a, b, c = await scheduler.get_jobs()
    assert a.trigger.description == "Every 5 minutes"
    assert b.trigger.description == "At 09:00 on Monday (UTC)"
    assert c.trigger.description == "Every 15 minutes (UTC)"
