"""Fuzz the scheduler router's OpenAPI schema with schemathesis: no 500s, every response documented.

schemathesis runs the app's lifespan itself (a shared asyncio loop) and ends it after each
test, so every operation is fuzzed against a running scheduler whose jobs are put back first,
and that has runs to list (``/runs`` with random filters, limits and ``before`` times). The runs
and workers routes are fuzzed again on a SQLite store, whose history is a database's.
"""

from __future__ import annotations

import atexit
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import schemathesis
from fastapi import Depends, FastAPI, HTTPException, Security
from fastapi.security import APIKeyHeader
from helpers import noop
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from library.components.scheduling.task_scheduler import (
    JobNotFoundError,
    SchedulerConfig,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler.fastapi import create_scheduler_router

API_KEY = "fuzz-key"
JOB_IDS = ("tick", "nightly", "later", "watched")

api_key_header = APIKeyHeader(name="X-API-Key")


async def require_api_key(key: str = Security(api_key_header)) -> None:
    if key != API_KEY:
        raise HTTPException(status_code=403, detail="invalid API key")


async def restore_jobs(scheduler: TaskScheduler) -> None:
    """Put back the jobs an earlier operation's fuzzing removed, unpaused."""
    wanted: dict[str, Any] = {
        "tick": lambda: scheduler.add_interval_job(noop, "tick", seconds=60),
        "nightly": lambda: scheduler.add_cron_job(noop, "nightly", "0 2 * * *"),
        "later": lambda: scheduler.add_date_job(
            noop, "later", datetime.now(timezone.utc) + timedelta(days=1)
        ),
        "watched": lambda: scheduler.add_interval_job(
            noop, "watched", minutes=5, max_staleness=3600
        ),
    }
    for job_id, add in wanted.items():
        try:
            await scheduler.resume_job(job_id)
        except JobNotFoundError:
            await add()


def make_app(config: SchedulerConfig | None = None) -> FastAPI:
    scheduler = TaskScheduler(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await restore_jobs(scheduler)
        async with scheduler.lifespan(app) as state:
            for job_id in ("tick", "nightly", "tick"):  # runs for the runs routes to list
                await scheduler.run_job(job_id)
            yield state

    app = FastAPI(lifespan=lifespan)
    app.include_router(create_scheduler_router(dependencies=[Depends(require_api_key)]))
    return app


def make_schema(app: FastAPI) -> Any:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.update(headers={"X-API-Key": API_KEY})
    # FastAPI ignores unknown query parameters, as most web frameworks do: not a defect.
    schema.config.generation.update(allow_extra_parameters=False)
    return schema


FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,  # no saved examples replayed: every run stays bounded
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def call(case: schemathesis.Case[Any], known_id: str, use_known: bool) -> None:
    # Random ids are nearly always unknown; half the examples address a real job instead,
    # in the path (/jobs/{job_id}/...) or in the query (/runs?job_id=).
    if use_known:
        if case.path_parameters and "job_id" in case.path_parameters:
            case.path_parameters["job_id"] = known_id
        if case.query and "job_id" in case.query:
            case.query["job_id"] = known_id
    # The key given with the call too: schemathesis then knows it for real credentials and
    # probes that the routes refuse a request without it. An operation with a header parameter
    # of its own (the CSRF header X-Task-Scheduler, generated like any parameter: whitespace is
    # a documented 403) otherwise takes the configured key for a generated, invalid one.
    case.call_and_validate(headers={"X-API-Key": API_KEY})


schema = make_schema(make_app())


@schema.parametrize()
@schema.given(known_id=st.sampled_from(JOB_IDS), use_known=st.booleans())
@FUZZ
def test_api(case: schemathesis.Case[Any], known_id: str, use_known: bool) -> None:
    call(case, known_id, use_known)


# The store file lives as long as this process: schemathesis starts the app once per operation.
SQLITE_DIR = Path(mkdtemp(prefix="task-scheduler-fuzz-"))
atexit.register(shutil.rmtree, SQLITE_DIR, ignore_errors=True)
sqlite_schema = make_schema(make_app(SchedulerConfig(store=f"sqlite:///{SQLITE_DIR / 'jobs.db'}")))


@sqlite_schema.include(path_regex=r"/runs$|/workers$").parametrize()
@sqlite_schema.given(known_id=st.sampled_from(JOB_IDS), use_known=st.booleans())
@FUZZ
def test_runs_and_workers_on_sqlite(
    case: schemathesis.Case[Any], known_id: str, use_known: bool
) -> None:
    call(case, known_id, use_known)
