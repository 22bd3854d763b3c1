"""One truth across workers and restarts: runs, counts and workers live in the store.

Several schedulers on one store in this process are several workers (each has its own id);
tests/sql/test_multiprocess.py has the real processes.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest
from test_compat import STORE_0_1_0  # the SQLite file release 0.1.0 wrote
from workers.legacy_jobs import build

from library.components.scheduling.task_scheduler import (
    InvalidValueError,
    JobNotFoundError,
    Outcome,
    SchedulerConfig,
    TaskScheduler,
    _history,
)
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: this file's store code runs the same on trio (ThreadedSQLStore shares
    SQLStore's and the history's code; test_sqlstore.py and test_persistence.py run on both),
    and the suite's time is kept down."""
    return "asyncio"


CALLS: list[str] = []


async def tick() -> None:
    CALLS.append("tick")


async def fail() -> None:
    raise RuntimeError("boom")


async def slow() -> None:
    await anyio.sleep(30)


def declare(store: str, **config: object) -> TaskScheduler:
    """The same declarations in every worker, as an app's processes have them."""
    scheduler = TaskScheduler(SchedulerConfig(store=store, **config))  # type: ignore[arg-type]
    scheduler.interval(hours=1, id="tick")(tick)
    scheduler.interval(hours=1, id="fail")(fail)
    scheduler.interval(hours=1, id="slow", max_instances=2)(slow)
    return scheduler


@asynccontextmanager
async def workers(store: str, count: int, **config: object) -> AsyncIterator[list[TaskScheduler]]:
    async with AsyncExitStack() as stack:
        running = [declare(store, **config) for _ in range(count)]
        for scheduler in running:
            await stack.enter_async_context(scheduler)
        yield running


async def test_every_worker_reports_the_same_runs_and_counts(pg_url: str) -> None:
    async with workers(pg_url, 2) as (a, b):
        for _ in range(3):
            await a.run_job("tick")
        await b.run_job("tick")
        await b.run_job("fail")
        # Each worker writes its runs in batches (every 0.1 s): wait until a has b's.
        await wait_for_runs(a, "tick", 4)
        await wait_for_runs(a, "fail", 1)
        await wait_for_runs(b, "tick", 4)
        jobs_a = {job.id: job for job in await a.get_jobs()}
        jobs_b = {job.id: job for job in await b.get_jobs()}
        runs_a = await a.get_runs("tick")
        runs_b = await b.get_runs("tick")
        ids = {(await a.get_status()).worker_id, (await b.get_status()).worker_id}
    assert jobs_a["tick"].counts == jobs_b["tick"].counts
    assert jobs_a["tick"].counts.success == 4
    assert jobs_a["fail"].counts.error == jobs_b["fail"].counts.error == 1
    assert jobs_a["tick"].last_success_at == jobs_b["tick"].last_success_at is not None
    assert jobs_a["fail"].last_run == jobs_b["fail"].last_run
    assert jobs_b["fail"].last_run is not None
    assert jobs_b["fail"].last_run.error_message == "boom"
    assert runs_a == runs_b and len(runs_a) == 4
    assert {run.worker for run in runs_a} == ids and len(ids) == 2


async def test_history_and_counts_survive_a_restart_of_every_worker(sql_url: str) -> None:
    # Two workers on PostgreSQL; SQLite is for one process.
    count = 2 if sql_url.startswith("postgresql") else 1
    async with workers(sql_url, count) as running:
        a, b = running[0], running[-1]
        await a.run_job("tick")
        await b.run_job("tick")
        await b.run_job("fail")
        await wait_for_runs(a, "fail", 1)
        before = await a.get_runs(None, limit=10)
    async with workers(sql_url, 1) as (c,):
        after = await c.get_runs(None, limit=10)
        job = await c.get_job("tick")
    assert after == before and len(after) == 3
    assert job.counts.success == 2 and job.last_run is not None
    assert len({run.worker for run in after}) == count


async def test_runs_in_progress_are_visible_from_every_worker(pg_url: str) -> None:
    # The slow runs are cancelled at stop: a short drain keeps the test short.
    async with workers(pg_url, 2, shutdown_timeout=1) as (a, b):
        await a.run_job("slow", wait=False)
        await a.run_job("slow", wait=False)
        with anyio.fail_after(5):
            while (await b.get_job("slow")).running < 2:
                await anyio.sleep(0.05)
        runs = await b.get_runs("slow")
        worker_a = (await a.get_status()).worker_id
    assert [run.outcome for run in runs] == [None, None]
    assert [run.worker for run in runs] == [worker_a, worker_a]
    assert all(run.started_at is not None for run in runs)


