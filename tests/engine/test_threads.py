"""Plain ``def`` jobs that hang past their timeout: their threads stay bounded, keep their
job's slot and share of max_concurrent_jobs, show in status, and never keep the process
alive after shutdown (anyio's worker threads leaked without bound, and on asyncio kept the
interpreter from exiting)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import anyio
import pytest

from library.components.scheduling.task_scheduler import (
    Outcome,
    SchedulerConfig,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio


async def test_a_hung_job_keeps_one_thread_and_its_later_fires_are_skipped(
    anyio_backend: str,
) -> None:
    scheduler = TaskScheduler()
    release = threading.Event()
    # Threads that entered the job while it hung (not a count of all job threads: idle ones
    # left by earlier tests retire on their own clock).
    entered: set[int] = set()

    def hang() -> None:
        if not release.is_set():
            entered.add(threading.get_ident())
        release.wait(30)

    async with scheduler:
        await scheduler.add_interval_job(hang, "hang", seconds=0.1, timeout=0.05)
        await wait_for_runs(scheduler, "hang", 1, outcome=Outcome.timed_out)
        await wait_for_runs(scheduler, "hang", 5, outcome=Outcome.skipped)
        busy = len(entered)
        status = await scheduler.get_status()
        job = await scheduler.get_job("hang")
        release.set()
        # The thread returns: the slot comes back, and the job runs again.
        await wait_for_runs(scheduler, "hang", 1, outcome=Outcome.success, timeout=10)
        after = await scheduler.get_status()
    assert busy == 1  # before the fix: one more thread per fire (51 after 10 s)
    assert status.abandoned_threads == 1 and after.abandoned_threads == 0
    assert job.counts.timed_out == 1 and job.running == 1
    skipped = [run for run in await scheduler.get_runs("hang") if run.outcome is Outcome.skipped]
    assert "max_instances is 1" in str(skipped[0].error_message)


async def test_an_abandoned_thread_keeps_its_share_of_max_concurrent_jobs(
    anyio_backend: str,
) -> None:
    scheduler = TaskScheduler(SchedulerConfig(max_concurrent_jobs=1))
    release = threading.Event()
    ran: list[str] = []

    def hang() -> None:
        release.wait(30)

    def quick() -> None:
        ran.append("quick")

    async with scheduler:
        await scheduler.add_interval_job(hang, "hang", hours=1, timeout=0.05)
        await scheduler.run_job("hang")  # timed out; its thread holds the only thread slot
        async with anyio.create_task_group() as group:
            await scheduler.add_interval_job(quick, "quick", hours=1)
            group.start_soon(scheduler.run_job, "quick")
            await anyio.sleep(0.5)
            waited = list(ran)
            release.set()
        assert (await scheduler.get_status()).abandoned_threads == 0
    assert waited == []  # no thread past max_concurrent_jobs while the hung one runs
    assert ran == ["quick"]


def test_the_process_exits_after_shutdown_with_a_thread_still_hung(anyio_backend: str) -> None:
    script = f"""
import threading
import anyio
from library.components.scheduling.task_scheduler import TaskScheduler, Outcome
from library.components.scheduling.task_scheduler.testing import wait_for_runs

scheduler = TaskScheduler()

@scheduler.interval(seconds=0.1, timeout=0.05, id="hang")
def hang():
    threading.Event().wait()  # never returns

async def main():
    async with scheduler:
        await wait_for_runs(scheduler, "hang", outcome=Outcome.timed_out)
        print("abandoned", (await scheduler.get_status()).abandoned_threads, flush=True)
    print("stopped", flush=True)

anyio.run(main, backend={anyio_backend!r})
"""
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired as exc:  # before the fix, on asyncio: never exited
        pytest.fail(f"the process did not exit after shutdown: {exc.stdout!r}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["abandoned", "1", "stopped"]
    assert time.monotonic() - started < 30
