"""The in-memory store: indexed, and APScheduler 4.0.0a6's memory-store defects closed."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import attrs
import pytest
from apscheduler import (
    AsyncScheduler,
    ConflictingIdError,
    ConflictPolicy,
    Event,
    Job,
    JobAcquired,
    JobAdded,
    JobOutcome,
    JobReleased,
    JobResult,
    Schedule,
    ScheduleAdded,
    ScheduleRemoved,
    ScheduleResult,
    ScheduleUpdated,
    Task,
    TaskLookupError,
)
from apscheduler.abc import EventBroker
from apscheduler.datastores.memory import MemoryDataStore
from apscheduler.eventbrokers.local import LocalEventBroker
from apscheduler.triggers.interval import IntervalTrigger
from helpers import noop

from library.components.scheduling.task_scheduler import TaskScheduler
from library.components.scheduling.task_scheduler._aps.broker import LeanEventBroker
from library.components.scheduling.task_scheduler._aps.memstore import MemoryStore
from library.components.scheduling.task_scheduler._shared import SHARED_EMPTY

pytestmark = pytest.mark.anyio

UTC = timezone.utc
LOGGER = logging.getLogger("test_memstore")
LEASE = timedelta(seconds=30)


@asynccontextmanager
async def started(
    broker: EventBroker | None = None, store: Any = None
) -> AsyncIterator[tuple[Any, EventBroker]]:
    broker = broker if broker is not None else LeanEventBroker()
    store = store if store is not None else MemoryStore()
    async with AsyncExitStack() as stack:
        await broker.start(stack, LOGGER)
        await store.start(stack, broker, LOGGER)
        yield store, broker


def schedule(
    schedule_id: str, fire: datetime | None, *, task: str = "t", paused: bool = False
) -> Schedule:
    trigger = IntervalTrigger(seconds=1, start_time=fire or datetime.now(UTC))
    result = Schedule(
        id=schedule_id, task_id=task, trigger=trigger, job_executor="x", paused=paused
    )
    result.next_fire_time = fire
    return result


def task(task_id: str = "t", limit: int | None = None) -> Task:
    return Task(id=task_id, func=None, job_executor="x", max_running_jobs=limit)


def job(task_id: str = "t", **kwargs: Any) -> Job:
    return Job(task_id=task_id, executor="x", **kwargs)


def past(seconds: float = 1) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def future(seconds: float = 3600) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def counting(store_class: type[Any]) -> tuple[Any, list[int]]:
    """A store that counts the schedule loop's turns (each turn acquires schedules once)."""
    turns: list[int] = []

    class Counting(store_class):  # type: ignore[valid-type,misc]
        async def acquire_schedules(self, *args: Any, **kwargs: Any) -> Any:
            turns.append(1)
            return await super().acquire_schedules(*args, **kwargs)

    return Counting(), turns


async def loop_turns_while_paused(store: Any, turns: list[int]) -> int:
    """Pause a schedule, let its fire time pass, and count the schedule loop's turns."""
    async with AsyncScheduler(data_store=store) as engine:
        start = datetime.now(UTC) + timedelta(seconds=0.1)
        await engine.add_schedule(print, IntervalTrigger(hours=1, start_time=start), id="s")
        await engine.pause_schedule("s")
        await engine.start_in_background()
        await anyio.sleep(0.2)  # the paused schedule's fire time is now past
        before = len(turns)
        await anyio.sleep(0.3)
        await engine.stop()
    return len(turns) - before


# ---------------------------------------------------------------------------- the traps


async def test_paused_schedule_does_not_spin_the_schedule_loop(anyio_backend: str) -> None:
    # Trap 9: the stock store makes the loop sleep a negative time while a schedule is paused.
    store, turns = counting(MemoryStore)
    assert await loop_turns_while_paused(store, turns) <= 2


async def test_the_stock_store_still_spins(anyio_backend: str) -> None:
    # Documents the defect MemoryStore closes: when this fails, 4.0.0a6's successor fixed it.
    store, turns = counting(MemoryDataStore)
    assert await loop_turns_while_paused(store, turns) > 100


