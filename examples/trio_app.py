"""The same scheduler in a plain trio program: no web framework, no asyncio.

Run it:   python examples/trio_app.py          (Ctrl-C stops it, after a graceful drain)
Smoke:    python examples/trio_app.py --smoke  (runs ~3 s, checks, exits)
A store:  python examples/trio_app.py --store sqlite:///jobs.db
          python examples/trio_app.py --store postgresql://user@host:5432/db  (several processes)

trio supports the same stores as asyncio: with a persistent store the schedules, their pause
states and next fire times survive a restart (run it twice), and processes sharing one
PostgreSQL database run each fire once.
"""

from __future__ import annotations

import argparse
import logging
import time

import trio

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--smoke", action="store_true", help="run ~3 s, check, exit")
parser.add_argument(
    "--store", default="memory://", help="memory:// (default), sqlite:///FILE or postgresql://..."
)
options = parser.parse_args()

scheduler = TaskScheduler(
    SchedulerConfig(store=options.store, timezone="Europe/London", shutdown_timeout=5)
)


@scheduler.interval(seconds=1, id="tick")
async def tick() -> None:
    await trio.sleep(0.05)


@scheduler.interval(seconds=1, timeout=0.5, id="sometimes-slow")
async def sometimes_slow() -> None:
    await trio.sleep(10)  # always times out: recorded `timed_out`, nothing else disturbed


@scheduler.interval(seconds=2, id="blocking-io")
def blocking_io() -> None:
    time.sleep(0.1)  # runs in a worker thread


@scheduler.cron("*/15 * * * *", id="quarter-hourly")
async def quarter_hourly() -> None:
    print("quarter past, or half past, or...")


async def main(run_for: float | None) -> None:
    async with scheduler:
        jobs = await scheduler.get_jobs()
        print(f"{len(jobs)} job(s) on {options.store.partition(':')[0]}")
        if run_for is None:
            await trio.sleep_forever()
        await trio.sleep(run_for)
        tick_job = await scheduler.get_job("tick")
        slow_job = await scheduler.get_job("sometimes-slow")
        assert tick_job.counts.success >= 2, tick_job
        # On a persistent store the counts are the store's: every run, every process.
        assert slow_job.counts.timed_out >= 1, slow_job
        for line in await scheduler.preview("quarter-hourly", count=3):
            print("quarter_hourly next:", line.isoformat())
    print("smoke ok")


if __name__ == "__main__":
    try:
        trio.run(main, 3.2 if options.smoke else None)
    except KeyboardInterrupt:
        pass  # Ctrl-C: the scheduler drained its jobs and logged "task scheduler stopped"
