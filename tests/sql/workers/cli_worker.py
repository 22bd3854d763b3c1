"""A worker of the command-line tests (test_cli.py): a TaskScheduler on TASK_SCHEDULER_STORE.

Usage: TASK_SCHEDULER_STORE=URL python cli_worker.py

Prints ``ready <worker id>`` once the scheduler runs, then runs until SIGTERM (or stdin
closes), and prints ``stopped`` after a clean shutdown. Its jobs: ``tick`` every second,
``report`` and ``broken`` (raises) hourly, ``nightly-backup`` by cron in Europe/Paris.
"""

from __future__ import annotations

import logging
import signal
import sys

import anyio

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler

scheduler = TaskScheduler(SchedulerConfig(timezone="Europe/Paris", shutdown_timeout=5))


@scheduler.interval(seconds=1, id="tick")
async def tick() -> None:
    """Always succeeds."""


@scheduler.interval(hours=1, id="report")
async def report() -> None:
    """Succeeds after a moment."""
    await anyio.sleep(0.05)


@scheduler.interval(hours=1, id="broken", retries=1, retry_delay=0.1)
def broken() -> None:
    raise ValueError("disk full")


@scheduler.cron("0 3 * * *", id="nightly-backup")
async def nightly_backup() -> None:
    """Never due during a test."""


async def main() -> None:
    async with scheduler:
        status = await scheduler.get_status()
        print(f"ready {status.worker_id}", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                break
    print("stopped", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    anyio.run(main)
