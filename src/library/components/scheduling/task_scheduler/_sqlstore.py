"""The SQL data store (SQLite, PostgreSQL): APScheduler's, with its 4.0.0a6 defects closed
at this boundary, each in one method below with a regression test."""

from __future__ import annotations

from typing import Any

import attrs
from apscheduler import ScheduleUpdated
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateSchema

SCHEMA_LOCK_KEY = 0x7A5C_4E11
"""pg_advisory_xact_lock key held while a process creates the tables."""


@attrs.define(eq=False, repr=False)
class SQLStore(SQLAlchemyDataStore):
    """APScheduler's SQL data store, safe to start concurrently and to stop cleanly."""

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
