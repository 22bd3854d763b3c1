"""A PostgreSQL server that stops answering on connections already open (a hung host, a
network that drops packets): every call is bounded, and the scheduler recovers.

Runs on a cluster of its own (tests/sql/pgcluster.py), frozen with SIGSTOP: the shared
server on 5432 is never touched.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

import anyio
import httpx
import pytest
from fastapi import FastAPI
from pgcluster import Cluster, own_cluster

from library.components.scheduling.task_scheduler import (
    SchedulerConfig,
    StoreUnavailableError,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler.fastapi import create_scheduler_router
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio

BOUND = 15.0
"""Seconds a call may take with the server frozen: 5 s per statement, 2 s to let go of the
connection, and room for a busy machine. Without the bound the calls hung for good."""


async def tick() -> None:
    """Module level: a persistent store keeps jobs by reference."""


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with own_cluster() as made:
        yield made


async def test_a_frozen_server_bounds_every_call_and_the_scheduler_recovers(
    cluster: Cluster,
) -> None:
    scheduler = TaskScheduler(SchedulerConfig(store=cluster.url, shutdown_timeout=5))
    scheduler.interval(seconds=0.2, id="tick")(tick)
    app = FastAPI()
    app.include_router(create_scheduler_router(scheduler))
    transport = httpx.ASGITransport(app=app)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get_jobs": scheduler.get_jobs,
        "get_job": lambda: scheduler.get_job("tick"),
        "pause_job": lambda: scheduler.pause_job("tick"),
        "get_runs": lambda: scheduler.get_runs("tick"),
        "get_status": scheduler.get_status,
    }
    outcomes: dict[str, object] = {}
    took: dict[str, float] = {}

    async def call(name: str, coro: Callable[[], Awaitable[object]]) -> None:
        start = time.monotonic()
        try:
            outcomes[name] = await coro()
        except StoreUnavailableError as exc:
            outcomes[name] = exc
        took[name] = time.monotonic() - start

    async def get(path: str) -> None:
        start = time.monotonic()
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            outcomes[path] = (await client.get(path)).status_code
        took[path] = time.monotonic() - start

    async with scheduler:
        await wait_for_runs(scheduler, "tick")
        with cluster.frozen(limit=2 * BOUND):  # then it answers: hung calls return late
            async with anyio.create_task_group() as group:
                for name, coro in calls.items():
                    group.start_soon(call, name, coro)
                for path in ("/scheduler/jobs", "/scheduler/jobs/tick"):
                    group.start_soon(get, path)
        assert {name: type(outcome).__name__ for name, outcome in outcomes.items()} == {
            **{name: "StoreUnavailableError" for name in calls},
            "/scheduler/jobs": "int",
            "/scheduler/jobs/tick": "int",
        }
        assert outcomes["/scheduler/jobs"] == outcomes["/scheduler/jobs/tick"] == 503
        assert max(took.values()) < BOUND, took
        # Answering again: the engine restarts and the job fires, unpaused (the pause failed).
        before = (await scheduler.get_job("tick")).counts.success
        await wait_for_runs(scheduler, "tick", before + 3, timeout=30)
        assert not (await scheduler.get_job("tick")).paused
