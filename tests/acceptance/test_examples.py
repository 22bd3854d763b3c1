"""The examples as a user runs them: Ctrl-C stops them cleanly, with the stop logged."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import ModuleType
from zoneinfo import ZoneInfo

import httpx
import pytest

from library.components.scheduling.task_scheduler import Outcome
from library.components.scheduling.task_scheduler.testing import virtual_time

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_ctrl_c_stops_the_trio_example_cleanly() -> None:
    """Before: a 40-line ``BaseExceptionGroup: Exceptions from Trio nursery`` traceback, and
    "task scheduler stopped" never logged."""
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "trio_app.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Started from a shell without job control, a child inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "task scheduler started" in line or not line:
                break
        assert any("task scheduler started" in line for line in lines), lines
        time.sleep(1.5)  # some runs, then Ctrl-C
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    assert "task scheduler stopped" in output
    assert "Traceback" not in output and "ExceptionGroup" not in output


OVERRIDE_IN_A_TEST = """
import sys
sys.path.insert(0, sys.argv[1])
from fastapi.testclient import TestClient
import fastapi_app

closed = []

async def fake_db():
    yield {"open_orders": 42}
    closed.append(True)

fastapi_app.app.dependency_overrides[fastapi_app.get_report_db] = fake_db
with TestClient(fastapi_app.app) as client:
    run = client.post(
        "/scheduler/jobs/weekday_report/run?wait=true",
        headers={"X-API-Key": fastapi_app.API_KEY, "X-Task-Scheduler": "1"},
    )
assert run.json()["outcome"] == "success", run.text
assert closed == [True], closed
"""


def test_the_fastapi_examples_job_dependency_is_replaced_as_an_endpoints() -> None:
    """A test of the example app overrides weekday_report's database through
    app.dependency_overrides, as it would an endpoint's (in a subprocess: the example
    configures logging when imported)."""
    result = subprocess.run(
        [sys.executable, "-c", OVERRIDE_IN_A_TEST, str(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Report: 42 open orders, for ops@example.com" in result.stdout, result.stdout


def load_fastapi_example() -> ModuleType:
    """A fresh copy of ``examples/fastapi_app.py`` (its scheduler and app, not started)."""
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLES / "fastapi_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
async def test_a_week_of_the_fastapi_example_in_virtual_time(anyio_backend: str) -> None:
    """The example app's jobs over a week, in well under a second: its scheduler runs under
    virtual time, its API is called without its lifespan (which would start the scheduler)."""
    example = load_fastapi_example()
    scheduler, new_york = example.scheduler, ZoneInfo("America/New_York")
    start = datetime(2026, 4, 3, 0, 0, tzinfo=new_york)  # a Friday
    transport = httpx.ASGITransport(app=example.app)
    async with (
        virtual_time(scheduler, start=start) as clock,
        httpx.AsyncClient(transport=transport, base_url="http://example") as client,
    ):
        # The every-second heartbeat and the thread job are not this test's subject.
        await scheduler.pause_job("heartbeat")
        await scheduler.pause_job("sweep_temp_files")
        await clock.advance(weeks=1)
        jobs = {job["id"]: job for job in (await client.get("/jobs")).json()}
        backups = await scheduler.get_runs("daily_backup")
        reports = await scheduler.get_runs("weekday_report")
        key = {"X-API-Key": example.API_KEY, "X-Task-Scheduler": "1"}
        ran = await client.post("/scheduler/jobs/weekday_report/run?wait=true", headers=key)
    assert [run.scheduled_at.day for run in reversed(backups)] == [3, 4, 5, 6, 7, 8, 9]
    assert all(run.outcome is Outcome.success and run.duration == 1 for run in backups)
    assert all(run.started_at and run.started_at.hour == 2 for run in backups)
    assert [run.scheduled_at.day for run in reversed(reports)] == [3, 6, 7, 8, 9]
    assert jobs["weekday_report"]["next_run_time"] == "2026-04-10T09:00:00-04:00"
    assert jobs["heartbeat"]["paused"] and jobs["heartbeat"]["counts"]["success"] == 0
    # A run asked for through the management API runs at the virtual now.
    assert ran.json()["outcome"] == "success"
    assert ran.json()["started_at"] == "2026-04-10T00:00:00-04:00"
