"""The in-memory data store: APScheduler's ``MemoryDataStore`` with two 4.0.0a6 defects
closed, each in one method below."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from apscheduler.datastores.memory import MemoryDataStore


class MemoryStore(MemoryDataStore):
    """APScheduler's memory store, without its paused-schedule spin and removed-schedule leak."""

    async def get_next_schedule_run_time(self) -> datetime | None:
        # Trap 9 (4.0.0a6): the stock store returns a *paused* schedule's past fire time, so
        # the schedule loop sleeps a negative time and spins the CPU while it stays paused.
        for schedule in self._schedules:
            if not schedule.paused:
                next_fire_time: datetime | None = schedule.next_fire_time
                return next_fire_time
        return None

    async def remove_schedules(self, ids: Iterable[str], *, finished: bool = False) -> None:
        # Trap 10 (4.0.0a6): the stock store never drops removed schedules from
        # _schedules_by_task_id, keeping ~1 KB per removed schedule for good.
        ids = list(ids)
        for schedule_id in ids:
            schedule = self._schedules_by_id.get(schedule_id)
            if schedule is not None:
                same_task = self._schedules_by_task_id.get(schedule.task_id)
                if same_task is not None:
                    same_task.discard(schedule)
                    if not same_task:
                        del self._schedules_by_task_id[schedule.task_id]
        await super().remove_schedules(ids, finished=finished)