async def test_workers_are_listed_while_they_run(pg_url: str) -> None:
    async with workers(pg_url, 2) as (a, b):
        listed = await a.get_workers()
        status = await a.get_status()
        await b.shutdown()
        after_b_left = await a.get_workers()
    ids = {worker.id for worker in listed}
    assert len(ids) == 2 and status.workers == 2 and status.worker_id in ids
    assert [worker.id for worker in after_b_left] == [status.worker_id]
    assert all(worker.state == "running" for worker in listed)
    assert listed[0].pid == listed[1].pid  # one process, two workers


async def test_get_runs_filters_and_pages(sql_url: str) -> None:
    async with workers(sql_url, 1) as (a,):
        for _ in range(3):
            await a.run_job("tick")
            await a.run_job("fail")
        everything = await a.get_runs(None, limit=100)
        failed = await a.get_runs(None, outcome="error")
        first_page = await a.get_runs("tick", limit=2)
        last = first_page[-1]
        assert last.started_at is not None
        second_page = await a.get_runs("tick", limit=2, before=last.started_at)
        with pytest.raises(InvalidValueError, match="unknown outcome 'exploded'"):
            await a.get_runs(None, outcome="exploded")
        with pytest.raises(InvalidValueError, match="limit must be an integer from 1 to 1000"):
            await a.get_runs(None, limit=0)
        with pytest.raises(JobNotFoundError):
            await a.get_runs("nope")
    assert len(everything) == 6 and [run.outcome for run in failed] == [Outcome.error] * 3
    assert [run.started_at for run in everything] == sorted(
        (run.started_at for run in everything), reverse=True
    )
    assert len(first_page) == 2 and len(second_page) == 1
    assert {run.run_id for run in first_page}.isdisjoint(run.run_id for run in second_page)


async def test_old_runs_are_pruned_and_counts_stay(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_history, "PRUNE_INTERVAL", 0.2)
    async with workers(sql_url, 1, history_size=3) as (a,):
        for _ in range(6):
            await a.run_job("tick")
        with anyio.fail_after(5):
            while len(await a.get_runs("tick", limit=100)) > 3:
                await anyio.sleep(0.1)
        job = await a.get_job("tick")
    assert job.counts.success == 6


async def test_health_uses_the_clusters_last_success(pg_url: str) -> None:
    """A job that succeeds on another worker is not stale here (it was: 9 of 24 polls 503
    with three workers, each judging by its own runs only)."""
    store = pg_url
    a = TaskScheduler(SchedulerConfig(store=store))
    b = TaskScheduler(SchedulerConfig(store=store))
    for scheduler in (a, b):
        scheduler.interval(hours=1, id="tick", max_staleness=0.5)(tick)
    async with a, b:
        await anyio.sleep(0.6)  # past max_staleness since both started
        await a.run_job("tick")
        await wait_for_runs(b, "tick", 1)  # a's run, written within a batch interval
        status_b = await b.get_status()
    assert status_b.stale_jobs == []


async def test_a_store_from_the_previous_release_gets_the_history_tables(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    shutil.copy(STORE_0_1_0, path)
    scheduler = build(f"sqlite:///{path}")
    async with scheduler:
        await scheduler.run_job("nightly")
        runs = await scheduler.get_runs("nightly")
        workers_now = await scheduler.get_workers()
    assert [run.outcome for run in runs] == [Outcome.success] and len(workers_now) == 1


async def test_a_pause_by_one_worker_is_every_workers(pg_url: str) -> None:
    """The pause state lived in the memory of the worker that paused: the others showed the
    job unpaused, judged it stale (health 503), and their resume_job() did nothing."""
    a, b = (TaskScheduler(SchedulerConfig(store=pg_url)) for _ in range(2))
    for scheduler in (a, b):
        scheduler.interval(hours=1, id="tick", max_staleness=0.3)(tick)
    async with a, b:
        await a.pause_job("tick")
        seen_by_b = await b.get_job("tick")
        await anyio.sleep(0.5)  # past max_staleness: a paused job is never stale
        stale_on_b = (await b.get_status()).stale_jobs
        resumed = await b.resume_job("tick")
        seen_by_a = await a.get_job("tick")
    assert seen_by_b.paused and stale_on_b == []
    assert not resumed.paused and not seen_by_a.paused and seen_by_a.next_run_time is not None
