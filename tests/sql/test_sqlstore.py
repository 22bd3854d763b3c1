"""SQLStore: each APScheduler 4.0.0a6 defect it closes, reproduced at the store's own API.

Real SQLite and PostgreSQL (each test in a fresh schema), on asyncio and on trio (the same
store on a synchronous engine driven from threads).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import anyio
import attrs
import psycopg
import pytest
from apscheduler import (
    CoalescePolicy,
    ConflictPolicy,
    Job,
    JobOutcome,
    JobResult,
    Schedule,
    ScheduleResult,
    ScheduleUpdated,
    Task,
)
from apscheduler.triggers.interval import IntervalTrigger
from helpers import noop
from sqlalchemy import select

from library.components.scheduling.task_scheduler import Outcome, SchedulerConfig, TaskScheduler
from library.components.scheduling.task_scheduler._aps.engine import EXECUTOR_NAME
from library.components.scheduling.task_scheduler._aps.leases import LEASE_DURATION
from library.components.scheduling.task_scheduler._aps.sqlstore import (
    HOLDER_GRACE,
    LIVENESS_LOCK_CLASS,
    RENEW_INTERVAL,
    SWEEP_INTERVAL,
    SQLStore,
)
from library.components.scheduling.task_scheduler._aps.stores import open_sql_store
from library.components.scheduling.task_scheduler._urls import parse_store_url
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio

LEASE = timedelta(seconds=30)
LOG = logging.getLogger("tests.sqlstore")


@pytest.fixture
def url(sql_url: str) -> str:
    return sql_url


class Notices:
    """What a store reports to the layer above (the executor, in the scheduler)."""

    def __init__(self) -> None:
        self.abandoned_jobs: list[Job] = []
        self.skipped_fires: list[tuple[Job, int]] = []

    def abandoned(self, job: Job) -> None:
        self.abandoned_jobs.append(job)

    def skipped(self, job: Job, running: int) -> None:
        self.skipped_fires.append((job, running))


@asynccontextmanager
async def open_store(url: str, notices: Notices | None = None) -> AsyncIterator[SQLStore]:
    async with AsyncExitStack() as stack:
        store, broker = await open_sql_store(
            parse_store_url(url),
            None,
            connect_timeout=10,
            exit_stack=stack,
            notices=notices or Notices(),
        )
        assert isinstance(store, SQLStore)
        await broker.start(stack, LOG)
        await store.start(stack, broker, LOG)
        yield store


def now() -> datetime:
    return datetime.now(timezone.utc)


async def add_task(store: SQLStore, task_id: str = "t", limit: int | None = 1) -> None:
    await store.add_task(Task(id=task_id, func=None, job_executor="x", max_running_jobs=limit))


def fire(task_id: str = "t", at: datetime | None = None) -> Job:
    """The job a schedule's fire makes (a new object each time, as the engine makes it)."""
    at = at or now().replace(microsecond=0)
    return Job(task_id=task_id, schedule_id=task_id, scheduled_fire_time=at, executor="x")


async def running_jobs(store: SQLStore, task_id: str = "t") -> int:
    tasks = {task.id: task for task in await store.get_tasks()}
    return tasks[task_id].running_jobs


async def acquire(store: SQLStore, identity: str, limit: int | None = None) -> list[Job]:
    store._next_sweep = 0.0  # sweep now, as if a second had passed
    jobs: list[Job] = await store.acquire_jobs(identity, LEASE, limit)
    return jobs


async def release(store: SQLStore, identity: str, job: Job) -> None:
    result = JobResult.from_job(job, JobOutcome.success, finished_at=now())
    await store.release_job(identity, job, result)


async def new_batch(store: SQLStore) -> None:
    """What the engine's schedule loop does before it enqueues the fires of a batch."""
    await store.acquire_schedules("me", LEASE, 10)