async def test_removed_schedules_leave_nothing_behind(anyio_backend: str) -> None:
    # Trap 10: the stock store keeps every removed schedule in _schedules_by_task_id.
    store = MemoryStore()
    async with AsyncScheduler(data_store=store) as engine:
        for index in range(50):
            await engine.add_schedule(
                print,
                IntervalTrigger(hours=1),
                id=f"s{index}",
                conflict_policy=ConflictPolicy.exception,
            )
        await engine.remove_schedule("s0")
        assert store.stats()["schedules"] == 49
        for index in range(1, 50):
            await engine.remove_schedule(f"s{index}")
        stats = store.stats()
        assert stats["schedules"] == 0 and stats["acquired"] == 0
        assert stats["slots"] <= 65  # stale references, dropped once they outnumber the live


async def test_removing_jobs_does_not_grow_memory(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    async with scheduler:
        for index in range(200):
            await scheduler.add_interval_job(noop, f"j{index}", hours=1)
            await scheduler.remove_job(f"j{index}")
        engine = scheduler._lifecycle.engine
        assert engine is not None
        store = engine.data_store
        assert isinstance(store, MemoryStore)
        stats = store.stats()
        assert stats["schedules"] == stats["jobs"] == 0
        assert stats["tasks"] == 1  # the one task every job on the memory store shares
        assert stats["slots"] <= 65
        assert scheduler._registry.by_id == {}


# ---------------------------------------------------------------------------- schedules


async def test_get_schedules_by_id_and_all(anyio_backend: str) -> None:
    async with started() as (store, _):
        for index in range(5):
            await store.add_schedule(schedule(f"s{index}", future(index)), ConflictPolicy.exception)
        assert [s.id for s in await store.get_schedules({"s3", "nope"})] == ["s3"]
        assert {s.id for s in await store.get_schedules()} == {f"s{i}" for i in range(5)}
        assert await store.get_schedules(set()) == []


async def test_conflict_policies(anyio_backend: str) -> None:
    async with started() as (store, _):
        first = schedule("s", future(10))
        await store.add_schedule(first, ConflictPolicy.exception)
        with pytest.raises(ConflictingIdError):
            await store.add_schedule(schedule("s", future(5)), ConflictPolicy.exception)
        await store.add_schedule(schedule("s", future(5)), ConflictPolicy.do_nothing)
        assert (await store.get_schedules({"s"}))[0] is first
        second = schedule("s", future(5))
        await store.add_schedule(second, ConflictPolicy.replace)
        assert (await store.get_schedules({"s"}))[0] is second
        assert await store.get_next_schedule_run_time() == second.next_fire_time


async def test_acquire_in_fire_time_order_skipping_paused_and_future(anyio_backend: str) -> None:
    async with started() as (store, _):
        await store.add_schedule(schedule("late", past(1)), ConflictPolicy.exception)
        await store.add_schedule(schedule("early", past(5)), ConflictPolicy.exception)
        await store.add_schedule(schedule("paused", past(9), paused=True), ConflictPolicy.exception)
        await store.add_schedule(schedule("future", future()), ConflictPolicy.exception)
        await store.add_schedule(schedule("finished", None), ConflictPolicy.exception)
        acquired = await store.acquire_schedules("me", LEASE, 10)
        assert [s.id for s in acquired] == ["early", "late"]
        assert all(s.acquired_by == "me" and s.acquired_until is not None for s in acquired)
        # Held: nobody else gets them before the lease ends; the holder (restarted) does.
        assert await store.acquire_schedules("other", LEASE, 10) == []
        assert [s.id for s in await store.acquire_schedules("me", LEASE, 10)] == ["early", "late"]
        assert await store.acquire_schedules("me", LEASE, 1) != []


async def test_release_reschedules(anyio_backend: str) -> None:
    async with started() as (store, _):
        due = schedule("s", past())
        await store.add_schedule(due, ConflictPolicy.exception)
        [acquired] = await store.acquire_schedules("me", LEASE, 10)
        later = future(60)
        await store.release_schedules(
            "me",
            [
                ScheduleResult(
                    schedule_id="s",
                    task_id="t",
                    trigger=acquired.trigger,
                    last_fire_time=acquired.next_fire_time,
                    next_fire_time=later,
                )
            ],
        )
        assert acquired.next_fire_time == later and acquired.acquired_by is None
        assert await store.acquire_schedules("other", LEASE, 10) == []
        assert await store.get_next_schedule_run_time() == later
        # Released with no next fire time: finished, kept until cleanup() removes it.
        store.reschedule("s", later, None)
        assert await store.get_next_schedule_run_time() is None
        await store.cleanup()
        assert await store.get_schedules() == []


async def test_schedules_sharing_a_fire_time_come_in_order_once(anyio_backend: str) -> None:
    async with started() as (store, _):
        when = past()
        for index in range(10):
            await store.add_schedule(schedule(f"s{index}", when), ConflictPolicy.exception)
        # The same object entered twice, and a pause-resume: still one reference that counts.
        [s3] = await store.get_schedules({"s3"})
        await store.add_schedule(s3, ConflictPolicy.replace)
        await store.add_schedule(schedule("s4", when, paused=True), ConflictPolicy.replace)
        await store.add_schedule(schedule("s4", when), ConflictPolicy.replace)
        got = [s.id for s in await store.acquire_schedules("me", LEASE, 4)]
        got += [s.id for s in await store.acquire_schedules("other", LEASE, 100)]
        assert sorted(got) == sorted(f"s{index}" for index in range(10))
        assert got[:3] == ["s0", "s1", "s2"]
        assert await store.get_next_schedule_run_time() is not None  # held: lease end
        for schedule_id in got:
            store.reschedule(schedule_id, when, None)
        assert await store.get_next_schedule_run_time() is None
        assert store.stats()["slots"] == 0


async def test_an_expired_lease_lets_another_scheduler_take_a_schedule(anyio_backend: str) -> None:
    async with started() as (store, _):
        await store.add_schedule(schedule("s", past()), ConflictPolicy.exception)
        await store.acquire_schedules("dead", timedelta(seconds=-1), 10)
        assert [s.id for s in await store.acquire_schedules("other", LEASE, 10)] == ["s"]


async def test_next_run_time_ignores_paused_and_replaced(anyio_backend: str) -> None:
    async with started() as (store, _):
        soon, later = future(5), future(50)
        await store.add_schedule(schedule("a", soon), ConflictPolicy.exception)
        await store.add_schedule(schedule("b", later), ConflictPolicy.exception)
        await store.add_schedule(schedule("a", soon, paused=True), ConflictPolicy.replace)
        assert await store.get_next_schedule_run_time() == later
        await store.remove_schedules(["b"])
        assert await store.get_next_schedule_run_time() is None
        await store.add_schedule(schedule("a", soon), ConflictPolicy.replace)
        assert await store.get_next_schedule_run_time() == soon


async def test_stale_slot_references_are_dropped(anyio_backend: str) -> None:
    async with started() as (store, _):
        for index in range(10):
            await store.add_schedule(schedule(f"s{index}", future()), ConflictPolicy.exception)
        for round_ in range(1000):
            paused = round_ % 2 == 0
            for index in range(10):
                await store.add_schedule(
                    schedule(f"s{index}", future(), paused=paused), ConflictPolicy.replace
                )
        assert store.stats()["slots"] <= 2 * 10 + 65


@pytest.mark.parametrize("coarse", [False, True])
async def test_random_operations_match_the_stock_store(anyio_backend: str, coarse: bool) -> None:
    """Differential: the same adds, replaces, pauses, removals and acquires, on both stores
    (``coarse``: few distinct fire times, so many schedules share one)."""
    rng = random.Random(1234)
    base = datetime.now(UTC)
    async with (
        started(LocalEventBroker()) as (ours, _),
        started(LocalEventBroker(), MemoryDataStore()) as (stock, _),
    ):
        for step in range(600):
            action = rng.random()
            schedule_id = f"s{rng.randrange(40)}"
            if action < 0.55:
                offset = rng.choice((-5, 0, 5)) if coarse else rng.uniform(-100, 100)
                fire = base + timedelta(seconds=offset) if rng.random() > 0.1 else None
                paused = rng.random() < 0.2
                for store in (ours, stock):
                    await store.add_schedule(
                        schedule(schedule_id, fire, paused=paused), ConflictPolicy.replace
                    )
            elif action < 0.7:
                for store in (ours, stock):
                    await store.remove_schedules([schedule_id])
            else:
                limit = rng.randrange(1, 8)
                got = [
                    [s.id for s in await store.acquire_schedules("me", LEASE, limit)]
                    for store in (ours, stock)
                ]
                # Same set (ties in fire time may come in another order).
                assert sorted(got[0]) == sorted(got[1]), step
                next_fires = {
                    schedule_id: base
                    + timedelta(seconds=rng.choice((-5, 5, 50)) if coarse else rng.uniform(0, 200))
                    for schedule_id in got[0]
                }
                for store in (ours, stock):
                    results = []
                    for schedule_id, next_fire in next_fires.items():
                        [held] = await store.get_schedules({schedule_id})
                        results.append(
                            ScheduleResult(
                                schedule_id=schedule_id,
                                task_id="t",
                                trigger=held.trigger,
                                last_fire_time=held.next_fire_time,
                                next_fire_time=next_fire,
                            )
                        )
                    await store.release_schedules("me", results)
            ids = {s.id for s in await ours.get_schedules()}
            assert ids == {s.id for s in await stock.get_schedules()}, step
            ours_next = await ours.get_next_schedule_run_time()
            unpaused = [
                s.next_fire_time
                for s in await stock.get_schedules()
                if not s.paused and s.next_fire_time is not None
            ]
            assert ours_next == (min(unpaused) if unpaused else None), step


# ---------------------------------------------------------------------------- jobs


async def test_jobs_come_out_in_order_up_to_the_limit(anyio_backend: str) -> None:
    async with started() as (store, _):
        await store.add_task(task())
        jobs = [job() for _ in range(5)]
        for queued in jobs:
            await store.add_job(queued)
        first = await store.acquire_jobs("me", LEASE, 3)
        assert first == jobs[:3]
        assert all(j.acquired_by == "me" for j in first)
        assert await store.acquire_jobs("me", LEASE) == jobs[3:]
        assert await store.acquire_jobs("me", LEASE) == []
        assert set(await store.get_jobs()) == set(jobs)
        assert await store.get_jobs([jobs[1].id, jobs[1].id]) == [jobs[1]]


async def test_max_running_jobs_waits_for_a_slot(anyio_backend: str) -> None:
    async with started() as (store, _):
        await store.add_task(task("limited", limit=1))
        await store.add_task(task("free"))
        a, b, c = job("limited"), job("limited"), job("free")
        for queued in (a, b, c):
            await store.add_job(queued)
        assert await store.acquire_jobs("me", LEASE) == [a, c]
        assert (await store.get_task("limited")).running_jobs == 1
        assert await store.acquire_jobs("me", LEASE) == []
        now = datetime.now(UTC)
        await store.release_job("me", a, JobResult.from_job(a, JobOutcome.success, finished_at=now))
        assert (await store.get_task("limited")).running_jobs == 0
        assert await store.acquire_jobs("me", LEASE) == [b]
        # A raised limit lets waiting jobs go at once.
        d, e = job("limited"), job("limited")
        await store.add_job(d)
        await store.add_job(e)
        assert await store.acquire_jobs("me", LEASE) == []
        await store.add_task(task("limited", limit=3))
        assert (await store.get_task("limited")).running_jobs == 1  # kept on replace
        assert await store.acquire_jobs("me", LEASE) == [d, e]


async def test_missed_start_deadline_is_released_with_that_outcome(anyio_backend: str) -> None:
    released: list[JobReleased] = []
    async with started() as (store, broker):
        broker.subscribe(released.append, {JobReleased})
        await store.add_task(task())
        late = job(start_deadline=past(), result_expiration_time=timedelta(minutes=1))
        await store.add_job(late)
        assert await store.acquire_jobs("me", LEASE) == []
        assert await store.get_jobs() == []
        result = await store.get_job_result(late.id)
        assert result is not None and result.outcome is JobOutcome.missed_start_deadline
        assert [event.outcome for event in released] == [JobOutcome.missed_start_deadline]
        assert (await store.get_task("t")).running_jobs == 0


async def test_results_are_kept_only_with_an_expiration_time(anyio_backend: str) -> None:
    async with started() as (store, _):
        await store.add_task(task())
        kept, dropped = job(result_expiration_time=timedelta(minutes=1)), job()
        for queued in (kept, dropped):
            await store.add_job(queued)
        await store.acquire_jobs("me", LEASE)
        for done in (kept, dropped):
            await store.release_job(
                "me", done, JobResult.from_job(done, JobOutcome.success, return_value=1)
            )
        result = await store.get_job_result(kept.id)
        assert result is not None and result.return_value == 1
        assert await store.get_job_result(kept.id) is None  # popped
        assert await store.get_job_result(dropped.id) is None
        assert store.stats()["jobs"] == store.stats()["held"] == 0


async def test_an_expired_job_lease_is_taken_again(anyio_backend: str) -> None:
    async with started() as (store, _):
        await store.add_task(task(limit=1))
        queued = job()
        await store.add_job(queued)
        assert await store.acquire_jobs("dead", timedelta(seconds=-1)) == [queued]
        await anyio.sleep(0.01)
        assert await store.acquire_jobs("other", LEASE) == [queued]
        assert queued.acquired_by == "other"
        assert (await store.get_task("t")).running_jobs == 1


async def test_job_leases_are_extended(anyio_backend: str) -> None:
    async with started() as (store, _):
        await store.add_task(task())
        queued = job()
        await store.add_job(queued)
        await store.acquire_jobs("me", timedelta(seconds=0.05))
        await store.extend_acquired_job_leases("me", {queued.id}, LEASE)
        await anyio.sleep(0.1)
        assert await store.acquire_jobs("other", LEASE) == []


async def test_reap_and_cleanup_release_abandoned_jobs(anyio_backend: str) -> None:
    async with started() as (store, _):
        await store.add_task(task())
        mine, dead = job(), job()
        for queued in (mine, dead):
            await store.add_job(queued)
        await store.acquire_jobs("me", LEASE, 1)
        await store.acquire_jobs("dead", timedelta(seconds=-1), 1)
        await store.reap_abandoned_jobs("me")
        assert await store.get_jobs() == [dead]
        await store.cleanup()
        assert await store.get_jobs() == []
        assert (await store.get_task("t")).running_jobs == 0


async def test_cleanup_keeps_finished_schedules_with_jobs(anyio_backend: str) -> None:
    async with started() as (store, _):
        await store.add_task(task())
        await store.add_schedule(schedule("done", None), ConflictPolicy.exception)
        await store.add_schedule(schedule("busy", None), ConflictPolicy.exception)
        await store.add_job(job(schedule_id="busy"))
        await store.cleanup()
        assert [s.id for s in await store.get_schedules()] == ["busy"]


async def test_tasks(anyio_backend: str) -> None:
    async with started() as (store, _):
        await store.add_task(task("b"))
        await store.add_task(task("a"))
        assert [t.id for t in await store.get_tasks()] == ["a", "b"]
        await store.remove_task("a")
        with pytest.raises(TaskLookupError):
            await store.get_task("a")
        with pytest.raises(TaskLookupError):
            await store.remove_task("a")


# ---------------------------------------------------------------------------- events


async def test_events_are_built_only_for_subscribers(anyio_backend: str) -> None:
    seen: list[Event] = []
    async with started() as (store, broker):
        await store.add_task(task())
        await store.add_schedule(schedule("s", past()), ConflictPolicy.exception)
        await store.add_job(job())
        assert seen == []
        broker.subscribe(seen.append, {ScheduleAdded, JobAdded, JobAcquired, ScheduleRemoved})
        await store.add_schedule(schedule("s2", past()), ConflictPolicy.exception)
        await store.add_job(job())
        await store.acquire_jobs("me", LEASE)
        await store.remove_schedules(["s2"])
        assert [type(event) for event in seen] == [
            ScheduleAdded, JobAdded, JobAcquired, JobAcquired, ScheduleRemoved,
        ]  # fmt: skip


async def test_every_event_reaches_a_broker_that_cannot_tell(anyio_backend: str) -> None:
    seen: list[Event] = []
    async with started(LocalEventBroker()) as (store, broker):
        broker.subscribe(seen.append)
        await store.add_task(task())
        await store.add_schedule(schedule("s", past()), ConflictPolicy.exception)
        await store.add_schedule(schedule("s", past()), ConflictPolicy.replace)
        await anyio.sleep(0.05)  # the stock broker delivers in tasks
        kinds = {type(event) for event in seen}
        assert ScheduleAdded in kinds and ScheduleUpdated in kinds


async def test_wakers_are_called_and_removed(anyio_backend: str) -> None:
    async with started() as (store, _):
        schedules: list[datetime | None] = []
        jobs: list[int] = []
        remove = store.add_wakers(schedules=schedules.append, jobs=lambda: jobs.append(1))
        when = future()
        await store.add_schedule(schedule("s", when), ConflictPolicy.exception)
        await store.add_job(job())
        assert schedules == [when] and jobs == [1]
        remove()
        remove()
        await store.add_job(job())
        assert jobs == [1] and store.stats()["wakers"] == 0


# ---------------------------------------------------------------------------- memory


async def test_idle_schedules_share_their_empty_and_immutable_values(anyio_backend: str) -> None:
    async with started() as (store, _):
        first, second = schedule("a", future()), schedule("b", future())
        second.metadata["k"] = "v"
        for stored in (first, second):
            await store.add_schedule(stored, ConflictPolicy.exception)
        assert first.kwargs is SHARED_EMPTY and first.metadata is SHARED_EMPTY
        assert second.metadata == {"k": "v"} and second.metadata is not SHARED_EMPTY
        assert first.trigger._interval is second.trigger._interval  # type: ignore[attr-defined]
        assert first.job_result_expiration_time == timedelta(0)
        with pytest.raises(TypeError, match="share this empty dict"):
            first.kwargs["x"] = 1
        with pytest.raises(TypeError):
            first.metadata.update(x=1)
        assert SHARED_EMPTY == {}
        # What APScheduler does with them still works, and gives plain dicts.
        copied = first.metadata.copy()
        copied["x"] = 1
        assert type(copied) is dict and type(dict(first.kwargs)) is dict
        paused = attrs.evolve(first, paused=True)
        await store.add_schedule(paused, ConflictPolicy.replace)
        assert paused.paused and paused.kwargs == {}

        await store.add_task(Task(id="t", func="some.module:func", job_executor="x"))
        built = "".join(["some.module:", "func"])  # not the same object as the literal
        await store.add_task(Task(id="u", func=built, job_executor="x"))
        a, b = await store.get_task("t"), await store.get_task("u")
        assert a.func is b.func and a.metadata is SHARED_EMPTY


async def test_a_batch_of_jobs_is_queued_in_order_without_events(anyio_backend: str) -> None:
    seen: list[Event] = []
    async with started() as (store, broker):
        woken: list[int] = []
        store.add_wakers(jobs=lambda: woken.append(1))
        await store.add_task(task())
        batch = [job() for _ in range(3)]
        store.queue_jobs(batch)
        broker.subscribe(seen.append)
        assert woken == [] and seen == []
        assert await store.acquire_jobs("me", LEASE) == batch
