"""The seed README's examples, run verbatim: each ```python block, with only a harness around it.

The harness supplies what the README leaves to the reader (``datetime`` in the first block, and
the coroutines its jobs call), runs the blocks in order in one namespace as a reader would, and
checks what each block promises. ``seed_README.md`` is a verbatim copy of the seed's README.
"""

from __future__ import annotations

import ast
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from fastapi.testclient import TestClient

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler

HERE = Path(__file__).parent
SEED = HERE / "seed_README.md"


def python_blocks() -> dict[str, str]:
    """Each python block of the seed README, keyed by the heading above it."""
    blocks: dict[str, str] = {}
    heading = ""
    for match in re.finditer(r"^(#+ [^\n]*)$|^```python\n(.*?)^```", SEED.read_text(), re.S | re.M):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        else:
            blocks[heading] = match.group(2)
    return blocks


BLOCKS = python_blocks()


def test_the_copy_is_the_seed() -> None:
    shared = HERE.parents[2] / "shared" / "seed" / "README.md"
    if shared.exists():  # beside the clone, as in CI; a fresh checkout may not have it
        assert SEED.read_text() == shared.read_text()
    assert list(BLOCKS) == [
        "Basic Setup",
        "Cron Jobs",
        "One-Time Jobs",
        "FastAPI Integration",
        "Programmatic Job Management",
        "Configuration",
    ]


