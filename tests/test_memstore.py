"""The in-memory store: APScheduler 4.0.0a6 defects closed in _stores.py."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest
from apscheduler import AsyncScheduler, ConflictPolicy
from apscheduler.datastores.memory import MemoryDataStore
from apscheduler.triggers.interval import IntervalTrigger

from library.components.scheduling.task_scheduler import TaskScheduler
from library.components.scheduling.task_scheduler._memstore import MemoryStore

pytestmark = pytest.mark.anyio


def counting(store_class: type[MemoryDataStore]) -> tuple[MemoryDataStore, list[int]]:
    """A store that counts the schedule loop's turns (each turn acquires schedules once)."""
    turns: list[int] = []

    class Counting(store_class):  # type: ignore[valid-type,misc]
        async def acquire_schedules(self, *args: Any, **kwargs: Any) -> Any:
            turns.append(1)
            return await super().acquire_schedules(*args, **kwargs)

    return Counting(), turns


async def loop_turns_while_paused(store: MemoryDataStore, turns: list[int]) -> int:
    """Pause a schedule, let its fire time pass, and count the schedule loop's turns."""
    async with AsyncScheduler(data_store=store) as engine:
        start = datetime.now(timezone.utc) + timedelta(seconds=0.1)
        await engine.add_schedule(print, IntervalTrigger(hours=1, start_time=start), id="s")
        await engine.pause_schedule("s")
        await engine.start_in_background()
        await anyio.sleep(0.2)  # the paused schedule's fire time is now past
        before = len(turns)
        await anyio.sleep(0.3)
        await engine.stop()
    return len(turns) - before


async def test_paused_schedule_does_not_spin_the_schedule_loop(anyio_backend: str) -> None:
    # Trap 9: the stock store makes the loop sleep a negative time while a schedule is paused.
    store, turns = counting(MemoryStore)
    assert await loop_turns_while_paused(store, turns) <= 2


async def test_the_stock_store_still_spins(anyio_backend: str) -> None:
    # Documents the defect MemoryStore closes: when this fails, 4.0.0a6's successor fixed it
    # and MemoryStore.get_next_schedule_run_time can go.
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
        assert len(store._schedules_by_task_id["builtins:print"]) == 49
        for index in range(1, 50):
            await engine.remove_schedule(f"s{index}")
        assert dict(store._schedules_by_task_id) == {}
        assert store._schedules == [] and store._schedules_by_id == {}


async def test_removing_jobs_does_not_grow_memory(anyio_backend: str) -> None:
    scheduler = TaskScheduler()

    async def job() -> None:
        pass

    async with scheduler:
        for index in range(200):
            await scheduler.add_interval_job(job, f"j{index}", hours=1)
            await scheduler.remove_job(f"j{index}")
        engine = scheduler._engine
        assert engine is not None
        store = engine.data_store
        assert isinstance(store, MemoryStore)
        assert dict(store._schedules_by_task_id) == {}
        assert store._tasks == {}
        assert scheduler._executor.jobs == {}
