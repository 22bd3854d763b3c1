"""Schedules that survive restarts: SQLite and PostgreSQL stores, reconciled at start, on
asyncio and on trio.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

from library.components.scheduling.task_scheduler import (
    JobNotFoundError,
    Outcome,
    RunInfo,
    SchedulerConfig,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio

CALLS: list[str] = []


@pytest.fixture(autouse=True)
def clear_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


async def tick() -> None:
    CALLS.append("tick")


async def other() -> None:
    CALLS.append("other")


async def greet(name: str, *, punctuation: str = "!") -> None:
    CALLS.append(f"hello {name}{punctuation}")


@pytest.fixture
def store(sql_url: str) -> str:
    return sql_url


def scheduler_for(store: str, **job: object) -> TaskScheduler:
    scheduler = TaskScheduler(SchedulerConfig(store=store))
    scheduler.interval(id="tick", **{"hours": 1, **job})(tick)  # type: ignore[arg-type]
    return scheduler


async def test_schedule_and_next_fire_time_survive_a_restart(store: str) -> None:
    first = scheduler_for(store)
    async with first:
        before = await first.get_job("tick")
    second = scheduler_for(store)
    async with second:
        after = await second.get_job("tick")
    assert after.next_run_time == before.next_run_time  # unchanged definition: kept
    assert after.trigger == before.trigger


async def test_pause_survives_a_restart(store: str) -> None:
    first = scheduler_for(store, hours=0, seconds=0.1)
    async with first:
        await first.pause_job("tick")
    CALLS.clear()  # on a busy machine, it may have fired once before the pause
    second = scheduler_for(store, hours=0, seconds=0.1)
    async with second:
        info = await second.get_job("tick")
        await anyio.sleep(0.4)
    assert info.paused and info.next_run_time is None
    assert CALLS == []


async def test_changed_definition_is_updated_without_an_extra_run(store: str) -> None:
    first = scheduler_for(store)
    async with first:
        pass
    second = scheduler_for(store, hours=2)
    started = datetime.now(timezone.utc)
    async with second:
        info = await second.get_job("tick")
        await anyio.sleep(0.3)
    assert info.trigger.interval_seconds == 7200
    assert info.next_run_time is not None
    assert info.next_run_time - started >= timedelta(hours=2) - timedelta(seconds=5)
    assert CALLS == []  # trap 11: a replaced interval trigger would fire at once


async def test_jobs_no_longer_declared_are_removed_runtime_jobs_are_kept(store: str) -> None:
    first = scheduler_for(store)
    first.cron("0 3 * * *", id="old")(other)
    async with first:
        await first.add_interval_job(greet, "greet", seconds=0.1, args=["ada"])
    second = scheduler_for(store)
    async with second:
        ids = [job.id for job in await second.get_jobs()]
        await wait_for_runs(second, "greet")
    assert sorted(ids) == ["greet", "tick"]
    assert "hello ada!" in CALLS


async def test_apps_in_other_namespaces_keep_their_jobs(
    store: str, caplog: pytest.LogCaptureFixture
) -> None:
    billing = TaskScheduler(SchedulerConfig(store=store, namespace="billing"))
    billing.cron("0 2 * * *", id="billing-nightly")(tick)
    async with billing:
        await billing.add_interval_job(greet, "billing-greet", hours=1, args=["ada"])
    emails = TaskScheduler(SchedulerConfig(store=store, namespace="emails"))
    emails.cron("0 3 * * *", id="emails-nightly")(other)
    async with emails:
        here = sorted(job.id for job in await emails.get_jobs())
    again = TaskScheduler(SchedulerConfig(store=store, namespace="billing"))
    again.cron("0 2 * * *", id="billing-nightly")(tick)
    async with again:
        there = sorted(job.id for job in await again.get_jobs())
    # Each app sees its own jobs; nothing of the other was removed or taken over.
    assert here == ["emails-nightly"]
    assert there == ["billing-greet", "billing-nightly"]
    assert "no longer declared" not in caplog.text


async def test_a_job_no_longer_declared_is_removed_with_a_warning(
    store: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = TaskScheduler(SchedulerConfig(store=store, namespace="billing"))
    first.cron("0 2 * * *", id="billing-nightly")(tick)
    first.cron("0 3 * * *", id="billing-old")(other)
    async with first:
        pass
    second = TaskScheduler(SchedulerConfig(store=store, namespace="billing"))
    second.cron("0 2 * * *", id="billing-nightly")(tick)
    async with second:
        ids = [job.id for job in await second.get_jobs()]
    assert ids == ["billing-nightly"]
    [removal] = [r for r in caplog.records if "no longer declared" in r.getMessage()]
    assert removal.levelname == "WARNING"
    assert "'billing-old'" in removal.getMessage() and "'billing'" in removal.getMessage()


async def test_an_id_declared_by_another_namespace_fails_start_and_keeps_its_job(
    store: str,
) -> None:
    billing = TaskScheduler(SchedulerConfig(store=store, namespace="billing"))
    billing.cron("0 2 * * *", id="nightly")(tick)
    async with billing:
        pass
    emails = TaskScheduler(SchedulerConfig(store=store, namespace="emails"))
    emails.cron("0 3 * * *", id="nightly")(other)
    with pytest.raises(ValueError, match=r"'nightly'.*namespace 'emails'.*'billing'"):
        async with emails:
            pass
    again = TaskScheduler(SchedulerConfig(store=store, namespace="billing"))
    again.cron("0 2 * * *", id="nightly")(tick)
    async with again:
        job = await again.get_job("nightly")
    assert job.trigger.expression == "0 2 * * *"


async def backlog_after_restart(store: str, **job: object) -> list[RunInfo]:
    """The runs of a restart after ~2 s down: the schedule (every 0.5 s) ends before the
    restart, so every run of the second start is a catch-up run - identified by who ran it,
    not by a wall-clock window (which counted the next regular fire on a busy machine).
    The store's tables exist before: creating them (~1 s on a busy machine) would eat into
    the backlog."""
    async with TaskScheduler(SchedulerConfig(store=store)):
        pass
    end = datetime.now(timezone.utc) + timedelta(seconds=2.5)
    job = {"hours": 0, "seconds": 0.5, "end": end, **job}
    first = scheduler_for(store, **job)
    async with first:
        await wait_for_runs(first, "tick")
    await anyio.sleep(max(0.0, (end - datetime.now(timezone.utc)).total_seconds()) + 0.3)
    second = scheduler_for(store, **job)
    async with second:
        await anyio.sleep(0.8)
        here = (await second.get_status()).worker_id  # the history is every worker's
        runs = await second.get_runs("tick")
    return [run for run in runs if run.worker == here and run.started_at is not None]


async def test_coalesced_backlog_runs_once_after_a_restart(store: str) -> None:
    backlog = await backlog_after_restart(store)
    assert [run.outcome for run in backlog] == [Outcome.success]


async def test_each_missed_fire_runs_without_coalescing(store: str) -> None:
    backlog = await backlog_after_restart(store, coalesce=False)
    assert len(backlog) >= 3  # 3, or more when starting took long on a busy machine
    assert len({run.scheduled_at for run in backlog}) == len(backlog)
    assert all(run.outcome is Outcome.success for run in backlog)


async def test_missed_fires_past_the_grace_time_are_recorded_not_run(store: str) -> None:
    job = {"hours": 0, "seconds": 0.2, "misfire_grace_time": 0.1, "coalesce": False}
    first = scheduler_for(store, **job)
    async with first:
        await wait_for_runs(first, "tick")
    await anyio.sleep(0.7)
    second = scheduler_for(store, **job)
    async with second:
        (missed, *_) = await wait_for_runs(second, "tick", outcome=Outcome.missed)
    assert "misfire_grace_time is 0.1 s" in (missed.error_message or "")


async def test_run_time_jobs_are_adopted_with_their_options(store: str) -> None:
    first = TaskScheduler(SchedulerConfig(store=store))
    async with first:
        await first.add_cron_job(
            greet, "nightly", "0 3 * * *", kwargs={"name": "bob", "punctuation": "?"},
            timeout=30, max_instances=2, paused=True,
        )  # fmt: skip
    second = TaskScheduler(SchedulerConfig(store=store))
    async with second:
        info = await second.get_job("nightly")
        await second.resume_job("nightly")
        run = await second.run_job("nightly")
    assert (info.timeout, info.max_instances, info.paused) == (30, 2, True)
    assert info.trigger.expression == "0 3 * * *"
    assert run.outcome is Outcome.success
    assert CALLS == ["hello bob?"]


async def test_removed_run_time_job_stays_removed(store: str) -> None:
    first = TaskScheduler(SchedulerConfig(store=store))
    async with first:
        await first.add_interval_job(other, "temp", hours=1)
        await first.remove_job("temp")
    second = TaskScheduler(SchedulerConfig(store=store))
    async with second:
        assert await second.get_jobs() == []


def test_unstorable_callables_fail_at_declaration(tmp_path: Path) -> None:
    scheduler = TaskScheduler(SchedulerConfig(store=f"sqlite:///{tmp_path}/jobs.db"))

    async def local() -> None:
        pass

    with pytest.raises(ValueError, match=r"job 'local' cannot be stored: .*<locals>"):
        scheduler.interval(seconds=5, id="local")(local)
    with pytest.raises(ValueError, match="job 'lambda' cannot be stored"):
        scheduler.interval(seconds=5, id="lambda")(lambda: None)


async def test_unstorable_args_fail_when_added(tmp_path: Path) -> None:
    scheduler = TaskScheduler(SchedulerConfig(store=f"sqlite:///{tmp_path}/jobs.db"))
    with pytest.raises(ValueError, match="job 'g' cannot be stored: its args and kwargs"):
        await scheduler.add_interval_job(greet, "g", seconds=5, args=[object()])
    assert await scheduler.get_jobs() == []


async def test_several_schedulers_starting_together_reconcile_once(pg_url: str) -> None:
    schedulers = [scheduler_for(pg_url, hours=0, seconds=0.2) for _ in range(3)]

    async def run(scheduler: TaskScheduler) -> None:
        async with scheduler:
            await anyio.sleep(1.1)

    async with anyio.create_task_group() as tg:
        for scheduler in schedulers:
            tg.start_soon(run, scheduler)
    # Each fire ran once across the three (they share the store), roughly five fires.
    runs = [run for s in schedulers for run in await s.get_runs("tick")]
    fire_times = [run.scheduled_at for run in runs if run.outcome is Outcome.success]
    assert len(fire_times) == len(set(fire_times))
    assert 3 <= len(fire_times) <= 7


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis.asyncio: on trio, a clear error
async def test_postgres_store_with_a_redis_event_broker(pg_url: str, redis_url: str) -> None:
    first = TaskScheduler(SchedulerConfig(store=pg_url, event_broker=redis_url))
    second = TaskScheduler(SchedulerConfig(store=pg_url, event_broker=redis_url))
    first.interval(seconds=0.2, id="tick")(tick)
    second.interval(seconds=0.2, id="tick")(tick)
    async with first, second:
        await anyio.sleep(1.1)
    runs = [r for s in (first, second) for r in await s.get_runs("tick")]
    fires = [r.scheduled_at for r in runs if r.outcome is Outcome.success]
    assert len(fires) == len(set(fires)) >= 3


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_redis_event_broker_on_trio_is_a_clear_error(pg_url: str) -> None:
    scheduler = TaskScheduler(SchedulerConfig(store=pg_url, event_broker="redis://127.0.0.1:1/0"))
    with pytest.raises(RuntimeError, match=r"redis://127.0.0.1:1/0 needs asyncio.*this is trio"):
        await scheduler.start()
    assert scheduler.state == "stopped"


async def test_a_job_added_by_another_process_runs_here_too(pg_url: str) -> None:
    adder = TaskScheduler(SchedulerConfig(store=pg_url))
    other_process = TaskScheduler(SchedulerConfig(store=pg_url))
    async with adder, other_process:
        await adder.add_interval_job(greet, "greet", seconds=0.1, args=["eve"])
        # Until the cluster has ten successes (about 1 s; a busy machine may take longer).
        with anyio.fail_after(20):
            while (await adder.get_job("greet")).counts.success < 10:
                await anyio.sleep(0.05)
    # Read once both have stopped (each then answers from its own runs): no run can start
    # between the two reads and the count. A busy machine may have run more than 20.
    here = await other_process.get_runs("greet", limit=1000)
    there = await adder.get_runs("greet", limit=1000)
    assert here, "the other process runs its share of the fires"
    fires = [r.scheduled_at for r in here + there if r.outcome is Outcome.success]
    assert len(fires) == len(set(fires)) >= 8
    assert CALLS.count("hello eve!") == len(fires)


async def test_a_job_another_process_added_is_managed_here_before_it_ever_ran_here(
    pg_url: str,
) -> None:
    """Each worker answers for every job of the store: one added at run time by another
    process is found here at once (it was a JobNotFoundError until a fire of it ran here)."""
    adder = TaskScheduler(SchedulerConfig(store=pg_url))
    other_process = TaskScheduler(SchedulerConfig(store=pg_url))
    async with adder, other_process:
        added = await adder.add_interval_job(greet, "greet", hours=1, args=["eve"])
        job = await other_process.get_job("greet")
        assert (job.id, job.trigger, job.next_run_time) == (
            "greet",
            added.trigger,
            added.next_run_time,
        )
        assert [job.id for job in await other_process.get_jobs()] == ["greet"]
        assert await other_process.get_runs("greet") == []
        assert (await other_process.pause_job("greet")).paused
        assert (await adder.get_job("greet")).paused
        assert not (await other_process.resume_job("greet")).paused
        run = await other_process.run_job("greet")
        assert run.outcome is Outcome.success and CALLS == ["hello eve!"]
        with anyio.fail_after(5):  # the history is written every 0.2 s
            while [r.run_id for r in await adder.get_runs("greet")] != [run.run_id]:
                await anyio.sleep(0.05)
        assert len(await other_process.preview("greet", 3)) == 3
        await other_process.remove_job("greet")
        assert await other_process.get_jobs() == []
    with pytest.raises(JobNotFoundError):
        await other_process.get_job("nothing-like-it")


async def test_sql_stores_recover_from_a_dead_process_within_short_leases(store: str) -> None:
    """APScheduler's defaults (30 s leases, a clean-up every 15 min) would leave a dead
    process's claims and running slots in place for that long."""
    scheduler = scheduler_for(store)
    async with scheduler:
        engine = scheduler._lifecycle.engine
        assert engine is not None
        assert engine.lease_duration == timedelta(seconds=10)
        assert engine.cleanup_interval == timedelta(seconds=5)


