"""Fuzz the scheduler router's OpenAPI schema with schemathesis: no 500s, every response documented.

schemathesis runs the app's lifespan itself (a shared asyncio loop) and ends it after each
test, so every operation is fuzzed against a running scheduler whose jobs are put back first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import schemathesis
from fastapi import Depends, FastAPI, HTTPException, Security
from fastapi.security import APIKeyHeader
from helpers import noop
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from library.components.scheduling.task_scheduler import JobNotFoundError, TaskScheduler
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


def make_app() -> FastAPI:
    scheduler = TaskScheduler()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await restore_jobs(scheduler)
        async with scheduler.lifespan(app) as state:
            yield state

    app = FastAPI(lifespan=lifespan)
    app.include_router(create_scheduler_router(dependencies=[Depends(require_api_key)]))
    return app


app = make_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
schema.config.update(headers={"X-API-Key": API_KEY})
# FastAPI ignores unknown query parameters, as most web frameworks do: not a defect.
schema.config.generation.update(allow_extra_parameters=False)


@schema.parametrize()
@schema.given(known_id=st.sampled_from(JOB_IDS), use_known=st.booleans())
@settings(
    max_examples=40,
    deadline=None,
    database=None,  # no saved examples replayed: every run stays bounded
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api(case: schemathesis.Case[Any], known_id: str, use_known: bool) -> None:
    # Random ids are nearly always unknown; half the examples address a real job instead.
    if use_known and case.path_parameters and "job_id" in case.path_parameters:
        case.path_parameters["job_id"] = known_id
    case.call_and_validate()
