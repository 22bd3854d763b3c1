"""Starting, stopping, draining, supervision, and the FastAPI lifespan."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from helpers import LOGGER, noop, wait_for_state, wait_for_status
from starlette.requests import Request

from library.components.scheduling.task_scheduler import (
    Outcome,
    SchedulerConfig,
    TaskScheduler,
    _lifecycle,
)
from library.components.scheduling.task_scheduler._aps.memstore import MemoryStore
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio


async def test_shutdown_lets_short_jobs_finish_and_cancels_long_ones(anyio_backend: str) -> None:
    scheduler = TaskScheduler(SchedulerConfig(shutdown_timeout=0.5))
    started = {"short": anyio.Event(), "long": anyio.Event()}

    async def short() -> None:
        started["short"].set()
        await anyio.sleep(0.2)

    async def long() -> None:
        started["long"].set()
        await anyio.sleep(30)

    async with scheduler:
        await scheduler.add_cron_job(short, "short", "0 3 * * *")
        await scheduler.add_cron_job(long, "long", "0 3 * * *")
        await scheduler.run_job("short", wait=False)
        await scheduler.run_job("long", wait=False)
        await started["short"].wait()
        await started["long"].wait()
        began = anyio.current_time()
    took = anyio.current_time() - began
    assert 0.45 < took < 3
    assert scheduler.state == "stopped"
    (short_run,) = await scheduler.get_runs("short")
    (long_run,) = await scheduler.get_runs("long")
    assert short_run.outcome is Outcome.success
    assert long_run.outcome is Outcome.cancelled


async def test_shutdown_waits_for_a_job_that_shields_its_cleanup(anyio_backend: str) -> None:
    scheduler = TaskScheduler(SchedulerConfig(shutdown_timeout=0.1))
    cleaned: list[bool] = []
    started = anyio.Event()

    async def careful() -> None:
        started.set()
        try:
            await anyio.sleep(30)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.3)
                cleaned.append(True)

    async with scheduler:
        await scheduler.add_cron_job(careful, "careful", "0 3 * * *")
        await scheduler.run_job("careful", wait=False)
        await started.wait()
    assert cleaned == [True]
    (run,) = await scheduler.get_runs("careful")
    assert run.outcome is Outcome.cancelled


async def test_shutdown_abandons_a_thread_after_the_timeout(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = TaskScheduler(SchedulerConfig(shutdown_timeout=0.2))
    release = threading.Event()
    started = threading.Event()

    def stuck() -> None:
        started.set()
        release.wait(10)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with scheduler:
            await scheduler.add_cron_job(stuck, "stuck", "0 3 * * *")
            await scheduler.run_job("stuck", wait=False)
            await anyio.to_thread.run_sync(started.wait)
            began = anyio.current_time()
        took = anyio.current_time() - began
    release.set()
    assert took < 3
    (run,) = await scheduler.get_runs("stuck")
    assert run.outcome is Outcome.cancelled
    assert "'stuck' still in progress" in caplog.text
    assert "worker thread is abandoned" in caplog.text


async def test_no_new_runs_start_once_shutdown_begins(anyio_backend: str) -> None:
    scheduler = TaskScheduler(SchedulerConfig(shutdown_timeout=0.5))
    release = anyio.Event()
    calls: list[float] = []

    async def slow() -> None:
        calls.append(anyio.current_time())
        await release.wait()

    async def fast() -> None:
        calls.append(anyio.current_time())

    await scheduler.start()
    try:
        await scheduler.add_cron_job(slow, "slow", "0 3 * * *")
        await scheduler.add_interval_job(fast, "fast", seconds=0.05)
        await wait_for_runs(scheduler, "fast")
        await scheduler.run_job("slow", wait=False)
        scheduler.request_stop()  # the same drain as shutdown(), started from here
        await anyio.sleep(0.05)
        count = len(calls)
        await anyio.sleep(0.3)  # fast would have fired ~6 times
        assert len(calls) == count
        assert scheduler.state == "stopping"
        release.set()
    finally:
        await scheduler.shutdown()
    assert (await scheduler.get_runs("slow"))[0].outcome is Outcome.success
    # Fires that came due during the drain never started: skipped, not "cancelled" (that is
    # a run stopped while it ran), so counts.cancelled means what the README says it means.
    drained = [run for run in await scheduler.get_runs("fast", limit=100) if run.started_at is None]
    assert drained and {(run.outcome, run.error_message) for run in drained} == {
        (Outcome.skipped, "not started: the scheduler is shutting down")
    }
    assert (await scheduler.get_job("fast")).counts.cancelled == 0


async def test_a_retry_waiting_at_shutdown_is_cancelled(anyio_backend: str) -> None:
    scheduler = TaskScheduler(SchedulerConfig(shutdown_timeout=5))

    async def fails() -> None:
        raise ValueError("no")

    async with scheduler:
        await scheduler.add_cron_job(fails, "j", "0 3 * * *", retries=2, retry_delay=30)
        await scheduler.run_job("j", wait=False)
        await wait_for_runs(scheduler, "j", outcome=Outcome.error)
        began = anyio.current_time()
    assert anyio.current_time() - began < 2
    runs = await scheduler.get_runs("j")
    assert [(r.attempt, r.outcome) for r in runs] == [(2, Outcome.cancelled), (1, Outcome.error)]


async def test_request_stop_from_another_thread_ends_async_with(anyio_backend: str) -> None:
    scheduler = TaskScheduler(SchedulerConfig(shutdown_timeout=1))
    finished = anyio.Event()

    async def short() -> None:
        await anyio.sleep(0.2)
        finished.set()

    reached_end = False
    with anyio.fail_after(10):
        async with scheduler:
            await scheduler.add_cron_job(short, "short", "0 3 * * *")
            await scheduler.run_job("short", wait=False)
            threading.Timer(0.05, scheduler.request_stop).start()
            await anyio.sleep(30)
            reached_end = True
    assert not reached_end
    assert finished.is_set()  # the drain let the running job finish
    assert scheduler.state == "stopped"


async def test_request_stop_with_start_and_shutdown(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    await scheduler.start()
    try:
        scheduler.request_stop()
        await wait_for_state(scheduler, "stopping", limit=5)
    finally:
        await scheduler.shutdown()
    assert scheduler.state == "stopped"
    scheduler.request_stop()  # not running: nothing happens


class Interrupt(BaseException):
    """Stands for Ctrl-C's KeyboardInterrupt, which a test must not raise for real."""