async def add_schedule(store: SQLStore, schedule_id: str = "t") -> None:
    trigger = IntervalTrigger(seconds=1, start_time=now() - timedelta(seconds=5))
    schedule = Schedule(
        id=schedule_id,
        task_id=schedule_id,
        trigger=trigger,
        coalesce=CoalescePolicy.latest,
        job_executor="x",
        next_fire_time=trigger.next(),
    )
    await store.add_schedule(schedule, ConflictPolicy.exception)


# ------------------------------------------------------------------------------ the tests


async def test_stores_starting_together_on_an_empty_database_all_start(pg_url: str) -> None:
    """The schema-creation race: CREATE TYPE in create_all -> IntegrityError in one of them."""
    started: list[bool] = []

    async def start_one() -> None:
        async with open_store(pg_url) as store:
            await store.get_tasks()
            started.append(True)

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(start_one)
    assert started == [True] * 4


async def test_a_fire_is_enqueued_once_even_if_its_schedule_was_not_advanced(url: str) -> None:
    """A process that died between enqueueing a fire and advancing its schedule: whoever
    claims the schedule next computes the same fire again."""
    async with open_store(url) as store:
        await add_task(store, limit=None)
        at = now().replace(microsecond=0)
        await store.add_job(fire(at=at))
        await store.add_job(fire(at=at))  # the same fire, from the schedule's old state
        await store.add_job(fire(at=at + timedelta(seconds=1)))
        jobs = await store.get_jobs()
    assert sorted(job.scheduled_fire_time for job in jobs) == [at, at + timedelta(seconds=1)]


async def test_the_ledger_forgets_fires_its_schedule_moved_past(url: str) -> None:
    async with open_store(url) as store:
        await add_task(store, limit=None)
        await add_schedule(store)
        schedule = (await store.get_schedules())[0]
        assert schedule.next_fire_time is not None
        passed = schedule.next_fire_time - timedelta(seconds=1)
        await store.add_job(fire(at=passed))
        await store.add_job(fire(at=schedule.next_fire_time))
        await store.cleanup()
        async with store._begin_transaction() as conn:
            rows = (await store._execute(conn, select(store._t_fired.c.fire_time))).all()
    assert len(rows) == 1, "only the fire the schedule has not moved past is kept"


async def test_a_fire_due_while_max_instances_run_anywhere_is_skipped(url: str) -> None:
    """Trap 7: the engine's per-task limit would queue it and run it late."""
    notices = Notices()
    async with open_store(url, notices) as store:
        await add_task(store, limit=1)
        first = fire()
        await new_batch(store)
        await store.add_job(first)
        [acquired] = await acquire(store, "me")
        late = fire(at=first.scheduled_fire_time + timedelta(seconds=1))  # type: ignore[operator]
        await new_batch(store)
        await store.add_job(late)
        assert [job.id for job in await store.get_jobs()] == [first.id]
        await release(store, "me", acquired)
        after = fire(at=first.scheduled_fire_time + timedelta(seconds=2))  # type: ignore[operator]
        await new_batch(store)
        await store.add_job(after)
        queued = [job.id for job in await store.get_jobs()]
    assert [(job.id, running) for job, running in notices.skipped_fires] == [(late.id, 1)]
    assert queued == [after.id]


async def test_a_backlog_enqueued_together_still_queues_behind_the_limit(pg_url: str) -> None:
    """coalesce=False: the missed fires of one schedule, enqueued in one batch, all run one
    after another, even when a peer starts the first before the rest are enqueued.
    (A peer process: PostgreSQL only; a SQLite store is for one process.)"""
    notices = Notices()
    async with open_store(pg_url, notices) as store, open_store(pg_url) as peer:
        await add_task(store, limit=1)
        await new_batch(store)
        at = now().replace(microsecond=0) - timedelta(seconds=3)
        await store.add_job(fire(at=at))
        assert len(await acquire(peer, "peer")) == 1
        await store.add_job(fire(at=at + timedelta(seconds=1)))
        await store.add_job(fire(at=at + timedelta(seconds=2)))
        assert (notices.skipped_fires, len(await store.get_jobs())) == ([], 3)
        assert await acquire(peer, "peer") == [], "one at a time"
        await new_batch(store)  # the next batch: a new fire
        await store.add_job(late := fire(at=at + timedelta(seconds=3)))
    assert [job.id for job, _ in notices.skipped_fires] == [late.id]


