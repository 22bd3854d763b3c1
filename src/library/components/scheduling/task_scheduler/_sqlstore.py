"""The SQL data store (SQLite, PostgreSQL): APScheduler's, with its 4.0.0a6 defects closed
at this boundary, each in one method below with a regression test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import attrs
from apscheduler import (
    ConflictPolicy,
    Job,
    JobOutcome,
    JobReleased,
    JobResult,
    Schedule,
    ScheduleResult,
    ScheduleUpdated,
)
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from sqlalchemy import false, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateSchema

from ._stores import LEASE_DURATION

SCHEMA_LOCK_KEY = 0x7A5C_4E11
"""pg_advisory_xact_lock key held while a process creates the tables."""
SWEEP_INTERVAL = 1.0
"""Seconds between two sweeps for abandoned jobs (each is one query)."""
SWEEP_MARGIN = 2.0
"""Seconds before its lease ends that an unrenewed job counts as abandoned; leases are
renewed every half lease (LEASE_DURATION / 2 = 5 s), so live jobs never come this close."""
assert SWEEP_MARGIN < LEASE_DURATION / 2
REPLACE_WAIT = 10.0
"""Seconds a replace waits for another process to release its claim on the schedule."""


@attrs.define(eq=False, repr=False)
class SQLStore(SQLAlchemyDataStore):
    """APScheduler's SQL data store, safe to start concurrently and to stop cleanly."""

    _claiming: bool = attrs.field(init=False, default=True)
    _in_hand: int = attrs.field(init=False, default=0)
    """Schedule batches acquired and not yet released."""
    _released: anyio.Event | None = attrs.field(init=False, default=None)
    _next_sweep: float = attrs.field(init=False, default=0.0)
    on_abandoned: Callable[[Job], Awaitable[None]] | None = attrs.field(init=False, default=None)
    """Called with each job this process found abandoned by a dead process."""
    on_skipped: Callable[[Job, int], None] | None = attrs.field(init=False, default=None)
    """Called with each fire not enqueued because its task was at max_instances, and the
    number of runs then in progress across processes."""

    async def acquire_jobs(
        self, scheduler_id: str, lease_duration: timedelta, limit: int | None = None
    ) -> list[Job]:
        await self._sweep_abandoned_jobs()
        jobs: list[Job] = await super().acquire_jobs(scheduler_id, lease_duration, limit)
        return jobs

    async def _sweep_abandoned_jobs(self) -> None:
        """Release the jobs of dead processes as ``abandoned``, once each, before anyone
        re-acquires them.

        4.0.0a6 lets another process re-acquire a job whose lease expired and run it again
        (a duplicate), and never gives back the dead holder's running slot (upstream
        #1110). Live holders renew their leases every half lease, so a job whose lease ends
        within SWEEP_MARGIN was not renewed: its holder is gone. The sweep deletes it with a
        condition on its holder, so exactly one process records it, and gives the slot back.
        """
        if anyio.current_time() < self._next_sweep:
            return
        self._next_sweep = anyio.current_time() + SWEEP_INTERVAL
        jobs_table, tasks_table = self._t_jobs, self._t_tasks
        horizon = datetime.now(timezone.utc) + timedelta(seconds=SWEEP_MARGIN)
        async with self._begin_transaction() as conn:
            expired = await self._execute(
                conn,
                jobs_table.select().where(
                    jobs_table.c.acquired_by.is_not(None),
                    jobs_table.c.acquired_until < horizon,
                ),
            )
            jobs: list[Job] = await self._deserialize_jobs(expired)
        for job in jobs:
            async with self._begin_transaction() as conn:
                deleted = await self._execute(
                    conn,
                    jobs_table.delete()
                    .where(
                        jobs_table.c.id == job.id,
                        jobs_table.c.acquired_by == job.acquired_by,
                    )
                    .returning(jobs_table.c.id),
                )
                if deleted.first() is None:
                    continue  # its holder released it after all, or a peer swept it
                await self._execute(
                    conn,
                    tasks_table.update()
                    .values(running_jobs=tasks_table.c.running_jobs - 1)
                    .where(tasks_table.c.id == job.task_id, tasks_table.c.running_jobs > 0),
                )
            result = JobResult.from_job(
                job, JobOutcome.abandoned, finished_at=datetime.now(timezone.utc)
            )
            holder = str(job.acquired_by)
            event = JobReleased.from_result(
                result, holder, job.task_id, job.schedule_id, job.scheduled_fire_time
            )
            await self._event_broker.publish(event)
            if self.on_abandoned is not None:
                await self.on_abandoned(job)

    async def get_next_schedule_run_time(self) -> datetime | None:
        wake: datetime | None = await super().get_next_schedule_run_time()
        if self._engine.dialect.name != "postgresql":
            return wake  # SQLite: one process, nobody else claims anything
        # 4.0.0a6 only looks at unclaimed schedules: those a dead process claimed stay
        # invisible, and with sparse schedules survivors may sleep past their lease for
        # good. Also wake when the earliest claim on a due schedule runs out.
        table = self._t_schedules
        query = select(func.min(table.c.acquired_until)).where(
            table.c.acquired_by.is_not(None),
            table.c.next_fire_time.is_not(None),
            table.c.paused == false(),
        )
        async with self._begin_transaction() as conn:
            claim_ends = (await self._execute(conn, query)).scalar()
        if claim_ends is not None and (wake is None or claim_ends < wake):
            return claim_ends  # type: ignore[no-any-return]
        return wake

    async def acquire_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Schedule]:
        if not self._claiming:
            return []
        schedules: list[Schedule] = await super().acquire_schedules(
            scheduler_id, lease_duration, limit
        )
        if schedules:
            self._in_hand += 1
        return schedules

    async def release_schedules(self, scheduler_id: str, results: Sequence[ScheduleResult]) -> None:
        try:
            await super().release_schedules(scheduler_id, results)
        finally:
            if results and self._in_hand:
                self._in_hand -= 1
                if not self._in_hand and self._released is not None:
                    self._released.set()

    async def add_schedule(self, schedule: Schedule, conflict_policy: ConflictPolicy) -> None:
        if conflict_policy is not ConflictPolicy.replace:
            await super().add_schedule(schedule, conflict_policy)
            return
        # 4.0.0a6 replaces a schedule even while another process holds its claim: a fire
        # that process already enqueued can then be enqueued again from the new row (a
        # duplicate run). Replace only once nobody holds it (claims last one batch).
        table = self._t_schedules
        deadline = anyio.current_time() + REPLACE_WAIT
        while True:
            now = datetime.now(timezone.utc)
            async with self._begin_transaction() as conn:
                claimed = (
                    await self._execute(
                        conn,
                        select(table.c.id).where(
                            table.c.id == schedule.id,
                            table.c.acquired_by.is_not(None),
                            table.c.acquired_until >= now,
                        ),
                    )
                ).first()
            if claimed is None or anyio.current_time() > deadline:
                break
            await anyio.sleep(0.02)
        # Whatever the old definition fired last is not fired again by the new one.
        old = await self.get_schedules({schedule.id})
        last = old[0].last_fire_time if old else None
        while last is not None and schedule.next_fire_time is not None:
            if schedule.next_fire_time > last:
                break
            schedule.next_fire_time = schedule.trigger.next()
        await super().add_schedule(schedule, conflict_policy)

    async def stop_claiming(self, grace: float) -> bool:
        """Claim no more schedules; wait up to ``grace`` s for the batch in hand to be released.

        4.0.0a6's ``stop()`` cancels the schedule loop wherever it is: between enqueueing a
        fire's job and advancing the schedule, that fire is enqueued again by whoever claims
        the schedule next (a duplicate run). Stopping only once no batch is in hand avoids it.
        """
        self._claiming = False
        if self._in_hand:
            self._released = anyio.Event()
            with anyio.move_on_after(grace):
                await self._released.wait()
        return not self._in_hand

    async def _create_metadata(self, conn: Any) -> None:
        # 4.0.0a6: processes starting together on an empty PostgreSQL database race in
        # create_all (CREATE TYPE coalescepolicy -> IntegrityError), and one of them dies.
        # A transaction-level advisory lock, in the same transaction, serializes them.
        if isinstance(conn, AsyncConnection) and conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        await super()._create_metadata(conn)

    async def release_claims(self, scheduler_id: str) -> int:
        """Give back every schedule ``scheduler_id`` still claims; return how many.

        4.0.0a6's ``stop()`` cancels the schedule loop mid-batch and leaves schedules
        claimed for the rest of their lease (30 s): a restarted process - a new identity -
        could not fire them until then. Peers are woken with a ScheduleUpdated event.
        """
        table = self._t_schedules
        async with self._begin_transaction() as conn:
            claimed = select(table.c.id).where(table.c.acquired_by == scheduler_id)
            ids = {row.id for row in (await self._execute(conn, claimed)).all()}
            if not ids:
                return 0
            await self._execute(
                conn,
                table.update()
                .where(table.c.acquired_by == scheduler_id)
                .values(acquired_by=None, acquired_until=None),
            )
        for schedule in await self.get_schedules(ids):
            await self._event_broker.publish(
                ScheduleUpdated(
                    schedule_id=schedule.id,
                    task_id=schedule.task_id,
                    next_fire_time=schedule.next_fire_time,
                )
            )
        return len(ids)


async def ensure_schema(engine: AsyncEngine, schema: str) -> None:
    """Create a PostgreSQL schema once, even when several processes start together.

    4.0.0a6 runs CREATE SCHEMA IF NOT EXISTS concurrently from every process, which races
    (a unique violation on pg_namespace); an advisory lock serializes it.
    """
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        await conn.execute(CreateSchema(schema, if_not_exists=True))