class Harness:
    """What the README's reader is assumed to have written: the coroutines its jobs call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.namespace: dict[str, Any] = {"datetime": datetime, "__name__": "seed_readme"}
        for name in (
            "update_service_status",
            "backup_database",
            "send_weekly_report",
            "archive_old_data",
            "my_async_function",
            "health_check",
        ):
            self.namespace[name] = self._recorder(name)

        async def broadcast_message(message: str) -> None:
            self.calls.append(f"broadcast_message({message!r})")

        self.namespace["broadcast_message"] = broadcast_message

    def _recorder(self, name: str) -> Any:
        async def record() -> None:
            self.calls.append(name)

        record.__name__ = record.__qualname__ = name
        return record

    def run(self, heading: str) -> None:
        exec(compile(BLOCKS[heading], f"<seed README: {heading}>", "exec"), self.namespace)

    async def run_async(self, heading: str) -> None:
        code = compile(
            BLOCKS[heading],
            f"<seed README: {heading}>",
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        )
        result = eval(code, self.namespace)
        if result is not None:
            await result


@pytest.fixture
def harness() -> Harness:
    harness = Harness()
    harness.namespace["TaskScheduler"] = TaskScheduler  # imported by the README's config block
    return harness


def declared_blocks(harness: Harness) -> TaskScheduler:
    # The first block imports TaskScheduler itself; the next two use its `scheduler`.
    harness.run("Basic Setup")
    harness.run("Cron Jobs")
    harness.run("One-Time Jobs")
    scheduler = harness.namespace["scheduler"]
    assert isinstance(scheduler, TaskScheduler)
    return scheduler


@pytest.mark.anyio
async def test_declared_jobs_are_scheduled_as_the_readme_says(
    anyio_backend: str, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = declared_blocks(harness)
    utc = ZoneInfo("UTC")
    with caplog.at_level(logging.WARNING):
        async with scheduler:
            jobs = {job.name: job for job in await scheduler.get_jobs()}
            started = datetime.now(timezone.utc)
            await anyio.sleep(0.1)
    assert set(jobs) == {
        "heartbeat",
        "check_status",
        "daily_backup",
        "weekly_report",
        "monthly_cleanup",
        "new_years_countdown",
    }
    # Interval job - every 30 seconds / every 5 minutes: first run one interval after start.
    heartbeat, check_status = jobs["heartbeat"], jobs["check_status"]
    assert heartbeat.trigger.interval_seconds == 30
    assert check_status.trigger.interval_seconds == 300
    assert heartbeat.next_run_time is not None
    assert 29 < (heartbeat.next_run_time - started).total_seconds() <= 30
    # Daily at 2:00 AM; every Monday at 9:00 AM; first day of each month at midnight.
    backup = jobs["daily_backup"].next_run_time
    assert backup is not None and (backup.hour, backup.minute, backup.second) == (2, 0, 0)
    report = jobs["weekly_report"].next_run_time
    assert report is not None and report.weekday() == 0 and (report.hour, report.minute) == (9, 0)
    cleanup = jobs["monthly_cleanup"].next_run_time
    assert cleanup is not None and (cleanup.day, cleanup.hour, cleanup.minute) == (1, 0, 0)
    for job in (backup, report, cleanup):
        assert job.tzinfo == utc
    # The one-time job's date (2024) has passed: skipped with a warning, never an exception.
    assert jobs["new_years_countdown"].next_run_time is None
    assert "new_years_countdown" in caplog.text and "will not run" in caplog.text
    assert "broadcast_message('Happy New Year!')" not in harness.calls


@pytest.mark.anyio
async def test_declared_functions_stay_callable(anyio_backend: str, harness: Harness) -> None:
    declared_blocks(harness)
    await harness.namespace["daily_backup"]()
    await harness.namespace["new_years_countdown"]()
    assert harness.calls == ["backup_database", "broadcast_message('Happy New Year!')"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_fastapi_integration_block(harness: Harness, backend: str) -> None:
    harness.run("FastAPI Integration")
    app, scheduler = harness.namespace["app"], harness.namespace["scheduler"]
    with TestClient(app, backend=backend) as client:
        assert scheduler.state == "running"
        response = client.get("/jobs")
    assert scheduler.state == "stopped"
    assert response.status_code == 200
    (job,) = response.json()
    assert job["name"] == "periodic_task"
    assert job["trigger"]["type"] == "interval" and job["trigger"]["interval_seconds"] == 60
    assert job["next_run_time"] is not None and job["paused"] is False


@pytest.mark.anyio
async def test_programmatic_job_management_block(anyio_backend: str, harness: Harness) -> None:
    harness.run("FastAPI Integration")  # defines `scheduler`, as a reader would have
    scheduler = harness.namespace["scheduler"]
    async with scheduler:
        await harness.run_async("Programmatic Job Management")
        jobs = {job.id: job for job in await scheduler.get_jobs()}
    # custom-job was added, paused, resumed and removed; health-check stays.
    assert "custom-job" not in jobs
    health = jobs["health-check"]
    assert health.trigger.interval_seconds == 300 and not health.paused


@pytest.mark.anyio
async def test_programmatic_block_works_before_start(anyio_backend: str, harness: Harness) -> None:
    harness.run("FastAPI Integration")
    scheduler = harness.namespace["scheduler"]
    await harness.run_async("Programmatic Job Management")
    async with scheduler:
        ids = [job.id for job in await scheduler.get_jobs()]
    assert "health-check" in ids and "custom-job" not in ids


def test_configuration_block(harness: Harness) -> None:
    harness.run("Configuration")
    config, scheduler = harness.namespace["config"], harness.namespace["scheduler"]
    assert isinstance(config, SchedulerConfig)
    assert scheduler.config is config
    assert scheduler.timezone == "America/New_York"
    assert config.job_defaults.coalesce is True
    assert config.job_defaults.max_instances == 3
    assert config.job_defaults.misfire_grace_time == 60


@pytest.mark.anyio
async def test_cron_table_weekday_names(anyio_backend: str) -> None:
    # The seed's table: day_of_week 0-6 or mon..sun. Names are the safe form.
    scheduler = TaskScheduler()

    async def job() -> None:
        pass

    await scheduler.add_cron_job(job, "by-name", day_of_week="mon", hour=9)
    await scheduler.add_cron_job(job, "by-number", day_of_week=1, hour=9)
    await scheduler.add_cron_job(job, "sunday", day_of_week=0, hour=9)
    async with scheduler:
        by_name, by_number, sunday = await scheduler.get_jobs()
    assert by_name.next_run_time == by_number.next_run_time
    assert by_name.next_run_time is not None and by_name.next_run_time.weekday() == 0
    assert sunday.next_run_time is not None and sunday.next_run_time.weekday() == 6
