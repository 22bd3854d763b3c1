"""Benchmark worker for our TaskScheduler and for raw APScheduler 4.0.0a6 (one measurement).

Run by ``run.py`` as ``python bench/_aps4_worker.py '<json params>'``; prints one JSON line.
Params: ``target`` (``ours`` or ``aps4``), ``backend`` (``asyncio`` or ``trio``), ``metric``
(``fires``, ``queued``, ``adds``, ``bulk``) and the metric's own numbers; for ours,
``telemetry``: ``prometheus`` (its run histograms on) and/or ``otel`` (the OpenTelemetry SDK's
providers set: a span per run, exported in batches to nowhere; metrics read in memory).
"""

from __future__ import annotations

import cProfile
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
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
from apscheduler import AsyncScheduler
from apscheduler.triggers.interval import IntervalTrigger

try:
    from library.components.scheduling.task_scheduler import TaskScheduler
except ImportError:  # a source checkout that is not installed: use its src/ directly
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from library.components.scheduling.task_scheduler import TaskScheduler

TASK_ID = "bench"
QUEUE_JOBS_OURS = 100
"""Our run-now requests are spread over this many jobs (max_instances high enough for all)."""
CHECKPOINT_EVERY = 100
"""Adding schedules yields to the event loop after this many, as real programs would."""

WAIT_LIMIT = 300.0
"""Seconds a wait for queued jobs may take before the measurement fails."""

Measure = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, timezone.utc)


async def settle() -> None:
    """Let the tasks that the last calls spawned run."""
    for _ in range(10):
        await anyio.lowlevel.checkpoint()


async def fire_window(t0: float, params: dict[str, Any]) -> tuple[Snapshot, Snapshot]:
    """Wait out the warm-up, then snapshot both ends of the window (profiled if asked)."""
    warmup, window = params["warmup"], params["window"]
    profile_path: str | None = params.get("cprofile")
    await anyio.sleep(seconds_until(t0 + warmup - BOUNDARY_LEAD))
    profiler = cProfile.Profile()
    first = Snapshot()
    if profile_path:
        profiler.enable()
    await anyio.sleep(seconds_until(t0 + warmup + window - BOUNDARY_LEAD))
    if profile_path:
        profiler.disable()
    last = Snapshot()
    if profile_path:
        profiler.dump_stats(profile_path)
    return first, last


async def timed_adds(
    add: Callable[[int], Awaitable[None]], params: dict[str, Any]
) -> dict[str, Any]:
    """Call ``add(i)`` up to ``schedules`` times or until ``budget_s`` has passed."""
    n, budget = params["schedules"], params["budget_s"]
    chunks: list[float] = []
    begin = chunk_begin = time.perf_counter()
    index = 0
    while index < n:
        await add(index)
        index += 1
        if index % CHECKPOINT_EVERY == 0:
            await anyio.lowlevel.checkpoint()
            now = time.perf_counter()
            if index % ADD_CHUNK == 0:
                chunks.append(ADD_CHUNK / (now - chunk_begin))
                chunk_begin = now
            if now - begin > budget:
                break
    await settle()
    return adds_result(n, index, time.perf_counter() - begin, chunks)


async def wait_for_runs(count: int) -> None:
    """Poll the run count: the job body must stay the same bare append everywhere."""
    with anyio.fail_after(WAIT_LIMIT):
        while len(STARTS) < count:  # noqa: ASYNC110
            await anyio.sleep(POLL)


# ---------------------------------------------------------------------------- ours


def telemetry(scheduler: TaskScheduler, params: dict[str, Any]) -> TaskScheduler:
    """Turn on what ``params["telemetry"]`` names, before the scheduler starts."""
    wanted = params.get("telemetry", [])
    if "prometheus" in wanted:
        scheduler.metrics_collector()
    if "otel" in wanted:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Nowhere(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(Nowhere()))
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    return scheduler


async def ours_fires(params: dict[str, Any]) -> dict[str, Any]:
    n = params["n"]
    t0 = params.get("t0") or aligned_start()
    scheduler = telemetry(TaskScheduler(), params)
    for index in range(n):
        scheduler.interval(seconds=1, start=utc(t0), id=f"j{index}")(job)
    async with scheduler:
        first, last = await fire_window(t0, params)
    return fire_result(t0, n, first, last, params["window"])


