"""The engine factory and the memory-store engine's replaced loops (APScheduler 4.0.0a6)."""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import anyio
import attrs
import pytest
from apscheduler import (
    AsyncScheduler,
    CoalescePolicy,
    Event,
    Job,
    JobAcquired,
    JobAdded,
    JobOutcome,
    JobReleased,
    ScheduleUpdated,
    current_job,
)
from apscheduler.abc import JobExecutor
from apscheduler.datastores.memory import MemoryDataStore
from apscheduler.eventbrokers.local import LocalEventBroker
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from helpers import noop, wait_until

from library.components.scheduling.task_scheduler._aps import pin as _pin
from library.components.scheduling.task_scheduler._aps.broker import LeanEventBroker
from library.components.scheduling.task_scheduler._aps.engine import (
    _FAST_JOBS,
    EXECUTOR_NAME,
    MemoryEngine,
    _advance,
    _uuid4,
    make_engine,
    new_job,
)
from library.components.scheduling.task_scheduler._aps.memstore import MemoryStore
from library.components.scheduling.task_scheduler._executor import TaskExecutor
from library.components.scheduling.task_scheduler._registry import JobRegistry

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio

UTC = timezone.utc


class Recorder(JobExecutor):
    """Runs the task's callable and records the job it was given, and current_job."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.current: list[Job] = []
        self.running = 0
        self.most = 0

    async def run_job(self, func: Callable[..., Any], job: Job) -> Any:
        self.jobs.append(job)
        self.current.append(current_job.get())
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            result = func(*job.args, **job.kwargs)
            if hasattr(result, "__await__"):
                result = await result
            return result
        finally:
            self.running -= 1


@pytest.fixture(params=["ours", "stock"])
def kind(request: pytest.FixtureRequest) -> str:
    """Behaviour tests run on our engine and on the stock one: the same semantics."""
    return str(request.param)


@asynccontextmanager
async def engine(
    kind: str = "ours", *, max_concurrent_jobs: int = 100, lease: float = 30
) -> AsyncIterator[tuple[Any, Recorder]]:
    recorder = Recorder()
    options: dict[str, Any] = {
        "job_executors": {"x": recorder},
        "max_concurrent_jobs": max_concurrent_jobs,
        "lease_duration": lease,
    }
    scheduler: AsyncScheduler
    if kind == "ours":
        scheduler = MemoryEngine(
            data_store=MemoryStore(), event_broker=LeanEventBroker(), **options
        )
    else:
        scheduler = AsyncScheduler(
            data_store=MemoryDataStore(), event_broker=LocalEventBroker(), **options
        )
    async with scheduler:
        yield scheduler, recorder


def interval(seconds: float, start: datetime | None = None, **kwargs: Any) -> IntervalTrigger:
    return IntervalTrigger(seconds=seconds, start_time=start or datetime.now(UTC), **kwargs)


# ---------------------------------------------------------------------------- the factory


def test_memory_store_gets_the_memory_engine_and_the_lean_broker() -> None:
    executor = make_executor()
    built = make_engine(
        data_store=MemoryStore(),
        event_broker=LocalEventBroker(),
        executor=executor,
        identity="me",
        max_concurrent_jobs=7,
    )
    assert type(built) is MemoryEngine
    assert type(built.event_broker) is LeanEventBroker
    assert built.job_executors == {EXECUTOR_NAME: executor}
    assert (built.identity, built.max_concurrent_jobs) == ("me", 7)


def test_another_broker_is_kept_with_the_memory_store() -> None:
    class Remote(LocalEventBroker):  # stands for Redis: anything but the plain local broker
        pass

    broker = Remote()
    built = make_engine(
        data_store=MemoryStore(),
        event_broker=broker,
        executor=TaskExecutor(
            registry=JobRegistry(), tz=timezone.utc, history_size=5, thread_limit=2
        ),  # type: ignore[arg-type]
        identity="me",
        max_concurrent_jobs=7,
    )
    assert type(built) is MemoryEngine and built.event_broker is broker


def test_other_stores_get_the_stock_engine_as_given() -> None:
    store, broker = MemoryDataStore(), LocalEventBroker()
    built = make_engine(
        data_store=store,
        event_broker=broker,
        executor=TaskExecutor(
            registry=JobRegistry(), tz=timezone.utc, history_size=5, thread_limit=2
        ),  # type: ignore[arg-type]
        identity="me",
        max_concurrent_jobs=7,
    )
    assert type(built) is AsyncScheduler
    assert built.data_store is store and built.event_broker is broker


def make_executor() -> TaskExecutor:
    return TaskExecutor(registry=JobRegistry(), tz=timezone.utc, history_size=5, thread_limit=2)  # type: ignore[arg-type]


def test_the_engine_version_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    _pin.require_engine_version()
    monkeypatch.setattr(_pin, "version", lambda name: "4.0.0")
    with pytest.raises(ImportError, match=r"apscheduler==4\.0\.0a6 exactly"):
        _pin.require_engine_version()


# ---------------------------------------------------------------------------- fast paths


def test_jobs_built_directly_equal_jobs_built_by_attrs() -> None:
    assert _FAST_JOBS, "Job's fields changed: re-check new_job() against APScheduler's Job"
    fire = datetime(2030, 1, 1, tzinfo=UTC)
    schedule_ = attrs.evolve(
        _schedule("s", fire),
        args=(1, 2),
        kwargs={"a": 1},
        metadata={"m": [1]},
        job_result_expiration_time=timedelta(seconds=5),
    )
    ours = new_job(schedule_, fire, timedelta(seconds=1), fire + timedelta(seconds=9), fire)
    theirs = Job(
        task_id="t",
        args=(1, 2),
        kwargs={"a": 1},
        schedule_id="s",
        scheduled_fire_time=fire,
        jitter=timedelta(seconds=1),
        start_deadline=fire + timedelta(seconds=9),
        executor="x",
        result_expiration_time=timedelta(seconds=5),
        metadata={"m": [1]},
        created_at=fire,
    )
    for field in attrs.fields(Job):
        if field.name != "id":
            assert getattr(ours, field.name) == getattr(theirs, field.name), field.name
    assert ours.kwargs is not schedule_.kwargs and ours.metadata is not schedule_.metadata
    assert isinstance(ours.id, type(theirs.id)) and ours.id != theirs.id
    assert ours.original_scheduled_time == fire - timedelta(seconds=1)


def test_job_ids_are_unique_version_4_uuids() -> None:
    ids = [_uuid4() for _ in range(5000)]
    assert len(set(ids)) == 5000
    assert len({uuid.int >> 64 for uuid in ids}) == 1  # this process's prefix, and a counter
    assert {uuid.version for uuid in ids} == {4}
    assert {uuid.variant for uuid in ids} == {ids[0].variant} and "RFC" in ids[0].variant
    assert str(ids[0]) == str(type(ids[0])(str(ids[0])))
    assert hash(ids[0]) == hash(type(ids[0])(str(ids[0])))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_process_draws_its_own_job_id_prefix() -> None:
    ours = _uuid4()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, str(_uuid4()).encode())
        os._exit(0)
    os.close(write)
    child = UUID(os.read(read, 64).decode())
    os.close(read)
    os.waitpid(pid, 0)
    assert child.version == 4 and child.int >> 64 != ours.int >> 64


@pytest.mark.parametrize("end", [None, 3.5])
def test_interval_fast_path_matches_interval_trigger(end: float | None) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    end_time = None if end is None else start + timedelta(seconds=end)
    ours = IntervalTrigger(seconds=1, start_time=start, end_time=end_time)
    theirs = copy.deepcopy(ours)
    for _ in range(6):
        assert _advance(ours) == theirs.next()
    assert ours.__getstate__() == theirs.__getstate__()


def test_other_triggers_advance_their_own_way() -> None:
    trigger = DateTrigger(datetime(2030, 1, 1, tzinfo=UTC))
    assert _advance(trigger) == datetime(2030, 1, 1, tzinfo=UTC)
    assert _advance(trigger) is None


def _schedule(schedule_id: str, fire: datetime) -> Any:
    from apscheduler import Schedule

    return Schedule(
        id=schedule_id,
        task_id="t",
        trigger=interval(1, fire),
        job_executor="x",
        next_fire_time=fire,
    )


# ---------------------------------------------------------------------------- tasks


async def test_configuring_tasks_matches_the_stock_engine(anyio_backend: str, kind: str) -> None:
    # Ours returns the stored task at once for a bare task id (what add_schedule asks for
    # every schedule); every other call goes the stock way, with the same results.
    async with engine(kind) as (scheduler, _):
        made = await scheduler.configure_task(
            "t", func=noop, job_executor="x", max_running_jobs=3, metadata={"k": "v"}
        )
        again = await scheduler.configure_task("t")
        changed = await scheduler.configure_task("t", max_running_jobs=5)
        await scheduler.add_schedule("t", interval(3600), id="s")
        (stored,) = await scheduler.get_tasks()
        (schedule,) = await scheduler.get_schedules()
        missing = await scheduler.configure_task("u", func=noop, job_executor="x")
    assert again == made and (changed.max_running_jobs, stored.max_running_jobs) == (5, 5)
    assert schedule.task_id == "t" and schedule.metadata == {"k": "v"}
    assert schedule.job_executor == "x" and missing.id == "u"
    if kind == "ours":
        assert again is made  # the stored task itself: nothing rebuilt


# ---------------------------------------------------------------------------- the loops


async def test_jobs_run_with_their_job_and_current_job(anyio_backend: str, kind: str) -> None:
    async with engine(kind) as (scheduler, recorder):
        await scheduler.configure_task("t", func=noop, job_executor="x", max_running_jobs=None)
        await scheduler.add_schedule(
            "t", interval(0.05), id="s", metadata={"k": "v"}, args=(), kwargs={}
        )
        await scheduler.start_in_background()
        await wait_until(lambda: len(recorder.jobs) >= 3)
        await scheduler.stop()
    job = recorder.jobs[0]
    assert recorder.current[:3] == recorder.jobs[:3]
    assert job.task_id == "t" and job.schedule_id == "s" and job.metadata == {"k": "v"}
    assert job.scheduled_fire_time is not None and job.executor == "x"
    fire_times = [j.scheduled_fire_time for j in recorder.jobs[:3]]
    assert fire_times == sorted(fire_times) and len(set(fire_times)) == 3


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(CoalescePolicy.all, 10), (CoalescePolicy.latest, 1), (CoalescePolicy.earliest, 1)],
)
async def test_coalesce_policies(
    anyio_backend: str, kind: str, policy: CoalescePolicy, expected: int
) -> None:
    # Ten fires due at the start (1 s apart); the eleventh is 0.5 s away, a margin for a
    # loaded machine before the schedule is first processed.
    start = datetime.now(UTC) - timedelta(seconds=9.5)
    async with engine(kind) as (scheduler, recorder):
        await scheduler.configure_task("t", func=noop, job_executor="x", max_running_jobs=None)
        await scheduler.add_schedule("t", interval(1, start), id="s", coalesce=policy)
        await scheduler.start_in_background()
        await wait_until(lambda: len(recorder.jobs) >= expected)
        await anyio.sleep(0.02)
        await scheduler.stop()
    # The fires due when the schedule was first processed (later ones are >= start + 10 s);
    # sorted, as trio runs a batch of new tasks in no fixed order.
    first_batch = sorted(
        (
            job
            for job in recorder.jobs
            if job.original_scheduled_time < start + timedelta(seconds=9.5)
        ),  # type: ignore[operator]
        key=lambda job: job.scheduled_fire_time or start,
    )
    fire_times = [job.scheduled_fire_time for job in first_batch]
    if policy is CoalescePolicy.latest:
        assert fire_times == [start + timedelta(seconds=9)]
    elif policy is CoalescePolicy.earliest:
        assert fire_times == [start]
    else:
        assert fire_times == [start + timedelta(seconds=i) for i in range(10)]


async def test_max_jitter_stays_below_the_next_fire(anyio_backend: str, kind: str) -> None:
    start = datetime.now(UTC) - timedelta(seconds=0.5)
    async with engine(kind) as (scheduler, recorder):
        await scheduler.configure_task("t", func=noop, job_executor="x", max_running_jobs=None)
        await scheduler.add_schedule(
            "t", interval(0.1, start), id="s", coalesce=CoalescePolicy.all, max_jitter=10
        )
        await scheduler.start_in_background()
        await wait_until(lambda: len(recorder.jobs) >= 6)
        await scheduler.stop()
    jobs = sorted(recorder.jobs, key=lambda job: job.original_scheduled_time or start)
    for index, job in enumerate(jobs[:6]):
        assert timedelta(0) <= job.jitter < timedelta(seconds=0.1)
        assert job.original_scheduled_time == start + timedelta(seconds=0.1 * index)


async def test_misfire_grace_time_discards_late_jobs(anyio_backend: str, kind: str) -> None:
    released: list[JobReleased] = []
    async with engine(kind, max_concurrent_jobs=1) as (scheduler, recorder):
        scheduler.subscribe(released.append, {JobReleased})

        async def slow() -> None:
            await anyio.sleep(0.3)

        await scheduler.configure_task("t", func=slow, job_executor="x", max_running_jobs=None)
        start = datetime.now(UTC)
        for index in range(3):
            await scheduler.add_schedule(
                "t", DateTrigger(start), id=f"s{index}", misfire_grace_time=0.1
            )
        await scheduler.start_in_background()
        await wait_until(lambda: len(released) >= 3)
        await scheduler.stop()
    outcomes = sorted(event.outcome.name for event in released)
    assert outcomes == ["missed_start_deadline", "missed_start_deadline", "success"]
    assert len(recorder.jobs) == 1


async def test_max_concurrent_jobs_is_respected(anyio_backend: str, kind: str) -> None:
    async with engine(kind, max_concurrent_jobs=2) as (scheduler, recorder):

        async def slow() -> None:
            await anyio.sleep(0.05)

        await scheduler.configure_task("t", func=slow, job_executor="x", max_running_jobs=None)
        for _ in range(8):
            await scheduler.add_job("t")
        await scheduler.start_in_background()
        await wait_until(lambda: len(recorder.jobs) == 8 and recorder.running == 0)
        await scheduler.stop()
    assert recorder.most == 2


async def test_max_running_jobs_per_task_queues(anyio_backend: str, kind: str) -> None:
    async with engine(kind) as (scheduler, recorder):

        async def slow() -> None:
            await anyio.sleep(0.02)

        await scheduler.configure_task("t", func=slow, job_executor="x", max_running_jobs=1)
        for _ in range(5):
            await scheduler.add_job("t")
        await scheduler.start_in_background()
        await wait_until(lambda: len(recorder.jobs) == 5 and recorder.running == 0)
        await scheduler.stop()
    assert recorder.most == 1


async def test_events_reach_subscribers(anyio_backend: str, kind: str) -> None:
    seen: list[Event] = []
    async with engine(kind) as (scheduler, _):
        scheduler.subscribe(seen.append, {JobAdded, JobAcquired, JobReleased, ScheduleUpdated})
        await scheduler.configure_task("t", func=noop, job_executor="x", max_running_jobs=None)
        await scheduler.add_schedule("t", interval(0.05), id="s")
        await scheduler.start_in_background()
        await wait_until(lambda: sum(isinstance(e, JobReleased) for e in seen) >= 2)
        await scheduler.stop()
    kinds = [type(event) for event in seen]
    assert {JobAdded, JobAcquired, JobReleased, ScheduleUpdated} <= set(kinds)
    if kind == "ours":  # the stock broker delivers each event in a task: in no fixed order
        assert kinds.index(JobAdded) < kinds.index(JobAcquired) < kinds.index(JobReleased)
    assert all(e.outcome is JobOutcome.success for e in seen if isinstance(e, JobReleased))


async def test_run_job_returns_the_result_and_raises_the_error(
    anyio_backend: str, kind: str
) -> None:
    async def answer(x: int) -> int:
        return x * 2

    async def fails() -> None:
        raise ValueError("no")

    async with engine(kind) as (scheduler, _):
        await scheduler.configure_task("a", func=answer, job_executor="x")
        await scheduler.configure_task("f", func=fails, job_executor="x")
        await scheduler.start_in_background()
        assert await scheduler.run_job("a", args=(21,)) == 42
        with pytest.raises(ValueError, match="no"):
            await scheduler.run_job("f")
        await scheduler.stop()


async def test_a_paused_schedule_never_fires_and_fires_when_resumed(
    anyio_backend: str, kind: str
) -> None:
    async with engine(kind) as (scheduler, recorder):
        await scheduler.configure_task("t", func=noop, job_executor="x", max_running_jobs=None)
        await scheduler.add_schedule("t", interval(0.02), id="s", paused=True)
        await scheduler.start_in_background()
        await anyio.sleep(0.15)
        assert recorder.jobs == []
        await scheduler.unpause_schedule("s", resume_from="now")
        await wait_until(lambda: len(recorder.jobs) >= 2)
        await scheduler.stop()


async def test_an_earlier_schedule_wakes_the_sleeping_loop(anyio_backend: str, kind: str) -> None:
    async with engine(kind) as (scheduler, recorder):
        await scheduler.configure_task("t", func=noop, job_executor="x", max_running_jobs=None)
        far = datetime.now(UTC) + timedelta(hours=1)
        await scheduler.add_schedule("t", interval(1, far), id="far")
        await scheduler.start_in_background()
        await anyio.sleep(0.05)
        await scheduler.add_schedule("t", DateTrigger(datetime.now(UTC)), id="now")
        await wait_until(lambda: len(recorder.jobs) == 1, limit=2)
        await scheduler.stop()


async def test_a_failing_trigger_finishes_its_schedule_only(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(IntervalTrigger):
        def next(self) -> datetime | None:
            if self._last_fire_time is not None:
                raise ArithmeticError("broken")
            return super().next()

    async with engine() as (scheduler, recorder):
        await scheduler.configure_task("t", func=noop, job_executor="x", max_running_jobs=None)
        start = datetime.now(UTC)
        await scheduler.add_schedule("t", Broken(seconds=0.05, start_time=start), id="bad")
        await scheduler.add_schedule("t", interval(0.05), id="good")
        with caplog.at_level(logging.ERROR):
            await scheduler.start_in_background()
            await wait_until(lambda: sum(j.schedule_id == "good" for j in recorder.jobs) >= 3)
        [bad] = await scheduler.data_store.get_schedules({"bad"})
        assert bad.next_fire_time is None
        assert scheduler.state.name == "started"
        await scheduler.stop()
    assert sum(job.schedule_id == "bad" for job in recorder.jobs) == 1
    assert "schedule 'bad' (task 't') is finished: its trigger failed" in caplog.text


async def test_stop_cancels_running_jobs_and_waits_for_them(anyio_backend: str) -> None:
    released: list[JobReleased] = []
    finished: list[str] = []
    async with engine() as (scheduler, recorder):
        scheduler.subscribe(released.append, {JobReleased})

        async def forever() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.05)  # cleanup that takes time: stop must wait for it
                finished.append("cleaned up")

        await scheduler.configure_task("t", func=forever, job_executor="x", max_running_jobs=None)
        for _ in range(3):
            await scheduler.add_job("t")
        await scheduler.start_in_background()
        await wait_until(lambda: recorder.running == 3)
        await scheduler.stop()
        await scheduler.wait_until_stopped()
        await wait_until(lambda: scheduler.state.name == "stopped")
        assert finished == ["cleaned up"] * 3
        assert recorder.running == 0
    assert [event.outcome for event in released] == [JobOutcome.cancelled] * 3
    assert scheduler._running == {}


async def test_a_base_exception_from_a_job_stops_the_engine(anyio_backend: str) -> None:
    class Fatal(BaseException):
        pass

    async def fatal() -> None:
        raise Fatal

    recorder = Recorder()
    scheduler = MemoryEngine(data_store=MemoryStore(), job_executors={"x": recorder})
    with pytest.raises(BaseException) as caught:
        async with scheduler:
            await scheduler.configure_task("t", func=fatal, job_executor="x")
            await scheduler.add_job("t")
            with anyio.fail_after(5):
                await scheduler.run_until_stopped()
    found: list[BaseException] = [caught.value]
    while isinstance(found[-1], BaseExceptionGroup):
        found.append(found[-1].exceptions[0])
    assert isinstance(found[-1], Fatal)


async def test_long_jobs_keep_their_lease(anyio_backend: str, kind: str) -> None:
    # A job running longer than the lease must not be taken and run again.
    async with engine(kind, lease=0.2) as (scheduler, recorder):

        async def slow() -> None:
            await anyio.sleep(0.5)

        await scheduler.configure_task("t", func=slow, job_executor="x", max_running_jobs=None)
        await scheduler.add_job("t")
        await scheduler.start_in_background()
        await wait_until(lambda: recorder.jobs != [] and recorder.running == 0, limit=5)
        await anyio.sleep(0.1)
        await scheduler.stop()
    assert len(recorder.jobs) == 1


async def test_the_engine_restarts_cleanly(anyio_backend: str) -> None:
    async with engine() as (scheduler, recorder):
        await scheduler.configure_task("t", func=noop, job_executor="x", max_running_jobs=None)
        await scheduler.add_schedule("t", interval(0.02), id="s")
        for _ in range(2):
            await scheduler.start_in_background()
            target = len(recorder.jobs) + 2
            await wait_until(lambda: len(recorder.jobs) >= target)  # noqa: B023
            await scheduler.stop()
            await wait_until(lambda: scheduler.state.name == "stopped")
        store = scheduler.data_store
        assert isinstance(store, MemoryStore)
        assert store.stats()["held"] == 0 and scheduler._running == {}
