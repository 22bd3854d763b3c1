"""Benchmark worker for APScheduler 3.11's AsyncIOScheduler (one measurement).

Runs in its own virtualenv (APScheduler 3 and 4 share the import name ``apscheduler``):
``<aps3 python> bench/_aps3_worker.py '<json params>'``; prints one JSON line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from _common import (
    ADD_CHUNK,
    BOUNDARY_LEAD,
    FAR_FUTURE_DAYS,
    POLL,
    STARTS,
    Snapshot,
    adds_result,
    aligned_start,
    bulk_result,
    fire_result,
    job,
    queued_result,
    rss_bytes,
    seconds_until,
    worker_main,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

CHECKPOINT_EVERY = 100


def new_scheduler() -> Any:
    """Job defaults matched to ours and APScheduler 4's: late fires still run, coalesced."""
    return AsyncIOScheduler(
        timezone=timezone.utc,
        job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
    )


def utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, timezone.utc)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def stop(scheduler: Any) -> None:
    scheduler.shutdown(wait=False)
    await settle()


async def fires(params: dict[str, Any]) -> dict[str, Any]:
    n, warmup, window = params["n"], params["warmup"], params["window"]
    t0 = params.get("t0") or aligned_start()
    scheduler = new_scheduler()
    for index in range(n):
        scheduler.add_job(job, "interval", seconds=1, start_date=utc(t0), id=f"j{index}")
    scheduler.start()
    await asyncio.sleep(seconds_until(t0 + warmup - BOUNDARY_LEAD))
    first = Snapshot()
    await asyncio.sleep(seconds_until(t0 + warmup + window - BOUNDARY_LEAD))
    last = Snapshot()
    await stop(scheduler)
    return fire_result(t0, n, first, last, window)


async def queued(params: dict[str, Any]) -> dict[str, Any]:
    n = params["jobs"]
    scheduler = new_scheduler()
    scheduler.start(paused=True)
    cpu, begin = time.process_time(), time.perf_counter()
    for _ in range(n):
        scheduler.add_job(job)  # no trigger: due now, held until resume()
    enqueued = time.perf_counter()
    scheduler.resume()
    deadline = enqueued + 300
    while len(STARTS) < n and time.perf_counter() < deadline:  # noqa: ASYNC110 (bare job body)
        await asyncio.sleep(POLL)
    end, cpu = time.perf_counter(), time.process_time() - cpu
    await stop(scheduler)
    return queued_result(enqueued - begin, end - enqueued, cpu, len(STARTS))


async def adds(params: dict[str, Any]) -> dict[str, Any]:
    n, budget = params["schedules"], params["budget_s"]
    far = utc(time.time()) + timedelta(days=FAR_FUTURE_DAYS)
    scheduler = new_scheduler()
    scheduler.start()
    await settle()
    add: Callable[..., Any] = scheduler.add_job
    chunks: list[float] = []
    begin = chunk_begin = time.perf_counter()
    index = 0
    while index < n:
        add(job, "interval", hours=1, start_date=far, id=f"m{index}")
        index += 1
        if index % CHECKPOINT_EVERY == 0:
            await asyncio.sleep(0)
            now = time.perf_counter()
            if index % ADD_CHUNK == 0:
                chunks.append(ADD_CHUNK / (now - chunk_begin))
                chunk_begin = now
            if now - begin > budget:
                break
    await settle()
    result = adds_result(n, index, time.perf_counter() - begin, chunks)
    await stop(scheduler)
    return result


async def bulk(params: dict[str, Any]) -> dict[str, Any]:
    n = params["schedules"]
    far = utc(time.time()) + timedelta(days=FAR_FUTURE_DAYS)
    before = rss_bytes()
    begin = time.perf_counter()
    scheduler = new_scheduler()
    for index in range(n):
        scheduler.add_job(job, "interval", hours=1, start_date=far, id=f"s{index}")
    declared = time.perf_counter()
    scheduler.start()
    started = time.perf_counter()
    await settle()
    after = rss_bytes()
    await stop(scheduler)
    return bulk_result(n, declared - begin, started - declared, before, after)


MEASURES = {"fires": fires, "queued": queued, "adds": adds, "bulk": bulk}


def measure(params: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = asyncio.run(MEASURES[params["metric"]](params))
    return result


if __name__ == "__main__":
    worker_main(measure, ["apscheduler", "tzlocal"])
