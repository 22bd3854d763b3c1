"""One worker process of the multi-process tests: 20 interval jobs on a shared store.

Usage: python pg_worker.py STORE_URL START_ISO SECONDS [JOBS [PID_FILE]]
Runs the scheduler until SECONDS have passed (or SIGTERM), then prints its runs as JSON lines.
On plain asyncio, or under ``trio.run`` when the environment has TASK_SCHEDULER_LOOP=trio.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import datetime

import anyio
from pg_jobs import build


async def main(
    store: str, start: datetime, seconds: float, jobs: int, pid_file: str | None
) -> None:
    scheduler = build(store, start, jobs, pid_file)
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with scheduler:
            print("ready", flush=True)
            with anyio.move_on_after(seconds):
                async for _ in signals:
                    break
        for job in await scheduler.get_jobs():
            for run in await scheduler.get_runs(job.id, limit=1000):
                print(json.dumps(run.model_dump(mode="json")), flush=True)


if __name__ == "__main__":
    store_url, start_iso, seconds_text = sys.argv[1:4]
    job_count = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    pid_path = sys.argv[5] if len(sys.argv) > 5 else None
    start_at = datetime.fromisoformat(start_iso)
    if os.environ.get("TASK_SCHEDULER_LOOP") == "trio":
        import trio

        trio.run(main, store_url, start_at, float(seconds_text), job_count, pid_path)
    else:
        # Plain asyncio, as under uvicorn (anyio.run would hide a defect of the asyncpg broker).
        asyncio.run(main(store_url, start_at, float(seconds_text), job_count, pid_path))