async def test_a_running_slot_comes_back_exactly_once(url: str) -> None:
    """#1110: every release decremented the count, also a late second release of a job a
    sweep had already released, and a release of a job that never held a slot."""
    async with open_store(url) as store:
        await add_task(store, limit=2)
        await store.add_job(fire())
        [job] = await acquire(store, "worker-a")
        assert await running_jobs(store) == 1
        await release(store, "worker-a", job)
        await release(store, "worker-a", job)  # late: already released
        assert await running_jobs(store) == 0
        await store.add_job(fire(at=now() + timedelta(seconds=5)))
        await store.add_job(unacquired := fire(at=now() + timedelta(seconds=6)))
        [held] = await acquire(store, "worker-a", limit=1)
        await release(store, "worker-a", unacquired)  # never held a slot
        assert await running_jobs(store) == 1
        await release(store, "worker-a", held)
        assert await running_jobs(store) == 0


async def test_runs_that_end_together_are_each_released_once(url: str) -> None:
    """Releases of runs that end together are written in one transaction: each job leaves
    the queue, each slot comes back once (twice the same release: once), and a cancelled
    release is written at stop at the latest, never requeued."""
    async with open_store(url) as store:
        await add_task(store, limit=10)
        for second in range(6):
            await store.add_job(fire(at=now().replace(microsecond=0) + timedelta(seconds=second)))
        jobs = await acquire(store, "me")
        assert len(jobs) == 6 and await running_jobs(store) == 6
        *together, last = jobs
        async with anyio.create_task_group() as tg:
            for job in [*together, together[0]]:  # the first one twice
                tg.start_soon(release, store, "me", job)
        assert await running_jobs(store) == 1
        assert [job.id for job in await store.get_jobs()] == [last.id]
        with anyio.CancelScope() as stop:
            stop.cancel()  # the engine's stop: written now or owed, never lost
            await release(store, "me", last)
        assert await store.release_claims("me") == 0, "not requeued"
        assert await store.get_jobs() == []
        assert await running_jobs(store) == 0


async def test_a_batchs_fires_are_enqueued_with_its_release(url: str) -> None:
    """The fires of a batch of schedules are written with the schedules' advance, in one
    transaction: a fire is then never in the queue while its schedule still points at it."""
    notices = Notices()
    async with open_store(url, notices) as store:
        await add_task(store, "a", limit=None)
        await add_task(store, "b", limit=1)
        await add_schedule(store, "a")
        await add_schedule(store, "b")
        await store.add_job(fire("b", at=now() - timedelta(hours=1)))
        await acquire(store, "other")  # b runs elsewhere: at its max_instances
        batch = await store.acquire_schedules("me", LEASE, 10)
        assert sorted(schedule.id for schedule in batch) == ["a", "b"]
        fires = [fire(schedule.id, at=schedule.next_fire_time) for schedule in batch]
        for job in fires:
            await store.add_job(job)
        assert [job.schedule_id for job in await store.get_jobs()] == ["b"], "not yet"
        results = [
            ScheduleResult(
                schedule_id=schedule.id,
                task_id=schedule.task_id,
                trigger=schedule.trigger,
                last_fire_time=schedule.next_fire_time,
                next_fire_time=schedule.trigger.next(),
            )
            for schedule in batch
        ]
        await store.release_schedules("me", results)
        queued = {job.id for job in await store.get_jobs() if job.acquired_by is None}
        advanced = {s.id: s for s in await store.get_schedules()}
        await store.acquire_schedules("me", LEASE, 10)  # the same fires, once more
        for job in fires:
            await store.add_job(attrs.evolve(job, id=uuid4()))
        await store.release_schedules("me", [])
        again = {job.id for job in await store.get_jobs() if job.acquired_by is None}
    by_schedule = {job.schedule_id: job for job in fires}
    assert queued == again == {by_schedule["a"].id}
    assert [(job.schedule_id, running) for job, running in notices.skipped_fires] == [("b", 1)]
    for schedule in batch:
        assert advanced[schedule.id].acquired_by is None
        assert advanced[schedule.id].last_fire_time == schedule.next_fire_time


