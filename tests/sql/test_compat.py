"""A store written by release 0.1.0 keeps loading: trigger classes, pause states, fire times."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from workers.legacy_jobs import build

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: this file's store code runs the same on trio (ThreadedSQLStore shares
    SQLStore's and the history's code; test_sqlstore.py and test_persistence.py run on both),
    and the suite's time is kept down."""
    return "asyncio"


STORE_0_1_0 = Path(__file__).parent / "data" / "store-0.1.0.sqlite"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


async def test_a_store_written_by_release_0_1_0_loads(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    shutil.copy(STORE_0_1_0, path)
    scheduler = build(f"sqlite:///{path}")
    async with scheduler:
        jobs = {job.id: job for job in await scheduler.get_jobs()}
    assert set(jobs) == {
        "every-5-min", "nightly", "weekdays", "once", "paused-job", "added-at-run-time",
    }  # fmt: skip
    # Pause states, whether declared or set at run time, stay as stored.
    assert {job_id for job_id, job in jobs.items() if job.paused} == {"every-5-min", "paused-job"}
    # Next fire times stay as stored (the cron trigger class persisted by 0.1.0 loads back).
    next_runs = {job_id: job.next_run_time for job_id, job in jobs.items() if not job.paused}
    assert next_runs == {
        "nightly": utc(2030, 1, 1, 7, 30),
        "weekdays": utc(2030, 1, 1, 14, 0),
        "once": utc(2031, 6, 1, 16, 0),
        "added-at-run-time": utc(2030, 1, 1, 17, 0),
    }
    added = jobs["added-at-run-time"]
    assert added.func == "workers.legacy_jobs:added"
    assert added.trigger.type == "cron" and added.trigger.expression == "0 12 * * *"
    assert jobs["weekdays"].retries == 2
