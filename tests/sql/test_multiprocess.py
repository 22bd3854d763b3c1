"""Several processes sharing one PostgreSQL store: each fire runs once.

Real processes on loopback, bounded in time; every process stops by itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).parent / "workers" / "pg_worker.py"
JOBS = 20
GONE_WITHIN = 8  # seconds: a killed process is found within its 10 s lease (3 s grace + sweeps)
LEAD = 5  # seconds to the first fire: time for the processes to start on a busy machine


def start_workers(
    store: str,
    start: datetime,
    seconds: float,
    count: int,
    *extra: str,
    loop: str = "asyncio",
    loops: Sequence[str] = (),
) -> list[Any]:
    """``count`` worker processes, on ``loop``, or on ``loops`` (one per process)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [store, start.isoformat(), str(seconds), str(JOBS), *extra]
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            env={**env, "TASK_SCHEDULER_LOOP": each},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for each in (loops or [loop] * count)
    ]


def collect(workers: list[Any], timeout: float) -> list[dict[str, Any]]:
    runs = []
    for worker in workers:
        out, err = worker.communicate(timeout=timeout)
        assert worker.returncode == 0, err[-3000:]
        runs += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return runs


def check_once(runs: list[dict[str, Any]], first: datetime, last: datetime) -> None:
    """No fire ran twice, and every job ran >= 90 % of its fires in [first, last]."""
    done = [(r["job_id"], r["scheduled_at"]) for r in runs if r["outcome"] == "success"]
    duplicated = [fire for fire, n in Counter(done).items() if n > 1]
    assert duplicated == [], [
        (r["job_id"], r["scheduled_at"], r["run_id"], r["worker"], r["started_at"])
        for r in runs
        if (r["job_id"], r["scheduled_at"]) in duplicated
    ]
    expected = int((last - first).total_seconds())
    per_job = Counter(job_id for job_id, at in done if first <= datetime.fromisoformat(at) <= last)
    for index in range(JOBS):
        assert per_job[f"job-{index}"] >= 0.9 * expected, (per_job, expected)


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_three_processes_starting_together_on_an_empty_database_run_each_fire_once(
    pg_url: str, loop: str
) -> None:
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=LEAD)
    workers = start_workers(pg_url, start, LEAD + 12, 3, loop=loop)
    runs = collect(workers, timeout=60)
    by_process = Counter(r["run_id"].split("-")[0] for r in runs)
    assert len(by_process) == 3, "every process took part in the work"
    check_once(runs, start, start + timedelta(seconds=11))


def test_rolling_restart_of_all_processes_keeps_fires_once_and_pauses(pg_url: str) -> None:
    """Three asyncio processes replaced by three new ones under trio.run while they run (a
    cluster of both loops meanwhile: one channel, one store). One variant, not one per loop:
    the suite's time (the old asyncio processes drain, the new trio ones take over)."""
    new_loop = "trio"
    import signal

    import anyio

    sys.path.insert(0, str(WORKER.parent))
    try:
        import pg_jobs
    finally:
        sys.path.remove(str(WORKER.parent))

    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=LEAD)
    old = start_workers(pg_url, start, seconds=60, count=3)
    for worker in old:
        assert worker.stdout.readline().strip() == "ready"

    async def pause_job_0() -> None:
        # Any process with the same declarations may manage the jobs.
        async with pg_jobs.build(pg_url, start, JOBS) as manager:
            await manager.pause_job("job-0")

    anyio.run(pause_job_0)
    paused_at = datetime.now(timezone.utc)
    import time

    time.sleep(max(0.0, (start - datetime.now(timezone.utc)).total_seconds()) + 4)
    new = start_workers(pg_url, start, 8, 3, loop=new_loop)
    for worker in new:
        assert worker.stdout.readline().strip() == "ready"
    for worker in old:
        worker.send_signal(signal.SIGTERM)
    runs = collect(old, timeout=60) + collect(new, timeout=60)
    job_0 = [r for r in runs if r["job_id"] == "job-0" and r["outcome"] == "success"]
    assert all(datetime.fromisoformat(r["scheduled_at"]) < paused_at for r in job_0)
    rest = [r for r in runs if r["job_id"] != "job-0"]
    done = [(r["job_id"], r["scheduled_at"]) for r in rest if r["outcome"] == "success"]
    dups = {fire for fire, n in Counter(done).items() if n > 1}
    assert not dups, (
        start,
        paused_at,
        [
            (r["job_id"], r["scheduled_at"], r["run_id"], r["started_at"])
            for r in rest
            if (r["job_id"], r["scheduled_at"]) in dups
        ],
    )
    first, last = start + timedelta(seconds=1), start + timedelta(seconds=10)
    per_job = Counter(job_id for job_id, at in done if first <= datetime.fromisoformat(at) <= last)
    expected = int((last - first).total_seconds()) + 1
    for index in range(1, JOBS):
        assert per_job[f"job-{index}"] >= 0.9 * expected, (per_job, expected)


def test_kill_9_of_a_process_running_a_job(pg_url: str, tmp_path: Path) -> None:
    """The others keep every schedule firing; the lost run is recorded and retried. The three
    processes run on trio, asyncio and trio: whichever is killed, each loop's processes take
    over and record (one run for both loops: the suite's time)."""
    import signal
    import time

    pid_file = tmp_path / "slow.pid"
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=LEAD)
    workers = start_workers(
        pg_url, start, LEAD + 22, 3, str(pid_file), loops=("trio", "asyncio", "trio")
    )
    deadline = time.monotonic() + 20
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not pid_file.exists():
        for worker in workers:
            worker.kill()
        pytest.fail(f"the slow job never started: {[w.communicate()[1][-2000:] for w in workers]}")
    victim_pid = int(pid_file.read_text())
    os.kill(victim_pid, signal.SIGKILL)
    killed_at = datetime.now(timezone.utc)
    victim = next(w for w in workers if w.pid == victim_pid)
    victim.wait(timeout=10)
    survivors = [w for w in workers if w is not victim]
    runs = collect(survivors, timeout=90)
    slow = [r for r in runs if r["job_id"] == "slow"]
    abandoned = [r for r in slow if r["outcome"] == "abandoned"]
    assert len(abandoned) == 1, slow  # recorded once, by one survivor
    found = datetime.fromisoformat(abandoned[0]["finished_at"])
    # Its PostgreSQL session ended with it: the survivors need not wait out its lease.
    assert found - killed_at < timedelta(seconds=GONE_WITHIN), (found, killed_at)
    retried = [r for r in slow if r["started_at"] and r["run_id"] != abandoned[0]["run_id"]]
    assert retried, "the lost run was retried (retries=1)"
    # Every schedule kept firing once the dead process's claims were freed.
    recovered = killed_at + timedelta(seconds=GONE_WITHIN)
    check_once([r for r in runs if r["job_id"] != "slow"], recovered, start + timedelta(seconds=21))
    assert running_slots(pg_url) == {}, "no task keeps a running slot of the dead process"


def running_slots(store: str) -> dict[str, int]:
    """Tasks whose running-job count is not 0, read from the store's own tables."""
    import asyncio

    import asyncpg

    dsn, schema = store.split("?schema=")

    async def read() -> dict[str, int]:
        connection = await asyncpg.connect(dsn)
        try:
            rows = await connection.fetch(
                f'SELECT id, running_jobs FROM "{schema}".tasks WHERE running_jobs <> 0'
            )
        finally:
            await connection.close()
        return {row["id"]: row["running_jobs"] for row in rows}

    return asyncio.run(read())
