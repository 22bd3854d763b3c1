"""Dead rows vacuumed by the scheduler itself (PostgreSQL): every fire leaves dead rows behind,
and this project's test server runs with autovacuum off, as some servers do."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import anyio
import psycopg
import pytest

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler._aps import sqlstore

pytestmark = pytest.mark.anyio


async def tick() -> None:
    pass


def run_sql(pg_url: str, statement: str) -> list[tuple[object, ...]]:
    parts = urlsplit(pg_url)
    dsn = f"{parts.scheme}://{parts.netloc}{parts.path}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return list(cursor.fetchall()) if cursor.description else []


async def test_dead_rows_are_vacuumed_even_where_autovacuum_is_off(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlstore, "TIDY_INTERVAL", 0.2)
    schema = parse_qs(urlsplit(pg_url).query)["schema"][0]
    ledger = f'"{schema}".task_scheduler_fired'
    scheduler = TaskScheduler(SchedulerConfig(store=pg_url))
    scheduler.interval(hours=1, id="tick")(tick)
    async with scheduler:
        # 3,000 dead rows in the ledger table, as 3,000 fires leave behind.
        churn = (
            f"INSERT INTO {ledger} SELECT 'gone-' || n, now() FROM generate_series(1, 3000) AS n;"
            f" DELETE FROM {ledger} WHERE schedule_id LIKE 'gone-%'"
        )
        await anyio.to_thread.run_sync(run_sql, pg_url, churn)
        vacuumed = (
            "SELECT last_vacuum IS NOT NULL, n_dead_tup FROM pg_stat_user_tables"
            f" WHERE schemaname = '{schema}' AND relname = 'task_scheduler_fired'"
        )
        with anyio.fail_after(30):
            while not (await anyio.to_thread.run_sync(run_sql, pg_url, vacuumed))[0][0]:
                await anyio.sleep(0.2)
    [(_, dead)] = await anyio.to_thread.run_sync(run_sql, pg_url, vacuumed)
    assert dead < 3000