async def ours_queued(params: dict[str, Any]) -> dict[str, Any]:
    n = params["jobs"]
    scheduler = telemetry(TaskScheduler(), params)
    far = utc(time.time()) + timedelta(days=FAR_FUTURE_DAYS)
    per_job = -(-n // QUEUE_JOBS_OURS)
    for index in range(QUEUE_JOBS_OURS):
        scheduler.interval(days=1, start=far, id=f"q{index}", max_instances=per_job)(job)
    async with scheduler:
        cpu, begin = time.process_time(), time.perf_counter()
        for index in range(n):
            await scheduler.run_job(f"q{index % QUEUE_JOBS_OURS}", wait=False)
        queued = time.perf_counter()
        ran_while_queueing = len(STARTS)
        await wait_for_runs(n)
        end, cpu = time.perf_counter(), time.process_time() - cpu
        skipped = 0
        for index in range(QUEUE_JOBS_OURS):
            skipped += (await scheduler.get_job(f"q{index}")).counts.skipped
    result = queued_result(queued - begin, end - queued, cpu, n)
    result.update(ran_while_queueing=ran_while_queueing, skipped=skipped)
    return result


async def ours_adds(params: dict[str, Any]) -> dict[str, Any]:
    far = utc(time.time()) + timedelta(days=FAR_FUTURE_DAYS)
    async with TaskScheduler() as scheduler:
        await settle()

        async def add(index: int) -> None:
            await scheduler.add_interval_job(job, f"m{index}", hours=1, start=far)

        result = await timed_adds(add, params)
    return result


async def ours_bulk(params: dict[str, Any]) -> dict[str, Any]:
    n = params["schedules"]
    far = utc(time.time()) + timedelta(days=FAR_FUTURE_DAYS)
    before = rss_bytes()
    begin = time.perf_counter()
    scheduler = TaskScheduler()
    for index in range(n):
        scheduler.interval(hours=1, start=far, id=f"s{index}")(job)
    declared = time.perf_counter()
    await scheduler.start()
    started = time.perf_counter()
    await settle()
    after = rss_bytes()
    await scheduler.shutdown()
    return bulk_result(n, declared - begin, started - declared, before, after)


# ---------------------------------------------------------------------------- raw APScheduler 4


async def new_engine(scheduler: AsyncScheduler) -> None:
    """Register the job as one task by id, unlimited instances (trap 1: never by callable)."""
    await scheduler.configure_task(TASK_ID, func=job, max_running_jobs=None)


async def aps4_fires(params: dict[str, Any]) -> dict[str, Any]:
    n = params["n"]
    t0 = params.get("t0") or aligned_start()
    async with AsyncScheduler() as scheduler:
        await new_engine(scheduler)
        for index in range(n):
            trigger = IntervalTrigger(seconds=1, start_time=utc(t0))
            await scheduler.add_schedule(TASK_ID, trigger, id=f"j{index}")
        await scheduler.start_in_background()
        first, last = await fire_window(t0, params)
        await scheduler.stop()
    return fire_result(t0, n, first, last, params["window"])


async def aps4_queued(params: dict[str, Any]) -> dict[str, Any]:
    n = params["jobs"]
    async with AsyncScheduler() as scheduler:
        await new_engine(scheduler)
        cpu, begin = time.process_time(), time.perf_counter()
        for _ in range(n):
            await scheduler.add_job(TASK_ID)
        queued = time.perf_counter()
        await scheduler.start_in_background()
        await wait_for_runs(n)
        end, cpu = time.perf_counter(), time.process_time() - cpu
        await scheduler.stop()
    return queued_result(queued - begin, end - queued, cpu, n)


async def aps4_adds(params: dict[str, Any]) -> dict[str, Any]:
    far = utc(time.time()) + timedelta(days=FAR_FUTURE_DAYS)
    async with AsyncScheduler() as scheduler:
        await new_engine(scheduler)
        await scheduler.start_in_background()
        await settle()

        async def add(index: int) -> None:
            trigger = IntervalTrigger(hours=1, start_time=far)
            await scheduler.add_schedule(TASK_ID, trigger, id=f"m{index}")

        result = await timed_adds(add, params)
        await scheduler.stop()
    return result


async def aps4_bulk(params: dict[str, Any]) -> dict[str, Any]:
    n = params["schedules"]
    far = utc(time.time()) + timedelta(days=FAR_FUTURE_DAYS)
    before = rss_bytes()
    begin = time.perf_counter()
    async with AsyncScheduler() as scheduler:
        await new_engine(scheduler)
        for index in range(n):
            trigger = IntervalTrigger(hours=1, start_time=far)
            await scheduler.add_schedule(TASK_ID, trigger, id=f"s{index}")
        declared = time.perf_counter()
        await scheduler.start_in_background()
        started = time.perf_counter()
        await settle()
        after = rss_bytes()
        await scheduler.stop()
    return bulk_result(n, declared - begin, started - declared, before, after)


MEASURES: dict[tuple[str, str], Measure] = {
    ("ours", "fires"): ours_fires,
    ("ours", "queued"): ours_queued,
    ("ours", "adds"): ours_adds,
    ("ours", "bulk"): ours_bulk,
    ("aps4", "fires"): aps4_fires,
    ("aps4", "queued"): aps4_queued,
    ("aps4", "adds"): aps4_adds,
    ("aps4", "bulk"): aps4_bulk,
}


def measure(params: dict[str, Any]) -> dict[str, Any]:
    func = MEASURES[params["target"], params["metric"]]
    result: dict[str, Any] = anyio.run(func, params, backend=params.get("backend", "asyncio"))
    result["task_scheduler_from"] = sys.modules[TaskScheduler.__module__].__file__
    return result


if __name__ == "__main__":
    worker_main(measure, ["apscheduler", "anyio", "trio", "fastapi-task-scheduler", "attrs"])
