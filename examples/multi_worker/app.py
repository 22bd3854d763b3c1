"""The FastAPI app under several uvicorn workers, sharing one PostgreSQL store: each fire
runs once, in one of the workers, and every worker reports the same runs, counts and workers.

    python3 -m venv .venv && .venv/bin/python -m pip install -e ".[postgres,examples]"
    export TASK_SCHEDULER_STORE=postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/uvicorn --app-dir examples/multi_worker app:app --workers 3

Then, from any worker (they all answer the same, from the store's database):

    curl http://127.0.0.1:8000/scheduler/workers           # the three live workers
    curl http://127.0.0.1:8000/scheduler/runs              # every job's runs, "worker" says where
    curl "http://127.0.0.1:8000/scheduler/runs?job_id=every-minute&limit=5"
    curl "http://127.0.0.1:8000/scheduler/runs?outcome=error"
    curl http://127.0.0.1:8000/scheduler/jobs/heartbeat    # cluster-wide counts, last success
    curl http://127.0.0.1:8000/cluster                     # who answered, and who ran what

Each worker logs its live workers when it starts. ``kill -9`` one worker's pid (as listed):
uvicorn starts a new one, and the dead one leaves /scheduler/workers within about 12 s.

Every worker declares the same jobs; at start they reconcile them with the store, so
restarting, scaling or redeploying the workers never duplicates a run. Jobs must be importable
by name (module-level functions) and their arguments JSON data, so that any worker can run
them. Every job has an explicit id: the store keys jobs by id, and the default id
(``module:qualname``) changes with how the app is launched (``app:heartbeat`` here,
``__main__:heartbeat`` under ``python app.py``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler.fastapi import create_scheduler_router

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s: %(message)s")
log = logging.getLogger("multi_worker")

# The store comes from TASK_SCHEDULER_STORE; with the default memory:// each worker would run
# every job itself (and the scheduler logs a WARNING saying so).
scheduler = TaskScheduler(SchedulerConfig(timezone="UTC", shutdown_timeout=20))


@scheduler.interval(seconds=5, id="heartbeat")
async def heartbeat() -> None:
    print(f"heartbeat from worker {os.getpid()}", flush=True)


# Stale (health 503 on every worker) after 3 minutes without a success on any worker: each
# minute's fire runs in whichever worker claims it, and staleness is judged cluster-wide.
@scheduler.cron("*/1 * * * *", id="every-minute", timeout=30, retries=1, max_staleness=180)
async def every_minute() -> None:
    print(f"minute job in worker {os.getpid()}", flush=True)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    async with scheduler.lifespan(app) as state:
        status = await scheduler.get_status()
        workers = await scheduler.get_workers()
        log.info(
            "worker %s started; live workers: %s",
            status.worker_id,
            ", ".join(worker.id for worker in workers),
        )
        yield state


app = FastAPI(lifespan=lifespan)
# Unguarded here for brevity; guard it with dependencies=[...] as in examples/fastapi_app.py.
app.include_router(create_scheduler_router())


@app.get("/cluster")
async def cluster() -> dict[str, Any]:
    """Which worker answered, the live workers, and which worker ran the last 50 runs."""
    status = await scheduler.get_status()
    runs = await scheduler.get_runs(None, 50)
    return {
        "answered_by": status.worker_id,
        "workers": [worker.id for worker in await scheduler.get_workers()],
        # worker None: a run left by a worker that died, finished as "abandoned" by another.
        "last_50_runs_by_worker": Counter(str(run.worker) for run in runs),
    }
