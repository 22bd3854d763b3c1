"""A FastAPI app with scheduled jobs, on the default in-memory store.

Run it:   python examples/fastapi_app.py          (serves http://127.0.0.1:8000, Ctrl-C stops)
Then:     curl http://127.0.0.1:8000/jobs
Smoke:    python examples/fastapi_app.py --smoke  (serves on a free port, checks, exits)
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

import anyio
import anyio.lowlevel
import uvicorn
from fastapi import FastAPI

from library.components.scheduling.task_scheduler import JobInfo, SchedulerConfig, TaskScheduler

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

scheduler = TaskScheduler(
    SchedulerConfig(
        timezone="America/New_York",
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
    )
)


@scheduler.interval(seconds=1)
async def heartbeat() -> None:
    print(f"Heartbeat at {datetime.now(timezone.utc):%H:%M:%S}")


@scheduler.interval(seconds=5, timeout=3)
def sweep_temp_files() -> None:
    # A plain function: it runs in a worker thread and never blocks the event loop.
    time.sleep(0.2)


@scheduler.cron(hour=2, minute=0, timeout=600, retries=2, retry_delay=30)
async def daily_backup() -> None:
    await anyio.sleep(1)


@scheduler.cron("0 9 * * mon-fri")
async def weekday_report() -> None:
    await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def lifespan(app: FastAPI) -> Any:
    await scheduler.start()
    yield
    await scheduler.shutdown()


app = FastAPI(lifespan=lifespan)


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
                        jobs = {job["name"]: job for job in (await client.get("/jobs")).json()}
                    except httpx.TransportError:
                        continue
                    if jobs["heartbeat"]["counts"]["success"] >= 2:
                        break
            server.should_exit = True
    assert jobs["daily_backup"]["next_run_time"], jobs
    print("smoke ok:", ", ".join(sorted(jobs)))


if __name__ == "__main__":
    if "--smoke" in sys.argv:
        anyio.run(smoke)
    else:
        uvicorn.run(app, host="127.0.0.1", port=8000)
