"""The APScheduler engine our scheduler drives: one place that builds it.

For SQL stores this is :class:`~.sqlengine.SQLEngine`, a stock ``AsyncScheduler`` whose
runs wait for their fire time (its store claims them a little ahead). For the memory store it is
:class:`MemoryEngine`, an ``AsyncScheduler`` whose schedule loop, job loop and per-job runner
are replaced by leaner ones written for our :class:`MemoryStore` (and, unless Redis was
configured, with our :class:`LeanEventBroker`). Same engine, same rules (every job runs in a
task the engine owns and that it cancels and waits for at stop; a job's ``SystemExit`` or
``KeyboardInterrupt`` still propagates), a fraction of the CPU per fire: see ``bench/``.

Each override is written against APScheduler 4.0.0a6 (checked at import) and says what it
replaces and why; re-check them all on any engine upgrade.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from itertools import count
from typing import Any, cast
from uuid import UUID, SafeUUID

import anyio
import anyio.lowlevel
import attrs
import sniffio
from anyio import CancelScope, create_task_group, move_on_after
from anyio.abc import TaskStatus
from apscheduler import (
    AsyncScheduler,
    CoalescePolicy,
    Job,
    JobAdded,
    JobOutcome,
    JobResult,
    RunState,
    Schedule,
    SchedulerStarted,
    ScheduleUpdated,
    Task,
    TaskLookupError,
    current_job,
)
from apscheduler._structures import MetadataType
from apscheduler._utils import UnsetValue, unset
from apscheduler.abc import DataStore, EventBroker, JobExecutor, Trigger
from apscheduler.eventbrokers.local import LocalEventBroker
from apscheduler.triggers.interval import IntervalTrigger

from .._clock import REAL_CLOCK, Clock, EngineProbe, TimeKeeper
from .._log import engine_logger
from .broker import LeanEventBroker
from .jobtasks import AsyncioJobs, JobTasks, RunJob, TaskGroupJobs, TrioJobs
from .memstore import MemoryStore
from .pin import require_engine_version

require_engine_version()

EXECUTOR_NAME = "task_scheduler"
MEMORY_TASK_ID = "library.components.scheduling.task_scheduler:jobs"
"""The one engine task every job on the memory store is scheduled under (on persistent stores
each job has its own, whose ``max_running_jobs`` limits it across processes). An engine task
costs about 180 B (the Task, two dict entries); jobs are told apart by schedule id instead."""
SCHEDULE_BATCH = 100
"""Due schedules processed per turn of the schedule loop (the stock loop's batch too)."""


def run_by_executor() -> None:
    """The callable of :data:`MEMORY_TASK_ID`, never called: :class:`TaskExecutor` runs each
    job's own callable, found by the job's schedule id."""
    raise RuntimeError("run_by_executor() is a placeholder for the engine; it is never called")


_utc = timezone.utc
_zero = timedelta(0)
_microsecond = timedelta(microseconds=1)
_set = object.__setattr__
_STARTED = RunState.started  # (an enum member read from its class costs a descriptor call)


def make_engine(
    *,
    data_store: DataStore,
    event_broker: EventBroker,
    executor: JobExecutor,
    identity: str,
    max_concurrent_jobs: int,
    lease_duration: timedelta | None = None,
    cleanup_interval: timedelta | None = None,
    clock: Clock = REAL_CLOCK,
) -> AsyncScheduler:
    """An ``AsyncScheduler`` whose only job executor is ours (the lean one on memory://).

    ``lease_duration`` and ``cleanup_interval``: the engine's, when given (SQL stores).
    ``clock``: the time the memory engine reads and waits by (a virtual one in tests).
    """
    settings: dict[str, Any] = {}
    if lease_duration is not None:
        settings["lease_duration"] = lease_duration
    if cleanup_interval is not None:
        settings["cleanup_interval"] = cleanup_interval
    engine_class: type[AsyncScheduler]
    if isinstance(data_store, MemoryStore):
        engine_class = MemoryEngine
        settings["clock"] = clock
        if type(event_broker) is LocalEventBroker:
            # In-process only, like the stock local broker; a Redis broker is kept as given.
            event_broker = LeanEventBroker()
    else:  # (SQLAlchemy comes with an extra: imported only here)
        from .sqlengine import SQLEngine
        from .sqlstore import SQLStore

        engine_class = SQLEngine if isinstance(data_store, SQLStore) else AsyncScheduler
    return engine_class(
        data_store=data_store,
        event_broker=event_broker,
        identity=identity,
        max_concurrent_jobs=max_concurrent_jobs,
        job_executors={EXECUTOR_NAME: executor},
        logger=engine_logger,
        **settings,
    )


# ---------------------------------------------------------------------------- fast jobs

_JOB_FIELDS = (
    "id", "task_id", "args", "kwargs", "schedule_id", "scheduled_fire_time", "executor",
    "jitter", "start_deadline", "result_expiration_time", "metadata", "created_at",
    "acquired_by", "acquired_until",
)  # fmt: skip
_FAST_JOBS = tuple(field.name for field in attrs.fields(Job)) == _JOB_FIELDS
"""Jobs are built without attrs' __init__ only while Job has exactly these fields."""

_VERSION_BITS = 4 << 76
_VARIANT_BITS = 0x8000 << 48
_PREFIX_MASK = ((1 << 128) - (1 << 64)) & ~(0xF000 << 64)
"""The bits of a job id drawn at random once per process: the high 64 but the version."""
_COUNTER_MASK = (1 << 62) - 1
"""The bits below the variant: the job's number in this process."""
_id_base = 0
_next_number: Callable[[], int] = count().__next__


def _new_id_base() -> None:
    """Draw this process's job id prefix (again in a forked child: never its parent's)."""
    global _id_base, _next_number
    prefix = int.from_bytes(os.urandom(16), "big") & _PREFIX_MASK
    _id_base = prefix | _VERSION_BITS | _VARIANT_BITS
    _next_number = count(int.from_bytes(os.urandom(4), "big")).__next__


_new_id_base()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_id_base)