async def test_jobs_whose_lease_ran_out_are_abandoned_once_and_free_their_slot(
    url: str,
) -> None:
    """#1110: another process re-acquired such a job (running it twice) and the dead
    holder's slot was never given back."""
    notices = Notices()
    async with open_store(url) as dying:  # a process that dies while running the job
        await add_task(dying, limit=1)
        await dying.add_job(fire())
        [job] = await acquire(dying, "dying")
        await dying.extend_acquired_job_leases("dying", {job.id}, timedelta(seconds=-1))
    async with open_store(url, notices) as survivor:  # a peer, or the next start
        assert await acquire(survivor, "survivor") == [], "not run a second time"
        assert await acquire(survivor, "survivor") == []
        assert [found.id for found in notices.abandoned_jobs] == [job.id]
        assert await running_jobs(survivor) == 0
        await survivor.add_job(fire(at=now() + timedelta(seconds=1)))
        assert len(await acquire(survivor, "survivor")) == 1, "the slot is free again"


async def test_a_swept_job_leaves_its_result_as_the_stock_cleanup_does(url: str) -> None:
    """APScheduler's own data-store suite found it: the sweep published JobReleased
    (abandoned) but wrote no result row, so get_job_result() returned None."""
    job = Job(
        task_id="t",
        schedule_id="t",
        scheduled_fire_time=now().replace(microsecond=0),
        executor="x",
        result_expiration_time=timedelta(minutes=5),
    )
    async with open_store(url) as dying:
        await add_task(dying, limit=1)
        await dying.add_job(job)
        [acquired] = await acquire(dying, "dying")
        await dying.extend_acquired_job_leases("dying", {acquired.id}, timedelta(seconds=-1))
    async with open_store(url) as survivor:
        await acquire(survivor, "survivor")  # sweeps
        result = await survivor.get_job_result(job.id)
    assert result is not None and result.outcome is JobOutcome.abandoned


async def test_a_fire_deleted_while_it_is_being_acquired_is_not_run_nor_holds_a_slot(
    tmp_path: Any,
) -> None:
    """SQLite: 4.0.0a6's acquire_jobs reads the queue before its write transaction; a fire
    a coalescing fire superseded in between was returned (run after all) and its task's
    running count kept for good: every later fire of the job was skipped (a flaky
    test_bad_rows: the good job stopped running). PostgreSQL's row locks keep it out."""
    async with open_store(f"sqlite:///{tmp_path}/jobs.db") as store:
        await add_task(store, limit=1)
        await store.add_job(fire())
        [queued] = await store.get_jobs()
        jobs = store._t_jobs
        execute = store._execute
        superseded: list[bool] = []

        async def supersede_first(conn: Any, statement: Any, *args: Any) -> Any:
            update = getattr(statement, "is_update", False)
            if update and not superseded and getattr(statement, "table", None) is jobs:
                superseded.append(True)  # the acquire read the fire; now it is superseded
                async with store._begin_transaction() as other:
                    await execute(other, jobs.delete().where(jobs.c.id == queued.id))
            return await execute(conn, statement, *args)

        store._execute = supersede_first  # type: ignore[method-assign]
        taken = await store.acquire_jobs("me", LEASE)
        store._execute = execute  # type: ignore[method-assign]
        assert superseded
        assert taken == []
        assert await running_jobs(store) == 0
        await store.add_job(fire(at=now() + timedelta(seconds=1)))
        assert len(await acquire(store, "me")) == 1, "its slot is free"


