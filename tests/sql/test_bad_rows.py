"""Rows the engine cannot load (issue #13, item 1): written by hand, corrupted, or left by an
older release. The scheduler starts, every other job runs, the row is logged once at ERROR
with its job id and the reason, left in the store, reported in status, and remove_job()
removes it. Both stores, on asyncio (the SQL store is asyncio-only).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest
from helpers import wait_until
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncio: the tests write the bad rows with aiosqlite and asyncpg. The store code
    under test (SQLStore's row handling) is the same on trio (ThreadedSQLStore)."""
    return "asyncio"


CALLS: list[str] = []


@pytest.fixture(autouse=True)
def clear_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


async def tick() -> None:
    CALLS.append("tick")


async def bad() -> None:
    CALLS.append("bad")


@asynccontextmanager
async def database(store: str) -> AsyncIterator[tuple[AsyncConnection, str]]:
    """A connection to the store's database, and the prefix of its tables' names."""
    if store.startswith("sqlite"):
        url, prefix = store.replace("sqlite://", "sqlite+aiosqlite://", 1), ""
    else:
        base, schema = store.split("?schema=")
        url, prefix = base.replace("postgresql://", "postgresql+asyncpg://", 1), f'"{schema}".'
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            yield conn, prefix
    finally:
        await engine.dispose()


async def sql(store: str, statement: str, **params: Any) -> list[Any]:
    async with database(store) as (conn, prefix):
        result = await conn.execute(text(statement.format(t=prefix)), params)
        return list(result.all()) if result.returns_rows else []


def scheduler_on(store: str, *, declare_bad: bool = False) -> TaskScheduler:
    scheduler = TaskScheduler(SchedulerConfig(store=store))
    scheduler.interval(id="tick", seconds=0.1)(tick)
    if declare_bad:
        scheduler.interval(id="bad", hours=1)(bad)
    return scheduler


def errors_about(caplog: pytest.LogCaptureFixture, job_id: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.ERROR and f"job {job_id!r}" in record.getMessage()
    ]


async def runs_with_a_bad_row(store: str, caplog: pytest.LogCaptureFixture, **kw: bool) -> None:
    """Start on the store: the good job fires many times (many loop iterations), and the
    bad row is reported, and logged once."""
    scheduler = scheduler_on(store, **kw)
    async with scheduler:
        await wait_until(lambda: CALLS.count("tick") >= 8, limit=10)  # many loop iterations
        status = await scheduler.get_status()
    assert status.state == "running" and status.engine_restarts == 0, status
    assert status.unloadable_jobs == ["bad"]
    assert "bad" not in CALLS
    logged = errors_about(caplog, "bad")
    assert logged and len(set(logged)) == len(logged), logged  # each bad row once
    assert all("cannot be loaded" in message for message in logged)