_UNKNOWN_SAFETY = SafeUUID.unknown  # an enum member read per call costs a descriptor call
_set_uuid_int = cast(Callable[[UUID, int], None], UUID.__dict__["int"].__set__)
_set_uuid_safe = cast(Callable[[UUID, SafeUUID], None], UUID.__dict__["is_safe"].__set__)


def _uuid4() -> UUID:
    """A valid version-4 UUID, unique without a random draw per job: 60 random bits drawn
    once per process (two of n processes share them with odds of about n^2 / 2^61), then a
    62-bit counter from a random start. A memory-store job id only has to be a unique UUID
    (APScheduler's ``Job.id``; it leaves the process only in events, when a Redis broker is
    configured): uuid4() per job was 6 % of the CPU per fire, random ids drawn 256 at a time
    still 5 %. Built without ``UUID.__init__``'s argument checks."""
    uuid = _new_uuid(UUID)
    _set_uuid_int(uuid, _id_base | (_next_number() & _COUNTER_MASK))
    _set_uuid_safe(uuid, _UNKNOWN_SAFETY)
    return uuid


_new_uuid = object.__new__
_new_job = object.__new__


def _job_setters() -> tuple[Callable[[Job, Any], None], ...]:
    """The slot setters of Job's fields, in :data:`_JOB_FIELDS` order (a slot's own
    descriptor: no attribute look-up by name per call, as ``object.__setattr__`` makes)."""
    if not _FAST_JOBS:  # pragma: no cover - a changed Job: new_job builds it through attrs
        return (_unused_setter,) * len(_JOB_FIELDS)
    return tuple(Job.__dict__[name].__set__ for name in _JOB_FIELDS)


