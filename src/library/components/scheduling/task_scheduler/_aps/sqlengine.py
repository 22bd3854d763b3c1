"""The engine for SQL stores: APScheduler 4.0.0a6's ``AsyncScheduler``, whose runs start on a
local timer at their fire time.

The stock engine claims a schedule only once it is due, and only then writes its fire, wakes
the job loops, acquires the job, reads its task and starts it: one step after another, each a
round trip to the database, so on PostgreSQL every run started tens to hundreds of
milliseconds late (measured in ``bench/pg.py``; more with several processes). Our
:class:`SQLStore` claims schedules :data:`LOOKAHEAD` before they are due instead (its
``acquire_schedules`` and ``get_next_schedule_run_time``), so the fire is enqueued and
acquired ahead; here, each acquired job then waits in its own task until its fire time.

A fire held that way is like one waiting in the queue: a job paused meanwhile is recorded
``skipped`` when the fire comes (the executor checks, as it does for a queued fire); a process
that began to drain does not start it: when it comes due, it goes back to the queue, with
its task's running slot, for the others (:meth:`SQLStore.give_back`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import anyio
import attrs
from apscheduler import Job

from .sqljobloop import SQLJobLoop
from .sqlstore import SQLStore

_utc = timezone.utc


@attrs.define(eq=False, repr=False)
class SQLEngine(SQLJobLoop):
    """``AsyncScheduler`` for :class:`SQLStore`: its job loop is :class:`SQLJobLoop`'s, and
    ``_run_job`` first waits for the fire time."""

    async def _run_job(self, job: Job, func: Callable[..., Any], executor: str) -> None:
        fire_time = job.scheduled_fire_time  # None: a run-now, due at once
        if fire_time is not None:
            try:
                started = await self._wait_for(fire_time)
            except BaseException:
                # Cancelled (the engine stops): never started; the stop requeues the job.
                self._running_jobs.discard(job)
                raise
            if not started:
                try:
                    with anyio.CancelScope(shield=True):
                        await self._give_back(job)
                finally:
                    self._running_jobs.discard(job)
                return
        await super()._run_job(job, func, executor)

    async def _wait_for(self, fire_time: datetime) -> bool:
        """Sleep until ``fire_time``; False if this process began to drain meanwhile."""
        delay = (fire_time - datetime.now(_utc)).total_seconds()
        if delay > 0:
            await anyio.sleep(delay)
        store = self.data_store
        return not isinstance(store, SQLStore) or store.taking_jobs

    async def _give_back(self, job: Job) -> None:
        """Back to the queue for the other processes, never started. If the store cannot
        be reached, the job stays acquired here until the stop gives it back (or, if this
        process dies, its peers sweep it)."""
        store = self.data_store
        assert isinstance(store, SQLStore)  # _wait_for returned False: it is one
        try:
            await store.give_back(self.identity, job)
        except Exception as exc:
            self.logger.warning("could not give back job %s (not started): %r", job.id, exc)
