"""The FastAPI app under several uvicorn workers, sharing one PostgreSQL store: each fire
runs once, in one of the workers.

    python3 -m venv .venv && .venv/bin/python -m pip install -e ".[postgres,examples]"
    export TASK_SCHEDULER_STORE=postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/uvicorn --app-dir examples/multi_worker app:app --workers 3

Then `curl http://127.0.0.1:8000/scheduler/jobs` (any worker answers). Every worker declares
the same jobs; at start they reconcile them with the store, so restarting, scaling or
redeploying the workers never duplicates a run. Jobs must be importable by name (module-level
functions) and their arguments JSON data, so that any worker can run them. Every job has an
explicit id: the store keys jobs by id, and the default id (``module:qualname``) changes with
how the app is launched (``app:heartbeat`` here, ``__main__:heartbeat`` under ``python app.py``).
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler.fastapi import create_scheduler_router

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s: %(message)s")

# The store comes from TASK_SCHEDULER_STORE; with the default memory:// each worker would run
# every job itself (and the scheduler logs a WARNING saying so).
scheduler = TaskScheduler(SchedulerConfig(timezone="UTC", shutdown_timeout=20))


@scheduler.interval(seconds=5, id="heartbeat")
async def heartbeat() -> None:
    print(f"heartbeat from worker {os.getpid()}", flush=True)


@scheduler.cron("*/1 * * * *", id="every-minute", timeout=30, retries=1, max_staleness=180)
async def every_minute() -> None:
    print(f"minute job in worker {os.getpid()}", flush=True)


app = FastAPI(lifespan=scheduler.lifespan)
# Unguarded here for brevity; guard it with dependencies=[...] as in examples/fastapi_app.py.
app.include_router(create_scheduler_router())