def _unused_setter(job: Job, value: Any) -> None:  # pragma: no cover - a changed Job
    raise RuntimeError("new_job() builds jobs through attrs while Job's fields differ")


(
    _job_id, _job_task_id, _job_args, _job_kwargs, _job_schedule_id, _job_fire_time,
    _job_executor, _job_jitter, _job_deadline, _job_expiration, _job_metadata, _job_created,
    _job_acquired_by, _job_acquired_until,
) = _job_setters()  # fmt: skip


def new_job(
    schedule: Schedule,
    fire_time: datetime,
    jitter: timedelta,
    start_deadline: datetime | None,
    created_at: datetime,
) -> Job:
    """The job for one fire of ``schedule``, equal to the one the stock loop builds with
    ``Job(...)``, but without attrs' converters and validators: every value comes from a
    schedule that was validated when it was added. (Job() was 13 % of the CPU per fire.)"""
    if not _FAST_JOBS or fire_time.tzinfo is None:  # pragma: no cover - a changed Job
        return Job(
            task_id=schedule.task_id,
            args=schedule.args,
            kwargs=schedule.kwargs,
            schedule_id=schedule.id,
            scheduled_fire_time=fire_time,
            jitter=jitter,
            start_deadline=start_deadline,  # type: ignore[arg-type]
            executor=schedule.job_executor,
            result_expiration_time=schedule.job_result_expiration_time,
            metadata=schedule.metadata.copy(),
            created_at=created_at,
        )
    job: Job = _new_job(Job)
    _job_id(job, _uuid4())
    _job_task_id(job, schedule.task_id)
    _job_args(job, schedule.args)  # a tuple already; tuples are immutable
    _job_kwargs(job, dict(schedule.kwargs))
    _job_schedule_id(job, schedule.id)
    _job_fire_time(job, fire_time)
    _job_executor(job, schedule.job_executor)
    _job_jitter(job, jitter)
    _job_deadline(job, start_deadline)
    _job_expiration(job, schedule.job_result_expiration_time)
    _job_metadata(job, schedule.metadata.copy())
    _job_created(job, created_at)
    _job_acquired_by(job, None)
    _job_acquired_until(job, None)
    return job


def _advance(trigger: Trigger) -> datetime | None:
    """``trigger.next()``; for an ``IntervalTrigger``, the same step without attrs'
    converter on ``_last_fire_time`` (it only ever receives aware datetimes here), which was
    a sixth of the CPU per fire. Mirrors ``IntervalTrigger.next`` of 4.0.0a6: first
    ``start_time``, then one ``_interval`` more each time, None past ``end_time``."""
    if type(trigger) is not IntervalTrigger:
        return trigger.next()
    last: datetime | None = trigger._last_fire_time
    fire_time: datetime = trigger.start_time if last is None else last + trigger._interval
    if fire_time.tzinfo is None:  # pragma: no cover - start_time is converted to aware
        return trigger.next()
    _set(trigger, "_last_fire_time", fire_time)
    end_time = trigger.end_time
    return fire_time if end_time is None or fire_time <= end_time else None


# ---------------------------------------------------------------------------- the engine