async def hold() -> None:
    await anyio.sleep(1.5)


async def test_fires_left_queued_by_a_stop_and_the_backlog_make_one_catch_up_run(
    store: str,
) -> None:
    """A stopping process leaves the fires that come due during its drain queued (for the
    other processes, or its next start). With coalesce=True its next start ran them and
    the coalesced backlog: two catch-up runs where one was asked for."""
    end = datetime.now(timezone.utc) + timedelta(seconds=3)

    def declare() -> TaskScheduler:
        scheduler = TaskScheduler(SchedulerConfig(store=store))
        # Ends before the restart: every run after it is a catch-up run.
        scheduler.interval(seconds=0.2, end=end, id="tick")(tick)
        scheduler.interval(hours=1, id="hold")(hold)
        return scheduler

    first = declare()
    async with first:
        await wait_for_runs(first, "tick")
        await first.run_job("hold", wait=False)  # the drain waits ~1.5 s for it
    await anyio.sleep(max(0.0, (end - datetime.now(timezone.utc)).total_seconds()) + 0.5)
    second = declare()
    async with second:
        await anyio.sleep(1.0)
        here = (await second.get_status()).worker_id  # the history is every worker's
        catch_up = [run for run in await second.get_runs("tick") if run.worker == here]
    assert [run.outcome for run in catch_up] == [Outcome.success]
