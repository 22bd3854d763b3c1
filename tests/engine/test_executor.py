"""How runs are executed and recorded: timeouts, threads, limits, outcomes, retries, jitter."""

from __future__ import annotations

import functools
import gc
import logging
import subprocess
import sys
import threading
import time
import tracemalloc
from datetime import datetime, timedelta, timezone

import anyio
import anyio.lowlevel
import pytest
from helpers import LOGGER, noop, wait_until

from library.components.scheduling.task_scheduler import (
    Outcome,
    RunInfo,
    SchedulerConfig,
    SchedulerStateError,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio


async def test_success_is_recorded(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    async with scheduler:
        await scheduler.add_interval_job(noop, "ok", seconds=0.05)
        runs = await wait_for_runs(scheduler, "ok", 2)
        info = await scheduler.get_job("ok")
    run = runs[0]
    assert run.outcome is Outcome.success
    assert run.job_id == "ok" and run.attempt == 1
    assert run.started_at is not None and run.finished_at is not None
    assert run.scheduled_at <= run.started_at <= run.finished_at
    assert run.duration is not None and run.duration >= 0
    assert info.last_run is not None and info.last_run.outcome is Outcome.success
    assert info.counts.success >= 2
    assert runs[0].run_id != runs[1].run_id


async def test_an_error_is_recorded_logged_and_other_jobs_keep_running(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = TaskScheduler()

    async def boom() -> None:
        raise RuntimeError("disk full")

    async def fine() -> None:
        pass

    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with scheduler:
            await scheduler.add_interval_job(boom, "boom", seconds=0.05)
            await scheduler.add_interval_job(fine, "fine", seconds=0.05)
            await wait_for_runs(scheduler, "boom", 3)
            await wait_for_runs(scheduler, "fine", 3)
            assert scheduler.state == "running"
            (run,) = await scheduler.get_runs("boom", limit=1)
    assert run.outcome is Outcome.error
    assert run.error_type == "RuntimeError" and run.error_message == "disk full"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == LOGGER]
    assert errors and errors[0].exc_info is not None
    assert errors[0].job_id == "boom"  # type: ignore[attr-defined]
    assert errors[0].outcome == "error"  # type: ignore[attr-defined]
    assert "disk full" in caplog.text and "Traceback" in caplog.text


async def test_async_job_past_its_timeout_is_cancelled_and_recorded(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = TaskScheduler()
    finished: list[bool] = []

    async def hang() -> None:
        await anyio.sleep(30)
        finished.append(True)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with scheduler:
            await scheduler.add_interval_job(hang, "hang", seconds=0.1, timeout=0.2)
            (run, *_) = await wait_for_runs(scheduler, "hang", outcome=Outcome.timed_out)
    assert run.outcome is Outcome.timed_out
    assert run.error_type == "TimeoutError"
    assert run.duration is not None and 0.15 < run.duration < 5
    assert finished == []
    assert any(r.outcome == "timed_out" for r in caplog.records if hasattr(r, "outcome"))


async def test_a_job_that_shields_its_cleanup_finishes_it_on_timeout(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    cleaned: list[bool] = []

    async def careful() -> None:
        try:
            await anyio.sleep(30)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)
                cleaned.append(True)

    async with scheduler:
        await scheduler.add_interval_job(careful, "careful", seconds=0.1, timeout=0.1)
        await wait_for_runs(scheduler, "careful", outcome=Outcome.timed_out)
    assert cleaned and cleaned[0] is True


async def test_child_tasks_end_with_their_job(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    children_done: list[str] = []

    async def child() -> None:
        try:
            await anyio.sleep(30)
        finally:
            children_done.append("cancelled")

    async def parent() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
            tg.start_soon(child)
            await anyio.sleep(30)

    async with scheduler:
        await scheduler.add_interval_job(parent, "parent", seconds=0.1, timeout=0.2)
        await wait_for_runs(scheduler, "parent", outcome=Outcome.timed_out)
        assert len(children_done) >= 2


async def test_sync_jobs_run_in_worker_threads(anyio_backend: str) -> None:
    # Trap 3: APScheduler's default executor runs plain functions on the event loop thread.
    scheduler = TaskScheduler()
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def blocking() -> None:
        threads.append(threading.get_ident())
        time.sleep(0.05)

    async with scheduler:
        await scheduler.add_interval_job(blocking, "blocking", seconds=0.05)
        await wait_for_runs(scheduler, "blocking", 2)
    assert threads and loop_thread not in threads


async def test_sync_job_past_its_timeout_is_abandoned_and_logged(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = TaskScheduler()
    release = threading.Event()

    def stuck() -> None:
        release.wait(10)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with scheduler:
            await scheduler.add_interval_job(stuck, "stuck", seconds=0.1, timeout=0.1)
            (run, *_) = await wait_for_runs(scheduler, "stuck", outcome=Outcome.timed_out)
            release.set()
    assert run.outcome is Outcome.timed_out
    assert "worker thread is abandoned" in caplog.text


@pytest.mark.parametrize("kind", ["lambda", "closure", "partial", "bound method", "callable"])
async def test_any_callable_works_on_the_memory_store(anyio_backend: str, kind: str) -> None:
    # Trap 2: APScheduler cannot reference lambdas, closures, partials or bound methods.
    scheduler = TaskScheduler()
    calls: list[str] = []

    async def closure() -> None:
        calls.append("closure")

    async def with_arg(value: str) -> None:
        calls.append(value)

    class Service:
        async def tick(self) -> None:
            calls.append("method")

        async def __call__(self) -> None:
            calls.append("callable")

    func = {
        "lambda": lambda: calls.append("lambda"),
        "closure": closure,
        "partial": functools.partial(with_arg, "partial"),
        "bound method": Service().tick,
        "callable": Service(),
    }[kind]
    async with scheduler:
        await scheduler.add_interval_job(func, "job", seconds=0.05)
        (run, *_) = await wait_for_runs(scheduler, "job")
    assert run.outcome is Outcome.success
    assert calls and calls[0] == {"bound method": "method"}.get(kind, kind)


async def test_max_instances_skips_fires_instead_of_queueing(anyio_backend: str) -> None:
    # Trap 7: APScheduler queues fires past max_running_jobs; a backlog piles up.
    scheduler = TaskScheduler()
    release = anyio.Event()
    started: list[float] = []

    async def slow() -> None:
        started.append(anyio.current_time())
        await release.wait()

    async with scheduler:
        await scheduler.add_interval_job(slow, "slow", seconds=0.05, max_instances=1)
        await wait_for_runs(scheduler, "slow", 4, outcome=Outcome.skipped)
        assert len(started) == 1
        release.set()
        await wait_for_runs(scheduler, "slow", 1, outcome=Outcome.success)
        await anyio.sleep(0.02)
        # No queued backlog ran after the slow run ended.
        assert len(started) <= 2
        skipped = [r for r in await scheduler.get_runs("slow") if r.outcome is Outcome.skipped]
    assert skipped[0].started_at is None
    assert "max_instances is 1" in (skipped[0].error_message or "")


async def test_max_instances_allows_that_many_at_once(anyio_backend: str) -> None:
    # Trap 1: scheduling by callable would reset the task's limit to the engine default (1).
    scheduler = TaskScheduler()
    release = anyio.Event()
    running = 0
    peak = 0

    async def slow() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    async with scheduler:
        await scheduler.add_interval_job(slow, "slow", seconds=0.05, max_instances=3)
        await wait_for_runs(scheduler, "slow", 1, outcome=Outcome.skipped)
        assert (await scheduler.get_job("slow")).running == 3
        release.set()
    assert peak == 3


async def test_misfire_grace_time_records_missed_fires(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    calls: list[int] = []

    async def job() -> None:
        calls.append(1)

    async with scheduler:
        # A fire that starts more than misfire_grace_time late is recorded and not run:
        # block the event loop past four fire times with a synchronous sleep.
        await scheduler.add_interval_job(
            job, "late", seconds=0.1, misfire_grace_time=0.05, coalesce=False
        )
        time.sleep(0.4)  # noqa: ASYNC251 - block the event loop on purpose
        (run, *_) = await wait_for_runs(scheduler, "late", outcome=Outcome.missed)
        assert "misfire_grace_time is 0.05 s" in (run.error_message or "")
        await wait_for_runs(scheduler, "late", outcome=Outcome.success)


async def test_late_fires_always_run_without_misfire_grace_time(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    async with scheduler:
        await scheduler.add_interval_job(lambda: None, "late", seconds=0.1)
        time.sleep(0.4)  # noqa: ASYNC251 - block the event loop on purpose
        (run, *_) = await wait_for_runs(scheduler, "late")
    assert run.outcome is Outcome.success


@pytest.mark.parametrize(("coalesce", "expected"), [(True, 1), (False, 4)])
async def test_coalesce_runs_a_backlog_once_or_each(
    anyio_backend: str, coalesce: bool, expected: int
) -> None:
    scheduler = TaskScheduler()
    async with scheduler:
        start = datetime.now(timezone.utc) + timedelta(seconds=0.1)
        await scheduler.add_interval_job(
            lambda: None, "j", seconds=0.1, start=start, coalesce=coalesce
        )
        time.sleep(0.45)  # noqa: ASYNC251 - block the loop across four fire times
        unblocked = datetime.now(timezone.utc)
        await anyio.sleep(0.3)
        runs = await scheduler.get_runs("j")
    backlog = [run for run in runs if run.scheduled_at <= unblocked]
    assert len(backlog) == expected
    assert all(run.outcome is Outcome.success for run in backlog)


async def test_run_job_now(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    calls: list[int] = []

    async def job() -> None:
        calls.append(1)

    async with scheduler:
        await scheduler.add_cron_job(job, "nightly", "0 3 * * *")
        before = datetime.now(timezone.utc)
        run = await scheduler.run_job("nightly")
        assert run.outcome is Outcome.success
        assert run.scheduled_at >= before
        assert calls == [1]
        pending = await scheduler.run_job("nightly", wait=False)
        assert pending.outcome is None and pending.finished_at is None
        runs = await wait_for_runs(scheduler, "nightly", 2)
        assert runs[0].run_id == pending.run_id and runs[0].outcome is Outcome.success


async def test_run_job_at_the_limit_is_skipped(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    release = anyio.Event()

    async def slow() -> None:
        await release.wait()

    async with scheduler:
        await scheduler.add_cron_job(slow, "slow", "0 3 * * *", max_instances=1)
        first = await scheduler.run_job("slow", wait=False)
        second = await scheduler.run_job("slow")
        assert second.outcome is Outcome.skipped
        release.set()
        runs = await wait_for_runs(scheduler, "slow", 2)
        assert {r.run_id for r in runs} == {first.run_id, second.run_id}


async def test_run_job_needs_a_running_scheduler(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    await scheduler.add_interval_job(lambda: None, "j", seconds=5)
    with pytest.raises(SchedulerStateError, match="stopped"):
        await scheduler.run_job("j")


async def test_retries_until_success_each_attempt_recorded(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    attempts: list[int] = []

    async def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("try again")

    async with scheduler:
        await scheduler.add_cron_job(flaky, "flaky", "0 3 * * *", retries=3, retry_delay=0.01)
        final = await scheduler.run_job("flaky")
        runs = await scheduler.get_runs("flaky")
    assert final.outcome is Outcome.success and final.attempt == 3
    assert [r.attempt for r in runs] == [3, 2, 1]
    assert [r.outcome for r in runs] == [Outcome.success, Outcome.error, Outcome.error]
    assert len({r.run_id for r in runs}) == 3
    assert len({r.scheduled_at for r in runs}) == 1


async def test_a_timed_out_attempt_is_retried(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    attempts: list[int] = []

    async def slow_then_fast() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            await anyio.sleep(30)

    async with scheduler:
        await scheduler.add_cron_job(
            slow_then_fast, "j", "0 3 * * *", timeout=0.1, retries=1, retry_delay=0.01
        )
        final = await scheduler.run_job("j")
        first = (await scheduler.get_runs("j"))[1]
    assert first.outcome is Outcome.timed_out
    assert final.outcome is Outcome.success and final.attempt == 2


async def test_a_fire_waiting_for_its_retry_holds_its_slot(anyio_backend: str) -> None:
    scheduler = TaskScheduler()

    async def fails() -> None:
        raise ValueError("no")

    async with scheduler:
        await scheduler.add_cron_job(fails, "j", "0 3 * * *", retries=1, retry_delay=0.5)
        await scheduler.run_job("j", wait=False)
        await wait_for_runs(scheduler, "j", 1, outcome=Outcome.error)
        assert (await scheduler.get_job("j")).running == 1
        second = await scheduler.run_job("j")
        assert second.outcome is Outcome.skipped


def run_lines(caplog: pytest.LogCaptureFixture, job_id: str) -> list[logging.LogRecord]:
    """The run log lines of one job, oldest first."""
    return [
        record
        for record in caplog.records
        if record.name == LOGGER and getattr(record, "job_id", None) == job_id
    ]


async def test_a_retried_attempt_logs_one_warning_line_the_final_one_an_error(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = TaskScheduler()

    async def down() -> None:
        raise ConnectionError("boom")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with scheduler:
            await scheduler.add_cron_job(down, "x", "0 3 * * *", retries=2, retry_delay=0.02)
            final = await scheduler.run_job("x")
            runs = await scheduler.get_runs("x")
    first, second, third = run_lines(caplog, "x")
    run_ids = [run.run_id for run in reversed(runs)]
    for line, attempt in ((first, 1), (second, 2)):
        assert line.levelno == logging.WARNING
        assert line.exc_info is None
        retry_in = line.retry_in  # type: ignore[attr-defined]
        assert 0.005 <= retry_in <= 0.04 * attempt
        assert line.getMessage() == (
            f"job 'x' run {run_ids[attempt - 1]} (attempt {attempt} of 3) error: boom; "
            f"retrying in {round(retry_in, 3)} s"
        )
        assert (line.job_id, line.run_id, line.outcome, line.attempt) == (  # type: ignore[attr-defined]
            "x",
            run_ids[attempt - 1],
            "error",
            attempt,
        )
        assert line.duration is not None  # type: ignore[attr-defined]
    # The delay logged is the one waited: the next attempt starts no sooner.
    oldest_first = list(reversed(runs))
    pairs = zip(oldest_first[:-1], oldest_first[1:], (first, second), strict=True)
    for earlier, later, line in pairs:
        assert earlier.finished_at is not None and later.started_at is not None
        waited = (later.started_at - earlier.finished_at).total_seconds()
        assert waited >= line.retry_in - 0.002  # type: ignore[attr-defined]
    assert third.levelno == logging.ERROR
    assert third.getMessage() == f"job 'x' run {final.run_id} (attempt 3 of 3) error: boom"
    assert third.exc_info is not None and third.exc_info[0] is ConnectionError
    assert third.retry_in is None  # type: ignore[attr-defined]
    assert caplog.text.count("Traceback") == 1


async def test_a_run_that_succeeds_on_retry_logs_no_error(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = TaskScheduler()
    attempts: list[int] = []

    async def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("try again")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with scheduler:
            await scheduler.add_cron_job(flaky, "flaky", "0 3 * * *", retries=3, retry_delay=0.01)
            final = await scheduler.run_job("flaky")
    failed, succeeded = run_lines(caplog, "flaky")
    assert failed.levelno == logging.WARNING
    assert "(attempt 1 of 4) error: try again; retrying in " in failed.getMessage()
    assert succeeded.levelno == logging.INFO
    assert succeeded.getMessage() == f"job 'flaky' run {final.run_id} (attempt 2 of 4) success"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text


async def test_a_job_without_retries_logs_one_error_line_with_its_traceback(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = TaskScheduler()

    async def down() -> None:
        raise ConnectionError("boom")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with scheduler:
            await scheduler.add_cron_job(down, "x", "0 3 * * *")
            final = await scheduler.run_job("x")
    (line,) = run_lines(caplog, "x")
    assert line.levelno == logging.ERROR
    assert line.getMessage() == f"job 'x' run {final.run_id} (attempt 1) error: boom"
    assert line.exc_info is not None
    assert (line.job_id, line.run_id, line.outcome, line.attempt) == (  # type: ignore[attr-defined]
        "x",
        final.run_id,
        "error",
        1,
    )


async def test_a_timed_out_attempt_that_is_retried_logs_a_warning_saying_so(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = TaskScheduler()

    async def hang() -> None:
        await anyio.sleep(30)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with scheduler:
            await scheduler.add_cron_job(
                hang, "slow", "0 3 * * *", timeout=0.05, retries=1, retry_delay=0.01
            )
            final = await scheduler.run_job("slow")
    first, second = run_lines(caplog, "slow")
    assert first.levelno == logging.WARNING
    assert first.getMessage().startswith("job 'slow' run ")
    assert "(attempt 1 of 2) timed_out: timed out after 0.05 s; retrying in " in first.getMessage()
    assert second.levelno == logging.WARNING
    assert second.getMessage() == (
        f"job 'slow' run {final.run_id} (attempt 2 of 2) timed_out: timed out after 0.05 s"
    )
    assert "Traceback" not in caplog.text


async def test_an_attempt_failing_while_the_scheduler_stops_is_final(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = TaskScheduler()
    release = anyio.Event()

    async def fails_late() -> None:
        await release.wait()
        raise ConnectionError("boom")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with scheduler:
            await scheduler.add_cron_job(fails_late, "x", "0 3 * * *", retries=2)
            await scheduler.run_job("x", wait=False)
            await wait_until(lambda: scheduler._executor.in_progress == 1)
            scheduler.request_stop()
            await wait_until(lambda: scheduler.state == "stopping")
            release.set()
            await anyio.sleep_forever()
    (line,) = run_lines(caplog, "x")
    assert line.levelno == logging.ERROR and line.exc_info is not None
    assert line.getMessage().endswith("(attempt 1 of 3) error: boom")


def test_run_lines_are_not_formatted_when_nobody_listens() -> None:
    from library.components.scheduling.task_scheduler._models import Outcome as RunOutcome
    from library.components.scheduling.task_scheduler._runs import RunRecord, log_run

    class Untouchable(RunRecord):
        @property
        def run_id(self) -> str:
            raise AssertionError("formatted although the logger is disabled")

    record = Untouchable(1, "x", 1, datetime.now(timezone.utc), outcome=RunOutcome.error)
    logger = logging.getLogger(LOGGER)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        log_run(record, ValueError("boom"), 2, retry_in=1.0)
        log_run(record, ValueError("boom"), 2, None)
    finally:
        logger.setLevel(level)


async def test_jitter_delays_the_start_within_its_bound(anyio_backend: str) -> None:
    # Trap 8: APScheduler's max_jitter does not delay anything.
    scheduler = TaskScheduler()
    async with scheduler:
        await scheduler.add_interval_job(lambda: None, "j", seconds=0.3, jitter=0.2)
        runs = await wait_for_runs(scheduler, "j", 4)
    delays = [(r.started_at - r.scheduled_at).total_seconds() for r in runs if r.started_at]
    assert all(-0.001 <= d < 0.2 + 0.15 for d in delays)
    assert max(delays) > 0.02  # four draws from 0..0.2 s all below 20 ms: p = 1e-4


async def test_jitter_never_pushes_a_run_past_misfire_grace_time(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    async with scheduler:
        await scheduler.add_interval_job(
            lambda: None, "j", seconds=0.1, jitter=10, misfire_grace_time=0.08
        )
        runs = await wait_for_runs(scheduler, "j", 3)
    assert all(r.outcome is Outcome.success for r in runs)


async def test_on_run_finished_hooks_sync_and_async(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    seen_sync: list[RunInfo] = []
    seen_async: list[RunInfo] = []

    @scheduler.on_run_finished
    def record(run: RunInfo) -> None:
        seen_sync.append(run)

    @scheduler.on_run_finished
    async def record_async(run: RunInfo) -> None:
        await anyio.lowlevel.checkpoint()
        seen_async.append(run)

    @scheduler.on_run_finished
    def broken(run: RunInfo) -> None:
        raise RuntimeError("hook bug")

    async with scheduler:
        await scheduler.add_cron_job(lambda: None, "j", "0 3 * * *")
        run = await scheduler.run_job("j")
        await wait_until(lambda: seen_async != [])
    assert seen_sync[0].run_id == run.run_id and seen_sync[0].outcome is Outcome.success
    assert seen_async[0].run_id == run.run_id


async def test_history_is_bounded_and_newest_first(anyio_backend: str) -> None:
    scheduler = TaskScheduler(SchedulerConfig(history_size=5))
    async with scheduler:
        await scheduler.add_cron_job(lambda: None, "j", "0 3 * * *")
        ids = [(await scheduler.run_job("j")).run_id for _ in range(8)]
        runs = await scheduler.get_runs("j")
        info = await scheduler.get_job("j")
    assert [r.run_id for r in runs] == ids[::-1][:5]
    assert info.counts.success == 8


async def test_a_thousand_failing_runs_leave_the_scheduler_healthy(anyio_backend: str) -> None:
    scheduler = TaskScheduler()

    def fail() -> None:
        raise KeyError("nope")

    logging.getLogger(LOGGER).setLevel(logging.CRITICAL)
    try:
        async with scheduler:
            await scheduler.add_cron_job(fail, "f", "0 3 * * *")
            await scheduler.add_interval_job(lambda: None, "other", seconds=0.05)
            for _ in range(1000):
                await scheduler.run_job("f")
            info = await scheduler.get_job("f")
            await wait_for_runs(scheduler, "other", 2)
            status = await scheduler.get_status()
            runtime = scheduler._registry.by_id["f"]
    finally:
        logging.getLogger(LOGGER).setLevel(logging.NOTSET)
    assert info.counts.error == 1000
    assert status.state == "running"
    assert runtime.history is not None and len(runtime.history) == scheduler.config.history_size
    assert runtime.active == []


def test_keyboard_interrupt_from_a_job_propagates(anyio_backend: str) -> None:
    # asyncio re-raises it out of the event loop at once, so test it in a real process.
    script = f"""
import anyio
from library.components.scheduling.task_scheduler import TaskScheduler

scheduler = TaskScheduler()

@scheduler.interval(seconds=0.05)
async def interrupt():
    raise KeyboardInterrupt

async def main():
    async with scheduler:
        await anyio.sleep(20)
    print("scheduler kept running")

anyio.run(main, backend={anyio_backend!r})
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "kept running" not in result.stdout
    assert "KeyboardInterrupt" in result.stderr


def test_sys_exit_in_a_job_fails_the_run_and_the_app_keeps_running(anyio_backend: str) -> None:
    """A job (or a function shared with a CLI) calling sys.exit() stopped the whole app,
    from a worker thread too, and run_job() on it ended the caller's process. As in
    APScheduler 3: the run is recorded ``error`` (SystemExit) and everything goes on.
    In a real process: before the fix, the SystemExit would end the test runner."""
    script = f"""
import sys, time
import anyio
from library.components.scheduling.task_scheduler import TaskScheduler
from library.components.scheduling.task_scheduler.testing import wait_for_runs

scheduler = TaskScheduler()

@scheduler.interval(seconds=0.05, id="async-exit")
async def async_exit():
    sys.exit(3)

@scheduler.interval(seconds=0.05, id="thread-exit")
def thread_exit():
    sys.exit("bye")

@scheduler.interval(seconds=0.05, id="other")
async def other():
    pass

async def main():
    async with scheduler:
        await wait_for_runs(scheduler, "async-exit", 2)
        await wait_for_runs(scheduler, "thread-exit", 2)
        run = await scheduler.run_job("async-exit")
        await wait_for_runs(scheduler, "other", 3)
        for job_id in ("async-exit", "thread-exit"):
            last = (await scheduler.get_job(job_id)).last_run
            print(job_id, last.outcome.value, last.error_type, last.error_message)
        print("run_job", run.outcome.value, run.error_type)
    print("scheduler kept running")

anyio.run(main, backend={anyio_backend!r})
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "async-exit error SystemExit 3",
        "thread-exit error SystemExit bye",
        "run_job error SystemExit",
        "scheduler kept running",
    ]


async def test_memory_stays_flat_over_many_runs(anyio_backend: str) -> None:
    # The history is bounded: runs made while memory is traced and still kept in it count
    # as growth, so keep it small (20 x 2 jobs) to see anything else that would pile up.
    scheduler = TaskScheduler(SchedulerConfig(history_size=20))
    logging.getLogger(LOGGER).setLevel(logging.CRITICAL)
    try:
        async with scheduler:
            await scheduler.add_cron_job(lambda: None, "sync", "0 3 * * *")

            async def fails() -> None:
                raise ValueError("x")

            await scheduler.add_cron_job(fails, "async", "0 3 * * *")

            async def runs(count: int) -> None:
                for index in range(count):
                    await scheduler.run_job("sync" if index % 2 else "async")

            await runs(1000)
            tracemalloc.start()
            gc.collect()  # failed runs leave reference cycles (tracebacks) until collected
            before = tracemalloc.get_traced_memory()[0]
            await runs(4000)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            counts = (await scheduler.get_job("async")).counts
    finally:
        logging.getLogger(LOGGER).setLevel(logging.NOTSET)
    assert counts.error == 2500
    assert grown < 64 * 1024, f"{grown} bytes kept after 4,000 more runs"


async def test_idle_jobs_share_their_empty_state_until_their_first_run(
    anyio_backend: str,
) -> None:
    # Memory per idle schedule: an idle job costs one small object; its containers come at
    # the first write, and the shared empties are never written to.
    scheduler = TaskScheduler()
    async with scheduler:
        await scheduler.add_cron_job(lambda: None, "a", "0 3 * * *")
        await scheduler.add_cron_job(lambda: None, "b", "0 3 * * *")
        a, b = scheduler._registry.by_id["a"], scheduler._registry.by_id["b"]
        assert a.active is b.active and a.counts is b.counts and a.history is None
        shared_active, shared_counts = a.active, a.counts
        await scheduler.run_job("a")
        info_a, info_b = await scheduler.get_job("a"), await scheduler.get_job("b")
        assert a.active == [] and a.active is not shared_active
        assert a.counts is not shared_counts and b.counts is shared_counts
    assert shared_active == () and set(shared_counts) == {0}
    assert info_a.counts.success == 1 and info_b.counts.success == 0
