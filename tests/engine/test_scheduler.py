"""Declaring, adding, listing, pausing, resuming and removing jobs."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest
from helpers import noop

from library.components.scheduling.task_scheduler import (
    DuplicateJobError,
    JobInfo,
    JobNotFoundError,
    SchedulerConfig,
    SchedulerStateError,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio

NY = ZoneInfo("America/New_York")


def test_decorators_return_the_function_unchanged() -> None:
    scheduler = TaskScheduler()

    async def job(x: int = 1) -> int:
        return x

    assert scheduler.interval(seconds=5)(job) is job
    assert scheduler.cron("0 2 * * *", id="c")(job) is job
    assert scheduler.at(datetime(2030, 1, 1), id="d")(job) is job


async def test_default_id_is_module_and_qualname() -> None:
    scheduler = TaskScheduler()
    scheduler.interval(seconds=5)(noop)
    (info,) = await scheduler.get_jobs()
    assert info.id == "helpers:noop"  # noop is helpers.noop
    assert info.func == "helpers:noop"
    assert info.name == "noop"


def test_duplicate_id_fails_at_declaration() -> None:
    scheduler = TaskScheduler()
    scheduler.interval(seconds=5)(noop)
    with pytest.raises(DuplicateJobError, match="'helpers:noop'"):
        scheduler.cron("* * * * *")(noop)
    assert isinstance(DuplicateJobError("x"), ValueError)


async def test_duplicate_id_at_run_time_keeps_the_old_definition(anyio_backend: str) -> None:
    # Trap 11: the engine's default conflict policy would keep one definition silently.
    scheduler = TaskScheduler()
    async with scheduler:
        await scheduler.add_interval_job(noop, "job", seconds=30)
        with pytest.raises(DuplicateJobError):
            await scheduler.add_interval_job(noop, "job", seconds=1)
        info = await scheduler.get_job("job")
    assert info.trigger.interval_seconds == 30


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_instances": 0}, "job 'j': invalid max_instances 0"),
        ({"timeout": -1}, "job 'j': invalid timeout -1"),
        ({"misfire_grace_time": "soon"}, "job 'j': invalid misfire_grace_time 'soon'"),
        ({"max_instance": 2}, "unknown option 'max_instance'; valid options: id, name"),
        ({"args": "abc"}, "args must be a list or tuple"),
    ],
)
def test_bad_options_fail_at_declaration_naming_the_value(
    options: dict[str, object], message: str
) -> None:
    scheduler = TaskScheduler()
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        scheduler.interval(seconds=5, id="j", **options)(noop)  # type: ignore[arg-type]
    assert not scheduler._registry.by_id


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "invalid interval: it must be positive"),
        ({"seconds": -5}, "invalid interval seconds=-5: seconds must be a finite number >= 0"),
        (
            {"seconds": 5, "start": datetime(2030, 1, 2), "end": datetime(2030, 1, 1)},
            "end 2030-01-01T00:00:00\\+00:00 is before start",
        ),
    ],
)
def test_bad_interval_fails_at_declaration(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TaskScheduler().interval(**kwargs)(noop)  # type: ignore[arg-type]


def test_decorating_while_running_points_to_add_methods() -> None:
    from library.components.scheduling.task_scheduler._lifecycle import Phase

    scheduler = TaskScheduler()
    scheduler._lifecycle.phase = Phase.running
    with pytest.raises(SchedulerStateError, match="add_interval_job"):
        scheduler.interval(seconds=1)(noop)


async def test_jobs_are_listed_before_start_with_no_next_run_time() -> None:
    scheduler = TaskScheduler()
    scheduler.interval(minutes=5, id="every5")(noop)
    (info,) = await scheduler.get_jobs()
    assert info.next_run_time is None
    assert info.trigger.type == "interval"
    assert info.trigger.description == "Every 5 minutes"
    assert info.paused is False


async def test_interval_first_run_is_one_interval_after_start(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="hourly")(noop)
    before = datetime.now(timezone.utc)
    async with scheduler:
        info = await scheduler.get_job("hourly")
    after = datetime.now(timezone.utc)
    assert info.next_run_time is not None
    assert before + timedelta(hours=1) <= info.next_run_time <= after + timedelta(hours=1)


async def test_interval_start_in_the_past_keeps_its_phase(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=5, seconds=10)
    scheduler.interval(hours=1, start=start, id="phased")(noop)
    async with scheduler:
        info = await scheduler.get_job("phased")
    assert info.next_run_time == start + timedelta(hours=6)


async def test_next_run_time_is_in_the_configured_timezone(anyio_backend: str) -> None:
    scheduler = TaskScheduler(SchedulerConfig(timezone="America/New_York"))
    scheduler.interval(minutes=1, id="m")(noop)
    async with scheduler:
        info = await scheduler.get_job("m")
    assert info.next_run_time is not None
    assert info.next_run_time.tzinfo == NY


async def test_naive_datetimes_are_read_in_the_configured_timezone(anyio_backend: str) -> None:
    # Trap 15: APScheduler reads naive datetimes in the machine's local zone.
    scheduler = TaskScheduler(SchedulerConfig(timezone="America/New_York"))
    when = datetime.now(NY).replace(tzinfo=None, microsecond=0) + timedelta(days=2)
    scheduler.at(when, id="once")(noop)
    async with scheduler:
        info = await scheduler.get_job("once")
    assert info.next_run_time == when.replace(tzinfo=NY)
    assert info.trigger.run_at == when.replace(tzinfo=NY)


async def test_cron_job_runs_in_the_configured_timezone(anyio_backend: str) -> None:
    scheduler = TaskScheduler(SchedulerConfig(timezone="America/New_York"))
    scheduler.cron(hour=2, minute=0, id="nightly")(noop)
    async with scheduler:
        info = await scheduler.get_job("nightly")
    assert info.next_run_time is not None
    local = info.next_run_time.astimezone(NY)
    assert (local.hour, local.minute, local.second) == (2, 0, 0) or local.hour == 3  # DST gap
    assert info.trigger.type == "cron"


async def test_past_one_time_job_is_skipped_with_a_warning(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = TaskScheduler()
    ran = []

    @scheduler.at(datetime(2024, 12, 31, 23, 59))
    async def new_years_countdown() -> None:
        ran.append(1)

    with caplog.at_level(logging.WARNING):
        async with scheduler:
            await anyio.sleep(0.2)
            info = await scheduler.get_job(f"{__name__}:{new_years_countdown.__qualname__}")
    assert ran == []
    assert info.next_run_time is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("new_years_countdown" in m and "2024-12-31T23:59:00" in m for m in warnings)


async def test_date_job_added_at_run_time_runs_even_if_just_past(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    async with scheduler:
        await scheduler.add_date_job(noop, "now", run_at=datetime.now(timezone.utc))
        (run,) = await wait_for_runs(scheduler, "now")
    assert run.outcome == "success"


async def test_date_job_fires_once(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    calls: list[int] = []

    async def once() -> None:
        calls.append(1)

    async with scheduler:
        run_at = datetime.now(timezone.utc) + timedelta(milliseconds=100)
        await scheduler.add_date_job(once, "once", run_at=run_at)
        await wait_for_runs(scheduler, "once")
        await anyio.sleep(0.3)
        info = await scheduler.get_job("once")
    assert calls == [1]
    assert info.next_run_time is None


async def test_unknown_ids_raise_job_not_found(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    async with scheduler:
        for call in (
            scheduler.get_job,
            scheduler.pause_job,
            scheduler.resume_job,
            scheduler.remove_job,
            scheduler.run_job,
            scheduler.get_runs,
        ):
            with pytest.raises(JobNotFoundError, match="no job with id 'nope'"):
                await call("nope")
    assert issubclass(JobNotFoundError, LookupError)


async def test_pause_and_resume_before_start(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    scheduler.interval(seconds=0.05, id="fast")(noop)
    await scheduler.pause_job("fast")
    async with scheduler:
        await anyio.sleep(0.3)
        info = await scheduler.get_job("fast")
        assert info.paused and info.next_run_time is None
        assert info.counts.success == 0
        resumed = await scheduler.resume_job("fast")
        assert not resumed.paused and resumed.next_run_time is not None
        await wait_for_runs(scheduler, "fast", 2)


async def test_paused_job_does_not_run_and_resume_does_not_catch_up(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    calls: list[float] = []

    async def job() -> None:
        calls.append(anyio.current_time())

    async with scheduler:
        await scheduler.add_interval_job(job, "j", seconds=0.1)
        await wait_for_runs(scheduler, "j", 1)
        paused = await scheduler.pause_job("j")
        assert paused.paused and paused.next_run_time is None
        assert (await scheduler.pause_job("j")).paused  # idempotent
        count_at_pause = len(calls)
        await anyio.sleep(0.6)  # 6 fire times pass while paused
        assert len(calls) <= count_at_pause + 1  # a fire already queued may still run
        count_at_resume = len(calls)
        resumed = await scheduler.resume_job("j")
        assert resumed.next_run_time is not None
        assert resumed.next_run_time >= datetime.now(timezone.utc) - timedelta(seconds=0.05)
        await anyio.sleep(0.05)
        # No burst of catch-up runs for the fires missed while paused.
        assert len(calls) <= count_at_resume + 1
        await wait_for_runs(scheduler, "j", count_at_resume + 2)


async def test_remove_job(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    async with scheduler:
        await scheduler.add_interval_job(noop, "gone", seconds=0.05)
        await wait_for_runs(scheduler, "gone")
        await scheduler.remove_job("gone")
        assert await scheduler.get_jobs() == []
        with pytest.raises(JobNotFoundError):
            await scheduler.get_job("gone")
        # The id is free again.
        await scheduler.add_interval_job(noop, "gone", seconds=60)
        assert [j.id for j in await scheduler.get_jobs()] == ["gone"]


async def test_add_methods_work_before_start(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    info = await scheduler.add_cron_job(func=noop, job_id="custom-job", cron_expression="0 2 * * *")
    assert info.id == "custom-job" and info.next_run_time is None
    await scheduler.add_interval_job(func=noop, job_id="fast", seconds=0.05)
    async with scheduler:
        assert (await scheduler.get_job("custom-job")).next_run_time is not None
        await wait_for_runs(scheduler, "fast")


async def test_job_info_is_json_ready(anyio_backend: str) -> None:
    scheduler = TaskScheduler(SchedulerConfig(timezone="Europe/London"))
    scheduler.cron("30 6 * * mon-fri", id="weekday", timeout=5, max_instances=2)(noop)
    async with scheduler:
        info = await scheduler.get_job("weekday")
    data = json.loads(info.model_dump_json())
    assert data["id"] == "weekday"
    assert data["timeout"] == 5 and data["max_instances"] == 2
    assert data["trigger"]["type"] == "cron"
    assert data["trigger"]["expression"] == "30 6 * * mon-fri"
    local = datetime.fromisoformat(data["next_run_time"]).astimezone(ZoneInfo("Europe/London"))
    assert (local.hour, local.minute) == (6, 30)
    assert JobInfo.model_validate(data) == info


async def test_job_options_come_from_job_defaults(anyio_backend: str) -> None:
    config = SchedulerConfig(
        job_defaults={"coalesce": False, "max_instances": 3, "misfire_grace_time": 60}
    )
    scheduler = TaskScheduler(config)
    scheduler.interval(seconds=5, id="a")(noop)
    scheduler.interval(seconds=5, id="b", max_instances=1, timeout=2)(noop)
    a, b = await scheduler.get_jobs()
    assert (a.coalesce, a.max_instances, a.misfire_grace_time, a.timeout) == (False, 3, 60, None)
    assert (b.coalesce, b.max_instances, b.misfire_grace_time, b.timeout) == (False, 1, 60, 2)


async def test_args_and_kwargs_are_passed(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    seen: list[tuple[int, str]] = []

    async def job(number: int, *, word: str) -> None:
        seen.append((number, word))

    async with scheduler:
        await scheduler.add_interval_job(job, "j", seconds=0.05, args=[7], kwargs={"word": "hi"})
        await wait_for_runs(scheduler, "j")
    assert seen[0] == (7, "hi")


async def test_start_twice_is_an_error_and_shutdown_when_stopped_is_a_no_op(
    anyio_backend: str,
) -> None:
    scheduler = TaskScheduler()
    await scheduler.shutdown()
    async with scheduler:
        assert scheduler.state == "running"
        with pytest.raises(SchedulerStateError, match="already running"):
            await scheduler.start()
    assert scheduler.state == "stopped"
    await scheduler.shutdown()


async def test_scheduler_can_start_again_after_shutdown(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    scheduler.interval(seconds=0.05, id="fast")(noop)
    async with scheduler:
        await wait_for_runs(scheduler, "fast", 1)
    async with scheduler:
        first = (await scheduler.get_job("fast")).counts.success
        await wait_for_runs(scheduler, "fast", first + 2)


async def test_restart_does_not_fire_interval_jobs_at_once(anyio_backend: str) -> None:
    # Trap 11: a re-added IntervalTrigger with the default start time fires immediately.
    scheduler = TaskScheduler()
    calls: list[int] = []

    @scheduler.interval(seconds=30, id="slow")
    async def slow() -> None:
        calls.append(1)

    for _ in range(3):
        async with scheduler:
            await anyio.sleep(0.1)
    assert calls == []


async def sample_job(x: int = 0) -> None:
    pass


async def test_memory_store_jobs_share_one_engine_task(anyio_backend: str) -> None:
    # Memory per idle schedule: on the memory store a job costs no engine task of its own;
    # each fire still runs its own job's callable and options, found by the schedule id.
    scheduler = TaskScheduler()
    runs: list[str] = []

    async def record(name: str) -> None:
        runs.append(name)

    scheduler.interval(seconds=0.05, id="a", kwargs={"name": "a"}, max_instances=1)(record)
    scheduler.interval(seconds=0.05, id="b", args=["b"])(record)
    async with scheduler:
        await wait_for_runs(scheduler, "a", 2)
        await wait_for_runs(scheduler, "b", 2)
        await scheduler.remove_job("a")
        await scheduler.add_interval_job(noop, "c", hours=1)
        engine = scheduler._lifecycle.engine
        assert engine is not None
        tasks = await engine.data_store.get_tasks()
        schedules = await engine.data_store.get_schedules()
    assert len(tasks) == 1 and {s.task_id for s in schedules} == {tasks[0].id}
    assert tasks[0].max_running_jobs is None  # max_instances is ours, per job
    assert {s.id for s in schedules} == {"b", "c"} and {"a", "b"} <= set(runs)


async def test_persistent_store_jobs_keep_their_own_engine_task(
    anyio_backend: str, tmp_path: Path
) -> None:
    # On a persistent store, a job's task limits its runs across processes (max_instances).
    scheduler = TaskScheduler(SchedulerConfig(store=f"sqlite:///{tmp_path}/jobs.db"))
    scheduler.interval(hours=1, id="a", max_instances=2)(sample_job)
    async with scheduler:
        await scheduler.add_interval_job(sample_job, "b", hours=1)
        engine = scheduler._lifecycle.engine
        assert engine is not None
        tasks = {task.id: task for task in await engine.data_store.get_tasks()}
    assert set(tasks) == {"a", "b"}
    assert (tasks["a"].max_running_jobs, tasks["b"].max_running_jobs) == (2, 1)


def test_jobs_share_what_is_equal_across_them() -> None:
    # Memory per idle schedule: no per-job copy of an empty kwargs dict, of the callable's
    # name or of an equal interval.
    scheduler = TaskScheduler()
    for index in range(3):
        scheduler.interval(hours=1, id=f"j{index}")(sample_job)
    scheduler.interval(hours=1, id="k", kwargs={"x": 1})(sample_job)
    j0, j1, k = (scheduler._registry.by_id[key].spec for key in ("j0", "j1", "k"))
    assert j0.kwargs is j1.kwargs and j0.kwargs == {}
    assert k.kwargs == {"x": 1} and k.kwargs is not j0.kwargs
    assert j0.func_ref is j1.func_ref and j0.trigger is j1.trigger is k.trigger
    with pytest.raises(TypeError, match="share this empty dict"):
        j0.kwargs["x"] = 1
