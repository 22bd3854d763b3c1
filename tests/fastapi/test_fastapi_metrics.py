"""GET {prefix}/metrics: the Prometheus text a scraper reads, on memory (asyncio and trio) and
on PostgreSQL with two workers on one store; the collector registered in another registry.

The text is read back with prometheus_client's own parser, as Prometheus would read it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_fastapi_store import Outage

from library.components.scheduling.task_scheduler import (
    JobInfo,
    MissingDependencyError,
    Outcome,
    SchedulerConfig,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler.fastapi import create_scheduler_router
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio

PACKAGE = "library.components.scheduling.task_scheduler"
EXTRA = 'pip install "fastapi-task-scheduler[metrics]"'

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def of(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def job_ids(found: Samples) -> set[str]:
    return {dict(labels)["job_id"] for _, labels in found if "job_id" in dict(labels)}


async def tick() -> None:
    """Succeeds (module level: a persistent store keeps jobs by reference)."""


async def fail() -> None:
    raise RuntimeError("boom")


release = anyio.Event()  # remade per test that uses it


async def slow() -> None:
    await release.wait()


@asynccontextmanager
async def serving(
    *schedulers: TaskScheduler, **router_options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """Start the schedulers; an app with a router per scheduler: /w0/..., /w1/..."""
    app = FastAPI()
    for number, scheduler in enumerate(schedulers):
        router = create_scheduler_router(scheduler, prefix=f"/w{number}", **router_options)
        app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        async with schedulers[0]:
            if len(schedulers) == 1:
                yield client
            else:
                async with schedulers[1]:
                    yield client


async def scrape(http: httpx.AsyncClient, prefix: str = "/w0") -> Samples:
    response = await http.get(f"{prefix}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


def assert_counts_match(found: Samples, jobs: list[JobInfo]) -> None:
    """runs_total is JobInfo.counts, outcome by outcome, zeros included."""
    for job in jobs:
        for outcome in Outcome:
            value = of(found, "task_scheduler_runs_total", job_id=job.id, outcome=outcome.value)
            assert value == getattr(job.counts, outcome.value), (job.id, outcome, value)


# ---------------------------------------------------------------------------- memory


async def test_metrics_on_memory(anyio_backend: str) -> None:
    global release
    release = anyio.Event()
    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="tick")(tick)
    scheduler.interval(hours=1, id="fail")(fail)
    scheduler.interval(hours=1, id="slow")(slow)
    scheduler.interval(hours=1, id="idle", paused=True)(tick)
    async with serving(scheduler) as http:
        await scheduler.run_job("tick")
        await scheduler.run_job("tick")
        await scheduler.run_job("fail")
        await scheduler.run_job("slow", wait=False)

        found = await scrape(http)
        jobs = await scheduler.get_jobs()
        assert_counts_match(found, jobs)
        assert of(found, "task_scheduler_runs_total", job_id="tick", outcome="success") == 2
        assert of(found, "task_scheduler_runs_total", job_id="fail", outcome="error") == 1
        assert of(found, "task_scheduler_jobs_running", job_id="slow") == 1
        assert of(found, "task_scheduler_jobs_running", job_id="tick") == 0
        by_id = {job.id: job for job in jobs}
        next_tick = by_id["tick"].next_run_time
        assert next_tick is not None
        assert of(found, "task_scheduler_job_next_run_timestamp_seconds", job_id="tick") == (
            pytest.approx(next_tick.timestamp())
        )
        # A paused job has no next run; a job that never succeeded no last success.
        assert of(found, "task_scheduler_job_next_run_timestamp_seconds", job_id="idle") is None
        last_success = by_id["tick"].last_success_at
        assert last_success is not None
        assert of(found, "task_scheduler_job_last_success_timestamp_seconds", job_id="tick") == (
            pytest.approx(last_success.timestamp())
        )
        assert of(found, "task_scheduler_job_last_success_timestamp_seconds", job_id="fail") is None
        assert of(found, "task_scheduler_workers") == 1
        assert of(found, "task_scheduler_up") == 1
        assert of(found, "task_scheduler_engine_restarts_total") == 0
        # The histograms: attempts of this process; the run in progress is not in them yet.
        duration = "task_scheduler_run_duration_seconds_count"
        assert of(found, duration, job_id="tick") == 2
        assert of(found, duration, job_id="fail") == 1
        assert of(found, duration, job_id="slow") is None
        assert of(found, "task_scheduler_run_lateness_seconds_count", job_id="tick") == 2
        inf = of(found, "task_scheduler_run_duration_seconds_bucket", job_id="tick", le="+Inf")
        assert inf == 2

        release.set()
        await wait_for_runs(scheduler, "slow")
        found = await scrape(http)
        assert of(found, "task_scheduler_jobs_running", job_id="slow") == 0
        assert of(found, duration, job_id="slow") == 1
        assert of(found, "task_scheduler_runs_total", job_id="slow", outcome="success") == 1
    # Stopped: the route still answers (the app may outlive the scheduler), and says so.
    app = FastAPI()
    app.include_router(create_scheduler_router(scheduler))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        found = await scrape(client, "/scheduler")
    assert of(found, "task_scheduler_up") == 0
    assert of(found, "task_scheduler_runs_total", job_id="tick", outcome="success") == 2


async def test_a_removed_job_leaves_the_metrics(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="tick")(tick)
    async with serving(scheduler) as http:
        await scheduler.add_interval_job(tick, "gone", hours=1)
        await scheduler.run_job("gone")
        await scheduler.run_job("tick")
        assert job_ids(await scrape(http)) == {"tick", "gone"}
        await scheduler.remove_job("gone")
        found = await scrape(http)
        assert job_ids(found) == {"tick"}  # counters, gauges and histograms alike
        assert of(found, "task_scheduler_run_duration_seconds_count", job_id="tick") == 1


async def test_the_guard_applies_to_metrics(anyio_backend: str) -> None:
    async def require_key(x_api_key: str | None = Header(None)) -> None:
        if x_api_key is None:
            raise HTTPException(status_code=401, detail="no API key")
        if x_api_key != "right":
            raise HTTPException(status_code=403, detail="wrong API key")

    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="tick")(tick)
    async with serving(scheduler, dependencies=[Depends(require_key)]) as http:
        assert (await http.get("/w0/metrics")).status_code == 401
        assert (await http.get("/w0/metrics", headers={"x-api-key": "wrong"})).status_code == 403
        response = await http.get("/w0/metrics", headers={"x-api-key": "right"})
        assert response.status_code == 200
        assert "task_scheduler_up 1.0" in response.text
        assert (await http.get("/w0/health")).status_code == 200  # probes stay unguarded
        schema = (await http.get("/openapi.json")).json()
        responses = schema["paths"]["/w0/metrics"]["get"]["responses"]
        assert {"200", "401", "403", "501", "503"} <= set(responses)


async def test_two_schedulers_in_one_process_do_not_clash(anyio_backend: str) -> None:
    """Each scheduler has its own registry: the same metric names, each its own numbers."""
    a, b = TaskScheduler(), TaskScheduler()
    a.interval(hours=1, id="tick")(tick)
    b.interval(hours=1, id="tick")(tick)
    async with serving(a, b) as http:
        await a.run_job("tick")
        found_a, found_b = await scrape(http, "/w0"), await scrape(http, "/w1")
    assert of(found_a, "task_scheduler_runs_total", job_id="tick", outcome="success") == 1
    assert of(found_b, "task_scheduler_runs_total", job_id="tick", outcome="success") == 0
    assert a.metrics_collector() is a.metrics_collector() is not b.metrics_collector()


async def test_registered_in_another_registry(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As an app that already serves /metrics would: the numbers refresh after each scrape
    (a scrape in the event loop's thread cannot wait for the store), from any thread."""
    monkeypatch.setattr(sys.modules[f"{PACKAGE}._metrics"], "REFRESH_AFTER", 0.0)
    registry = CollectorRegistry()
    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="tick")(tick)
    registry.register(scheduler.metrics_collector())

    def runs_in(registry: CollectorRegistry) -> float | None:
        found = samples(generate_latest(registry).decode())
        return of(found, "task_scheduler_runs_total", job_id="tick", outcome="success")

    async def until(count: int, read: Any) -> None:
        with anyio.fail_after(10):
            while await read() != count:
                await anyio.sleep(0.01)

    async def in_loop() -> float | None:
        return runs_in(registry)

    async def in_thread() -> float | None:
        return await anyio.to_thread.run_sync(runs_in, registry)

    async with scheduler:
        await scheduler.run_job("tick")
        await until(1, in_loop)
        await scheduler.run_job("tick")
        await until(2, in_thread)
        found = samples(generate_latest(registry).decode())
        assert of(found, "task_scheduler_run_duration_seconds_count", job_id="tick") == 2
        assert of(found, "task_scheduler_up") == 1
    # A second scheduler's collector in the same registry: the same names, refused.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(TaskScheduler().metrics_collector())


