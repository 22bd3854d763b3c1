"""The SQL data store (SQLite, PostgreSQL): APScheduler's, with its 4.0.0a6 defects closed
at this boundary, each in one method below with a regression test."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Container, Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Protocol, cast
from uuid import UUID

import anyio
import attrs
import tenacity
from apscheduler import (
    CoalescePolicy,
    ConflictPolicy,
    DeserializationError,
    Event,
    Job,
    JobAcquired,
    JobAdded,
    JobOutcome,
    JobReleased,
    JobResult,
    Schedule,
    ScheduleRemoved,
    ScheduleResult,
    ScheduleUpdated,
    SerializationError,
    Task,
)
from apscheduler._events import T_Event
from apscheduler.abc import EventBroker, Subscription
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    Table,
    Unicode,
    and_,
    any_,
    bindparam,
    case,
    exists,
    false,
    func,
    inspect,
    or_,
    select,
    text,
    union,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateSchema

from .._log import logger
from .history import HISTORY_TABLES, add_history_tables
from .leases import LEASE_DURATION

SCHEMA_LOCK_KEY = 0x7A5C_4E11
"""pg_advisory_xact_lock key held while a process creates the tables."""
SWEEP_INTERVAL = 1.0
"""Seconds between two sweeps for abandoned jobs (each is one query)."""
SWEEP_MARGIN = 2.0
"""Seconds before its lease ends that an unrenewed job counts as abandoned; leases are
renewed every half lease (LEASE_DURATION / 2 = 5 s), so live jobs never come this close."""
assert SWEEP_MARGIN < LEASE_DURATION / 2
REPLACE_WAIT = 10.0
"""Seconds a replace waits for another process to release its claim on the schedule."""
LIVENESS_LOCK_CLASS = 0x7A5C
"""First key of the session-level advisory lock each live process holds (PostgreSQL);
the second key is ``hashtext(identity)``. A killed process's session, and its lock, end at
once: peers free what it held within a sweep, not a lease."""
LIVENESS_LOCK_SQL = text("SELECT pg_advisory_lock(:lock_class, hashtext(:identity))")
"""SQL: take this process's liveness lock (held by its session until the session ends)."""
PARKED = datetime(9999, 1, 1, tzinfo=timezone.utc)
"""``acquired_until`` of a queued job row this store cannot load: past the lease of
anyone, so no process acquires it (nor sweeps it: ``acquired_by`` stays NULL); every
start puts it back in the queue, to be tried once more."""
_ROW_ERRORS = (DeserializationError, ValueError, OverflowError, TypeError, LookupError)
"""What a row the driver or the engine cannot turn into a Python value raises."""
OUTSIDE_POLL = 1.0
"""SQLite: seconds between two looks for what another process changed in the file (the
``task-scheduler`` command resumed a schedule, or queued a run-now): SQLite has no events
between processes. One small query a second; PostgreSQL hears them by NOTIFY instead."""
HOLDER_GRACE = 3.0
"""Seconds a holder's liveness lock must be seen missing, sweep after sweep, before its peers
take it for gone (PostgreSQL). A live process whose session was cut (a blip, a restarted
server) takes its lock again within KEEP_INTERVAL of being able to connect."""
KEEP_INTERVAL = 0.5
"""Seconds between two looks at this process's own liveness session (no query: whether
the driver saw it close)."""
RENEW_INTERVAL = 1.0
"""Seconds between two renewals of the leases of the jobs this process holds, while it holds
any: an outage then leaves them most of a lease (the engine renews every half lease only,
and peers sweep a job whose lease ends within SWEEP_MARGIN)."""
assert KEEP_INTERVAL + SWEEP_INTERVAL < HOLDER_GRACE < LEASE_DURATION - SWEEP_MARGIN
RELEASE_WAIT = 2.0
"""Seconds :meth:`SQLStore.release_claims` waits for the releases being written when the
engine stopped (each is one short transaction), before it writes those that were cancelled."""
RELEASE_SPACING = 0.02
"""Least seconds between two batches of releases written by this process: a run that ends
within that time of the last batch waits for the next (runs that end one after another,
as fires spread over time do, are then written a few at a time instead of one transaction
each); a run that ends alone is written at once."""
FIRES_PER_STATEMENT = 1000
"""Ledger rows inserted per statement when a batch of fires is enqueued (two parameters each:
well within every driver's limit)."""
LOOKAHEAD = timedelta(seconds=0.1)
"""How long before its fire time a schedule is claimed, its fire enqueued and acquired: the
run then starts on a timer of the process that acquired it, at its fire time
(:class:`~.sqlengine.SQLEngine`), instead of a chain of round trips after it."""
CLAIM_GAP = LOOKAHEAD / 2
"""The least time between two claims of a process's schedule loop (a schedule added or
changed meanwhile wakes it at once): each claim takes the fires due in the next LOOKAHEAD."""
assert CLAIM_GAP < LOOKAHEAD
TIDY_INTERVAL = 2.0
"""Seconds between two looks at the dead rows of this store's tables (PostgreSQL)."""
TIDY_DEAD_ROWS = 1000
TIDY_DEAD_SHARE = 0.2
"""A table is vacuumed once its dead rows are at least TIDY_DEAD_ROWS and TIDY_DEAD_SHARE of
its live ones (autovacuum's rule is 50 and 0.2, checked once a minute by default)."""
FIRED_TABLE = "task_scheduler_fired"
"""Ledger of enqueued fires, (schedule id, fire time): a fire is enqueued at most once."""

_HOLDER_GONE = text(
    "NOT EXISTS (SELECT 1 FROM pg_locks AS lock WHERE lock.locktype = 'advisory' AND lock.granted"
    " AND lock.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND lock.classid = CAST(:lock_class AS oid) AND lock.objsubid = 2"
    " AND lock.objid = CAST(hashtext(acquired_by)::bigint & 4294967295 AS oid))"
).bindparams(lock_class=LIVENESS_LOCK_CLASS)
"""SQL: the process named in the row's ``acquired_by`` no longer holds its liveness lock."""


def _disconnected(exc: BaseException) -> bool:
    """The store could not be reached, or the connection was cut: worth trying again."""
    if isinstance(exc, (OSError, InterfaceError)):
        return True
    if isinstance(exc, OperationalError) and getattr(exc.orig, "sqlstate", "") is None:
        return True  # psycopg (trio): a connect refused or timed out (asyncpg: an OSError)
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


_CONFLICTS = frozenset({"40P01", "40001"})
"""SQLSTATEs of a transaction PostgreSQL rolled back for a conflict with another one
(deadlock_detected, serialization_failure): run again, it goes through."""


def _worth_retrying(exc: BaseException) -> bool:
    """A transaction to run again: the store was away, or PostgreSQL rolled it back for a
    conflict. Under load, a batch of releases (a DELETE of job rows by id) and a fire that
    supersedes queued ones (a DELETE by schedule) or a lease renewal deadlocked: the release
    failed, its job rows stayed acquired without renewal, and ten seconds later another
    process took them and ran them again (92-100 duplicated fires at 3,000 fires/s, three
    processes; bench/pg.py)."""
    if _disconnected(exc):
        return True
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return isinstance(exc, DBAPIError) and code in _CONFLICTS


async def _closed(conn: AsyncConnection) -> bool:
    """Whether the driver saw the session's socket close (asyncpg), without a query."""
    if conn.closed or conn.invalidated:
        return True
    raw = (await conn.get_raw_connection()).driver_connection
    is_closed = getattr(raw, "is_closed", None)
    return bool(is_closed()) if is_closed is not None else False


class RunNotices(Protocol):
    """What the store tells the layer above about fires it records on its own.

    Both calls only record (and may queue a retry): a store call never runs a job itself.
    """

    def abandoned(self, job: Job) -> None:
        """``job`` was running in a process that died (found by this one's sweep)."""

    def skipped(self, job: Job, running: int) -> None:
        """A fire of ``job``'s task came due while ``running`` runs were in progress
        across processes (its max_instances): it was not enqueued."""


class _NoNotices:
    def abandoned(self, job: Job) -> None:
        pass

    def skipped(self, job: Job, running: int) -> None:
        pass


_NO_NOTICES = _NoNotices()


class _AcquiredStayLocal(EventBroker):
    """The store's view of the engine's broker: ``JobAcquired`` reaches this process's
    subscribers only.

    4.0.0a6's ``acquire_jobs`` publishes one per job; on PostgreSQL each is a NOTIFY that
    every process reads and decodes, and no engine listens for it (their loops wake for
    ``JobAdded`` and ``JobReleased``): a fifth of the CPU per run at 100 fires/s.
    """

    def __init__(self, inner: EventBroker) -> None:
        self.inner = inner

    async def start(self, exit_stack: AsyncExitStack, logger: logging.Logger) -> None:
        await self.inner.start(exit_stack, logger)

    async def publish(self, event: Event) -> None:
        if type(event) is JobAcquired:
            await self.inner.publish_local(event)
        else:
            await self.inner.publish(event)

    async def publish_local(self, event: Event) -> None:
        await self.inner.publish_local(event)

    def subscribe(
        self,
        callback: Callable[[T_Event], Any],
        event_types: Iterable[type[T_Event]] | None = None,
        *,
        is_async: bool = True,
        one_shot: bool = False,
    ) -> Subscription:
        return self.inner.subscribe(callback, event_types, is_async=is_async, one_shot=one_shot)


class _ReleaseState(Enum):
    queued = "queued"
    writing = "writing"
    done = "done"


class _Release:
    """One run's release, queued to be written with the others that end together."""

    __slots__ = ("announce", "changed", "error", "event", "job", "result", "state")

    def __init__(self, job: Job, result: JobResult) -> None:
        self.announce = False
        """Whether this release's caller publishes its event (the last of its batch)."""
        self.job = job
        self.result = result
        self.state = _ReleaseState.queued
        self.event: JobReleased | None = None
        self.error: Exception | None = None
        self.changed = anyio.Event()

    def wake(self) -> None:
        """Tell the caller waiting for this release that its state changed."""
        changed, self.changed = self.changed, anyio.Event()
        changed.set()

    def finish(self, event: JobReleased | None, error: Exception | None) -> None:
        self.state = _ReleaseState.done
        self.event, self.error = event, error
        self.wake()


