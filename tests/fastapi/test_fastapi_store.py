"""The router on persistent stores: the cluster's runs and workers, and a store that goes away.

Several schedulers on one store in this process are several workers (each has its own id), as
in tests/sql/test_cluster.py. The HTTP client is httpx's ASGI transport, in the test's own event
loop, next to the schedulers. On asyncio only: FastAPI apps are served on asyncio (uvicorn); the
stores on trio are tests/sql's.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketStream, TaskStatus
from fastapi import FastAPI
from sqlalchemy import Engine, event

from library.components.scheduling.task_scheduler import (
    Outcome,
    SchedulerConfig,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler.fastapi import (
    CSRF_HEADER,
    create_scheduler_router,
)
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """FastAPI is served on asyncio (the stores on trio: tests/sql)."""
    return "asyncio"


async def tick() -> None:
    """Succeeds (module level: a persistent store keeps jobs by reference)."""


async def fail() -> None:
    raise RuntimeError("boom")


def declare(store: str) -> TaskScheduler:
    """The same declarations in every worker, as an app's processes have them."""
    scheduler = TaskScheduler(SchedulerConfig(store=store, shutdown_timeout=5))
    scheduler.interval(hours=1, id="tick")(tick)
    scheduler.interval(hours=1, id="fail")(fail)
    return scheduler


@asynccontextmanager
async def serving(*schedulers: TaskScheduler) -> AsyncIterator[httpx.AsyncClient]:
    """Start the schedulers; an app with a router per scheduler: /w0/..., /w1/..."""
    app = FastAPI()
    for number, scheduler in enumerate(schedulers):
        app.include_router(create_scheduler_router(scheduler, prefix=f"/w{number}"))
    async with AsyncExitStack() as stack:
        for scheduler in schedulers:
            await stack.enter_async_context(scheduler)
        transport = httpx.ASGITransport(app=app)
        yield await stack.enter_async_context(
            # As an API client does: POST and DELETE carry the CSRF header.
            httpx.AsyncClient(
                transport=transport, base_url="http://test", headers={CSRF_HEADER: "1"}
            )
        )


