"""A connection blip is not a death: a live scheduler whose PostgreSQL sessions are cut, or
whose server goes away for a few seconds, keeps its runs - none is recorded ``abandoned``,
none runs twice, none is retried elsewhere - while a killed process is still found within
its lease (test_multiprocess.py::test_kill_9_of_a_process_running_a_job).

Cut sessions: the test's own backends on the shared server (found by this process's own
sockets), never another's. Outage: a cluster of the test's own (tests/pgcluster.py).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import anyio
import psycopg
import pytest
from pgcluster import Cluster, own_cluster

from library.components.scheduling.task_scheduler import (
    RunInfo,
    SchedulerConfig,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler._aps.sqlstore import LIVENESS_LOCK_CLASS
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio


SETTLE = 8.0
"""Seconds after a blip by which any peer would have taken the victim for gone (a grace of
3 s and a few sweeps), with room for a busy machine."""


async def slow() -> None:
    await anyio.sleep(1.5)


async def tick() -> None:
    pass


async def work() -> None:
    await anyio.sleep(8)


def own_server_ports(server_port: int) -> list[int]:
    """Local ports of this process's TCP connections to ``server_port`` (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    ports = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[9] in inodes and remote_port == server_port:
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def cut_sessions(pg_url: str, sparing: str) -> int:
    """Terminate every session this process holds on the shared server - the victim's
    liveness session, both schedulers' pools and listeners - except ``sparing``'s liveness
    session (a peer that stays healthy and sweeps). Returns how many were cut."""

    def cut() -> int:  # psycopg, in a thread: on asyncio and on trio
        with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
            return len(
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE pid <> pg_backend_pid() AND client_port = ANY(%s)"
                    " AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory'"
                    " AND classid = %s::oid"
                    " AND objid = (hashtext(%s)::bigint & 4294967295)::oid)",
                    (own_server_ports(5432), LIVENESS_LOCK_CLASS, sparing),
                ).fetchall()
            )

    return await anyio.to_thread.run_sync(cut)


def fires_run_twice(runs: list[RunInfo]) -> list[tuple[str, datetime]]:
    started = Counter((run.job_id, run.scheduled_at) for run in runs if run.started_at)
    return [fire for fire, count in started.items() if count > 1]


async def test_cut_sessions_of_a_live_scheduler_leave_its_runs_alone(pg_url: str) -> None:
    """pg_terminate_backend of a scheduler's sessions: its peer recorded 2-4 fires
    ``abandoned`` (fires that were running, or had not started yet), retried them, and the
    victim's engine crashed, cancelling its runs."""

    def build() -> TaskScheduler:
        scheduler = TaskScheduler(SchedulerConfig(store=pg_url, shutdown_timeout=5))
        scheduler.interval(seconds=0.5, id="slow", max_instances=3, retries=1)(slow)
        scheduler.interval(seconds=0.3, id="tick", retries=1)(tick)
        return scheduler

    victim, peer = build(), build()
    async with victim, peer:
        await wait_for_runs(victim, "slow", 3, timeout=30)
        peer_id = (await peer.get_status()).worker_id
        assert peer_id is not None
        assert await cut_sessions(pg_url, sparing=peer_id) >= 2  # a liveness session and a pool's
        cut_at = datetime.now(timezone.utc)
        await anyio.sleep(SETTLE)
        runs = await peer.get_runs(None, limit=1000)
        status = await victim.get_status()

    finished = Counter(run.outcome.value for run in runs if run.outcome is not None)
    assert finished["abandoned"] == 0, [run for run in runs if run.outcome == "abandoned"]
    # The engine stayed up: nothing was cancelled, every run ended as it would have.
    assert set(finished) <= {"success", "skipped"}, finished
    assert status.engine_restarts == 0, status.last_engine_error
    assert [run for run in runs if run.attempt > 1] == [], "nothing was retried"
    assert fires_run_twice(runs) == []
    # Jobs kept firing after the cut (ticks every 0.3 s; slow skips at max_instances).
    after = [run for run in runs if run.started_at and run.started_at > cut_at]
    assert sum(run.job_id == "tick" for run in after) >= SETTLE / 0.3 / 2, after
    assert sum(run.job_id == "slow" and run.outcome == "success" for run in after) >= 3
    assert status.state == "running"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with own_cluster() as made:
        yield made


async def test_a_short_outage_while_a_job_runs_keeps_its_real_outcome(cluster: Cluster) -> None:
    """A server away for ~5 s: its peer recorded the run ``abandoned`` once its lease (or
    lock) was gone, and with retries ran it again, although it went on to succeed."""

    start = datetime.now(timezone.utc) + timedelta(seconds=4)

    def build() -> TaskScheduler:
        scheduler = TaskScheduler(SchedulerConfig(store=cluster.url, shutdown_timeout=10))
        scheduler.interval(hours=1, start=start, id="work", retries=2)(work)
        scheduler.interval(seconds=0.3, id="tick")(tick)
        return scheduler

    first, second = build(), build()
    async with first, second:
        await wait_for_runs(first, "tick", timeout=30)
        with anyio.fail_after(30):
            while not any(job.running for job in await first.get_jobs() if job.id == "work"):
                await anyio.sleep(0.1)
        await anyio.sleep(1)
        # In a thread: pg_ctlcluster takes ~2 s, which blocked the schedulers' event loop
        # (as no real outage does) and ate most of the lease's margin after the restart.
        await anyio.to_thread.run_sync(cluster.stop)
        await anyio.sleep(5)
        await anyio.to_thread.run_sync(cluster.start)
        await wait_for_runs(first, "work", timeout=30)
        await anyio.sleep(SETTLE)  # time for a peer's sweep to (wrongly) find it gone
        ticks = (await first.get_job("tick")).counts.success
        work_runs = await second.get_runs("work")
        await wait_for_runs(second, "tick", ticks + 3)  # both still fire

    assert [(run.attempt, run.outcome) for run in work_runs] == [(1, "success")], work_runs