@attrs.define(eq=False, repr=False)
class MemoryEngine(AsyncScheduler):
    """``AsyncScheduler`` for the memory store, with three internals replaced.

    - ``_process_schedules``: the stock loop subscribes to ``ScheduleAdded``/``Updated``
      (so every fire built and delivered an event to itself), opens a task group and
      spawns a lease-extension task per batch, builds each ``Job`` through attrs, and
      publishes ``JobAdded`` per job to wake the job loop. Here the store calls our wake-up
      directly, a batch is processed without suspending (so its schedules' leases cannot
      lapse and need no extension task), jobs are built directly (:func:`new_job`), an
      ``IntervalTrigger`` advances without attrs' converter (:func:`_advance`), and the job
      loop is woken once per batch. Events are still published when someone subscribes.
    - ``_process_jobs``: the stock loop spawns every job through anyio's task group (its
      per-task wrapper was 12-23 us a run) and wakes on ``JobAdded``/``JobReleased`` events.
      Here each job is a plain asyncio task (asyncio: held in a dict, cancelled and awaited
      when the loop stops; a job's failure fails the loop, as a task group's child would) or
      a task in a trio nursery the loop owns (trio); the store and the jobs wake the loop.
      Running jobs are keyed by ``job.id.int`` instead of being hashed as ``Job`` objects.
    - ``_run_job``: the stock runner builds a ``JobResult`` and a ``JobReleased`` event per
      job; here they are built only when a result is kept or someone subscribes. Outcomes,
      log levels, ``current_job`` and the propagation of ``BaseException`` are as in 4.0.0a6
      (the log messages are our own words).

    Nothing else changes: the public methods (``add_schedule``, ``add_job``, ``run_job``,
    ``subscribe``, ``stop`` ...) and ``run_until_stopped`` are APScheduler's own.
    """

    _jobs_wakeup: anyio.Event | None = attrs.field(init=False, default=None)
    _running: dict[int, Job] = attrs.field(init=False, factory=dict)
    """Jobs started and not finished, by ``job.id.int`` (replaces the stock ``_running_jobs``
    set: a Job hashes through two Python-level ``__hash__`` calls)."""
    _jobs: JobTasks = attrs.field(init=False, factory=lambda: JobTasks())
    _job_tasks: dict[int, asyncio.Task[None]] | None = attrs.field(init=False, default=None)
    """The asyncio job tasks by ``job.id.int`` (each removes itself when it ends)."""
    _log_info: bool = attrs.field(init=False, default=False)
    """Whether the logger takes INFO records, read once per job loop turn (not per job)."""
    clock: Clock = attrs.field(kw_only=True, default=REAL_CLOCK)
    """The time this engine reads and waits by; a virtual clock (tests) swaps the schedule
    loop's wait and counts each job as a unit of work (chosen once, as each loop starts)."""
    _now: Callable[[], datetime] = attrs.field(
        init=False, default=attrs.Factory(lambda self: self.clock.now, takes_self=True)
    )

    def _memory_store(self) -> MemoryStore:
        store = self.data_store
        if not isinstance(store, MemoryStore):  # pragma: no cover - make_engine ensures it
            raise TypeError(f"{type(self).__name__} needs a MemoryStore, got {store!r}")
        return store

    # ------------------------------------------------------------------ tasks

    async def configure_task(
        self,
        func_or_task_id: Task | str | Callable[..., Any],
        *,
        func: Callable[..., Any] | UnsetValue = unset,
        job_executor: str | UnsetValue = unset,
        misfire_grace_time: float | timedelta | UnsetValue | None = unset,
        max_running_jobs: int | UnsetValue | None = unset,
        metadata: MetadataType | UnsetValue = unset,
    ) -> Task:
        """4.0.0a6's, with a shortcut for the call ``add_schedule`` makes for every schedule:
        a stored task's id and nothing else. The stock method then rebuilds the task's
        parameters, merges the (empty) default metadata and compares, to return the stored
        task unchanged: a fifth of the time to add a schedule. Here, the stored task at once."""
        if (
            type(func_or_task_id) is str
            and func is unset
            and job_executor is unset
            and misfire_grace_time is unset
            and max_running_jobs is unset
            and metadata is unset
            and not self.task_defaults.metadata
        ):
            try:
                return await self.data_store.get_task(func_or_task_id)
            except TaskLookupError:
                pass  # the stock method makes it
        return await super().configure_task(
            func_or_task_id,
            func=func,
            job_executor=job_executor,
            misfire_grace_time=misfire_grace_time,
            max_running_jobs=max_running_jobs,
            metadata=metadata,
        )

    # ------------------------------------------------------------------ schedules

    async def _process_schedules(self, *, task_status: TaskStatus[None]) -> None:
        if self.clock.virtual:
            await self._process_schedules_virtually(task_status=task_status)
            return
        store = self._memory_store()
        wakeup = anyio.Event()
        sleeping_until: datetime | None = None

        def schedule_changed(next_fire_time: datetime | None) -> None:
            # Replaces the stock ScheduleAdded/ScheduleUpdated subscription (same test).
            if sleeping_until is None or (
                next_fire_time is not None and next_fire_time < sleeping_until
            ):
                wakeup.set()

        remove_waker = store.add_wakers(schedules=schedule_changed)
        try:
            task_status.started()
            await self.get_next_event(SchedulerStarted)
            while self._state is _STARTED:
                schedules = store.take_schedules(self.identity, self.lease_duration, SCHEDULE_BATCH)
                if schedules:
                    await self._fire(store, schedules)
                if len(schedules) >= SCHEDULE_BATCH:
                    # More are due: let this batch's jobs start first (the stock loop
                    # yielded here too, leaving its task group).
                    await anyio.lowlevel.checkpoint()
                    continue
                sleeping_until = store.next_run_time()
                delay = None
                if sleeping_until is not None:
                    delay = (sleeping_until - datetime.now(_utc)).total_seconds()
                with move_on_after(delay):
                    await wakeup.wait()
                    wakeup = anyio.Event()
        finally:
            remove_waker()

    async def _process_schedules_virtually(self, *, task_status: TaskStatus[None]) -> None:
        """The schedule loop under a virtual clock: it never waits for a time. The clock,
        when it has moved to a fire time, fires what is due itself (the probe's ``fire``: no
        task switch per instant); the loop only wakes for schedule changes (a job added at
        run time whose first fire is due at once), and then does the same."""
        store = self._memory_store()
        keeper = cast(TimeKeeper, self.clock)
        wakeup = anyio.Event()

        def wake(next_fire_time: datetime | None) -> None:
            wakeup.set()

        def pending() -> bool:
            jobs_wakeup = self._jobs_wakeup
            return wakeup.is_set() or (jobs_wakeup is not None and jobs_wakeup.is_set())

        identity, lease_duration = self.identity, self.lease_duration
        take_schedules, running = store.take_schedules, self._running

        async def fire() -> None:
            while True:
                schedules = take_schedules(identity, lease_duration, SCHEDULE_BATCH)
                if schedules:
                    # The job loop is not woken: its turn is taken right below.
                    jobs, released = self._queue_fires(store, schedules)
                    if store.wants(JobAdded) or store.wants(ScheduleUpdated):
                        # (Set without attrs' __setattr__: 2 % of the time per fire.)
                        jobs_wakeup = self._jobs_wakeup
                        _set(self, "_jobs_wakeup", None)
                        try:
                            await self._publish_fires(store, jobs, released)
                        finally:
                            _set(self, "_jobs_wakeup", jobs_wakeup)
                # The job loop's turn, taken here at once (it wakes, and finds it done).
                free = self.max_concurrent_jobs - len(running)
                if free > 0:
                    await self._start_jobs(store, free, self._jobs.spawn)
                if len(schedules) < SCHEDULE_BATCH:
                    return

        remove_waker = store.add_wakers(schedules=wake)
        detach = keeper.attach_engine(EngineProbe(store.next_run_time, fire, pending))
        try:
            task_status.started()
            await self.get_next_event(SchedulerStarted)
            while self._state is _STARTED:
                await fire()  # what the clock does at an instant: all that is due, jobs started
                await wakeup.wait()
                wakeup = anyio.Event()
        finally:
            remove_waker()
            detach()

    async def _fire(self, store: MemoryStore, schedules: Sequence[Schedule]) -> None:
        """Queue the due jobs of acquired ``schedules`` and release them (never suspends
        unless someone subscribes to ``JobAdded`` or ``ScheduleUpdated``)."""
        jobs, released = self._queue_fires(store, schedules)
        self._wake_jobs()
        if store.wants(JobAdded) or store.wants(ScheduleUpdated):
            await self._publish_fires(store, jobs, released)

    def _queue_fires(
        self, store: MemoryStore, schedules: Sequence[Schedule]
    ) -> tuple[list[Job], list[Schedule]]:
        """Queue the due jobs of acquired ``schedules`` and release them, waking nobody and
        publishing nothing; returns the jobs queued and the schedules released."""
        now = self._now()
        jobs: list[Job] = []
        add = jobs.append
        released: list[Schedule] = []
        reschedule = store.reschedule
        for schedule in schedules:
            first = schedule.next_fire_time
            assert first is not None
            next_fire_time = self._next_fire_time(schedule)
            if (
                (next_fire_time is None or next_fire_time > now)
                and schedule.misfire_grace_time is None
                and not schedule.max_jitter
            ):
                # The common case: one fire due, no deadline, no jitter.
                add(new_job(schedule, first, _zero, None, now))
                last = first
            else:
                fire_times, next_fire_time = self._fire_times(schedule, first, next_fire_time, now)
                for job in self._jobs_for(schedule, fire_times, next_fire_time, now):
                    add(job)
                last = fire_times[-1]
            if reschedule(schedule.id, last, next_fire_time) is not None:
                released.append(schedule)
        store.queue_jobs(jobs)
        return jobs, released

    async def _publish_fires(
        self, store: MemoryStore, jobs: list[Job], released: list[Schedule]
    ) -> None:
        """``JobAdded`` and ``ScheduleUpdated`` of :meth:`_queue_fires`, to those who listen."""
        if store.wants(JobAdded):
            for job in jobs:
                await self.event_broker.publish(
                    JobAdded(job_id=job.id, task_id=job.task_id, schedule_id=job.schedule_id)
                )
        if store.wants(ScheduleUpdated):
            for schedule in released:
                await self.event_broker.publish(
                    ScheduleUpdated(
                        schedule_id=schedule.id,
                        task_id=schedule.task_id,
                        next_fire_time=schedule.next_fire_time,
                    )
                )

    def _next_fire_time(self, schedule: Schedule) -> datetime | None:
        """Advance the trigger once; an error finishes the schedule (logged, as the stock
        loop does, which then kept a stale next fire time: here it becomes None)."""
        try:
            return _advance(schedule.trigger)
        except Exception:
            self.logger.exception(
                "schedule %r (task %r) is finished: its trigger failed to give a next fire time",
                schedule.id,
                schedule.task_id,
            )
            return None

    def _fire_times(
        self, schedule: Schedule, first: datetime, following: datetime | None, now: datetime
    ) -> tuple[list[datetime], datetime | None]:
        """The fire times of ``schedule`` due by ``now`` (``first``, then ``following`` and
        the ones after it, as the coalesce policy keeps them) and its next fire time after
        ``now`` (None: finished)."""
        fire_times = [first]
        coalesce = schedule.coalesce
        fire_time = following
        while fire_time is not None and fire_time <= now:
            if coalesce is CoalescePolicy.all:
                fire_times.append(fire_time)
            elif coalesce is CoalescePolicy.latest:
                fire_times[0] = fire_time
            fire_time = self._next_fire_time(schedule)
        return fire_times, fire_time

    @staticmethod
    def _jobs_for(
        schedule: Schedule,
        fire_times: list[datetime],
        next_fire_time: datetime | None,
        now: datetime,
    ) -> list[Job]:
        """One job per kept fire time, with its jitter and start deadline (stock rules)."""
        jobs = []
        grace = schedule.misfire_grace_time
        max_jitter = schedule.max_jitter.total_seconds() if schedule.max_jitter else 0.0
        last = len(fire_times) - 1
        for index, fire_time in enumerate(fire_times):
            jitter = _zero
            if max_jitter:
                # Never so much jitter that a fire reaches the next one.
                following = fire_times[index + 1] if index < last else next_fire_time
                if following is not None:
                    room = (following - fire_time - _microsecond).total_seconds()
                    max_jitter = min(max_jitter, room)
                jitter = timedelta(seconds=random.uniform(0, max_jitter))
                fire_time += jitter
            deadline = None if grace is None else fire_time + grace
            jobs.append(new_job(schedule, fire_time, jitter, deadline, now))
        return jobs

    # ------------------------------------------------------------------ jobs

    def _wake_jobs(self) -> None:
        wakeup = self._jobs_wakeup
        if wakeup is not None and len(self._running) < self.max_concurrent_jobs:
            wakeup.set()

    async def _process_jobs(self, *, task_status: TaskStatus[None]) -> None:
        store = self._memory_store()
        self._jobs_wakeup = anyio.Event()
        # A task cancelled before its first step never ran its finally: forget it here (the
        # store still holds its job, which reap_abandoned_jobs releases, as in the stock loop).
        self._running.clear()
        await store.reap_abandoned_jobs(self.identity)
        async with AsyncExitStack() as exit_stack:
            for job_executor in self.job_executors.values():
                await job_executor.start(exit_stack)
            task_group = await exit_stack.enter_async_context(create_task_group())
            task_group.start_soon(self._extend_job_leases, store)
            exit_stack.callback(store.add_wakers(jobs=self._wake_jobs))
            library = sniffio.current_async_library()
            jobs: JobTasks
            self._job_tasks = None
            run: RunJob = self._run_job
            virtual: _VirtualJobs | None = None
            if self.clock.virtual:
                virtual = _VirtualJobs(self, cast(TimeKeeper, self.clock))
                run = virtual.run
            if library == "asyncio":
                asyncio_jobs = AsyncioJobs(lambda: self._jobs_wakeup, run)
                jobs = asyncio_jobs
                self._job_tasks = asyncio_jobs.tasks
            elif library == "trio":
                import trio

                nursery = await exit_stack.enter_async_context(trio.open_nursery())
                jobs = TrioJobs(nursery, run)
            else:  # pragma: no cover - anyio runs on asyncio and trio only
                jobs = TaskGroupJobs(task_group, run)
            if virtual is not None:
                jobs = virtual.wrap(jobs)
            self._jobs = jobs
            task_status.started()
            await self.get_next_event(SchedulerStarted)
            running, spawn = self._running, jobs.spawn
            try:
                while self._state is _STARTED:
                    self._log_info = self.logger.isEnabledFor(logging.INFO)
                    free = self.max_concurrent_jobs - len(running)
                    if free > 0:
                        await self._start_jobs(store, free, spawn)
                    await self._jobs_wakeup.wait()
                    self._jobs_wakeup = anyio.Event()
                    jobs.raise_failure()
            finally:
                self._jobs_wakeup = None
                await jobs.close()
                self._job_tasks = None

    async def _start_jobs(
        self, store: MemoryStore, free: int, spawn: Callable[[Job, Callable[..., Any]], None]
    ) -> None:
        """Acquire up to ``free`` queued jobs and start each (the job loop's step, which the
        virtual clock also takes at each instant)."""
        missed: list[Job] = []
        acquired = store.take_jobs(self.identity, self.lease_duration, free, missed)
        if missed or (acquired and store.wants_acquired_events()):
            await store.after_take(self.identity, acquired, missed)
        running, task_callables = self._running, self._task_callables
        for job in acquired:
            func = task_callables.get(job.task_id)
            if func is None:
                func = self._get_task_callable(await store.get_task(job.task_id))
            running[job.id.int] = job
            spawn(job, func)

    async def _extend_job_leases(self, store: MemoryStore) -> None:
        # As the stock loop does: a job running longer than its lease must keep it.
        interval = self.lease_duration.total_seconds() / 2
        while self._state in (RunState.starting, RunState.started):
            await anyio.sleep(interval)
            if job_ids := {job.id for job in self._running.values()}:
                await store.extend_acquired_job_leases(self.identity, job_ids, self.lease_duration)

    async def _run_job(self, job: Job, func: Callable[..., Any], executor: str) -> None:
        store = cast(MemoryStore, self.data_store)  # make_engine ensures it; checked per loop
        try:
            start_time = self._now()
            if job.start_deadline is not None and start_time > job.start_deadline:
                await self._release(store, job, JobOutcome.missed_start_deadline, None, start_time)
                return
            job_executor = self.job_executors.get(executor)
            if job_executor is None:
                return  # trap 13, kept as in the stock runner: the job stays acquired
            token = current_job.set(job)
            try:
                retval = await job_executor.run_job(func, job)
            except anyio.get_cancelled_exc_class():
                self.logger.info("job %s: cancelled", job.id)
                with CancelScope(shield=True):
                    await self._release(store, job, JobOutcome.cancelled, start_time)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    self.logger.exception("job %s: the executor raised", job.id)
                else:
                    self.logger.error("job %s: ended by %s", job.id, type(exc).__name__)
                await self._release(store, job, JobOutcome.error, start_time, exception=exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                if self._log_info:
                    self.logger.info("job %s: success", job.id)
                if store.needs_job_result(job):
                    await self._release(
                        store, job, JobOutcome.success, start_time, return_value=retval
                    )
                else:
                    store.forget_job(job)  # no result kept, nobody listening: nothing to build
            finally:
                current_job.reset(token)
        except BaseException as exc:
            self._jobs.failed(exc)
            raise
        finally:
            key = job.id.int
            self._running.pop(key, None)
            tasks = self._job_tasks
            if tasks is not None:
                tasks.pop(key, None)
            if store._queue:  # a slot is free now: only worth a wake-up if a job waits for it
                self._wake_jobs()

    async def _release(
        self,
        store: MemoryStore,
        job: Job,
        outcome: JobOutcome,
        started_at: datetime | None,
        finished_at: datetime | None = None,
        *,
        exception: BaseException | None = None,
        return_value: Any = None,
    ) -> None:
        if store.needs_job_result(job):
            result = JobResult.from_job(
                job,
                outcome,
                started_at=started_at,
                finished_at=finished_at,
                exception=exception,
                return_value=return_value,
            )
            await store.release_job(self.identity, job, result)
        else:
            store.forget_job(job)


class _VirtualJobs(JobTasks):
    """Under a virtual clock: each job counts as a unit of work from the moment it is spawned
    (so the clock never moves on while a job is about to start) until it ends."""

    def __init__(self, engine: MemoryEngine, keeper: TimeKeeper) -> None:
        self._keeper = keeper
        self._run_job = engine._run_job
        self._units: dict[int, object] = {}
        self._inner = JobTasks()

    def wrap(self, inner: JobTasks) -> JobTasks:
        self._inner = inner
        return self

    def spawn(self, job: Job, func: Callable[..., Any]) -> None:
        label = job.schedule_id  # a scheduled fire's (our job id), else the engine job's
        self._units[job.id.int] = self._keeper.begin(str(job.id) if label is None else label)
        self._inner.spawn(job, func)

    async def run(self, job: Job, func: Callable[..., Any], executor: str) -> None:
        unit = self._units.pop(job.id.int)
        keeper = self._keeper
        task = keeper.enter(unit)  # as keeper.run() would, one coroutine less per run
        try:
            await self._run_job(job, func, executor)
        finally:
            keeper.leave(unit, task)

    def failed(self, exc: BaseException) -> None:
        self._inner.failed(exc)

    def raise_failure(self) -> None:
        self._inner.raise_failure()

    async def close(self) -> None:
        await self._inner.close()