async def test_a_dead_processs_run_that_cannot_load_stays_cleared_after_a_racing_sweep(
    url: str,
) -> None:
    """The sweep reads the runs of dead processes; the job loop took this one (it cannot
    load) and deleted it while the sweep's read was on its way back: the stale read put it
    back in status for good (a flaky test_bad_rows: ``unloadable_jobs`` never emptied)."""
    async with open_store(url) as dying:
        await add_task(dying, "bad", limit=1)
        await dying.add_job(Job(task_id="bad", executor="x"))
        [job] = await acquire(dying, "dying")
        await dying.extend_acquired_job_leases("dying", {job.id}, timedelta(seconds=-1))
        jobs = dying._t_jobs
        async with dying._begin_transaction() as conn:  # corrupted: its args no longer load
            await dying._execute(conn, jobs.update().values(args=b"not json{"))
    async with open_store(url) as survivor:
        read = survivor._deserialize_jobs
        taken: list[list[Job]] = []

        async def read_late(result: Any) -> list[Job]:
            rows = list(result)  # the sweep's read, before the job loop took the run
            if not taken:
                taken.append(await survivor.acquire_jobs("survivor", LEASE))
                assert survivor.unloadable == {}, "taken, could not load, released"
            found: list[Job] = await read(rows)
            return found

        survivor._deserialize_jobs = read_late  # type: ignore[method-assign]
        await acquire(survivor, "survivor")  # sweeps
        assert taken == [[]]
        assert survivor.unloadable == {}
        async with survivor._begin_transaction() as conn:
            assert (await survivor._execute(conn, jobs.select())).all() == []


async def test_jobs_of_a_process_that_is_gone_are_abandoned_within_a_grace(pg_url: str) -> None:
    """Its PostgreSQL session ended with it: no need to wait out its lease (10 s) - only
    HOLDER_GRACE, as one look at a missing lock may be a live process's blip."""
    notices = Notices()
    async with open_store(pg_url, notices) as survivor:
        await add_task(survivor, limit=1)
        await survivor.add_job(fire())
        async with open_store(pg_url) as dying:
            [job] = await acquire(dying, "dying")
            await dying._drop_liveness()  # as when the process is killed
            dying._mine.clear()
            await acquire(survivor, "survivor")
            assert notices.abandoned_jobs == [], "not on one look"
            await anyio.sleep(HOLDER_GRACE)
            await acquire(survivor, "survivor")
            assert [found.id for found in notices.abandoned_jobs] == [job.id]
            assert await running_jobs(survivor) == 0


async def test_a_live_process_keeps_its_jobs_until_its_lease_ends(pg_url: str) -> None:
    notices = Notices()
    async with open_store(pg_url, notices) as survivor, open_store(pg_url) as other:
        await add_task(survivor, limit=1)
        await survivor.add_job(fire())
        assert len(await acquire(other, "other")) == 1
        assert await acquire(survivor, "survivor") == []
        assert (await survivor.get_jobs())[0].acquired_by == "other"
    assert notices.abandoned_jobs == []


async def test_schedules_claimed_by_a_process_that_is_gone_are_freed_within_a_grace(
    pg_url: str,
) -> None:
    """Freed with an event that carries the schedule's due time: 4.0.0a6's schedule loop
    ignores a ScheduleUpdated without one, and its peers slept until the lease ran out."""
    updates: list[ScheduleUpdated] = []
    got_one = anyio.Event()

    def on_update(event: Any) -> None:
        updates.append(event)
        got_one.set()

    async with open_store(pg_url) as survivor:
        await add_task(survivor, limit=None)
        await add_schedule(survivor)
        async with open_store(pg_url) as dying:
            assert len(await dying.acquire_schedules("dying", LEASE, 10)) == 1
            with survivor._event_broker.subscribe(on_update, {ScheduleUpdated}):
                await dying._drop_liveness()
                survivor._next_sweep = 0.0
                assert await survivor.acquire_schedules("survivor", LEASE, 10) == []
                await anyio.sleep(HOLDER_GRACE)
                survivor._next_sweep = 0.0
                claimed = await survivor.acquire_schedules("survivor", LEASE, 10)
                with anyio.fail_after(5):
                    await got_one.wait()
    assert [schedule.id for schedule in claimed] == ["t"]
    assert updates[0].schedule_id == "t" and updates[0].next_fire_time is not None


