"""What only the store on trio has: wake-ups across processes without asyncpg or Redis.

The guarantees themselves are every other test of this folder, run on trio too.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta, timezone

import anyio
import pytest
from test_multiprocess import collect, start_workers

from library.components.scheduling.task_scheduler import Outcome, SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler._aps import wakeups

pytestmark = pytest.mark.anyio

CALLS: list[str] = []


async def greet(name: str) -> None:
    CALLS.append(name)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_without_notify_peers_find_each_others_work_by_polling(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where NOTIFY does not reach other sessions (a pooler in transaction mode), the store
    is polled: a job one process adds still runs in the other, each fire once."""
    monkeypatch.setattr(wakeups, "notify_reaches_peers", lambda *args: False)
    CALLS.clear()
    adder = TaskScheduler(SchedulerConfig(store=pg_url))
    other_process = TaskScheduler(SchedulerConfig(store=pg_url))
    with caplog.at_level(logging.WARNING):
        async with adder, other_process:
            await adder.add_interval_job(greet, "greet", seconds=0.1, args=["eve"])
            await anyio.sleep(2)
            await adder.pause_job("greet")
            await anyio.sleep(0.3)  # a fire enqueued before the pause may still run
            runs = await other_process.get_runs("greet", limit=1000)  # every worker's
    assert "peers are found by polling the store" in caplog.text
    fires = [run.scheduled_at for run in runs if run.outcome is Outcome.success]
    assert len(fires) == len(set(fires)) >= 8
    assert len({run.worker for run in runs}) == 2, "both processes took part"
    assert CALLS.count("eve") == len(fires)


def test_asyncio_and_trio_processes_share_one_store(pg_url: str) -> None:
    """The trio wake-ups speak the asyncpg broker's channel and payloads: a cluster may mix
    both loops, and each fire still runs once."""
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=5)
    workers = start_workers(pg_url, start, 10, 1, loop="asyncio") + start_workers(
        pg_url, start, 10, 1, loop="trio"
    )
    runs = collect(workers, timeout=60)
    done = [(r["job_id"], r["scheduled_at"]) for r in runs if r["outcome"] == "success"]
    assert [fire for fire, n in Counter(done).items() if n > 1] == []
    assert len({r["run_id"].split("-")[0] for r in runs}) == 2, "both processes took part"
    assert len(set(done)) >= 0.9 * 20 * 4  # 20 jobs a second, >= 4 s of fires