def count_acquires(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the job loop asks the store for jobs (one count, updated live)."""
    from library.components.scheduling.task_scheduler._aps.sqlstore import SQLStore

    calls = [0]
    acquire = SQLStore.acquire_jobs

    async def counted(self: SQLStore, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await acquire(self, *args, **kwargs)

    monkeypatch.setattr(SQLStore, "acquire_jobs", counted)
    return calls


# -- a schedule row ------------------------------------------------------------------


def _corrupt_year(trigger: bytes) -> bytes:
    year = str(datetime.now(timezone.utc).year).encode()
    return trigger.replace(b'"' + year, b'"0000')


SCHEDULE_DEFECTS: dict[str, tuple[str, str]] = {
    # name: (SQL, the reason the log names)
    "corrupted trigger JSON": (
        "UPDATE {t}schedules SET trigger = :junk WHERE id = 'bad'",
        "JSONDecodeError",
    ),
    "a trigger class we no longer have": (
        "UPDATE {t}schedules SET trigger = :gone WHERE id = 'bad'",
        "refusing to load 'gone.module:Trigger'",
    ),
    "year 0 in the trigger's state": ("", "year 0 is out of range"),
}


@pytest.mark.parametrize("defect", [*SCHEDULE_DEFECTS, "next fire time out of range"])
async def test_a_schedule_row_that_cannot_load_is_reported_and_skipped(
    sql_url: str, defect: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = scheduler_on(sql_url)
    async with first:
        await first.add_interval_job(bad, "bad", hours=1)  # added at run time: not declared
    if defect == "year 0 in the trigger's state":
        (row,) = await sql(sql_url, "SELECT trigger FROM {t}schedules WHERE id = 'bad'")
        statement = "UPDATE {t}schedules SET trigger = :state WHERE id = 'bad'"
        await sql(sql_url, statement, state=_corrupt_year(bytes(row.trigger)))
        reason = SCHEDULE_DEFECTS[defect][1]
    elif defect == "next fire time out of range":
        if sql_url.startswith("sqlite"):  # microseconds since the epoch: year -1199
            value, reason = "-99999999999999999", "is out of range"
        else:  # a fire in year 1, stored before dates were checked at declaration
            value, reason = "'0001-01-01 00:00:00+00'", "year 0 is out of range"
        await sql(sql_url, f"UPDATE {{t}}schedules SET next_fire_time = {value} WHERE id = 'bad'")
    else:
        statement, reason = SCHEDULE_DEFECTS[defect]
        await sql(
            sql_url,
            statement,
            junk=b"not json{",
            gone=b'{"_apscheduler_json": ["gone.module:Trigger", {}]}',
        )
    CALLS.clear()
    caplog.set_level(logging.ERROR)

    await runs_with_a_bad_row(sql_url, caplog)
    assert reason in errors_about(caplog, "bad")[0]
    assert len(await sql(sql_url, "SELECT id FROM {t}schedules WHERE id = 'bad'")) == 1

    # The user cleans it up: the job was never registered here, remove_job still finds it.
    seen = len(errors_about(caplog, "bad"))
    cleaner = scheduler_on(sql_url)
    async with cleaner:  # a new process: it logs the row once more
        await wait_until(lambda: len(errors_about(caplog, "bad")) > seen, limit=10)
        assert (await cleaner.get_status()).unloadable_jobs == ["bad"]
        await cleaner.remove_job("bad")
        assert (await cleaner.get_status()).unloadable_jobs == []
    assert await sql(sql_url, "SELECT id FROM {t}schedules WHERE id = 'bad'") == []
    assert await sql(sql_url, "SELECT id FROM {t}jobs WHERE task_id = 'bad'") == []


# -- a queued fire (a row of the jobs table) -----------------------------------------


async def test_a_queued_fire_that_cannot_load_is_reported_and_left_in_the_store(
    sql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await fire_row_test(sql_url, caplog, bad_args=True)


async def test_a_queued_fire_with_a_fire_time_out_of_range_does_not_crash_the_engine(
    sql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await fire_row_test(sql_url, caplog, bad_args=False)


async def fire_row_test(store: str, caplog: pytest.LogCaptureFixture, *, bad_args: bool) -> None:
    async with scheduler_on(store, declare_bad=True):
        pass
    sqlite = store.startswith("sqlite")
    now = datetime.now(timezone.utc)
    if bad_args:
        # 4.0.0a6 deletes such a fire without a word.
        fire_time, reason = now, "DeserializationError"
    elif sqlite:
        fire_time, reason = "not a date", "Invalid isoformat string"
    else:
        # A year-1 fire, enqueued before dates were checked: 4.0.0a6 crashed the job loop.
        fire_time, reason = datetime(1, 1, 1, tzinfo=timezone.utc), "year 0 is out of range"
    args = b"not json{" if bad_args else b"[]"

    def stamp(value: datetime | str) -> datetime | str:
        return value.isoformat() if sqlite and isinstance(value, datetime) else value

    await sql(
        store,
        "INSERT INTO {t}jobs (id, task_id, args, kwargs, schedule_id, scheduled_fire_time,"
        " executor, result_expiration_time, metadata, created_at)"
        " VALUES (:id, 'bad', :args, :kwargs, 'bad', :fire, 'task_scheduler', :expiry, '{{}}',"
        " :created)",
        id=uuid.uuid4().hex if sqlite else uuid.uuid4(),
        args=args,
        kwargs=b"{}",
        fire=stamp(fire_time),
        expiry=0 if sqlite else timedelta(0),
        created=stamp(now),
    )
    caplog.set_level(logging.ERROR)

    await runs_with_a_bad_row(store, caplog, declare_bad=True)
    assert reason in errors_about(caplog, "bad")[0]
    assert "its fire " in errors_about(caplog, "bad")[0]
    assert len(await sql(store, "SELECT id FROM {t}jobs WHERE task_id = 'bad'")) == 1

    seen = len(errors_about(caplog, "bad"))
    cleaner = scheduler_on(store, declare_bad=True)
    async with cleaner:  # a new process: it tries the parked row again, and logs it again
        await wait_until(lambda: len(errors_about(caplog, "bad")) > seen, limit=10)
        await cleaner.remove_job("bad")
        assert (await cleaner.get_status()).unloadable_jobs == []
        await anyio.sleep(0.3)
        assert (await cleaner.get_status()).unloadable_jobs == []
    assert await sql(store, "SELECT id FROM {t}jobs WHERE task_id = 'bad'") == []


async def test_a_next_fire_time_past_year_9999_does_not_stall_the_other_schedules(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite keeps fire times as integers: one no datetime can hold failed start()'s
    reconcile. (PostgreSQL: a timestamp past year 9999 fails in the driver for every query
    that reads its row - a documented limit.)"""
    store = f"sqlite:///{tmp_path}/jobs.db"
    first = scheduler_on(store)
    async with first:
        await first.add_interval_job(bad, "bad", hours=1)
    never = "9000000000000000000"  # microseconds since the epoch: year 287,000
    await sql(store, f"UPDATE {{t}}schedules SET next_fire_time = {never} WHERE id = 'bad'")
    CALLS.clear()
    caplog.set_level(logging.ERROR)

    await runs_with_a_bad_row(store, caplog)
    assert "year 287" in errors_about(caplog, "bad")[0]


async def test_a_run_of_a_dead_process_that_cannot_load_does_not_crash_the_sweep(
    sql_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep reads the runs of processes that are gone: 4.0.0a6's reader let a
    DeserializationError out, and the engine crashed at every sweep."""
    async with scheduler_on(sql_url, declare_bad=True):
        pass
    sqlite = sql_url.startswith("sqlite")
    now = datetime.now(timezone.utc)
    past = now - timedelta(minutes=1)
    soon = now + timedelta(seconds=4)  # its lease runs out while this process runs
    await sql(
        sql_url,
        "INSERT INTO {t}jobs (id, task_id, args, kwargs, schedule_id, scheduled_fire_time,"
        " executor, result_expiration_time, metadata, created_at, acquired_by, acquired_until)"
        " VALUES (:id, 'bad', :args, :kwargs, 'bad', :fire, 'task_scheduler', :expiry, '{{}}',"
        " :created, 'a-process-that-died', :until)",
        id=uuid.uuid4().hex if sqlite else uuid.uuid4(),
        args=b"not json{",
        kwargs=b"{}",
        fire=past.isoformat() if sqlite else past,
        expiry=0 if sqlite else timedelta(0),
        created=past.isoformat() if sqlite else past,
        until=soon.isoformat() if sqlite else soon,
    )
    caplog.set_level(logging.ERROR)

    acquires = count_acquires(monkeypatch)
    scheduler = scheduler_on(sql_url, declare_bad=True)
    async with scheduler:
        await wait_until(lambda: CALLS.count("tick") >= 8, limit=10)
        status = await scheduler.get_status()
        await anyio.sleep(5)
        # Once its lease ran out, the job loop takes it, cannot load it, and releases it
        # at once: it does not spin on it until the sweep or the cleanup does.
        assert acquires[0] < 20 * CALLS.count("tick"), (acquires, CALLS.count("tick"))
        # Then released as 4.0.0a6 releases any run of a dead process (a result row, no
        # retry): the run it stood for is over, and status no longer lists it.
        with anyio.fail_after(15):
            while (await scheduler.get_status()).unloadable_jobs:
                await anyio.sleep(0.1)
    assert status.state == "running" and status.engine_restarts == 0, status
    logged = errors_about(caplog, "bad")
    assert len(logged) == 1, logged
    assert "DeserializationError" in logged[0]
    assert await sql(sql_url, "SELECT id FROM {t}jobs WHERE task_id = 'bad'") == []
