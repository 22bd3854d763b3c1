"""Virtual time (``testing.virtual_time``): jobs really run, in order, at virtual instants."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest

from library.components.scheduling.task_scheduler import (
    InvalidValueError,
    Outcome,
    SchedulerConfig,
    SchedulerStateError,
    TaskScheduler,
    UnsupportedError,
    WaitTimeoutError,
)
from library.components.scheduling.task_scheduler.testing import (
    VirtualClock,
    virtual_time,
    wait_for_runs,
)

pytestmark = pytest.mark.anyio

NEW_YORK = ZoneInfo("America/New_York")
UTC = timezone.utc
START = datetime(2026, 3, 6, tzinfo=NEW_YORK)  # a Friday, two days before spring-forward


def new_york() -> TaskScheduler:
    return TaskScheduler(SchedulerConfig(timezone="America/New_York", history_size=1000))


async def test_interval_fires_each_hour_of_three_days_at_its_instant(anyio_backend: str) -> None:
    scheduler = TaskScheduler(SchedulerConfig(history_size=1000))
    seen: list[datetime] = []

    @scheduler.interval(hours=1, id="hourly")
    async def hourly() -> None:
        seen.append(scheduler.now())

    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:
        assert clock.now() == start and scheduler.now() == start
        await clock.advance(days=3)
        assert clock.now() == start + timedelta(days=3)
        job = await scheduler.get_job("hourly")
        runs = await scheduler.get_runs("hourly", limit=100)
    expected = [start + timedelta(hours=hour) for hour in range(1, 73)]
    assert seen == expected  # each run saw its own instant, in order
    assert job.counts.success == 72 and job.next_run_time == start + timedelta(hours=73)
    assert [run.scheduled_at for run in reversed(runs)] == expected
    assert all(run.started_at == run.scheduled_at == run.finished_at for run in runs)
    assert all(run.outcome is Outcome.success for run in runs)


async def test_cron_weekdays_over_a_week_in_new_york(anyio_backend: str) -> None:
    scheduler = new_york()

    @scheduler.cron("0 9 * * mon-fri", id="report")
    async def report() -> None:
        pass

    async with virtual_time(scheduler, start=START) as clock:
        await clock.advance(weeks=1)
        runs = await scheduler.get_runs("report", limit=100)
        job = await scheduler.get_job("report")
    days = [run.scheduled_at for run in reversed(runs)]
    assert [(d.month, d.day, d.hour, d.minute) for d in days] == [
        (3, 6, 9, 0), (3, 9, 9, 0), (3, 10, 9, 0), (3, 11, 9, 0), (3, 12, 9, 0)
    ]  # fmt: skip
    # 09:00 stays 09:00 across the change to daylight time on the 8th.
    assert [d.utcoffset() for d in days] == [timedelta(hours=-5)] + [timedelta(hours=-4)] * 4
    assert job.next_run_time == datetime(2026, 3, 13, 9, tzinfo=NEW_YORK)


async def test_fires_of_several_jobs_run_in_time_order(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    order: list[tuple[str, datetime]] = []

    def record(name: str) -> None:
        order.append((name, scheduler.now()))

    @scheduler.interval(minutes=7, id="seven")
    async def seven() -> None:
        record("seven")

    @scheduler.interval(minutes=5, id="five")
    async def five() -> None:
        record("five")

    @scheduler.cron("*/3 * * * *", id="three")
    async def three() -> None:
        record("three")

    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:
        await clock.advance(hours=2)
        await clock.advance_to(datetime(2026, 1, 1, 3))  # naive: the scheduler's zone (UTC)
    times = [when for _, when in order]
    assert times == sorted(times) and times[-1] <= datetime(2026, 1, 1, 3, tzinfo=UTC)
    assert sum(name == "seven" for name, _ in order) == 180 // 7
    assert sum(name == "five" for name, _ in order) == 180 // 5
    # A cron job fires at any matching instant from the start on: 00:00 included.
    assert sum(name == "three" for name, _ in order) == 180 // 3 + 1


async def test_pause_and_resume_in_virtual_time(anyio_backend: str) -> None:
    scheduler = TaskScheduler()

    @scheduler.interval(minutes=10, id="job")
    async def job() -> None:
        pass

    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:
        await clock.advance(hours=1)
        paused = await scheduler.pause_job("job")
        await clock.advance(hours=1, minutes=5)
        assert (await scheduler.get_job("job")).counts.success == 6
        resumed = await scheduler.resume_job("job")
        await clock.advance(minutes=30)
        info = await scheduler.get_job("job")
    assert paused.paused and paused.next_run_time is None
    # Resumed at 02:05: the fires missed while paused are not run; the grid goes on.
    assert resumed.next_run_time == datetime(2026, 1, 1, 2, 10, tzinfo=UTC)
    assert info.counts.success == 6 + 3
    assert info.next_run_time == datetime(2026, 1, 1, 2, 40, tzinfo=UTC)


@pytest.mark.parametrize(("coalesce", "successes", "missed"), [(True, 1, 0), (False, 2, 8)])
async def test_a_jump_makes_fires_late_and_coalesce_and_misfire_decide(
    anyio_backend: str, coalesce: bool, successes: int, missed: int
) -> None:
    scheduler = TaskScheduler()

    @scheduler.interval(minutes=1, id="job", coalesce=coalesce, misfire_grace_time=90)
    async def job() -> None:
        pass

    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:
        await clock.jump(minutes=10)  # as if the process had been suspended for 10 minutes
        runs = await scheduler.get_runs("job")
    ran = [run for run in runs if run.outcome is Outcome.success]
    late = [run for run in runs if run.outcome is Outcome.missed]
    assert (len(ran), len(late)) == (successes, missed)
    assert all(run.started_at == start + timedelta(minutes=10) for run in ran)
    # Late fires of one batch start together (in any order on trio, as in real time).
    if coalesce:  # one run, for the latest fire
        assert [run.scheduled_at for run in ran] == [start + timedelta(minutes=10)]
    else:  # each fire: those more than 90 s late are recorded missed
        ran_at = sorted(run.scheduled_at for run in ran)
        assert ran_at == [start + timedelta(minutes=9), start + timedelta(minutes=10)]
        messages = {run.scheduled_at.minute: run.error_message for run in late}
        assert messages[8] == "started 120.000 s late, misfire_grace_time is 90.0 s"


async def test_a_run_that_sleeps_holds_its_slot_in_virtual_time(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    ends: list[datetime] = []

    @scheduler.interval(minutes=1, id="slow", max_instances=1)
    async def slow() -> None:
        await scheduler.sleep(90)
        ends.append(scheduler.now())

    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:
        await clock.advance(minutes=10)
        runs = await scheduler.get_runs("slow")
    done = sorted(run.started_at for run in runs if run.outcome is Outcome.success)  # type: ignore[type-var]
    skipped = [run for run in runs if run.outcome is Outcome.skipped]
    # Starts at minutes 1, 3, 5, 7 end 90 s later; the fires between are skipped.
    assert done == [start + timedelta(minutes=m) for m in (1, 3, 5, 7)]
    assert ends == [start + timedelta(minutes=m, seconds=90) for m in (1, 3, 5, 7)]
    assert sorted(run.scheduled_at.minute for run in skipped) == [2, 4, 6, 8, 10]
    # The run started at minute 9 was still waiting for virtual time; leaving cancelled it.
    (last,) = [run for run in runs if run.scheduled_at == start + timedelta(minutes=9)]
    assert last.outcome is None and last.finished_at is None
    (last,) = [r for r in await scheduler.get_runs("slow") if r.run_id == last.run_id]
    assert last.outcome is Outcome.cancelled


async def test_a_wait_that_ends_at_a_fire_time_ends_before_that_fire(anyio_backend: str) -> None:
    # At one instant the waits due wake first, then the fires due start: a run that sleeps
    # exactly one interval has finished when its next fire comes, which then runs.
    scheduler = TaskScheduler()
    events: list[tuple[str, datetime]] = []

    @scheduler.interval(minutes=1, id="minute", max_instances=1)
    async def minute() -> None:
        events.append(("start", scheduler.now()))
        await scheduler.sleep(60)
        events.append(("end", scheduler.now()))

    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:
        await clock.advance(minutes=3, seconds=30)
        job = await scheduler.get_job("minute")
    at = [start + timedelta(minutes=m) for m in range(1, 4)]
    assert events == [("start", at[0]), ("end", at[1]), ("start", at[1]), ("end", at[2]),
                      ("start", at[2])]  # fmt: skip
    assert (job.counts.success, job.counts.skipped) == (2, 0)


async def test_a_job_added_by_a_run_and_due_at_once_runs_at_that_instant(
    anyio_backend: str,
) -> None:
    # The schedule loop wakes for a schedule added at run time and fires it at once; the
    # clock waits for that before it moves on.
    scheduler = TaskScheduler()
    ran: list[tuple[str, datetime]] = []

    async def follow_up() -> None:
        ran.append(("follow-up", scheduler.now()))

    @scheduler.cron("*/5 * * * *", id="parent")
    async def parent() -> None:
        ran.append(("parent", scheduler.now()))
        if len(ran) == 2:  # the second fire, at 00:05
            await scheduler.add_date_job(follow_up, "follow-up", run_at=scheduler.now())

    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:
        await clock.advance(minutes=12)
    at = [start + timedelta(minutes=m) for m in (0, 5, 10)]
    assert ran == [("parent", at[0]), ("parent", at[1]), ("follow-up", at[1]), ("parent", at[2])]


async def test_retries_wait_their_delays_in_virtual_time(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    attempts: list[datetime] = []

    @scheduler.interval(hours=1, id="flaky", retries=2, retry_delay=30)
    async def flaky() -> None:
        attempts.append(scheduler.now())
        if len(attempts) < 3:
            raise ConnectionError("down")

    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:
        await clock.advance(hours=1, minutes=5)
        runs = await scheduler.get_runs("flaky")
    assert [run.attempt for run in runs] == [3, 2, 1]
    assert [run.outcome for run in runs] == [Outcome.success, Outcome.error, Outcome.error]
    first, second, third = attempts
    assert first == start + timedelta(hours=1)
    # retry_delay doubles from 30 s and is jittered to 50-100 % of that.
    assert timedelta(seconds=15) <= second - first <= timedelta(seconds=30)
    assert timedelta(seconds=30) <= third - second <= timedelta(seconds=60)
    assert all(run.scheduled_at == first for run in runs)


async def test_a_timeout_is_measured_in_virtual_time(anyio_backend: str) -> None:
    scheduler = TaskScheduler()

    @scheduler.interval(hours=1, id="stuck", timeout=600)
    async def stuck() -> None:
        await scheduler.sleep(3600)  # longer than its timeout

    @scheduler.interval(hours=1, id="quick", timeout=600)
    async def quick() -> None:
        await scheduler.sleep(300)

    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:
        await clock.advance(hours=1, minutes=30)
        (stuck_run,) = await scheduler.get_runs("stuck")
        (quick_run,) = await scheduler.get_runs("quick")
    assert stuck_run.outcome is Outcome.timed_out
    assert stuck_run.finished_at == start + timedelta(hours=1, minutes=10)
    assert stuck_run.error_message == "timed out after 600.0 s"
    assert quick_run.outcome is Outcome.success and quick_run.duration == 300


async def test_spring_forward_in_new_york(anyio_backend: str) -> None:
    scheduler = new_york()

    @scheduler.cron("30 2 * * *", id="nightly")
    async def nightly() -> None:
        pass

    @scheduler.cron("0 * * * *", id="hourly")
    async def hourly() -> None:
        pass

    async with virtual_time(scheduler, start=datetime(2026, 3, 7)) as clock:  # naive: New York
        await clock.advance_to(datetime(2026, 3, 10))
        nightly_runs = await scheduler.get_runs("nightly")
        hourly_runs = await scheduler.get_runs("hourly", limit=1000)
    times = [(run.scheduled_at.day, run.scheduled_at.hour, run.scheduled_at.minute)
             for run in reversed(nightly_runs)]  # fmt: skip
    # 02:30 does not exist on the 8th: it fires once, at 03:00 EDT (the documented policy).
    assert times == [(7, 2, 30), (8, 3, 0), (9, 2, 30)]
    on_the_8th = [run for run in hourly_runs if run.scheduled_at.day == 8]
    assert len(on_the_8th) == 23


async def test_fall_back_in_new_york(anyio_backend: str) -> None:
    scheduler = new_york()

    @scheduler.cron("30 1 * * *", id="nightly")
    async def nightly() -> None:
        pass

    @scheduler.cron("*/30 * * * *", id="half-hourly")
    async def half_hourly() -> None:
        pass

    async with virtual_time(scheduler, start=datetime(2026, 10, 31, 12)) as clock:
        await clock.advance_to(datetime(2026, 11, 1, 12))  # 25 hours: advance(days=1) is 24
        nightly_runs = await scheduler.get_runs("nightly")
        half_hourly_runs = await scheduler.get_runs("half-hourly", limit=1000)
    # A restricted hour fires at the first 01:30 only (EDT); */30 fires in both passes.
    (run,) = nightly_runs
    assert run.scheduled_at == datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK)
    assert run.scheduled_at.utcoffset() == timedelta(hours=-4)
    repeated = [
        (r.scheduled_at.minute, r.scheduled_at.utcoffset())
        for r in reversed(half_hourly_runs)
        if r.scheduled_at.day == 1 and r.scheduled_at.hour == 1
    ]
    assert repeated == [
        (0, timedelta(hours=-4)), (30, timedelta(hours=-4)),
        (0, timedelta(hours=-5)), (30, timedelta(hours=-5)),
    ]  # fmt: skip
    assert len(half_hourly_runs) == 2 * 25 + 1  # 12:00 to 12:00 (both) across a 25-hour day


async def test_a_week_of_every_minute_runs_each_minute_at_its_instant(anyio_backend: str) -> None:
    # A week across the fall-back in New York, every minute: 10,081 runs (in a few seconds;
    # a year is measured by bench/virtual_year.py). Each run sees its own instant as now,
    # in order, every real minute once - the repeated hour's wall times twice, as in real
    # time - and the history records each at its virtual scheduled time.
    scheduler = new_york()
    seen: list[datetime] = []

    @scheduler.cron("* * * * *", id="minutely")
    async def minutely() -> None:
        seen.append(scheduler.now())

    start = datetime(2026, 10, 29, tzinfo=NEW_YORK)
    async with virtual_time(scheduler, start=start) as clock:
        await clock.advance(days=7)
        job = await scheduler.get_job("minutely")
        runs = await scheduler.get_runs("minutely", limit=1000)
    first = start.astimezone(UTC)  # aware datetimes in one zone add by wall time: in UTC
    minutes = [first + timedelta(minutes=i) for i in range(7 * 1440 + 1)]
    assert [t.astimezone(UTC) for t in seen] == minutes
    assert job.counts.success == len(minutes) == 10_081
    assert job.next_run_time is not None
    assert job.next_run_time.astimezone(UTC) == first + timedelta(days=7, minutes=1)
    # each recorded at its fire time, started and finished then (time stands still in a run)
    history = [
        tuple(
            t.astimezone(UTC) if t else None for t in (r.scheduled_at, r.started_at, r.finished_at)
        )
        for r in reversed(runs)
    ]
    assert history == [(t, t, t) for t in minutes[-1000:]]
    one_oclock = [t.utcoffset() for t in seen if (t.day, t.hour) == (1, 1)]
    assert one_oclock == [timedelta(hours=-4)] * 60 + [timedelta(hours=-5)] * 60


async def test_run_job_waits_in_virtual_time_too(anyio_backend: str) -> None:
    scheduler = TaskScheduler()

    async def nap() -> None:
        await scheduler.sleep(60)

    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:
        await scheduler.add_date_job(nap, "nap", datetime(2030, 1, 1, tzinfo=UTC))
        running = await scheduler.run_job("nap", wait=False)
        await clock.advance(seconds=59)
        assert (await scheduler.get_job("nap")).running == 1
        await clock.advance(seconds=1)
        (run,) = await scheduler.get_runs("nap")
    assert running.outcome is None
    assert run.outcome is Outcome.success and run.finished_at == start + timedelta(minutes=1)


async def test_hooks_have_run_when_advance_returns(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    heard: list[datetime] = []

    @scheduler.interval(minutes=1, id="job")
    async def job() -> None:
        pass

    @scheduler.on_run_finished
    async def hook(run: object) -> None:
        heard.append(scheduler.now())

    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:
        await clock.advance(minutes=5)
        assert len(heard) == 5


async def test_clock_sleep_waits_for_an_advance(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    woke: list[datetime] = []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:

        async def sleeper() -> None:
            await clock.sleep(30)
            woke.append(clock.now())

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(sleeper)
            await anyio.wait_all_tasks_blocked()
            await clock.advance(seconds=29)
            assert woke == []
            await clock.advance(seconds=31)
    # Not a run, yet it woke at its instant (before the clock went on to the end).
    assert woke == [start + timedelta(seconds=30)]


async def test_a_run_awaiting_real_time_is_named_when_it_holds_time_up(
    anyio_backend: str,
) -> None:
    scheduler = TaskScheduler(SchedulerConfig(shutdown_timeout=0.2))

    @scheduler.interval(minutes=1, id="real-sleeper")
    async def real_sleeper() -> None:
        await anyio.sleep(30)  # real time: the virtual clock cannot skip it

    async with virtual_time(scheduler, stall_timeout=0.3) as clock:
        with pytest.raises(WaitTimeoutError, match="'real-sleeper' neither finished"):
            await clock.advance(minutes=1)


async def test_leaving_cancels_runs_that_wait_for_virtual_time(anyio_backend: str) -> None:
    scheduler = TaskScheduler()

    @scheduler.interval(minutes=1, id="long")
    async def long() -> None:
        await scheduler.sleep(3600)

    began = time.monotonic()
    async with virtual_time(scheduler) as clock:
        await clock.advance(minutes=1)
    assert time.monotonic() - began < 10  # not shutdown_timeout (25 s) per run
    (run,) = await scheduler.get_runs("long")
    assert run.outcome is Outcome.cancelled
    assert scheduler.state == "stopped"


async def test_a_persistent_store_is_refused(anyio_backend: str, tmp_path: Path) -> None:
    scheduler = TaskScheduler(SchedulerConfig(store=f"sqlite:///{tmp_path / 'jobs.db'}"))
    with pytest.raises(UnsupportedError, match=r"memory store only.*sqlite://"):
        virtual_time(scheduler)


async def test_twice_or_nested_is_a_clear_error(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    clock = virtual_time(scheduler)
    async with clock:
        with pytest.raises(SchedulerStateError, match="already running"):
            async with virtual_time(scheduler):
                pass
        with pytest.raises(SchedulerStateError, match="entered already"):
            async with clock:
                pass
    with pytest.raises(SchedulerStateError, match="has ended"):
        await clock.advance(seconds=1)
    async with scheduler:  # a running scheduler cannot be put under virtual time
        with pytest.raises(SchedulerStateError, match="already running"):
            async with virtual_time(scheduler):
                pass
    async with virtual_time(scheduler) as again:  # a new clock, once stopped: fine
        await again.advance(seconds=1)


async def test_bad_moves_are_refused(anyio_backend: str) -> None:
    scheduler = new_york()
    async with virtual_time(scheduler, start=datetime(2026, 1, 1, 12)) as clock:
        assert isinstance(clock, VirtualClock)
        assert clock.now() == datetime(2026, 1, 1, 12, tzinfo=NEW_YORK)
        with pytest.raises(InvalidValueError, match="only moves forward"):
            await clock.advance(seconds=-1)
        with pytest.raises(InvalidValueError, match="only moves forward"):
            await clock.advance_to(datetime(2026, 1, 1, 11))
        with pytest.raises(InvalidValueError, match="not both"):
            await clock.advance(timedelta(hours=1), hours=1)
        await clock.advance(timedelta(minutes=90))
        assert clock.now() == datetime(2026, 1, 1, 13, 30, tzinfo=NEW_YORK)
    with pytest.raises(InvalidValueError, match="stall_timeout"):
        virtual_time(scheduler, stall_timeout=0)


async def test_scheduler_time_is_real_outside_virtual_time(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    before = datetime.now(UTC)
    assert before <= scheduler.now() <= datetime.now(UTC)
    began = time.monotonic()
    await scheduler.sleep(0.05)
    assert time.monotonic() - began >= 0.04
    async with scheduler:  # and real while running normally
        await scheduler.add_interval_job(lambda: None, "real", seconds=0.05)
        (run, *_) = await wait_for_runs(scheduler, "real")
    assert run.started_at is not None and run.started_at >= before


async def test_quick_instants_never_add_up_to_a_stall(anyio_backend: str) -> None:
    scheduler = TaskScheduler()

    @scheduler.interval(minutes=1, id="tick")
    async def tick() -> None:
        pass

    async with virtual_time(scheduler, stall_timeout=0.5) as clock:
        await clock.advance(days=3)  # 4,320 instants: far more than 0.5 s in all, on any box
        assert (await scheduler.get_job("tick")).counts.success == 4320


async def test_jitter_delays_starts_in_virtual_time(anyio_backend: str) -> None:
    scheduler = TaskScheduler()

    @scheduler.interval(hours=1, id="jittery", jitter=600)
    async def jittery() -> None:
        pass

    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with virtual_time(scheduler, start=start) as clock:
        await clock.advance(days=1, minutes=15)
        runs = await scheduler.get_runs("jittery", limit=100)
    delays = [(run.started_at - run.scheduled_at).total_seconds() for run in runs]  # type: ignore[operator]
    assert len(runs) == 24 and all(0 <= delay <= 600 for delay in delays)
    assert len(set(delays)) > 1  # random within the jitter, each one waited in virtual time


async def test_waits_in_a_jobs_child_tasks_hold_time_up(anyio_backend: str) -> None:
    """The documented limit: only the run's own task is counted."""
    scheduler = TaskScheduler(SchedulerConfig(shutdown_timeout=0.2))

    @scheduler.interval(minutes=1, id="fan-out")
    async def fan_out() -> None:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(scheduler.sleep, 10)

    async with virtual_time(scheduler, stall_timeout=0.3) as clock:
        with pytest.raises(WaitTimeoutError, match="'fan-out' neither finished"):
            await clock.advance(minutes=1)
