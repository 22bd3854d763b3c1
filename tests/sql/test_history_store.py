"""The run history tables, at the store level: abandoned runs, pruning, workers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta, timezone

import pytest

from library.components.scheduling.task_scheduler._aps.history import RunHistory
from library.components.scheduling.task_scheduler._aps.rows import RunRow, WorkerRow
from library.components.scheduling.task_scheduler._aps.stores import open_sql_store
from library.components.scheduling.task_scheduler._urls import parse_store_url

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: this file's store code runs the same on trio (ThreadedSQLStore shares
    SQLStore's and the history's code; test_sqlstore.py and test_persistence.py run on both),
    and the suite's time is kept down."""
    return "asyncio"


LOG = logging.getLogger("tests.history")


class NoNotices:
    def abandoned(self, job: object) -> None:
        pass

    def skipped(self, job: object, running: int) -> None:
        pass


@asynccontextmanager
async def open_history(url: str) -> AsyncIterator[RunHistory]:
    async with AsyncExitStack() as stack:
        store, broker = await open_sql_store(
            parse_store_url(url), None, connect_timeout=10, exit_stack=stack, notices=NoNotices()
        )
        await broker.start(stack, LOG)
        await store.start(stack, broker, LOG)  # creates the tables
        yield RunHistory(store)


def now() -> datetime:
    return datetime.now(timezone.utc)


def run(run_id: str, **fields: object) -> RunRow:
    at = fields.pop("at", now())
    return RunRow(
        run_id=run_id,
        job_id="j",
        attempt=1,
        scheduled_at=at,
        started_at=at,
        **fields,  # type: ignore[arg-type]
    )


async def test_a_dead_workers_run_is_finished_as_abandoned_once(sql_url: str) -> None:
    async with open_history(sql_url) as history:
        await history.write([run("r1", worker="dead", fire_id="f1")], {}, {})
        ended = run("r2", outcome="abandoned", finished_at=now(), error_message="gone")
        await history.finish_abandoned("f1", ended)  # finishes r1, the dead worker's row
        await history.finish_abandoned("f9", run("r3", outcome="abandoned"))  # never written
        runs = {row.run_id: row for row in await history.runs("j", 10)}
        stats = await history.stats(["j"])
    assert set(runs) == {"r1", "r3"}
    assert runs["r1"].outcome == "abandoned" and runs["r1"].worker == "dead"
    assert stats["j"].counts["abandoned"] == 2


async def test_a_finished_row_never_goes_back_to_in_progress(sql_url: str) -> None:
    """Batches may arrive late: the start of an attempt never overwrites its end."""
    async with open_history(sql_url) as history:
        finished = run("r1", outcome="success", finished_at=now())
        await history.write([finished], {"j": {"success": 1}}, {"j": finished.finished_at})  # type: ignore[dict-item]
        await history.write([run("r1")], {}, {})
        [row] = await history.runs("j", 10)
    assert row.outcome == "success" and row.finished_at is not None


async def test_pruning_keeps_the_newest_and_the_counts(sql_url: str) -> None:
    async with open_history(sql_url) as history:
        start = now() - timedelta(hours=1)
        rows = [
            run(f"r{i}", at=start + timedelta(seconds=i), outcome="success", finished_at=start)
            for i in range(10)
        ]
        await history.write(rows, {"j": {"success": 10}}, {})
        old = run("old", at=start - timedelta(days=30), outcome="error", finished_at=start)
        left = run("left", at=start, worker="gone-worker")  # in progress on a dead worker
        await history.write([old, left], {"j": {"error": 1}}, {})
        await history.prune(["j"], keep=3, older_than=now() - timedelta(days=7), gone_before=now())
        kept = [row.run_id for row in await history.runs("j", 100)]
        stats = await history.stats(["j"])
    # The 3 newest finished runs; the dead worker's run, finished as abandoned after the
    # pruning of this round (the next round may prune it); the 30-day-old run is gone.
    assert kept == ["r9", "r8", "r7", "left"]
    counts = stats["j"].counts
    assert (counts["success"], counts["error"], counts["abandoned"]) == (10, 1, 1)


async def test_workers_come_and_go(sql_url: str) -> None:
    async with open_history(sql_url) as history:
        t = now()
        for worker_id, seen in (("a", t), ("b", t), ("old", t - timedelta(minutes=5))):
            await history.beat(WorkerRow(worker_id, "host", 1, t, seen, "running", 0))
        live = [row.id for row in await history.workers(t - timedelta(seconds=10))]
        await history.leave("a", forget_before=t - timedelta(minutes=1))
        after = [row.id for row in await history.workers(t - timedelta(hours=1))]
    assert live == ["a", "b"]
    assert after == ["b"]  # a left, and old was forgotten


async def test_the_last_success_never_goes_back(sql_url: str) -> None:
    """A worker's batch written late (a slow flush, a retried write) carried an older
    success that overwrote a newer one: jobs turned stale across the cluster."""
    newer, older = now(), now() - timedelta(seconds=30)
    async with open_history(sql_url) as history:
        await history.write([], {"j": {"success": 1}}, {"j": newer})
        await history.write([], {"j": {"success": 1}}, {"j": older})
        await history.write([], {"j": {"error": 1}}, {})
        stats = await history.stats(["j"])
    assert stats["j"].last_success_at == newer and stats["j"].counts["success"] == 2
