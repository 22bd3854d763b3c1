"""What only the store on trio has: wake-ups across processes without asyncpg or Redis.

The guarantees themselves are every other test of this folder, run on trio too; a cluster of
asyncio and trio processes: test_multiprocess.py::
test_rolling_restart_of_all_processes_keeps_fires_once_and_pauses[trio].
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import psycopg
import pytest
from apscheduler import Event, TaskAdded
from pgcluster import Cluster, own_cluster

from library.components.scheduling.task_scheduler import Outcome, SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler._aps import wakeups
from library.components.scheduling.task_scheduler._aps.leases import STATEMENT_TIMEOUT
from library.components.scheduling.task_scheduler._aps.stores import open_sql_store
from library.components.scheduling.task_scheduler._urls import parse_store_url

pytestmark = pytest.mark.anyio

LOG = logging.getLogger("tests.trio_stores")


class NoNotices:
    def abandoned(self, job: object) -> None:
        pass

    def skipped(self, job: object, running: int) -> None:
        pass


def listener_pids(pg_url: str) -> set[int]:
    """The sessions listening on the channel of ``pg_url``'s schema (their last statement)."""
    dsn, _, schema = pg_url.partition("?schema=")
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'task_scheduler_listener'"
            " AND query = %s",
            (f'LISTEN "task_scheduler_{schema}"',),
        ).fetchall()
    return {pid for (pid,) in rows}


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_listening_session_comes_back_after_the_server_ends_it(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server restart (here: pg_terminate_backend) ends the session that listens for
    peers' events: it reconnects, and events published afterwards are delivered again."""
    received: list[Event] = []
    async with AsyncExitStack() as stack:
        _, broker = await open_sql_store(
            parse_store_url(pg_url), None, connect_timeout=10, exit_stack=stack, notices=NoNotices()
        )
        assert isinstance(broker, wakeups.ThreadedNotifyBroker)
        await broker.start(stack, LOG)
        [first] = listener_pids(pg_url)
        broker.subscribe(received.append, {TaskAdded})
        with psycopg.connect(pg_url.partition("?")[0], autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (first,))
        with anyio.fail_after(10):
            while not listener_pids(pg_url) - {first}:
                await anyio.sleep(0.05)
            while not received:  # until the new session listens, a NOTIFY reaches nobody
                await broker.publish(TaskAdded(task_id="after"))
                await anyio.sleep(0.2)
    assert "lost the session that listens for peers' events" in caplog.text
    assert {event.task_id for event in received} == {"after"}  # type: ignore[attr-defined]


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
        async with other_process:
            async with adder:
                await adder.add_interval_job(greet, "greet", seconds=0.1, args=["eve"])
            # The adder has stopped (while it ran, it took every fire itself: woken at once
            # by its own events); only polling tells the other process of the new job.
            ran_in_adder = len(CALLS)
            with anyio.fail_after(10):
                while len(CALLS) < ran_in_adder + 5:
                    await anyio.sleep(0.05)
            await other_process.pause_job("greet")
            await anyio.sleep(0.3)  # a fire enqueued before the pause may still run
            runs = await other_process.get_runs("greet", limit=1000)  # every worker's
    assert "peers are found by polling the store" in caplog.text
    fires = [run.scheduled_at for run in runs if run.outcome is Outcome.success]
    assert len(fires) == len(set(fires)) >= 5
    assert CALLS.count("eve") == len(fires)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with own_cluster() as made:
        yield made


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_wake_up_sent_to_a_frozen_server_gives_up_as_a_statement_does(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A NOTIFY on a server that stopped answering (SIGSTOP) held its thread, and every
    publish after it - the engine's loops wait for theirs - until the server answered
    again. (On asyncio the asyncpg broker only queues it: publish never waits.)"""
    async with AsyncExitStack() as stack:
        _, broker = await open_sql_store(
            parse_store_url(cluster.url),
            None,
            connect_timeout=10,
            exit_stack=stack,
            notices=NoNotices(),
        )
        assert isinstance(broker, wakeups.ThreadedNotifyBroker)
        await broker.start(stack, LOG)
        await broker.publish(TaskAdded(task_id="before"))  # the publishes' session is open
        with cluster.frozen(limit=30):
            start = time.monotonic()
            await broker.publish(TaskAdded(task_id="frozen"))
            took = time.monotonic() - start
    assert took < STATEMENT_TIMEOUT + 5, took
    assert "could not wake peers (TaskAdded)" in caplog.text


def test_sqlite_on_trio_needs_no_psycopg(tmp_path: Path) -> None:
    """The sqlite extra has no psycopg: the store on threads must not import it for SQLite
    (it did, for PostgreSQL's statement bound: ModuleNotFoundError at start)."""
    program = (
        "import sys\n"
        "sys.modules['psycopg'] = None  # not installed\n"
        "import trio\n"
        "from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler\n"
        f"scheduler = TaskScheduler(SchedulerConfig(store={f'sqlite:///{tmp_path}/jobs.db'!r}))\n"
        "@scheduler.interval(hours=1, id='tick')\n"
        "async def tick(): pass\n"
        "async def main():\n"
        "    async with scheduler:\n"
        "        print((await scheduler.run_job('tick')).outcome.value)\n"
        "trio.run(main)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.strip()) == (0, "success"), done.stderr