async def test_peers_wake_within_a_sweep_while_another_process_holds_a_claim(
    pg_url: str,
) -> None:
    """4.0.0a6 sleeps until the claim's lease runs out (10 s here, 30 s stock)."""
    async with open_store(pg_url) as survivor, open_store(pg_url) as other:
        await add_task(survivor, limit=None)
        await add_schedule(survivor)
        assert await other.acquire_schedules("other", LEASE, 10)
        wake = await survivor.get_next_schedule_run_time()
    assert wake is not None and wake <= now() + timedelta(seconds=1.5)


async def test_a_job_still_running_here_is_not_taken_again_after_a_blocked_loop(
    url: str,
) -> None:
    """#1116: with its loop blocked past the lease, a process re-acquired its own running
    job, ran it a second time, and crashed with KeyError when both ended."""
    notices = Notices()
    async with open_store(url, notices) as store:
        await add_task(store, limit=2)
        await store.add_job(fire())
        [job] = await acquire(store, "me")
        await store.extend_acquired_job_leases("me", {job.id}, timedelta(seconds=-1))
        assert await acquire(store, "me") == []
        [held] = await store.get_jobs()
    assert held.acquired_by == "me" and notices.abandoned_jobs == []
    assert held.acquired_until is not None and held.acquired_until > now()


async def on_server(pg_url: str, sql: str, *params: object) -> list[Any]:
    """The first column of ``sql``'s rows, from a session of its own (psycopg in a thread:
    on asyncio and on trio)."""

    def run() -> list[Any]:
        with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
            return [row[0] for row in conn.execute(sql, params).fetchall()]

    return await anyio.to_thread.run_sync(run)


async def liveness_pids(pg_url: str, identity: str) -> list[int]:
    """The backends holding ``identity``'s liveness lock (at most one)."""
    return await on_server(
        pg_url,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = %s::oid AND objid = (hashtext(%s)::bigint & 4294967295)::oid",
        LIVENESS_LOCK_CLASS,
        identity,
    )


async def test_a_cut_liveness_session_is_taken_again_at_once(pg_url: str) -> None:
    """Its lock went with the session (pg_terminate_backend, a restarted server) and was
    taken again only when the engine restarted - if it did: peers took the process for dead."""
    async with open_store(pg_url) as store:
        await add_task(store)
        await acquire(store, "me")
        [pid] = await liveness_pids(pg_url, "me")
        assert await on_server(pg_url, "SELECT pg_terminate_backend(%s)", pid) == [True]
        with anyio.fail_after(HOLDER_GRACE - SWEEP_INTERVAL):
            while not (held := await liveness_pids(pg_url, "me")) or held == [pid]:
                await anyio.sleep(0.1)


async def test_leases_of_jobs_in_hand_are_renewed_every_second(pg_url: str) -> None:
    """The engine renews them every half lease (5 s): a store away for 3 s could leave one
    within SWEEP_MARGIN of its end when it came back, and a peer swept a live run."""
    async with open_store(pg_url) as store:
        await add_task(store)
        await store.add_job(fire())
        [job] = await acquire(store, "me")
        await store.extend_acquired_job_leases("me", {job.id}, timedelta(seconds=3))
        await anyio.sleep(RENEW_INTERVAL + 1)
        [held] = await store.get_jobs()
    assert held.acquired_until is not None
    assert held.acquired_until > now() + timedelta(seconds=LEASE_DURATION - 3)


