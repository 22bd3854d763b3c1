"""A FastAPI app with scheduled jobs, on the default in-memory store.

Run it:   python examples/fastapi_app.py          (serves http://127.0.0.1:8000, Ctrl-C stops)
Then:     curl http://127.0.0.1:8000/jobs
          curl http://127.0.0.1:8000/scheduler/health
          curl -H "X-API-Key: $SCHEDULER_API_KEY" http://127.0.0.1:8000/scheduler/jobs
          curl -X POST -H "X-API-Key: $SCHEDULER_API_KEY" -H "X-Task-Scheduler: 1" \
               "http://127.0.0.1:8000/scheduler/jobs/weekday_report/run?wait=true"
          open http://127.0.0.1:8000/scheduler/dashboard in a browser: any user name, the key
          as the password
Smoke:    python examples/fastapi_app.py --smoke  (serves on a free port, checks, exits)

The management API under /scheduler is guarded by an API key: set SCHEDULER_API_KEY (the
example falls back to "change-me", which you should never do in production). Scripts send it
in the X-API-Key header; a browser cannot, so the guard also takes it as an HTTP Basic
password, which the browser asks for once (the dashboard). POST and DELETE requests also need
the X-Task-Scheduler header (any value), which the dashboard sends itself.

weekday_report takes a database handle and settings with FastAPI's ``Depends``: resolved for
every run, the handle closed when the run ends; tests replace them with
``app.dependency_overrides``, as they would an endpoint's.

Every job has an explicit id: the URLs above name jobs by id, and the default id
(``module:qualname``) would be ``__main__:heartbeat`` here but ``fastapi_app:heartbeat`` under
``uvicorn fastapi_app:app``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any

import anyio
import anyio.lowlevel
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Security
from fastapi.security import APIKeyHeader, HTTPBasic, HTTPBasicCredentials

from library.components.scheduling.task_scheduler import JobInfo, SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler.fastapi import (
    CSRF_HEADER,
    create_scheduler_router,
)

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

scheduler = TaskScheduler(
    SchedulerConfig(
        timezone="America/New_York",
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
    )
)


@scheduler.interval(seconds=1, id="heartbeat")
async def heartbeat() -> None:
    print(f"Heartbeat at {datetime.now(timezone.utc):%H:%M:%S}")


@scheduler.interval(seconds=5, timeout=3, id="sweep_temp_files")
def sweep_temp_files() -> None:
    # A plain function: it runs in a worker thread and never blocks the event loop.
    time.sleep(0.2)


@scheduler.cron(hour=2, minute=0, timeout=600, retries=2, retry_delay=30, id="daily_backup")
async def daily_backup() -> None:
    # The scheduler's own sleep: real time here, virtual time in the tests (no waiting).
    await scheduler.sleep(1)


class ReportSettings:  # in a real app, pydantic-settings
    recipients = ("ops@example.com",)


def get_report_settings() -> ReportSettings:
    return ReportSettings()


async def get_report_db() -> AsyncIterator[dict[str, int]]:
    # A yield dependency: opened for each run, closed when the run ends, however it ends.
    connection = {"open_orders": 3}
    try:
        yield connection
    finally:
        connection.clear()


@scheduler.cron("0 9 * * mon-fri", id="weekday_report")
async def weekday_report(
    db: Annotated[dict[str, int], Depends(get_report_db)],
    settings: Annotated[ReportSettings, Depends(get_report_settings)],
) -> None:
    await anyio.lowlevel.checkpoint()
    print(f"Report: {db['open_orders']} open orders, for {', '.join(settings.recipients)}")


@asynccontextmanager
async def lifespan(app: FastAPI) -> Any:
    # scheduler.lifespan(app) starts and stops the scheduler (as start()/shutdown() would),
    # and lets jobs' dependencies honour app.dependency_overrides.
    async with scheduler.lifespan(app):
        yield


app = FastAPI(lifespan=lifespan)

API_KEY = os.environ.get("SCHEDULER_API_KEY", "change-me")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
basic = HTTPBasic(auto_error=False)
SIGN_IN = {"WWW-Authenticate": "Basic"}  # a browser asks for the user name and password


async def require_api_key(
    key: Annotated[str | None, Security(api_key_header)],
    credentials: Annotated[HTTPBasicCredentials | None, Security(basic)],
) -> None:
    if key is not None:  # a script
        if not secrets.compare_digest(key.encode(), API_KEY.encode()):
            raise HTTPException(status_code=403, detail="wrong API key")
    elif credentials is not None:  # a browser: any user name, the key as password
        if not secrets.compare_digest(credentials.password.encode(), API_KEY.encode()):
            raise HTTPException(status_code=401, detail="wrong password", headers=SIGN_IN)
    else:
        raise HTTPException(
            status_code=401, detail="missing X-API-Key header (or sign in)", headers=SIGN_IN
        )


# With a hand-written lifespan, pass the scheduler explicitly; with
# FastAPI(lifespan=scheduler.lifespan) the router finds it by itself.
app.include_router(create_scheduler_router(scheduler, dependencies=[Depends(require_api_key)]))


@app.get("/jobs")
async def list_jobs() -> list[JobInfo]:
    return await scheduler.get_jobs()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def smoke() -> None:
    """Serve on loopback, wait for two heartbeats through /jobs, then stop. Bounded: 30 s."""
    import httpx  # only the smoke run needs an HTTP client

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                while True:
                    await anyio.sleep(0.2)
                    try:
                        jobs = {job["id"]: job for job in (await client.get("/jobs")).json()}
                    except httpx.TransportError:
                        continue
                    if jobs["heartbeat"]["counts"]["success"] >= 2:
                        break
                health = await client.get("/scheduler/health")
                assert health.json() == {"status": "ok", "stale_jobs": 0}, health.text
                guarded = await client.get("/scheduler/jobs")
                assert guarded.status_code == 401, guarded.text
                page = await client.get("/scheduler/dashboard", auth=("ops", API_KEY))
                assert "<title>Task scheduler</title>" in page.text, page.text
                run = await client.post(
                    "/scheduler/jobs/weekday_report/run?wait=true",
                    headers={"X-API-Key": API_KEY, CSRF_HEADER: "1"},
                )
                assert run.json()["outcome"] == "success", run.text
            server.should_exit = True
    assert jobs["daily_backup"]["next_run_time"], jobs
    print("smoke ok:", ", ".join(sorted(jobs)))


if __name__ == "__main__":
    if "--smoke" in sys.argv:
        anyio.run(smoke)
    else:
        uvicorn.run(app, host="127.0.0.1", port=8000)