@pytest.mark.parametrize("error", [ValueError("in the owner's block"), Interrupt()])
async def test_an_error_in_the_owners_block_leaves_as_itself_and_the_stop_is_logged(
    anyio_backend: str, error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    """On trio the scheduler's nursery wrapped it in a nested BaseExceptionGroup (a 40-line
    traceback on Ctrl-C) and "task scheduler stopped" was never logged."""
    scheduler = TaskScheduler()
    scheduler.interval(seconds=0.05, id="tick")(noop)
    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.raises(type(error)) as info:
        async with scheduler:
            await wait_for_runs(scheduler, "tick", 1)
            raise error
    assert info.value is error
    assert scheduler.state == "stopped"
    assert "task scheduler stopped" in caplog.messages


@pytest.fixture
def fast_restarts(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Make the store's take_schedules (the memory engine's acquire_schedules) fail on
    demand, with restart delays of 10 ms."""
    monkeypatch.setattr(_lifecycle, "RESTART_DELAY_FIRST", 0.01)
    monkeypatch.setattr(_lifecycle, "RESTART_DELAY_MAX", 0.02)
    control: dict[str, Any] = {"failures": 0}
    original = MemoryStore.take_schedules

    def take_schedules(self: MemoryStore, *args: Any, **kwargs: Any) -> Any:
        if control["failures"]:
            control["failures"] -= 1
            raise OSError("store unreachable")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MemoryStore, "take_schedules", take_schedules)
    yield control


async def test_engine_crash_is_restarted_and_reported(
    anyio_backend: str, fast_restarts: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = TaskScheduler()
    with caplog.at_level(logging.CRITICAL, logger=LOGGER):
        async with scheduler:
            await scheduler.add_interval_job(lambda: None, "j", seconds=0.05)
            await wait_for_runs(scheduler, "j")
            fast_restarts["failures"] = 2
            await wait_for_status(scheduler, lambda status: status.engine_restarts >= 2)
            done = (await scheduler.get_job("j")).counts.success
            await wait_for_runs(scheduler, "j", done + 2)
            status = await scheduler.get_status()
    assert status.state == "running"
    assert status.engine_restarts == 2
    assert status.last_engine_error == "OSError: store unreachable"
    assert status.job_count == 1
    assert "APScheduler engine crashed: OSError: store unreachable" in caplog.text


async def test_engine_that_keeps_crashing_is_given_up(
    anyio_backend: str, fast_restarts: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = TaskScheduler()
    with caplog.at_level(logging.CRITICAL, logger=LOGGER):
        async with scheduler:
            await scheduler.add_interval_job(lambda: None, "j", seconds=0.05)
            fast_restarts["failures"] = 1000
            await wait_for_state(scheduler, "failed")
            status = await scheduler.get_status()
    assert status.state == "failed"
    assert status.engine_restarts == 5
    assert "giving up" in caplog.text
    assert scheduler.state == "stopped"


def test_lifespan_with_fastapi() -> None:
    scheduler = TaskScheduler()
    calls: list[int] = []
    finished = threading.Event()

    @scheduler.interval(seconds=0.05, id="tick")
    async def tick() -> None:
        calls.append(1)

    # The hook runs in the scheduler's thread (the TestClient's portal): a thread-safe event.
    scheduler.on_run_finished(lambda run: finished.set())
    app = FastAPI(lifespan=scheduler.lifespan)

    @app.get("/jobs")
    async def list_jobs() -> Any:
        return await scheduler.get_jobs()

    with TestClient(app) as client:
        assert scheduler.state == "running"
        finished.wait(5)
        body = client.get("/jobs").json()
    assert scheduler.state == "stopped"
    assert calls
    assert body[0]["id"] == "tick" and body[0]["trigger"]["type"] == "interval"


def test_lifespan_yields_the_scheduler_as_state() -> None:
    scheduler = TaskScheduler()
    app = FastAPI(lifespan=scheduler.lifespan)

    @app.get("/state")
    async def state(request: Request) -> dict[str, bool]:
        return {"same": request.state.task_scheduler is scheduler}

    with TestClient(app) as client:
        assert client.get("/state").json() == {"same": True}


@pytest.mark.parametrize("anyio_backend", ["trio"])
def test_ctrl_c_delivered_inside_a_job_stops_cleanly_on_trio(anyio_backend: str) -> None:
    """trio delivers Ctrl-C in whichever task runs: in a job, it came out of trio.run as a
    nested BaseExceptionGroup (a long traceback), not as the KeyboardInterrupt a program
    catches. Real process: a KeyboardInterrupt must not reach the test runner."""
    script = """
import logging, trio
from library.components.scheduling.task_scheduler import TaskScheduler

logging.basicConfig(level=logging.INFO, format="%(message)s")
scheduler = TaskScheduler()

@scheduler.interval(seconds=0.05, id="ctrl-c")
async def ctrl_c():
    raise KeyboardInterrupt  # as when the signal arrives while this job runs

async def main():
    async with scheduler:
        await trio.sleep(20)

try:
    trio.run(main)
except KeyboardInterrupt:
    print("interrupted")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "interrupted"
    assert "task scheduler stopped" in result.stderr
    assert "ExceptionGroup" not in result.stderr
    # The run is recorded cancelled, without a traceback: Ctrl-C is not the job's error.
    assert "Traceback" not in result.stderr
    assert "cancelled: interrupted (KeyboardInterrupt: Ctrl-C)" in result.stderr


async def test_an_event_loop_blocked_by_a_job_is_noticed_and_named(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``time.sleep(3)`` inside ``async def`` was logged ``success`` while every other job
    started 3 s late and health probes timed out."""
    scheduler = TaskScheduler()

    async def blocks() -> None:
        time.sleep(1.5)  # noqa: ASYNC251 - the point of the test

    scheduler.interval(hours=1, id="blocks")(blocks)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with scheduler:
        assert (await scheduler.get_status()).loop_lag < 1.0
        await scheduler.run_job("blocks")
        await anyio.sleep(1.0)  # the watchdog's next look
        status = await scheduler.get_status()
    blocked = [message for message in caplog.messages if "event loop was blocked" in message]
    assert len(blocked) == 1 and "'blocks'" in blocked[0]
    assert status.loop_lag >= 1.0