async def test_jobs_left_by_the_previous_engine_are_settled_not_abandoned(url: str) -> None:
    """The engine restarted (same identity) with jobs acquired: 4.0.0a6 released them all
    ``abandoned`` - one that never started was lost, and a run that had ended while the
    store was away was recorded as never finished."""
    notices = Notices()
    async with open_store(url, notices) as store:
        await add_task(store, limit=2)
        started = attrs.evolve(fire(), result_expiration_time=timedelta(minutes=5))
        await store.add_job(started)
        await store.add_job(fire(at=now() + timedelta(seconds=1)))
        acquired = await acquire(store, "me")
        assert len(acquired) == 2 and started.id in {job.id for job in acquired}
        ran = next(job for job in acquired if job.id == started.id)
        # Its run ended, and its release failed: the store was away.
        result = JobResult.from_job(ran, JobOutcome.success, finished_at=now())
        store._unreleased[ran.id] = (ran, result)
        await store.reap_abandoned_jobs("me")  # the restarted engine's job loop
        found = await store.get_job_result(ran.id)
        [queued] = await store.get_jobs()
        assert await running_jobs(store) == 0
        assert found is not None and found.outcome is JobOutcome.success
        assert queued.id != ran.id and queued.acquired_by is None, "back in the queue"
        assert [job.id for job in await acquire(store, "again")] == [queued.id]
    assert notices.abandoned_jobs == []


async def test_release_claims_gives_back_unstarted_jobs_and_schedules(url: str) -> None:
    """stop() left them claimed for a lease; unstarted jobs then counted as abandoned."""
    async with open_store(url) as store:
        await add_task(store, limit=1)
        await add_schedule(store)
        await store.add_job(fire())
        await acquire(store, "me")
        assert len(await store.acquire_schedules("me", LEASE, 10)) == 1
        assert await store.release_claims("me") == 2
        [job] = await store.get_jobs()
        [schedule] = await store.get_schedules()
        assert (job.acquired_by, schedule.acquired_by) == (None, None)
        assert await running_jobs(store) == 0
        assert len(await acquire(store, "next")) == 1, "another process can run it"


async def test_a_run_whose_release_was_cancelled_is_released_at_stop_not_run_again(
    url: str,
) -> None:
    """The engine stopped while a run that had just ended waited to write its release (on
    trio, for one of the store's transaction slots: long under load): the stop gave its job
    back to the queue as never started, and a peer ran the fire a second time."""
    async with open_store(url) as store:
        await add_task(store)
        await store.add_job(attrs.evolve(fire(), result_expiration_time=timedelta(minutes=5)))
        [job] = await acquire(store, "me")
        result = JobResult.from_job(job, JobOutcome.success, finished_at=now())
        with anyio.CancelScope() as stop:
            stop.cancel()  # the engine's stop, before the release is written
            await store.release_job("me", job, result)
        assert await store.release_claims("me") == 0, "nothing left that never started"
        assert await acquire(store, "peer") == [], "the fire is not run again"
        assert await store.get_jobs() == []
        found = await store.get_job_result(job.id)
        assert found is not None and found.outcome is JobOutcome.success
        assert await running_jobs(store) == 0


# ---------------------------------------------------------------- through the scheduler

RUNS: list[tuple[str, float]] = []


async def long_job() -> None:
    RUNS.append(("start", anyio.current_time()))
    await anyio.sleep(2.2)
    RUNS.append(("end", anyio.current_time()))


async def test_max_instances_is_a_limit_across_processes(pg_url: str) -> None:
    """Two schedulers on one store (as two processes): never two runs at once."""
    RUNS.clear()
    start = now().replace(microsecond=0) + timedelta(seconds=1)

    def build() -> TaskScheduler:
        scheduler = TaskScheduler(SchedulerConfig(store=pg_url, shutdown_timeout=5))
        scheduler.interval(seconds=1, start=start, id="long", max_instances=1)(long_job)
        return scheduler

    first, second = build(), build()
    async with first, second:
        await anyio.sleep((start - now()).total_seconds() + 6.5)
        runs: list[Any] = [*await first.get_runs("long"), *await second.get_runs("long")]
    running = peak = 0
    for kind, _ in sorted(RUNS, key=lambda event: (event[1], event[0] == "start")):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 1, RUNS
    outcomes = [run.outcome.value for run in runs if run.outcome is not None]
    assert outcomes.count("success") >= 2, outcomes
    assert outcomes.count("skipped") >= 2, outcomes
    skipped = next(
        run for run in runs if run.outcome is not None and run.outcome.value == "skipped"
    )
    assert "max_instances is 1" in (skipped.error_message or "")


