"""A transaction PostgreSQL rolls back for a conflict with another one (a deadlock) is run
again, as one cut by a lost connection is (asyncio and trio)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler._aps.sqlstore import SQLStore

pytestmark = pytest.mark.anyio

DEADLOCK = text("DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$")


async def test_a_transaction_rolled_back_for_a_deadlock_is_run_again(pg_url: str) -> None:
    """Under load, a batch of releases deadlocked with a fire superseding queued ones: the
    release failed, and its jobs ran again in another process once their leases lapsed."""
    scheduler = TaskScheduler(SchedulerConfig(store=pg_url))
    async with scheduler:
        engine = scheduler._lifecycle.engine
        assert engine is not None
        store = engine.data_store
        assert isinstance(store, SQLStore)
        attempts = 0
        async for attempt in store._retry():
            with attempt:
                attempts += 1
                async with store._begin_transaction() as conn:
                    if attempts == 1:
                        await store._execute(conn, DEADLOCK)
                    await store._execute(conn, text("SELECT 1"))
    assert attempts == 2