async def test_without_prometheus_client(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extra missing (its import blocked): a clear error naming it; the route says the
    same as a 501; the router and every other route work."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, f"{PACKAGE}._metrics", raising=False)
    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="tick")(tick)
    with pytest.raises(MissingDependencyError) as caught:
        scheduler.metrics_collector()
    assert EXTRA in str(caught.value)
    assert isinstance(caught.value, ImportError)
    async with serving(scheduler) as http:
        response = await http.get("/w0/metrics")
        assert response.status_code == 501
        assert EXTRA in response.json()["detail"]
        await scheduler.run_job("tick")
        assert (await http.get("/w0/jobs/tick")).json()["counts"]["success"] == 1


# ---------------------------------------------------------------------------- PostgreSQL


ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", ["asyncio"])
"""APScheduler's SQL store is asyncio-only (tests/sql/conftest.py)."""


@ASYNCIO_ONLY
async def test_two_workers_report_the_cluster_counts(pg_url: str, anyio_backend: str) -> None:
    """Every worker serves the same cumulative counts (JobInfo.counts), the live workers and
    runs in progress on any worker; its histograms are its own runs. No metric holds the
    store URL's password."""
    global release
    release = anyio.Event()
    url = pg_url.replace("postgresql://postgres@", "postgresql://postgres:S3cretPw@")
    assert "S3cretPw" in url

    def declare() -> TaskScheduler:
        scheduler = TaskScheduler(SchedulerConfig(store=url, shutdown_timeout=5))
        scheduler.interval(hours=1, id="tick")(tick)
        scheduler.interval(hours=1, id="fail")(fail)
        scheduler.interval(hours=1, id="slow")(slow)
        return scheduler

    a, b = declare(), declare()
    async with serving(a, b) as http:
        await a.run_job("tick")
        await b.run_job("tick")
        await b.run_job("tick")
        await b.run_job("fail")
        await b.run_job("slow", wait=False)
        await wait_for_runs(a, "tick", 3)  # b's batch has reached the store
        await wait_for_runs(a, "fail", 1)
        with anyio.fail_after(10):
            while (await a.get_job("slow")).running != 1:
                await anyio.sleep(0.05)
        texts = [(await http.get(f"/w{n}/metrics")).text for n in (0, 1)]
        found_a, found_b = samples(texts[0]), samples(texts[1])
        for found in (found_a, found_b):
            assert_counts_match(found, await a.get_jobs())
            assert_counts_match(found, await b.get_jobs())
            assert of(found, "task_scheduler_runs_total", job_id="tick", outcome="success") == 3
            assert of(found, "task_scheduler_jobs_running", job_id="slow") == 1  # b's, seen by a
            assert of(found, "task_scheduler_workers") == 2
            assert of(found, "task_scheduler_up") == 1
        # Histograms: each worker's own runs.
        duration = "task_scheduler_run_duration_seconds_count"
        assert of(found_a, duration, job_id="tick") == 1
        assert of(found_b, duration, job_id="tick") == 2
        assert of(found_a, duration, job_id="fail") is None
        for text in texts:
            assert "S3cretPw" not in text and "postgresql" not in text
        release.set()
        await wait_for_runs(b, "slow")


@ASYNCIO_ONLY
async def test_metrics_are_a_503_while_the_store_is_away(pg_url: str, anyio_backend: str) -> None:
    outage = Outage()
    async with anyio.create_task_group() as group:
        await group.start(outage.serve)
        url = pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{outage.port}/")
        scheduler = TaskScheduler(SchedulerConfig(store=url, shutdown_timeout=5))
        scheduler.interval(hours=1, id="tick")(tick)
        async with serving(scheduler) as http:
            await scheduler.run_job("tick")
            assert (await http.get("/w0/metrics")).status_code == 200
            await http.get("/w0/runs")  # as in test_fastapi_store: a pooled connection
            outage.go_down()
            started = time.monotonic()
            response = await http.get("/w0/metrics")
            assert response.status_code == 503, response.text
            detail = response.json()["detail"]
            assert detail.startswith("the scheduler's store is unavailable: "), detail
            assert time.monotonic() - started < 7
            outage.come_back()
            with anyio.fail_after(60):
                while (await http.get("/w0/metrics")).status_code != 200:
                    await anyio.sleep(0.2)
        group.cancel_scope.cancel()
