"""One process of the PostgreSQL benchmark: a TaskScheduler on a shared store (one measurement).

Run by ``pg.py`` as ``python bench/_pg_worker.py '<json params>'``, once per process of a cell.
Params: ``store`` (the postgresql:// URL, with its fresh ``?schema=``), ``t0`` (the wall-clock
second every schedule starts at), ``n`` (interval schedules of 1 s), ``warmup``, ``window`` and
``tail`` (seconds), ``loop`` (``asyncio``, the default, or ``trio``). Each process declares
the same ``n`` schedules and starts; then it prints
``ready`` and reads from stdin when the measuring window opens (a whole second, once every
process of the cell is ready), runs until ``tail`` seconds after the window and stops by itself.
Every run appends its job id, its scheduled fire time (from ``apscheduler.current_job``) and its
start time; the CPU time of the process is read at both ends of the window. The scheduler's run
history is checked against those records. The result is the last line on stdout, as JSON.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
from _common import BOUNDARY_LEAD, seconds_until, worker_main
from apscheduler import current_job

try:
    from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler
except ImportError:  # a source checkout that is not installed: use its src/ directly
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler

PACKAGE = "library.components.scheduling.task_scheduler"

RUNS: list[tuple[str, float, float, str]] = []
"""(job id, scheduled fire time, start time) of every run in this process, appended by job."""

HISTORY_MARGIN = 10
"""Runs kept per job beyond the seconds from the window's opening to the end: the scheduler's
history then holds every fire from the window on."""


RAW_APS4 = False
"""Whether this process runs raw APScheduler 4 (every schedule then shares one task: the job
is told by its schedule id; ours has a task per job, named after it)."""


async def job() -> None:
    """The job every schedule runs: note which fire of which job started, and when."""
    started = time.time()
    running = current_job.get()
    fire = running.scheduled_fire_time
    job_id = running.schedule_id if RAW_APS4 else running.task_id
    RUNS.append((str(job_id), fire.timestamp() if fire else math.nan, started, str(running.id)))


def utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, timezone.utc)


async def history_check(
    scheduler: TaskScheduler, n: int, since: float, limit: int, worker: str | None
) -> dict[str, Any]:
    """Compare the scheduler's run history from ``since`` on with what the job itself saw, and
    count the outcomes of those fires. ``limit``: runs asked for per job (the default differs
    between versions); ``worker``: this process's id, where runs name the worker that ran them
    (a history shared by the processes then keeps only this one's)."""
    outcomes: Counter[str] = Counter()
    history: set[tuple[str, float]] = set()
    for index in range(n):
        for run in await scheduler.get_runs(f"j{index}", limit):
            fire = run.scheduled_at.timestamp()
            if fire < since or (worker and getattr(run, "worker", worker) not in (None, worker)):
                continue
            outcomes[run.outcome.value if run.outcome else "in progress"] += 1
            if run.started_at is not None:
                history.add((run.job_id, fire))
    seen = {(job_id, fire) for job_id, fire, *_ in RUNS if fire >= since}
    return {"outcomes": dict(outcomes), "history_mismatches": len(history ^ seen)}


async def run_window(window: float, tail: float) -> tuple[float, float, dict[str, Any]]:
    """Say ready, read the window's opening time from stdin, and measure the process's CPU
    and wall time over the window; return once its tail has passed: when ready, when the
    window opened, and the window's first and last readings."""
    ready = time.time()
    print("ready", flush=True)
    window_open = float(await anyio.to_thread.run_sync(sys.stdin.readline))
    window_close = window_open + window
    await anyio.sleep(seconds_until(window_open - BOUNDARY_LEAD))
    cpu_first, wall_first = time.process_time(), time.time()
    await anyio.sleep(seconds_until(window_close - BOUNDARY_LEAD))
    cpu_last, wall_last = time.process_time(), time.time()
    await anyio.sleep(seconds_until(window_close + tail))
    return (
        ready,
        window_open,
        {
            "window_first": {"cpu": cpu_first, "wall": wall_first},
            "window_last": {"cpu": cpu_last, "wall": wall_last},
        },
    )


async def measure_async(params: dict[str, Any]) -> dict[str, Any]:
    n, t0 = params["n"], params["t0"]
    warmup, window, tail = params["warmup"], params["window"], params["tail"]
    history_size = warmup + window + tail + HISTORY_MARGIN
    config = SchedulerConfig(store=params["store"], history_size=history_size)
    scheduler = TaskScheduler(config)
    for index in range(n):
        scheduler.interval(seconds=1, start=utc(t0), id=f"j{index}")(job)
    begin = time.time()
    async with scheduler:
        ready, window_open, timings = await run_window(window, tail)
        # The worker id, in versions that have one (after the window: it may ask the store).
        worker = getattr(await scheduler.get_status(), "worker_id", None)
        stopping = time.time()
    stopped = time.time()
    return {
        "pid": os.getpid(),
        "start_s": ready - begin,
        "ready_at": ready,
        "stop_s": stopped - stopping,
        **timings,
        "worker_id": worker,
        **(await history_check(scheduler, n, window_open, history_size, worker)),
        "runs": RUNS,
    }


async def measure_aps4(params: dict[str, Any]) -> dict[str, Any]:
    """The same cell on raw APScheduler 4.0.0a6: an ``AsyncScheduler`` on its own
    ``SQLAlchemyDataStore`` and ``AsyncpgEventBroker`` in the cell's schema, the same ``n``
    interval schedules (coalescing, as ours by default), the same job. No run history."""
    import sniffio
    from apscheduler import AsyncScheduler, CoalescePolicy, ConflictPolicy
    from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
    from apscheduler.eventbrokers.asyncpg import AsyncpgEventBroker
    from apscheduler.triggers.interval import IntervalTrigger
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    n, t0 = params["n"], params["t0"]
    window, tail = params["window"], params["tail"]
    url, _, query = params["store"].partition("?schema=")
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    store = SQLAlchemyDataStore(engine, schema=query)
    # As a user of 4.0.0a6 under plain asyncio must (see our _aps/stores.py): with sniffio
    # installed, its broker drops every NOTIFY unless the library is named.
    sniffio.current_async_library_cvar.set("asyncio")
    broker = AsyncpgEventBroker.from_async_sqla_engine(engine, channel=f"aps4_{query}")
    begin = time.time()
    async with engine.connect() as lock:
        # 4.0.0a6's processes race in create_all on an empty schema (one dies): the bench,
        # not the scheduler, starts them one at a time (our store serializes it itself).
        await lock.execute(text("SELECT pg_advisory_lock(8675309)"))
        scheduler = AsyncScheduler(store, broker)
        await scheduler.__aenter__()
        try:
            for index in range(n):
                await scheduler.add_schedule(
                    job,
                    IntervalTrigger(seconds=1, start_time=utc(t0)),
                    id=f"j{index}",
                    coalesce=CoalescePolicy.latest,
                    conflict_policy=ConflictPolicy.do_nothing,
                )
            await scheduler.start_in_background()
        finally:
            await lock.execute(text("SELECT pg_advisory_unlock(8675309)"))
    try:
        ready, _, timings = await run_window(window, tail)
        stopping = time.time()
    finally:
        await scheduler.__aexit__(None, None, None)
        await engine.dispose()
    stopped = time.time()
    return {
        "pid": os.getpid(),
        "start_s": ready - begin,
        "ready_at": ready,
        "stop_s": stopped - stopping,
        **timings,
        "worker_id": None,
        "outcomes": {},
        "history_mismatches": 0,
        "runs": RUNS,
    }


def measure(params: dict[str, Any]) -> dict[str, Any]:
    # Warnings and errors of the library go to stderr, where pg.py counts them.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if params.get("target", "ours") == "aps4":
        global RAW_APS4
        RAW_APS4 = True
        result = asyncio.run(measure_aps4(params))
    elif params.get("loop", "asyncio") == "trio":
        import trio

        result = trio.run(measure_async, params)
    else:
        # Plain asyncio, as under uvicorn.
        result = asyncio.run(measure_async(params))
    result["task_scheduler_from"] = sys.modules[TaskScheduler.__module__].__file__
    # The package itself: pg.py checks it lies in the src/ directory the cell was meant to run.
    result["task_scheduler_package"] = sys.modules[PACKAGE].__file__
    return result


if __name__ == "__main__":
    worker_main(
        measure, ["apscheduler", "anyio", "sqlalchemy", "asyncpg", "fastapi-task-scheduler"]
    )