def json_of(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


async def test_two_workers_one_view_of_runs_and_workers(pg_url: str) -> None:
    a, b = declare(pg_url), declare(pg_url)
    async with serving(a, b) as http:
        ran = [
            await a.run_job("tick"),
            await b.run_job("tick"),
            await b.run_job("fail"),
            await a.run_job("tick"),
        ]
        # Each worker writes its runs in batches (within 0.2 s): wait until a has all of b's.
        await wait_for_runs(a, "tick", 3)
        await wait_for_runs(a, "fail", 1)
        ids = [json_of(await http.get(f"/w{n}/status"))["worker_id"] for n in (0, 1)]

        runs = json_of(await http.get("/w0/runs"))
        assert [run["run_id"] for run in runs] == [run.run_id for run in ran[::-1]]
        assert [run["worker"] for run in runs] == [ids[0], ids[1], ids[1], ids[0]]
        # Every worker answers the same.
        assert json_of(await http.get("/w1/runs")) == runs

        errors = json_of(await http.get("/w0/runs", params={"outcome": "error"}))
        assert [(run["job_id"], run["worker"], run["error_message"]) for run in errors] == [
            ("fail", ids[1], "boom")
        ]
        ticks = json_of(await http.get("/w1/jobs/tick/runs", params={"limit": 2}))
        assert [run["run_id"] for run in ticks] == [ran[3].run_id, ran[1].run_id]

        job = json_of(await http.get("/w0/jobs/tick"))
        assert job["counts"]["success"] == 3 and job["last_run"]["run_id"] == ran[3].run_id
        # The newest success, whichever worker's batch reached the store last.
        assert job["last_success_at"] == runs[0]["finished_at"]

        workers = json_of(await http.get("/w0/workers"))
        assert [worker["id"] for worker in workers] == ids  # oldest first
        assert {worker["pid"] for worker in workers} == {os.getpid()}
        assert {worker["state"] for worker in workers} == {"running"}
        assert json_of(await http.get("/w1/workers")) == workers
        assert json_of(await http.get("/w1/status"))["workers"] == 2
        assert (await http.get("/w0/health")).json() == {"status": "ok", "stale_jobs": 0}

        await b.shutdown()  # a stopped worker leaves the list at once
        (left,) = json_of(await http.get("/w0/workers"))
        assert left["id"] == ids[0]
        # Its runs stay in the cluster's history.
        assert json_of(await http.get("/w0/runs")) == runs


async def test_runs_page_by_page_on_a_persistent_store(sql_url: str) -> None:
    scheduler = declare(sql_url)
    async with serving(scheduler) as http:
        done = [(await scheduler.run_job(job_id)).run_id for job_id in ["tick", "fail"] * 3]
        pages = []
        response = await http.get("/w0/runs", params={"limit": 4})
        while True:
            pages.append([run["run_id"] for run in json_of(response)])
            if "next" not in response.links:
                break
            response = await http.get(response.url.join(response.links["next"]["url"]))
        assert pages == [done[:1:-1], done[1::-1]]
        by_hand = json_of(await http.get("/w0/runs", params={"limit": 4}))
        before = by_hand[-1]["started_at"]
        rest = json_of(await http.get("/w0/runs", params={"before": before}))
        assert [run["run_id"] for run in rest] == done[1::-1]
        failed = json_of(await http.get("/w0/jobs/fail/runs", params={"outcome": "error"}))
        assert [run["run_id"] for run in failed] == done[5::-2]
        assert all(run["outcome"] == Outcome.error.value for run in failed)
        unknown = await http.get("/w0/runs", params={"job_id": "tock"})
        assert unknown.status_code == 404
        assert unknown.json() == {"detail": "no job with id 'tock'; did you mean 'tick'?"}


# ---------------------------------------------------------------------------- the store goes away


class Outage:
    """A TCP relay in front of PostgreSQL, so that its server can go away and come back as a
    scheduler sees it: while down, open connections are cut and new ones closed at once."""

    def __init__(self, upstream_port: int = 5432) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.up = True
        self._relays: set[anyio.CancelScope] = set()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        await listener.serve(self._relay)

    async def _relay(self, client: SocketStream) -> None:
        async with client, anyio.create_task_group() as group:
            if not self.up:
                return
            self._relays.add(group.cancel_scope)
            try:
                async with await anyio.connect_tcp("127.0.0.1", self.upstream_port) as server:
                    group.start_soon(self._pipe, client, server, group.cancel_scope)
                    group.start_soon(self._pipe, server, client, group.cancel_scope)
                    await anyio.sleep_forever()
            except OSError:
                return
            finally:
                self._relays.discard(group.cancel_scope)

    @staticmethod
    async def _pipe(source: SocketStream, sink: SocketStream, scope: anyio.CancelScope) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    def go_down(self) -> None:
        self.up = False
        for scope in list(self._relays):
            scope.cancel()

    def come_back(self) -> None:
        self.up = True


async def recovered(http: httpx.AsyncClient) -> None:
    """Health is 200 again, and this worker is back in the list (its next heartbeat, 2 s)."""
    with anyio.fail_after(60):
        while (await http.get("/w0/health")).status_code != 200:
            await anyio.sleep(0.2)
        while len(json_of(await http.get("/w0/workers"))) != 1:
            await anyio.sleep(0.2)


async def test_a_store_that_goes_away_is_a_503_until_it_is_back(pg_url: str) -> None:
    """PostgreSQL goes away under a running scheduler: every read route, and a pause, answer 503
    within the store timeout (5 s) with a detail saying so, health fails; when it is back, all
    is 200 again."""
    outage = Outage()
    async with anyio.create_task_group() as group:
        await group.start(outage.serve)
        scheduler = declare(pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{outage.port}/"))
        async with serving(scheduler) as http:
            run = await scheduler.run_job("tick")
            assert (await http.get("/w0/health")).status_code == 200
            # The read just before leaves its connection in the pool: the first read after
            # meets it closed (a DBAPIError SQLAlchemy invalidates: was a 500).
            assert [r["run_id"] for r in json_of(await http.get("/w0/runs"))] == [run.run_id]
            outage.go_down()
            # Routes that read only the cluster's history first; /jobs also asks the engine's
            # store for the schedules (APScheduler retries those until the store timeout).
            for path in [
                "/w0/runs",
                "/w0/jobs/tick/runs",
                "/w0/workers",
                "/w0/status",
                "/w0/jobs",
            ]:
                started = time.monotonic()
                response = await http.get(path)
                took = time.monotonic() - started
                assert response.status_code == 503, (path, response.text)
                detail = response.json()["detail"]
                assert detail.startswith("the scheduler's store is unavailable: "), detail
                assert "\n" not in detail and "SELECT" not in detail, detail
                assert took < 7, (path, took)
            # A pause reads the job's pause state from the store first: a 503 too, and the job
            # is left as it was, so that the same call works once the store is back.
            started = time.monotonic()
            pause = await http.post("/w0/jobs/tick/pause")
            assert pause.status_code == 503, pause.text
            assert pause.json()["detail"].startswith("the scheduler's store is unavailable: ")
            assert time.monotonic() - started < 7
            health = await http.get("/w0/health")
            assert health.status_code == 503
            # Unavailable (the store), or failing (the engine restarting meanwhile).
            assert health.json() in (
                {"detail": "the scheduler's store is unavailable"},
                {"status": "failing", "stale_jobs": 0},
            )

            outage.come_back()
            await recovered(http)
            runs = json_of(await http.get("/w0/runs"))
            assert run.run_id in [run["run_id"] for run in runs]
            assert json_of(await http.get("/w0/jobs/tick"))["paused"] is False
            assert json_of(await http.post("/w0/jobs/tick/pause"))["paused"] is True
        group.cancel_scope.cancel()


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL statements every SQLAlchemy engine of this process runs meanwhile."""
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


async def health_statements(store: str, jobs: int) -> list[str]:
    """The statements of one GET /health, with ``jobs`` watched jobs that ran 3 times each."""
    scheduler = TaskScheduler(SchedulerConfig(store=store))
    for number in range(jobs):
        scheduler.interval(hours=1, id=f"watched-{number}", max_staleness=3600)(tick)
    async with serving(scheduler) as http:
        for number in range(jobs):
            for _ in range(3):
                await scheduler.run_job(f"watched-{number}")
        await http.get("/w0/health")  # this worker's pending runs written
        with statements() as seen:
            response = await http.get("/w0/health")
        assert response.json() == {"status": "ok", "stale_jobs": 0}
    return [statement for statement in seen if "task_scheduler_" in statement]


async def test_health_costs_the_same_few_queries_however_many_jobs(sql_url: str) -> None:
    """A probe every few seconds per worker: a handful of indexed queries, never one per job."""
    one = await health_statements(sql_url, 1)
    many = await health_statements(sql_url, 40)
    assert 1 <= len(many) == len(one) <= 5, many