async def slow_job() -> None:
    await anyio.sleep(2)


async def test_a_draining_process_leaves_new_fires_to_the_others(pg_url: str) -> None:
    """It used to take them only to record them ``cancelled``: lost for every process."""

    def build() -> TaskScheduler:
        scheduler = TaskScheduler(SchedulerConfig(store=pg_url, shutdown_timeout=5))
        scheduler.interval(seconds=0.2, id="tick")(noop)
        scheduler.interval(hours=1, id="slow")(slow_job)
        return scheduler

    draining, other = build(), build()
    async with other:
        await draining.start()
        await anyio.sleep(0.5)
        await draining.run_job("slow", wait=False)
        began = now()
        await draining.shutdown()  # waits ~2 s for "slow" to end
        ended = now()
    mine = await draining.get_runs("tick", limit=1000)
    assert [
        run for run in mine if run.outcome is not None and run.outcome.value == "cancelled"
    ] == []
    theirs = [
        run
        for run in await other.get_runs("tick", limit=1000)
        if began < run.scheduled_at < ended and run.outcome is not None
    ]
    # Under load a tick may meet the previous one's release not yet written: skipped, as
    # max_instances=1 says; never cancelled, and most of them run.
    succeeded = [
        run for run in theirs if run.outcome is not None and run.outcome.value == "success"
    ]
    assert len(succeeded) >= 5, theirs
    assert {run.outcome.value for run in theirs} <= {"success", "skipped"}, theirs


PAUSED_CALLS: list[str] = []


async def paused_job() -> None:
    PAUSED_CALLS.append("ran")


async def test_a_fire_queued_before_a_pause_does_not_run_after_a_restart(url: str) -> None:
    """A stopping process leaves a fire queued; the job is paused before the next start."""
    PAUSED_CALLS.clear()

    def build() -> TaskScheduler:
        scheduler = TaskScheduler(SchedulerConfig(store=url))
        scheduler.interval(hours=1, id="paused")(paused_job)
        return scheduler

    first = build()
    async with first:
        await first.pause_job("paused")
    async with open_store(url) as store:
        left = fire("paused")  # the fire the stopping process left queued
        await store.add_job(attrs.evolve(left, executor=EXECUTOR_NAME))
    second = build()
    async with second:
        (run,) = await wait_for_runs(second, "paused", outcome=Outcome.skipped)
    assert PAUSED_CALLS == []
    assert run.error_message == "the job was paused"


async def test_a_coalescing_schedules_new_fire_supersedes_its_unstarted_queued_ones(
    url: str,
) -> None:
    """4.0.0a6 coalesces only the fires one batch finds due: fires already queued unstarted
    (left by a stopping process, or waiting for a free slot) all ran, one after another."""
    async with open_store(url) as store:
        await add_task(store, limit=None)
        await add_schedule(store)  # coalesce=True
        [schedule] = await store.acquire_schedules("me", LEASE, 10)  # the batch in hand
        first = fire(at=now().replace(microsecond=0) - timedelta(seconds=2))
        await store.add_job(first)
        await store.release_schedules("me", [])  # a batch's fires are written at its release
        assert [job.id for job in await store.get_jobs()] == [first.id]
        await store.acquire_schedules("me", LEASE, 10)  # the next batch
        second = fire(at=now().replace(microsecond=0))
        await store.add_job(second)
        await store.release_schedules("me", [])
        queued = [job.id for job in await store.get_jobs()]
    assert schedule.coalesce is CoalescePolicy.latest
    assert queued == [second.id]