@attrs.define(eq=False, repr=False)
class SQLStore(SQLAlchemyDataStore):
    """APScheduler's SQL data store, safe for several processes: concurrent first starts,
    each fire enqueued once, max_instances across processes with exact running counts, dead
    processes noticed at once, and clean stops."""

    _claiming: bool = attrs.field(init=False, default=True)
    _taking_jobs: bool = attrs.field(init=False, default=True)
    _in_hand: int = attrs.field(init=False, default=0)
    """Schedule batches acquired and not yet released."""
    _released: anyio.Event | None = attrs.field(init=False, default=None)
    _next_sweep: float = attrs.field(init=False, default=0.0)
    notices: RunNotices = attrs.field(kw_only=True, factory=lambda: _NO_NOTICES)
    """Hears of the fires this store records on its own (given at construction)."""
    _identity: str | None = attrs.field(init=False, default=None)
    _liveness: AsyncConnection | None = attrs.field(init=False, default=None)
    _mine: set[UUID] = attrs.field(init=False, factory=set)
    """Jobs this process acquired and has not released yet."""
    _enqueued: set[str] = attrs.field(init=False, factory=set)
    """Schedules of the batch in hand that had a fire enqueued: the rest is their backlog."""
    _claimed_batch: bool = attrs.field(init=False, default=False)
    """Whether a batch of schedules is in hand (claimed, not released yet)."""
    _fires: list[Job] = attrs.field(init=False, factory=list)
    """Fires of the batch in hand, written when it is released (see release_schedules)."""
    _acquired_tasks: dict[str, Task] = attrs.field(init=False, factory=dict)
    """Tasks of the jobs acquired last, each handed once to the job loop (see get_task)."""
    _coalescing: set[str] = attrs.field(init=False, factory=set)
    """Schedules of the batch in hand that coalesce (coalesce=True)."""
    _missing: dict[str, float] = attrs.field(init=False, factory=dict)
    """Holders whose liveness lock the sweeps found missing, and since when (anyio time)."""
    _unreleased: dict[UUID, tuple[Job, JobResult]] = attrs.field(init=False, factory=dict)
    """Runs that ended here and whose release is not written yet: being written, or it could
    not be (the store was away, or the release was cancelled by the engine's stop)."""
    _releasing: set[UUID] = attrs.field(init=False, factory=set)
    """Jobs whose release is being written now."""
    _releases_done: anyio.Event | None = attrs.field(init=False, default=None)
    """Set when the last release being written ends (someone waits for it)."""
    _release_queue: list[_Release] = attrs.field(init=False, factory=list)
    """Releases waiting to be written in the next batch (see :meth:`release_job`)."""
    _last_release_write: float = attrs.field(init=False, default=float("-inf"))
    """When the last batch of releases was written (anyio time; see RELEASE_SPACING)."""
    _writing_releases: bool = attrs.field(init=False, default=False)
    """Whether a caller of :meth:`release_job` is writing a batch now."""
    unloadable: dict[str, str] = attrs.field(init=False, factory=dict)
    """Job ids with a schedule or queued fire row this store cannot load, and why."""
    _reported: set[str] = attrs.field(init=False, factory=set)
    """Rows (schedule ids, fire uuids) already logged as unloadable: each once."""
    _local_tasks: Container[str] = attrs.field(init=False, factory=frozenset)
    """Tasks whose callables the engine's job loop holds (see remember_local_tasks)."""
    _statements: dict[str, Any] = attrs.field(init=False, factory=dict)
    """Statements built once per store (PostgreSQL's set-based writes), by name."""
    _deleted_rows: set[str] = attrs.field(init=False, factory=set)
    """Fire rows that could not load and were deleted here (a dead process's runs): a read
    from before their deletion (the sweep's, racing the job loop) reports them no more."""

    # -- the ledger of enqueued fires ------------------------------------------------

    def get_table_definitions(self) -> MetaData:
        metadata: MetaData = super().get_table_definitions()
        # Same type as schedules.next_fire_time, so that the two compare in SQL.
        fire_time = DateTime(timezone=True) if self._supports_tzaware_timestamps else BigInteger()
        Table(
            FIRED_TABLE,
            metadata,
            Column("schedule_id", Unicode(500), primary_key=True),
            Column("fire_time", fire_time, primary_key=True),
        )
        add_history_tables(metadata)
        return metadata

    @property
    def _t_fired(self) -> Table:
        prefix = f"{self.schema}." if self.schema else ""
        return self._metadata.tables[prefix + FIRED_TABLE]

    @property
    def _record_fires_pg(self) -> Any:
        """PostgreSQL: the ledger rows of a batch of fires, from two arrays (``ids``,
        ``times``), each inserted unless recorded before; returns those inserted."""
        statement = self._statements.get("record_fires")
        if statement is None:
            fired = self._t_fired
            values = (
                func.unnest(
                    bindparam("ids", type_=postgresql.ARRAY(Unicode())),
                    bindparam("times", type_=postgresql.ARRAY(DateTime(timezone=True))),
                )
                .table_valued("schedule_id", "fire_time")
                .render_derived()
            )
            statement = (
                postgresql.insert(fired)
                .from_select(
                    ["schedule_id", "fire_time"], select(values.c.schedule_id, values.c.fire_time)
                )
                .on_conflict_do_nothing()
                .returning(fired.c.schedule_id, fired.c.fire_time)
            )
            self._statements["record_fires"] = statement
        return statement

    @property
    def _give_back_slots_pg(self) -> Any:
        """PostgreSQL: give back ``ns[i]`` running slots of task ``tasks[i]`` (never below
        zero), in one statement; the task rows are locked in id order first (as the
        statement per task did, sorted): two batches never wait for each other's rows."""
        statement = self._statements.get("give_back_slots")
        if statement is None:
            tasks = self._t_tasks
            ids = bindparam("tasks", type_=postgresql.ARRAY(tasks.c.id.type))
            locked = (
                select(tasks.c.id)
                .where(tasks.c.id == any_(ids))
                .order_by(tasks.c.id)
                .with_for_update()
                .cte("locked")
            )
            freed = (
                func.unnest(ids, bindparam("ns", type_=postgresql.ARRAY(Integer())))
                .table_valued("task", "n")
                .render_derived()
            )
            running = tasks.c.running_jobs
            statement = (
                tasks.update()
                .values(running_jobs=case((running > freed.c.n, running - freed.c.n), else_=0))
                .where(tasks.c.id == freed.c.task, tasks.c.id == locked.c.id, running > 0)
            )
            self._statements["give_back_slots"] = statement
        return statement

    def _among(self, column: Any, values: Iterable[Any]) -> Any:
        """``column IN (values)``; on PostgreSQL ``column = ANY(:array)``: one statement
        text whatever the number of values (an IN list renders one per length, and each
        new text is prepared again by the driver and the server)."""
        if self._engine.dialect.name != "postgresql":
            return column.in_(list(values))
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))

    def _fire_time_value(self, fire_time: datetime) -> datetime | int:
        if self._supports_tzaware_timestamps:
            return fire_time
        return int(fire_time.timestamp() * 1000_000)  # as 4.0.0a6 stores next_fire_time

    async def add_job(self, job: Job) -> None:
        """Enqueue a fire once, or skip it when its task is at max_instances everywhere.

        4.0.0a6 commits each fire's job on its own and advances the schedule only later, in
        ``release_schedules``: a process dying in between leaves the old next fire time, and
        whoever claims the schedule next enqueues the same fire again (a duplicate run). A
        ledger row per (schedule, fire time), inserted in the job's own transaction, makes
        the second attempt a no-op.

        Trap 7: the engine's per-task limit queues fires at the limit; max_instances skips
        them. A fire that comes due while its task runs max_instances jobs in any process is
        recorded ``skipped`` here. The fires of one schedule in one batch are a backlog
        (coalesce=False): once the first is enqueued the rest queue behind it, even if a peer
        has meanwhile started the first.
        """
        if job.schedule_id is None or job.scheduled_fire_time is None:
            await super().add_job(job)
            return
        if self._claimed_batch:
            # A fire of the batch in hand: written with the batch's release, in one
            # transaction (:meth:`release_schedules`).
            self._fires.append(job)
            return
        fired, tasks, jobs = self._t_fired, self._t_tasks, self._t_jobs
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite

        def task_column(column: Any) -> Any:
            return select(column).where(tasks.c.id == job.task_id).scalar_subquery()

        # One statement: the ledger row, and the task's running count and limit.
        record_fire = (
            dialect.insert(fired)
            .values(
                schedule_id=job.schedule_id,
                fire_time=self._fire_time_value(job.scheduled_fire_time),
            )
            .on_conflict_do_nothing()
            .returning(
                task_column(tasks.c.running_jobs).label("running"),
                task_column(tasks.c.max_running_jobs).label("limit"),
                # Whether this schedule has fires queued unstarted (rare): only then does a
                # coalescing fire need a statement of its own to supersede them.
                exists(
                    select(jobs.c.id).where(
                        jobs.c.schedule_id == job.schedule_id, jobs.c.acquired_by.is_(None)
                    )
                ).label("queued"),
            )
        )
        backlog = job.schedule_id in self._enqueued
        running: int | None = None
        async for attempt in self._retry():
            with attempt:
                async with self._begin_transaction() as conn:
                    task = (await self._execute(conn, record_fire)).first()
                    if task is None:
                        logger.info(
                            "fire of %r at %s was enqueued before, by a process that stopped "
                            "before it advanced the schedule: not enqueued again",
                            job.schedule_id,
                            job.scheduled_fire_time.isoformat(),
                        )
                        return
                    if not backlog and task.limit is not None and task.running >= task.limit:
                        running = task.running
                    else:
                        running = None
                        if task.queued and job.schedule_id in self._coalescing:
                            await self._coalesce_queue(conn, job.schedule_id)
                        insert = self._t_jobs.insert().values(**job.marshal(self.serializer))
                        await self._execute(conn, insert)
        if running is not None:
            self.notices.skipped(job, running)
            return
        self._enqueued.add(job.schedule_id)
        await self._event_broker.publish(
            JobAdded(job_id=job.id, task_id=job.task_id, schedule_id=job.schedule_id)
        )

    async def _coalesce_queue(self, conn: Any, schedule_id: str) -> None:
        """coalesce=True: this fire supersedes the schedule's fires still queued unstarted.

        4.0.0a6 coalesces only the fires one batch finds due. Fires left queued by a stopped
        process (a draining one leaves them to others, or to its next start) ran as well:
        after a restart, one catch-up run for those and one for the coalesced backlog.
        """
        jobs = self._t_jobs
        await self._execute(
            conn,
            jobs.delete().where(jobs.c.schedule_id == schedule_id, jobs.c.acquired_by.is_(None)),
        )

    async def _prune_fired(self) -> None:
        """Forget fires their schedule has moved past (it can never produce them again)."""
        fired, schedules = self._t_fired, self._t_schedules
        pending = select(schedules.c.id).where(
            schedules.c.id == fired.c.schedule_id,
            schedules.c.next_fire_time <= fired.c.fire_time,
        )
        async with self._begin_transaction() as conn:
            await self._execute(conn, fired.delete().where(~exists(pending)))

    # -- rows this store cannot load -------------------------------------------------

    def _unloadable_row(
        self, row_id: object, job_id: str, exc: BaseException, *, kept: bool = True
    ) -> None:
        """Log a row that cannot be loaded once (at ERROR, with its job id and the reason)
        and, while it stays in the store (``kept``), report its job in status."""
        reason = _reason(exc)
        if kept:
            if str(row_id) in self._deleted_rows:
                return  # read before it was deleted (see _deleted_rows)
            self.unloadable[job_id] = reason
        else:
            self._deleted_rows.add(str(row_id))
            self.unloadable.pop(job_id, None)
        if str(row_id) in self._reported:
            return
        self._reported.add(str(row_id))
        if row_id == job_id:
            what, done = "schedule", f"skipped (fix it, or remove_job({job_id!r}))"
        elif kept:
            what, done = f"fire {row_id}", f"skipped (fix it, or remove_job({job_id!r}))"
        else:
            what, done = f"run {row_id} of a process that is gone", "released"
        logger.error(
            "job %r: its %s in the store cannot be loaded, %s: %s", job_id, what, done, reason
        )

    async def _deserialize_schedules(self, result: Any) -> list[Schedule]:
        # 4.0.0a6 catches only SerializationError, which DeserializationError is not, nor
        # the ValueError of a date out of range: one bad schedule row made every
        # get_schedules() - start()'s reconcile too - and every acquire fail, for good.
        schedules: list[Schedule] = []
        for row in result:
            try:
                marshalled = self._convert_incoming_fire_times(row._asdict())
                schedules.append(Schedule.unmarshal(self.serializer, marshalled))
            except Exception as exc:
                self._unloadable_row(row.id, row.id, exc)
        return schedules

    async def _deserialize_jobs(self, result: Any) -> list[Job]:
        # As _deserialize_schedules, for the fire rows get_jobs() and the sweep read.
        jobs: list[Job] = []
        for row in result:
            try:
                jobs.append(Job.unmarshal(self.serializer, row._asdict()))
            except Exception as exc:
                self._unloadable_row(row.id, row.task_id, exc)
        return jobs

    async def _park_unloadable_jobs(self) -> int:
        """Find the fire rows acquire_jobs reads that cannot be loaded, one by one, and set
        them aside (only after acquire_jobs failed: nothing is added to a healthy acquire).
        How many."""
        jobs_table = self._t_jobs
        now = datetime.now(timezone.utc)
        takeable = select(jobs_table.c.id, jobs_table.c.task_id).where(
            or_(jobs_table.c.acquired_until.is_(None), jobs_table.c.acquired_until < now)
        )
        async with self._begin_transaction() as conn:
            candidates = (await self._execute(conn, takeable)).all()
        parked = 0
        for candidate in candidates:
            async with self._begin_transaction() as conn:
                one = jobs_table.select().where(jobs_table.c.id == candidate.id)
                try:
                    row = (await self._execute(conn, one)).first()
                    if row is None:
                        continue
                    Job.unmarshal(self.serializer, row._asdict())
                except _ROW_ERRORS as exc:
                    await self._park_job(conn, candidate.id, candidate.task_id, exc)
                    parked += 1
        return parked

    async def _park_job(
        self, conn: Any, job_id: UUID, task_id: str, exc: BaseException | None
    ) -> None:
        """Set aside a fire row that cannot be loaded: a queued one is parked, kept and
        reported; one held by a process that is gone (acquire_jobs takes it once its lease
        ran out) is released, as cleanup() releases that process's runs."""
        jobs_table = self._t_jobs
        exc = exc or DeserializationError("no reason given")
        parked = await self._execute(
            conn,
            jobs_table.update()
            .where(jobs_table.c.id == job_id, jobs_table.c.acquired_by.is_(None))
            .values(acquired_until=PARKED)
            .returning(jobs_table.c.id),
        )
        if parked.first() is not None:
            self._unloadable_row(job_id, task_id, exc)
            return
        released = await self._execute(
            conn,
            jobs_table.delete()
            .where(jobs_table.c.id == job_id, jobs_table.c.acquired_by.is_not(None))
            .returning(jobs_table.c.id),
        )
        if released.first() is not None:
            await self._give_back_slot(conn, task_id)
            self._unloadable_row(job_id, task_id, exc, kept=False)

    async def _unpark_jobs(self) -> None:
        """At start: parked fire rows are tried again (a new release may load them)."""
        jobs_table = self._t_jobs
        async with self._begin_transaction() as conn:
            await self._execute(
                conn,
                jobs_table.update()
                .where(jobs_table.c.acquired_by.is_(None), jobs_table.c.acquired_until >= PARKED)
                .values(acquired_until=None),
            )

    async def remove_task(self, task_id: str) -> None:
        """Also remove the task's fires not taken by anyone (parked ones too): without their
        task nobody ever takes them, and remove_job() cleans up what cannot load."""
        jobs_table = self._t_jobs
        async with self._begin_transaction() as conn:
            await self._execute(
                conn,
                jobs_table.delete().where(
                    jobs_table.c.task_id == task_id, jobs_table.c.acquired_by.is_(None)
                ),
            )
        self.unloadable.pop(task_id, None)
        await super().remove_task(task_id)

    # -- jobs: acquiring, releasing, and the ones dead processes left ----------------

    async def start(
        self, exit_stack: AsyncExitStack, event_broker: EventBroker, logger: logging.Logger
    ) -> None:
        await self._start_base(exit_stack, _AcquiredStayLocal(event_broker), logger)
        if self._engine.dialect.name == "postgresql":
            keeper = await exit_stack.enter_async_context(anyio.create_task_group())
            keeper.start_soon(self._keep_liveness, name="task_scheduler liveness")
            keeper.start_soon(self._keep_tidy, name="task_scheduler vacuum")
            exit_stack.callback(keeper.cancel_scope.cancel)
        if self._engine.dialect.name == "sqlite":
            await self._recount_running()
        await self._drop_superseded_fires()
        await self._unpark_jobs()

    async def _keep_tidy(self) -> None:
        """PostgreSQL: VACUUM this store's tables once their dead rows pile up.

        Every fire updates its schedule twice and its task's running count, inserts and
        deletes its job row and its ledger row: dead rows, which only VACUUM makes room of.
        Where autovacuum is off (this project's test server) or lags, the tables grow without
        end and every statement reads more of them: three processes that kept up with 3,000
        fires/s for 5 s fell to 2,419 runs/s over 15 s (PostgreSQL's CPU per run 0.22 ->
        0.34 ms); with a VACUUM of the busy tables every 2 s they kept up (0.19 ms).
        ``SKIP_LOCKED``: a table another process (or autovacuum) is vacuuming is left to it.
        """
        tables = [
            self._t_schedules,
            self._t_jobs,
            self._t_tasks,
            self._t_fired,
            *(self._metadata.tables[f"{self.schema}.{name}" if self.schema else name]
              for name in HISTORY_TABLES),
        ]  # fmt: skip
        by_name = {table.name: table for table in tables}
        stats = text(
            "SELECT relname, n_live_tup, n_dead_tup FROM pg_stat_user_tables"
            " WHERE schemaname = coalesce(:schema, current_schema()) AND relname = ANY(:names)"
        ).bindparams(schema=self.schema, names=list(by_name))
        quote = self._engine.dialect.identifier_preparer.format_table
        while True:
            await anyio.sleep(TIDY_INTERVAL)
            try:
                async with self._begin_transaction() as conn:
                    rows = (await self._execute(conn, stats)).all()
                for row in rows:
                    if row.n_dead_tup >= max(TIDY_DEAD_ROWS, TIDY_DEAD_SHARE * row.n_live_tup):
                        vacuum = f"VACUUM (SKIP_LOCKED) {quote(by_name[row.relname])}"
                        await self._outside_transaction(vacuum)
            except Exception as exc:  # the store away, a statement timed out: next time
                logger.debug("could not vacuum the store's tables: %r", exc)

    async def _outside_transaction(self, sql: str) -> None:
        """Run ``sql`` on a connection of its own, in autocommit (VACUUM refuses a
        transaction)."""
        engine = self._engine
        assert isinstance(engine, AsyncEngine)
        async with engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text(sql))

    async def _start_base(
        self, exit_stack: AsyncExitStack, event_broker: EventBroker, logger: logging.Logger
    ) -> None:
        """4.0.0a6's start: tables created or checked (the store on threads has its own)."""
        await super().start(exit_stack, event_broker, logger)

    async def _drop_superseded_fires(self) -> None:
        """At start: fires left queued unstarted (by a process that stopped) of coalescing
        schedules that are due again - the backlog's one catch-up run supersedes them.

        Before the engine's loops start: its job loop would otherwise take a left fire
        before the schedule loop enqueues the backlog, and both would run (see
        :meth:`_coalesce_queue` for fires queued while running).
        """
        jobs, schedules = self._t_jobs, self._t_schedules
        due = select(schedules.c.id).where(
            schedules.c.coalesce == CoalescePolicy.latest,
            schedules.c.paused == false(),
            schedules.c.next_fire_time <= self._fire_time_value(datetime.now(timezone.utc)),
        )
        async with self._begin_transaction() as conn:
            await self._execute(
                conn,
                jobs.delete().where(jobs.c.acquired_by.is_(None), jobs.c.schedule_id.in_(due)),
            )

    async def _recount_running(self) -> None:
        """SQLite (one process, held by a file lock): each task's running count is the
        number of its jobs still acquired - by a process that died, since no other can run.
        A file once shared by two processes kept counts no job held, and later starts
        skipped those tasks' fires for good ("N run(s) in progress across processes").
        The sweep then releases the dead process's jobs, giving each slot back once."""
        tasks, jobs = self._t_tasks, self._t_jobs
        held = (
            select(func.count())
            .select_from(jobs)
            .where(jobs.c.task_id == tasks.c.id, jobs.c.acquired_by.is_not(None))
            .scalar_subquery()
        )
        async with self._begin_transaction() as conn:
            await self._execute(conn, tasks.update().values(running_jobs=held))

    async def _announce(self, scheduler_id: str) -> None:
        """Hold, while this process lives, an advisory lock named after it (PostgreSQL).

        Not in 4.0.0a6, which learns that a process died only when its leases run out:
        its jobs block their tasks' slots, and its schedules do not fire, for a lease.
        """
        self._identity = scheduler_id
        engine = self._engine
        if engine.dialect.name != "postgresql" or not isinstance(engine, AsyncEngine):
            return  # SQLite: one process only
        conn = await engine.connect()
        try:
            await conn.execute(
                LIVENESS_LOCK_SQL, {"lock_class": LIVENESS_LOCK_CLASS, "identity": scheduler_id}
            )
            await conn.commit()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.invalidate()
            raise
        self._liveness = conn

    async def _drop_liveness(self) -> None:
        """When the store closes (not when the engine restarts: see _keep_liveness)."""
        self._identity = None
        conn, self._liveness = self._liveness, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.invalidate()  # closes the session, and with it the lock

    # -- connection blips (PostgreSQL): a live process is never taken for dead ---------
    #
    # A session cut for a moment (pg_terminate_backend, a restarted server, a network
    # blip) took this process's liveness lock with it, and peers recorded its runs
    # ``abandoned`` at their next sweep - runs that went on to finish, or that never
    # started; with retries they ran twice. Its own sweep did the same to the jobs its
    # previous engine (same identity) had acquired, and a statement that failed on a cut
    # connection crashed the engine, cancelling every run in progress. So: the lock is
    # held for the store's life (not the engine's) and taken again as soon as its session
    # is seen closed (_keep_liveness); peers take a holder for gone only once its lock has
    # been missing for HOLDER_GRACE (_gone_holders), or its lease has run out; a cut
    # connection is retried like a refused one (_retry); and the engine's own leftovers are
    # settled by this process (reap_abandoned_jobs), never recorded ``abandoned``.

    def _retry(self) -> tenacity.AsyncRetrying:
        """4.0.0a6 retries OSError and InterfaceError, not a connection cut mid-statement,
        nor a transaction rolled back for a deadlock (see _worth_retrying)."""
        return super()._retry().copy(retry=tenacity.retry_if_exception(_worth_retrying))

    async def _keep_liveness(self) -> None:
        """Take this process's liveness lock again when its session was cut (no query: the
        driver knows its socket closed); again and again while the store is away. Renew
        the leases of the jobs in hand every RENEW_INTERVAL."""
        cut = False
        next_renewal = 0.0
        while True:
            await anyio.sleep(KEEP_INTERVAL)
            identity = self._identity
            if identity is None:
                continue
            if await self._liveness_lost():
                if not cut:
                    cut = True
                    logger.warning("the session holding %r's liveness lock was cut", identity)
                try:
                    await self._announce(identity)
                except Exception as exc:
                    if not _disconnected(exc):
                        logger.warning("could not take %r's liveness lock: %r", identity, exc)
                    continue  # the store is still away: try at the next look
                cut = False
                next_renewal = 0.0  # back: renew at once, before peers sweep
                logger.warning("liveness lock of %r taken again", identity)
            if self._mine and anyio.current_time() >= next_renewal:
                next_renewal = anyio.current_time() + RENEW_INTERVAL
                try:
                    await self._renew(identity)
                except Exception as exc:
                    if not _disconnected(exc):
                        logger.warning("could not renew the leases of jobs in hand: %r", exc)

    async def _liveness_lost(self) -> bool:
        """Whether this process holds no liveness session, or the driver saw it close (no
        query); a closed one is let go of, for :meth:`_announce` to open another."""
        conn = self._liveness
        if conn is not None and not await _closed(conn):
            return False
        self._liveness = None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.invalidate()
        return True

    async def _renew(self, identity: str) -> None:
        jobs = self._t_jobs
        until = datetime.now(timezone.utc) + timedelta(seconds=LEASE_DURATION)
        async with self._begin_transaction() as conn:
            await self._execute(
                conn,
                jobs.update()
                .where(self._among(jobs.c.id, self._mine), jobs.c.acquired_by == identity)
                .values(acquired_until=until),
            )

    async def _gone_holders(self) -> set[str]:
        """Holders of jobs or schedule claims whose liveness lock has been missing at every
        sweep for HOLDER_GRACE seconds: gone. One look is not enough (see above)."""
        jobs, schedules = self._t_jobs, self._t_schedules
        query = union(
            select(jobs.c.acquired_by).where(jobs.c.acquired_by.is_not(None), _HOLDER_GONE),
            select(schedules.c.acquired_by).where(
                schedules.c.acquired_by.is_not(None), _HOLDER_GONE
            ),
        )
        async with self._begin_transaction() as conn:
            missing = {row[0] for row in (await self._execute(conn, query)).all()}
        missing.discard(self._identity)  # this process is alive; _keep_liveness re-locks
        now = anyio.current_time()
        self._missing = {holder: self._missing.get(holder, now) for holder in missing}
        return {holder for holder, since in self._missing.items() if now - since >= HOLDER_GRACE}

    async def reap_abandoned_jobs(self, scheduler_id: str) -> None:
        """At each start of the engine's job loop: settle the jobs its previous run (same
        identity) left acquired, none of which runs any more.

        4.0.0a6 releases them all as ``abandoned``: a job that never started was lost, and a
        run that ended while the store was away - whose release could not be written - was
        recorded as never finished. Such a release is written now, with its real outcome;
        the other jobs never started, and go back to the queue.
        """
        await self._write_unreleased(scheduler_id)
        requeued = await self._requeue(scheduler_id)
        if requeued:
            logger.info("%d job(s) acquired before the engine restarted are queued again", requeued)

    @property
    def taking_jobs(self) -> bool:
        """False once this process began to drain (:meth:`stop_taking_jobs`)."""
        return self._taking_jobs

    def stop_taking_jobs(self) -> None:
        """Acquire no more jobs: this process is draining, and would only cancel them.

        Fires enqueued from now on stay queued for the other processes (or, alone, for the
        next start), instead of being recorded ``cancelled`` here and lost.
        """
        self._taking_jobs = False

    async def acquire_jobs(
        self, scheduler_id: str, lease_duration: timedelta, limit: int | None = None
    ) -> list[Job]:
        if not self._taking_jobs:
            return []
        if self._identity is None:
            await self._announce(scheduler_id)
        await self._sweep()
        try:
            jobs: list[Job] = await super().acquire_jobs(scheduler_id, lease_duration, limit)
        except _ROW_ERRORS:
            # 4.0.0a6 catches only DeserializationError around Job.unmarshal: a fire row with,
            # e.g., a year-1 scheduled_fire_time (ValueError) crashed the job loop at every
            # start, for good. Park the rows that cannot load, then take the others.
            if not await self._park_unloadable_jobs():
                raise
            jobs = await super().acquire_jobs(scheduler_id, lease_duration, limit)
        if jobs and self._engine.dialect.name != "postgresql":
            jobs = await self._drop_vanished(scheduler_id, jobs)
        self._mine.update(job.id for job in jobs)
        await self._fetch_tasks_of(jobs)
        return jobs

    async def _drop_vanished(self, scheduler_id: str, jobs: list[Job]) -> list[Job]:
        """SQLite: drop the jobs 4.0.0a6's ``acquire_jobs`` returned but did not take.

        It reads the queue before its write transaction begins (SQLite has no row locks):
        a fire deleted in between - superseded by a coalescing fire of the batch being
        written - is returned all the same (run after all), and its task's running count
        incremented for a row no release ever deletes. That slot never came back: every
        later fire of a max_instances task was skipped ("1 run(s) in progress across
        processes") until the next start. (PostgreSQL: the read locks the rows.)
        """
        jobs_table = self._t_jobs
        query = select(jobs_table.c.id).where(
            jobs_table.c.id.in_([job.id for job in jobs]),
            jobs_table.c.acquired_by == scheduler_id,
        )
        async with self._begin_transaction() as conn:
            held = {row.id for row in await self._execute(conn, query)}
            vanished = [job for job in jobs if job.id not in held]
            for job in vanished:
                await self._give_back_slot(conn, job.task_id)
        return [job for job in jobs if job.id in held] if vanished else jobs

    async def _fetch_tasks_of(self, jobs: Sequence[Job]) -> None:
        """Read the tasks of the jobs just acquired, in one query, for the job loop.

        4.0.0a6's job loop asks :meth:`get_task` for each job it acquired, one transaction
        (three round trips) per job, before it starts the next: jobs due together started
        one round trip apart. :meth:`get_task` answers the loop from these, once each.
        """
        self._acquired_tasks.clear()
        local = self._local_tasks
        task_ids = list({job.task_id for job in jobs if job.task_id not in local})
        if not task_ids:
            return
        tasks = self._t_tasks
        try:
            async with self._begin_transaction() as conn:
                query = tasks.select().where(self._among(tasks.c.id, task_ids))
                rows = await self._execute(conn, query)
            for row in rows:
                task = Task.unmarshal(self.serializer, row._asdict())
                self._acquired_tasks[task.id] = task
        except Exception as exc:  # only a shortcut: get_task() asks the store instead
            logger.debug("could not read the tasks of the jobs acquired: %r", exc)

    def remember_local_tasks(self, task_ids: Container[str]) -> None:
        """The engine's job loop holds the callables of these tasks (a live view): the jobs
        it acquires of these need no ``Task`` from the store (see :meth:`_fetch_tasks_of`)."""
        self._local_tasks = task_ids

    async def get_task(self, task_id: str) -> Task:
        task = self._acquired_tasks.pop(task_id, None)  # read with the job just acquired
        if task is not None:
            return task
        found: Task = await super().get_task(task_id)
        return found

    async def release_job(self, scheduler_id: str, job: Job, result: JobResult) -> None:
        """4.0.0a6's, with the run owed (:attr:`_unreleased`) until its release is committed,
        and the releases of runs that end together written in one transaction.

        A release cancelled before it was written - the engine stopping (or restarting)
        while a run that had just ended waited for a connection; on trio, for one of the
        store's transaction slots, a wait that grows under load - left the job acquired,
        and the stop's :meth:`release_claims` put it back in the queue as never started: a
        peer ran the fire a second time. An owed release is written later instead
        (:meth:`release_claims`, :meth:`reap_abandoned_jobs`), and its job never requeued.

        4.0.0a6 writes each release in a transaction of its own (four round trips): the
        cost is per round trip, not per row. Releases queue here; whichever caller finds
        no batch being written writes everything queued (:meth:`_write_release_batches`)
        while the others wait for their own to be committed - no added delay, and each
        call still returns only once its release is committed (or raises as before).
        """
        if result.outcome is JobOutcome.deserialization_failed:
            await self._release_one(scheduler_id, job, result)
            return
        self._unreleased[job.id] = (job, result)
        self._releasing.add(job.id)
        entry = _Release(job, result)
        self._release_queue.append(entry)
        try:
            while entry.state is not _ReleaseState.done:
                if entry.state is _ReleaseState.queued and not self._writing_releases:
                    await self._write_release_batches(scheduler_id, entry)
                    continue
                changed = entry.changed
                try:
                    await changed.wait()
                except BaseException:
                    if entry.state is _ReleaseState.writing:
                        # Being written by another caller (a shielded transaction): wait
                        # for the outcome, so that it is not owed and written twice.
                        with anyio.CancelScope(shield=True):
                            while entry.state is _ReleaseState.writing:
                                await entry.changed.wait()
                    raise
        finally:
            if entry.state is _ReleaseState.queued:
                self._release_queue.remove(entry)  # never written: owed, as before
                self._wake_next_release_writer()
            if entry.state is _ReleaseState.done and (
                entry.error is None or not _disconnected(entry.error)
            ):
                self._unreleased.pop(job.id, None)  # written, or as before: not written later
            self._releasing.discard(job.id)
            self._mine.discard(job.id)
            if not self._releasing and self._releases_done is not None:
                self._releases_done.set()
        if entry.error is not None:
            raise entry.error
        if entry.announce:
            # Tell the other schedulers (slots are free): once per batch, not per run - each
            # is a NOTIFY that every process reads and wakes its job loop for.
            assert entry.event is not None
            await self._event_broker.publish(entry.event)

    async def _release_one(self, scheduler_id: str, job: Job, result: JobResult) -> None:
        """A release on its own (a fire this store could not load: it is parked)."""
        self._unreleased[job.id] = (job, result)
        self._releasing.add(job.id)
        written = False
        try:
            async for attempt in self._retry():
                with attempt:
                    async with self._begin_transaction() as conn:
                        event = await self._release_job(
                            conn,
                            result,
                            scheduler_id,
                            job.task_id,
                            job.schedule_id,
                            job.scheduled_fire_time,
                        )
                    written = True  # committed (no checkpoint since the shielded commit)
        except Exception as exc:
            if not _disconnected(exc):
                self._unreleased.pop(job.id, None)  # as before: not written later
            raise
        finally:
            if written:
                self._unreleased.pop(job.id, None)
            self._releasing.discard(job.id)
            self._mine.discard(job.id)
            if not self._releasing and self._releases_done is not None:
                self._releases_done.set()
        await self._event_broker.publish(event)

    def _wake_next_release_writer(self) -> None:
        """No batch is being written: the first queued release's caller writes the queue."""
        if not self._writing_releases and self._release_queue:
            self._release_queue[0].wake()

    async def _write_release_batches(self, scheduler_id: str, own: _Release) -> None:
        """Write the queued releases, a batch per transaction, until ``own`` is written;
        then hand the rest of the queue to the next caller. Cancelled before a batch was
        written (a retry's wait): the batch goes back to the queue for the others."""
        self._writing_releases = True
        try:
            while own.state is not _ReleaseState.done and self._release_queue:
                spacing = self._last_release_write + RELEASE_SPACING - anyio.current_time()
                if spacing > 0:
                    await anyio.sleep(spacing)  # the runs that end meanwhile join this batch
                batch, self._release_queue = self._release_queue, []
                for entry in batch:
                    entry.state = _ReleaseState.writing
                try:
                    events, waiting = await self._write_releases(scheduler_id, batch)
                except Exception as exc:
                    for entry in batch:
                        entry.finish(None, exc)
                except BaseException:
                    for entry in batch:
                        entry.state = _ReleaseState.queued
                        entry.wake()
                    self._release_queue[:0] = batch
                    raise
                else:
                    for entry, event in zip(batch, events, strict=True):
                        entry.finish(event, None)
                    batch[-1].announce = waiting
                finally:
                    self._last_release_write = anyio.current_time()
        finally:
            self._writing_releases = False
            self._wake_next_release_writer()

    async def _write_releases(
        self, scheduler_id: str, batch: Sequence[_Release]
    ) -> tuple[list[JobReleased], bool]:
        """One transaction for the releases of ``batch`` (as :meth:`_release_job` each):
        their results, their job rows deleted, one running slot given back per deleted row
        that held one (tasks in id order: two batches never wait for each other's rows).
        Also whether a job waits in the queue: only then is the batch announced
        (``JobReleased``, for the job loops a freed slot may let take it). Announced after
        every run, each was a NOTIFY that woke every process's job loop for an empty
        acquisition (a full loop of this process wakes itself: see SQLJobLoop)."""
        jobs_table, tasks = self._t_jobs, self._t_tasks
        results = [
            entry.result.marshal(self.serializer)
            for entry in batch
            if entry.result.expires_at > entry.result.finished_at
        ]
        delete = (
            jobs_table.delete()
            .where(self._among(jobs_table.c.id, [entry.result.job_id for entry in batch]))
            .returning(jobs_table.c.id, jobs_table.c.task_id, jobs_table.c.acquired_by)
        )
        n: Any = bindparam("n")
        give_back = (
            tasks.update()
            .values(
                running_jobs=case((tasks.c.running_jobs > n, tasks.c.running_jobs - n), else_=0)
            )
            .where(tasks.c.id == bindparam("task"), tasks.c.running_jobs > 0)
        )
        async for attempt in self._retry():
            with attempt:
                async with self._begin_transaction() as conn:
                    if results:
                        await self._execute(conn, self._t_job_results.insert(), results)
                    deleted = (await self._execute(conn, delete)).all()
                    slots = Counter(row.task_id for row in deleted if row.acquired_by is not None)
                    if slots and self._engine.dialect.name == "postgresql":
                        order = sorted(slots)
                        await self._execute(
                            conn,
                            self._give_back_slots_pg,
                            {"tasks": order, "ns": [slots[task] for task in order]},
                        )
                    elif slots:
                        await self._execute(
                            conn,
                            give_back,
                            [{"task": task, "n": slots[task]} for task in sorted(slots)],
                        )
                    waiting = (await self._execute(conn, self._waiting_job)).first() is not None
        if self._reported:
            for row in deleted:
                if str(row.id) in self._reported:  # a dead process's run that could not load
                    self._deleted_rows.add(str(row.id))
                    self.unloadable.pop(row.task_id, None)
        events = [
            JobReleased.from_result(
                entry.result,
                scheduler_id,
                entry.job.task_id,
                entry.job.schedule_id,
                entry.job.scheduled_fire_time,
            )
            for entry in batch
        ]
        return events, waiting

    @property
    def _waiting_job(self) -> Any:
        """A job in the queue that some job loop may take (as acquire_jobs selects them),
        if any: unacquired, or its holder's lease ran out."""
        jobs = self._t_jobs
        return (
            select(jobs.c.id)
            .where(
                or_(
                    jobs.c.acquired_until.is_(None),
                    jobs.c.acquired_until < datetime.now(timezone.utc),
                )
            )
            .limit(1)
        )

    async def _write_unreleased(self, scheduler_id: str) -> None:
        """Write the owed releases of runs that ended here, with their real outcomes (after
        waiting up to RELEASE_WAIT for those being written: the engine's stop cancels the
        ones still waiting for a connection, and they end at once)."""
        if self._releasing:
            self._releases_done = anyio.Event()
            with anyio.move_on_after(RELEASE_WAIT):
                await self._releases_done.wait()
            self._releases_done = None
        for job_id, (job, result) in list(self._unreleased.items()):
            if job_id not in self._releasing:
                await super().release_job(scheduler_id, job, result)
                del self._unreleased[job_id]

    async def _release_job(
        self,
        conn: Any,
        result: JobResult,
        scheduler_id: str,
        task_id: str,
        schedule_id: str | None = None,
        scheduled_fire_time: datetime | None = None,
        *,
        decrement_running_job_count: bool = True,
    ) -> JobReleased:
        # 4.0.0a6 decrements the task's running count on every release: also for a job that
        # was never acquired, or that a sweep (or a peer's cleanup) already released - the
        # count drifts and the task's slots leak or multiply (upstream #1110). Give a slot
        # back only when this release removed a job that held one (decrement_running_job_count,
        # the caller's guess, is not needed). Otherwise as 4.0.0a6's.
        jobs_table = self._t_jobs
        if result.outcome is JobOutcome.deserialization_failed:
            # 4.0.0a6 deletes a queued fire it cannot load, without a word: it is parked in
            # the store instead, logged once, and reported in status (remove_job removes it).
            await self._park_job(conn, result.job_id, task_id, result.exception)
            return JobReleased.from_result(
                result, scheduler_id, task_id, schedule_id, scheduled_fire_time
            )
        if result.expires_at > result.finished_at:
            insert = self._t_job_results.insert().values(**result.marshal(self.serializer))
            await self._execute(conn, insert)
        deleted = await self._execute(
            conn,
            jobs_table.delete()
            .where(jobs_table.c.id == result.job_id)
            .returning(jobs_table.c.acquired_by),
        )
        row = deleted.first()
        if row is not None and row.acquired_by is not None:
            await self._give_back_slot(conn, task_id)
        if self._reported and row is not None and str(result.job_id) in self._reported:
            self._deleted_rows.add(str(result.job_id))  # a dead process's run that could not load
            self.unloadable.pop(task_id, None)
        return JobReleased.from_result(
            result, scheduler_id, task_id, schedule_id, scheduled_fire_time
        )

    async def _give_back_slot(self, conn: Any, task_id: str) -> None:
        """One running slot of ``task_id`` is free again (never below zero)."""
        tasks = self._t_tasks
        await self._execute(
            conn,
            tasks.update()
            .values(running_jobs=tasks.c.running_jobs - 1)
            .where(tasks.c.id == task_id, tasks.c.running_jobs > 0),
        )

    async def cleanup(self) -> None:
        self._next_sweep = 0.0
        await self._sweep()
        await super().cleanup()
        async for attempt in self._retry():
            with attempt:
                await self._prune_fired()

    async def _sweep(self) -> None:
        """At most once per SWEEP_INTERVAL: free what dead processes held."""
        if anyio.current_time() < self._next_sweep:
            return
        self._next_sweep = anyio.current_time() + SWEEP_INTERVAL
        async for attempt in self._retry():  # a blip: see _disconnected
            with attempt:
                gone: set[str] = set()
                if self._engine.dialect.name == "postgresql":
                    gone = await self._gone_holders()
                await self._sweep_abandoned_jobs(gone)
                if gone:
                    await self._free_dead_claims(gone)

    async def _free_dead_claims(self, gone: set[str]) -> None:
        """Give back the schedules claimed by processes that are gone, and wake peers.

        4.0.0a6 waits for the claim to run out (a lease). The ledger keeps a fire the dead
        process enqueued from being enqueued again.
        """
        table = self._t_schedules
        async with self._begin_transaction() as conn:
            freed = await self._execute(
                conn,
                table.update()
                .where(table.c.acquired_by.in_(gone))
                .values(acquired_by=None, acquired_until=None)
                .returning(table.c.id, table.c.task_id, table.c.next_fire_time),
            )
            rows = freed.all()
        for row in rows:
            # With its next fire time: 4.0.0a6's schedule loop wakes only for an event whose
            # time is earlier than the one it sleeps until.
            await self._event_broker.publish(
                ScheduleUpdated(
                    schedule_id=row.id, task_id=row.task_id, next_fire_time=row.next_fire_time
                )
            )

    async def _sweep_abandoned_jobs(self, gone: set[str]) -> None:
        """Release the jobs of dead processes as ``abandoned``, once each, before anyone
        re-acquires them.

        4.0.0a6 lets another process re-acquire a job whose lease expired and run it again
        (a duplicate), and never gives back the dead holder's running slot (upstream #1110,
        see docs/apscheduler-4.0.0a6.md). A holder is gone when its liveness lock has been
        missing for HOLDER_GRACE (PostgreSQL: ``gone``), or when it did not renew the lease:
        live holders renew every half lease (every second on PostgreSQL), so a job whose
        lease ends within SWEEP_MARGIN was not renewed. The sweep deletes it with a condition on its
        holder, so exactly one process records it, and gives the slot back.

        Upstream #1116: a process whose event loop was blocked past the lease re-acquired its
        own running job, ran it twice, then crashed with KeyError. A job this process still
        runs is never abandoned: its lease is renewed instead.
        """
        jobs_table = self._t_jobs
        now = datetime.now(timezone.utc)
        horizon = now + timedelta(seconds=SWEEP_MARGIN)
        left = jobs_table.c.acquired_until < horizon
        async with self._begin_transaction() as conn:
            expired = await self._execute(
                conn,
                jobs_table.select().where(
                    jobs_table.c.acquired_by.is_not(None),
                    or_(left, jobs_table.c.acquired_by.in_(gone)) if gone else left,
                ),
            )
            jobs: list[Job] = await self._deserialize_jobs(expired)
        ours = {
            job.id for job in jobs if job.acquired_by == self._identity and job.id in self._mine
        }
        if ours:
            await self.extend_acquired_job_leases(
                str(self._identity), ours, timedelta(seconds=LEASE_DURATION)
            )
        for job in jobs:
            if job.acquired_by == self._identity:
                continue  # renewed, or left by this process's previous engine: reaped there
            async with self._begin_transaction() as conn:
                deleted = await self._execute(
                    conn,
                    jobs_table.delete()
                    .where(
                        jobs_table.c.id == job.id,
                        jobs_table.c.acquired_by == job.acquired_by,
                    )
                    .returning(jobs_table.c.id),
                )
                if deleted.first() is None:
                    continue  # its holder released it after all, or a peer swept it
                await self._give_back_slot(conn, job.task_id)
                result = JobResult.from_job(
                    job, JobOutcome.abandoned, finished_at=datetime.now(timezone.utc)
                )
                if result.expires_at > result.finished_at:
                    # As 4.0.0a6's cleanup() does for an expired job: get_job_result() finds it.
                    results = self._t_job_results.insert()
                    await self._execute(conn, results.values(**result.marshal(self.serializer)))
            holder = str(job.acquired_by)
            event = JobReleased.from_result(
                result, holder, job.task_id, job.schedule_id, job.scheduled_fire_time
            )
            await self._event_broker.publish(event)
            self.notices.abandoned(job)

    async def get_next_schedule_run_time(self) -> datetime | None:
        wake: datetime | None = await super().get_next_schedule_run_time()
        if wake is not None:
            # Claimed ahead (see acquire_schedules), and never sooner than CLAIM_GAP after
            # this claim: fires spread over time are claimed in batches (between LOOKAHEAD
            # and LOOKAHEAD - CLAIM_GAP before they are due), not one claim each.
            wake = max(wake - LOOKAHEAD, datetime.now(timezone.utc) + CLAIM_GAP)
        if self._engine.dialect.name != "postgresql":
            # SQLite: one process, nobody else claims anything; but the task-scheduler
            # command may change the file from outside, and no event tells.
            await self._wake_for_queued_runs()
            poll = datetime.now(timezone.utc) + timedelta(seconds=OUTSIDE_POLL)
            return poll if wake is None or poll < wake else wake
        # 4.0.0a6 only looks at unclaimed schedules: those a dead process claimed stay
        # invisible, and with sparse schedules survivors may sleep past their lease for
        # good. While another process holds a claim on a due schedule, wake when it runs
        # out, and at least every SWEEP_INTERVAL: the sweep frees it at once if that
        # process is gone (claims of live processes last one batch).
        table = self._t_schedules
        query = select(func.min(table.c.acquired_until)).where(
            table.c.acquired_by.is_not(None),
            table.c.next_fire_time.is_not(None),
            table.c.paused == false(),
        )
        async for attempt in self._retry():
            with attempt:
                async with self._begin_transaction() as conn:
                    claim_ends = (await self._execute(conn, query)).scalar()
        if self._missing:
            # A holder whose lock is missing: look again once its grace is over.
            since = min(self._missing.values()) + HOLDER_GRACE - anyio.current_time()
            confirm = datetime.now(timezone.utc) + timedelta(seconds=max(since, 0.0))
            claim_ends = confirm if claim_ends is None else min(claim_ends, confirm)
        if claim_ends is None:
            return wake
        soon = datetime.now(timezone.utc) + timedelta(seconds=SWEEP_INTERVAL)
        earliest: datetime = min(claim_ends, soon)
        return earliest if wake is None or earliest < wake else wake

    async def _wake_for_queued_runs(self) -> None:
        """SQLite: a run-now queued from outside (no schedule) wakes the job loop, which
        otherwise waits for an event of this process."""
        jobs = self._t_jobs
        query = (
            select(jobs.c.id, jobs.c.task_id)
            .where(jobs.c.schedule_id.is_(None), jobs.c.acquired_by.is_(None))
            .limit(1)
        )
        async with self._begin_transaction() as conn:
            queued = (await self._execute(conn, query)).first()
        if queued is not None:
            await self._event_broker.publish(
                JobAdded(job_id=queued.id, task_id=queued.task_id, schedule_id=None)
            )

    async def open_admin(self, event_broker: EventBroker, logger: logging.Logger) -> bool:
        """Ready this store for reading and managing from outside any scheduler (the
        ``task-scheduler`` command), without :meth:`start`: no table is created, nothing
        is recounted or dropped, nothing is claimed, acquired or swept. False if the
        database holds no tables of a scheduler (none ever started on it)."""
        self._event_broker = event_broker
        self._logger = logger
        self._claiming = self._taking_jobs = False
        names = [self._t_schedules.name, self._t_jobs.name, self._t_tasks.name, *HISTORY_TABLES]

        def present(conn: Any) -> bool:
            inspector = inspect(conn)
            return all(inspector.has_table(name, schema=self.schema) for name in names)

        engine = self._engine
        assert isinstance(engine, AsyncEngine)
        async with engine.connect() as conn:
            found: bool = await conn.run_sync(present)
        return found

    async def set_paused(self, schedule_id: str, paused: bool) -> Schedule | None:
        """Pause or resume a schedule from outside any scheduler (the command has no
        engine): what 4.0.0a6's ``pause_schedule`` and ``unpause_schedule(resume_from=
        "now")`` write, through :meth:`add_schedule` (which waits for a claim to end).
        A resumed schedule fires from now on; the fires missed while paused do not run.
        Returns the schedule as written, or None if there is none of that id."""
        found = await self.get_schedules({schedule_id})
        if not found:
            return None
        schedule = found[0]
        if schedule.paused == paused:
            return schedule
        next_fire_time = schedule.next_fire_time
        now = datetime.now(timezone.utc)
        if not paused and (next_fire_time is None or next_fire_time < now):
            while (next_fire_time := schedule.trigger.next()) is not None:
                if next_fire_time >= now:
                    break
        # None: the trigger has no fire left (as 4.0.0a6 writes it; its stub says otherwise).
        updated = attrs.evolve(schedule, paused=paused, next_fire_time=next_fire_time)  # type: ignore[arg-type]
        await self.add_schedule(updated, ConflictPolicy.replace)
        return updated

    async def acquire_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Schedule]:
        if not self._claiming:
            return []
        if self._identity is None:
            await self._announce(scheduler_id)
        await self._sweep()
        self._enqueued.clear()
        self._fires.clear()  # of a batch never released (its loop crashed): not written
        schedules = await self._claim_schedules(scheduler_id, lease_duration, limit)
        if schedules:
            self._in_hand += 1
        self._claimed_batch = bool(schedules)
        self._coalescing = {s.id for s in schedules if s.coalesce is CoalescePolicy.latest}
        return schedules

    async def _claim_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Schedule]:
        """4.0.0a6's claim (one statement: up to ``limit`` unclaimed schedules, earliest
        first, locked and skipped by other claimers), of those due within :data:`LOOKAHEAD`
        instead of those due now."""
        table = self._t_schedules
        now = datetime.now(timezone.utc)
        due = (
            select(table.c.id)
            .where(
                table.c.next_fire_time.is_not(None),
                table.c.next_fire_time <= self._fire_time_value(now + LOOKAHEAD),
                table.c.paused == false(),
                or_(
                    table.c.acquired_by == scheduler_id,
                    table.c.acquired_until.is_(None),
                    table.c.acquired_until < now,
                ),
            )
            .order_by(table.c.next_fire_time)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte()
        )
        claim = (
            table.update()
            .where(table.c.id.in_(select(due.c.id)))
            .values(acquired_by=scheduler_id, acquired_until=now + lease_duration)
            .returning(*table.columns)
        )
        async for attempt in self._retry():
            with attempt:
                async with self._begin_transaction() as conn:
                    return await self._deserialize_schedules(await self._execute(conn, claim))
        raise AssertionError("unreachable: the retry loop returns or raises")  # pragma: no cover

    async def release_schedules(self, scheduler_id: str, results: Sequence[ScheduleResult]) -> None:
        """Enqueue the batch's fires and advance its schedules in one transaction.

        4.0.0a6 writes each fire in a transaction of its own (:meth:`add_job`), publishes
        an event per fire and per schedule (a NOTIFY each, which every process reads and
        wakes for), then advances the schedules in another transaction. Here the fires
        that :meth:`add_job` collected are written with the schedules' advance - the ledger,
        max_instances and coalescing rules as in :meth:`add_job`, a statement each for the
        whole batch - and one event wakes the job loops (one the schedule loops) of every
        process. Enqueued and advanced together, or neither: a fire is never lost or
        enqueued twice, whatever happens in between.
        """
        fires, self._fires = self._fires, []
        self._claimed_batch = False
        try:
            await self._release_batch(scheduler_id, results, fires)
        finally:
            if results and self._in_hand:
                self._in_hand -= 1
                if not self._in_hand and self._released is not None:
                    self._released.set()

    async def _release_batch(
        self, scheduler_id: str, results: Sequence[ScheduleResult], fires: list[Job]
    ) -> None:
        updates: list[dict[str, Any]] = []
        finished: list[ScheduleResult] = []
        for result in results:
            try:
                trigger = self.serializer.serialize(result.trigger)
            except SerializationError:
                self._logger.exception(
                    "Error serializing trigger for schedule %r - removing from data store",
                    result.schedule_id,
                )
                finished.append(result)
                continue
            updates.append(
                {
                    "p_id": result.schedule_id,
                    "p_trigger": trigger,
                    **self._timestamp_param(result.last_fire_time, "p_last_fire_time"),
                    **self._timestamp_param(result.next_fire_time, "p_next_fire_time"),
                }
            )
        table = self._t_schedules
        extra: dict[str, Any] = {}
        if not self._supports_tzaware_timestamps:
            extra["last_fire_time_utcoffset"] = bindparam("p_last_fire_time_utcoffset")
            extra["next_fire_time_utcoffset"] = bindparam("p_next_fire_time_utcoffset")
        advance = (
            table.update()
            .where(table.c.id == bindparam("p_id"), table.c.acquired_by == scheduler_id)
            .values(
                trigger=bindparam("p_trigger"),
                last_fire_time=bindparam("p_last_fire_time"),
                next_fire_time=bindparam("p_next_fire_time"),
                acquired_by=None,
                acquired_until=None,
                **extra,
            )
        )
        async for attempt in self._retry():
            with attempt:
                async with self._begin_transaction() as conn:
                    added, skipped, again, deferred = await self._enqueue_fires(conn, fires)
                    advanced = updates
                    if deferred:
                        # Released unchanged (its trigger as stored): claimed again.
                        advanced = [update for update in updates if update["p_id"] not in deferred]
                        await self._execute(
                            conn,
                            table.update()
                            .where(
                                self._among(table.c.id, deferred),
                                table.c.acquired_by == scheduler_id,
                            )
                            .values(acquired_by=None, acquired_until=None),
                        )
                    if advanced:
                        await self._execute(conn, advance, advanced)
                    if finished:
                        ids = [result.schedule_id for result in finished]
                        await self._execute(conn, table.delete().where(table.c.id.in_(ids)))
        for job in again:
            assert job.scheduled_fire_time is not None
            logger.info(
                "fire of %r at %s was enqueued before, by a process that stopped "
                "before it advanced the schedule: not enqueued again",
                job.schedule_id,
                job.scheduled_fire_time.isoformat(),
            )
        for job, running in skipped:
            self.notices.skipped(job, running)
        if added:
            # One event wakes every job loop (4.0.0a6: one per fire, each a NOTIFY).
            last = added[-1]
            await self._event_broker.publish(
                JobAdded(job_id=last.id, task_id=last.task_id, schedule_id=last.schedule_id)
            )
        due = [
            result
            for result in results
            if result.next_fire_time is not None and result.schedule_id not in deferred
        ]
        if due:
            # The schedule loops wake for the earliest next fire (4.0.0a6: one per schedule).
            first = min(due, key=lambda result: cast(datetime, result.next_fire_time))
            await self._event_broker.publish(
                ScheduleUpdated(
                    schedule_id=first.schedule_id,
                    task_id=first.task_id,
                    next_fire_time=first.next_fire_time,
                )
            )
        for result in finished:
            await self._event_broker.publish(
                ScheduleRemoved(
                    schedule_id=result.schedule_id, task_id=result.task_id, finished=True
                )
            )

    def _timestamp_param(self, value: datetime | None, key: str) -> dict[str, Any]:
        """A timestamp as 4.0.0a6 writes it: as is, or (SQLite) microseconds and offset."""
        if self._supports_tzaware_timestamps:
            return {key: value}
        if value is None:
            return {key: None, f"{key}_utcoffset": None}
        offset = cast(timedelta, value.utcoffset())
        return {
            key: int(value.timestamp() * 1000_000),
            f"{key}_utcoffset": offset.total_seconds() // 60,
        }

    async def _enqueue_fires(
        self, conn: Any, fires: Sequence[Job]
    ) -> tuple[list[Job], list[tuple[Job, int]], list[Job], set[str]]:
        """Write the fires of a batch, as :meth:`add_job` writes one, with a statement for
        all of them at each step: (enqueued, skipped with their task's running count,
        enqueued before by a process that stopped, schedules deferred).

        A fire claimed ahead (not due yet, see LOOKAHEAD) while its task's running slots
        are all taken is neither enqueued nor skipped: its schedule is deferred (released
        unchanged, claimed again), so that whether it runs is decided when it is due, as
        it was without the lookahead - a run that ends just before the next fire leaves
        room for it."""
        if not fires:
            return [], [], [], set()
        fired, tasks, jobs = self._t_fired, self._t_tasks, self._t_jobs
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        task_ids = list({job.task_id for job in fires})
        limits = {
            row.id: row
            for row in await self._execute(
                conn,
                select(tasks.c.id, tasks.c.running_jobs, tasks.c.max_running_jobs).where(
                    self._among(tasks.c.id, task_ids)
                ),
            )
        }
        now = datetime.now(timezone.utc)
        deferred: set[str] = set()
        for job in fires:
            task = limits.get(job.task_id)
            if (
                task is not None
                and task.max_running_jobs is not None
                and task.running_jobs >= task.max_running_jobs
                and cast(datetime, job.scheduled_fire_time) > now
            ):
                deferred.add(cast(str, job.schedule_id))
        if deferred:
            fires = [job for job in fires if job.schedule_id not in deferred]
            if not fires:
                return [], [], [], deferred
        fresh: list[Job] = []
        again: list[Job] = []
        if dialect is postgresql:
            # One statement for the whole batch, its fires as two arrays: built once, and
            # cached (a VALUES list of n rows was compiled anew for every batch).
            parameters = {
                "ids": [job.schedule_id for job in fires],
                "times": [job.scheduled_fire_time for job in fires],
            }
            chunks: list[tuple[Sequence[Job], Any, list[Any]]] = [
                (fires, self._record_fires_pg, [parameters])
            ]
        else:
            chunks = []
            for start in range(0, len(fires), FIRES_PER_STATEMENT):
                chunk = fires[start : start + FIRES_PER_STATEMENT]
                rows = [
                    {
                        "schedule_id": job.schedule_id,
                        "fire_time": self._fire_time_value(cast(datetime, job.scheduled_fire_time)),
                    }
                    for job in chunk
                ]
                record = (
                    dialect.insert(fired)
                    .values(rows)
                    .on_conflict_do_nothing()
                    .returning(fired.c.schedule_id, fired.c.fire_time)
                )
                chunks.append((chunk, record, []))
        for chunk, record, params in chunks:
            inserted = (await self._execute(conn, record, *params)).all()
            if len(inserted) == len(chunk):  # the usual case: every fire is new
                fresh.extend(chunk)
                continue
            new = {(row.schedule_id, _as_utc(row.fire_time)) for row in inserted}
            for job in chunk:
                key = (
                    job.schedule_id,
                    self._fire_time_value(cast(datetime, job.scheduled_fire_time)),
                )
                (fresh if key in new else again).append(job)
        if not fresh:
            return [], [], again, deferred
        coalescing = list({job.schedule_id for job in fresh} & self._coalescing)
        queued: set[str] = set()
        if coalescing:
            # Schedules with fires queued unstarted (rare): a coalescing fire supersedes them.
            found = await self._execute(
                conn,
                select(jobs.c.schedule_id)
                .distinct()
                .where(self._among(jobs.c.schedule_id, coalescing), jobs.c.acquired_by.is_(None)),
            )
            queued = {row.schedule_id for row in found}
        added: list[Job] = []
        skipped: list[tuple[Job, int]] = []
        enqueued: set[str] = set()
        for job in fresh:
            task = limits.get(job.task_id)
            backlog = job.schedule_id in enqueued  # see add_job
            if (
                not backlog
                and task is not None
                and task.max_running_jobs is not None
                and task.running_jobs >= task.max_running_jobs
            ):
                skipped.append((job, task.running_jobs))
                continue
            added.append(job)
            enqueued.add(cast(str, job.schedule_id))
        superseded = list(queued & enqueued)
        if superseded:
            await self._execute(
                conn,
                jobs.delete().where(
                    jobs.c.schedule_id.in_(superseded), jobs.c.acquired_by.is_(None)
                ),
            )
        if added:
            await self._execute(
                conn, jobs.insert(), [job.marshal(self.serializer) for job in added]
            )
        return added, skipped, again, deferred

    async def add_schedule(self, schedule: Schedule, conflict_policy: ConflictPolicy) -> None:
        if conflict_policy is not ConflictPolicy.replace:
            await super().add_schedule(schedule, conflict_policy)
            return
        # 4.0.0a6 replaces a schedule even while another process holds its claim: a fire
        # that process already enqueued can then be enqueued again from the new row (a
        # duplicate run). Replace only once nobody holds it (claims last one batch).
        table = self._t_schedules
        deadline = anyio.current_time() + REPLACE_WAIT
        while True:
            now = datetime.now(timezone.utc)
            async with self._begin_transaction() as conn:
                claimed = (
                    await self._execute(
                        conn,
                        select(table.c.id).where(
                            table.c.id == schedule.id,
                            table.c.acquired_by.is_not(None),
                            table.c.acquired_until >= now,
                        ),
                    )
                ).first()
            if claimed is None or anyio.current_time() > deadline:
                break
            await anyio.sleep(0.02)
        # Whatever the old definition fired last is not fired again by the new one.
        old = await self.get_schedules({schedule.id})
        last = old[0].last_fire_time if old else None
        while last is not None and schedule.next_fire_time is not None:
            if schedule.next_fire_time > last:
                break
            schedule.next_fire_time = schedule.trigger.next()
        await super().add_schedule(schedule, conflict_policy)

    async def stop_claiming(self, grace: float) -> bool:
        """Claim no more schedules; wait up to ``grace`` s for the batch in hand to be released.

        4.0.0a6's ``stop()`` cancels the schedule loop wherever it is: between enqueueing a
        fire's job and advancing the schedule, that fire is enqueued again by whoever claims
        the schedule next (a duplicate run). Stopping only once no batch is in hand avoids it.
        """
        self._claiming = False
        if self._in_hand:
            self._released = anyio.Event()
            with anyio.move_on_after(grace):
                await self._released.wait()
        return not self._in_hand

    async def _create_metadata(self, conn: Any) -> None:
        # 4.0.0a6: processes starting together on an empty PostgreSQL database race in
        # create_all (CREATE TYPE coalescepolicy -> IntegrityError), and one of them dies.
        # A transaction-level advisory lock, in the same transaction, serializes them.
        await self._lock_schema(conn)
        await super()._create_metadata(conn)

    async def _lock_schema(self, conn: Any) -> None:
        """PostgreSQL: hold the schema lock until ``conn``'s transaction ends."""
        if conn.dialect.name == "postgresql":
            lock = text("SELECT pg_advisory_xact_lock(:key)")
            await self._execute(conn, lock, {"key": SCHEMA_LOCK_KEY})

    async def release_claims(self, scheduler_id: str) -> int:
        """Give back every schedule and job ``scheduler_id`` still claims; return how many.

        4.0.0a6's ``stop()`` cancels the schedule loop mid-batch and leaves schedules
        claimed for the rest of their lease (30 s): a restarted process - a new identity -
        could not fire them until then. Its job loop may also have acquired jobs it never
        started: they held their tasks' running slots until swept, and then counted as
        ``abandoned``. They go back to the queue for the others. Peers are woken by events.
        """
        try:
            await self._write_unreleased(scheduler_id)  # runs that ended: released, not requeued
        except Exception as exc:
            # Not requeued either (they ran): peers record them abandoned once this is gone.
            logger.warning(
                "could not write the release of %d run(s) that ended here: %r",
                len(self._unreleased),
                exc,
            )
        return await self._requeue(scheduler_id) + await self._release_schedule_claims(scheduler_id)

    async def give_back(self, scheduler_id: str, job: Job) -> None:
        """Put ``job``, acquired here and never started (this process began to drain before
        its fire time), back in the queue at once, with its task's running slot: held until
        the stop, that slot would have the other processes skip every fire of the job."""
        await self._requeue(scheduler_id, job.id)

    async def _requeue(self, scheduler_id: str, only: UUID | None = None) -> int:
        """Jobs ``scheduler_id`` acquired and never started go back to the queue (never one
        that ran here and whose release is still owed); ``only``: that job alone."""
        jobs_table = self._t_jobs
        held = jobs_table.c.acquired_by == scheduler_id
        if only is not None:
            held = and_(held, jobs_table.c.id == only)
        if self._unreleased:
            held = and_(held, jobs_table.c.id.not_in(list(self._unreleased)))
        async with self._begin_transaction() as conn:
            unstarted = await self._execute(
                conn,
                jobs_table.update()
                .where(held)
                .values(acquired_by=None, acquired_until=None)
                .returning(jobs_table.c.id, jobs_table.c.task_id, jobs_table.c.schedule_id),
            )
            returned = unstarted.all()
            for row in returned:
                await self._give_back_slot(conn, row.task_id)
        if only is None:
            self._mine.clear()
        else:
            self._mine.discard(only)
        for row in returned:
            await self._event_broker.publish(
                JobAdded(job_id=row.id, task_id=row.task_id, schedule_id=row.schedule_id)
            )
        return len(returned)

    async def _release_schedule_claims(self, scheduler_id: str) -> int:
        table = self._t_schedules
        async with self._begin_transaction() as conn:
            claimed = select(table.c.id).where(table.c.acquired_by == scheduler_id)
            ids = {row.id for row in (await self._execute(conn, claimed)).all()}
            if not ids:
                return 0
            await self._execute(
                conn,
                table.update()
                .where(table.c.acquired_by == scheduler_id)
                .values(acquired_by=None, acquired_until=None),
            )
        for schedule in await self.get_schedules(ids):
            await self._event_broker.publish(
                ScheduleUpdated(
                    schedule_id=schedule.id,
                    task_id=schedule.task_id,
                    next_fire_time=schedule.next_fire_time,
                )
            )
        return len(ids)


def _as_utc(value: Any) -> Any:
    """A fire time as read back from the ledger: asyncpg returns the earliest timestamps
    (year 1) without their zone, which is UTC."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _reason(exc: BaseException) -> str:
    """The error and its causes (4.0.0a6's DeserializationError has an empty message)."""
    parts: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(parts) < 3:
        part = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        if part not in parts:
            parts.append(part)
        cause = cause.__cause__
    return " <- ".join(parts)


async def ensure_schema(engine: AsyncEngine, schema: str) -> None:
    """Create a PostgreSQL schema once, even when several processes start together.

    4.0.0a6 runs CREATE SCHEMA IF NOT EXISTS concurrently from every process, which races
    (a unique violation on pg_namespace); an advisory lock serializes it.
    """
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        await conn.execute(CreateSchema(schema, if_not_exists=True))
