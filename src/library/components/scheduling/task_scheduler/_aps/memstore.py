"""The in-memory data store: indexed, so no operation scans every schedule or job.

Replaces APScheduler 4.0.0a6's ``MemoryDataStore`` (written against its ``DataStore``
interface, not derived from its code). The stock store keeps every schedule in one sorted
list and every job in one dict, and scans them: ``get_schedules({id})`` reads every schedule
(so adding jobs at run time was O(n)), ``acquire_jobs`` reads every queued job. Here:

- schedules: a dict by id, and per fire time a slot (a list) of the schedules due then, with a
  heap of those fire times. Schedules that fire together (the common case) share one slot:
  per idle schedule, one list reference. A paused or finished schedule is in no slot, so the
  schedule loop cannot spin on a paused one (trap 9), and nothing else indexes schedules, so
  a removed schedule leaves nothing behind (trap 10). References made stale by a replace,
  pause or removal are skipped when met and dropped by a rebuild once they outnumber the
  schedules (amortized O(1));
- jobs: a dict by id, a FIFO of queued jobs, and per task a FIFO of jobs waiting for a
  ``max_running_jobs`` slot, moved back to the front of the queue when a slot frees;
- events are built only when the event broker has a subscriber for them (our
  :class:`LeanEventBroker` says so; any other broker gets every event, as before);
- the engine of :mod:`._engine` registers wake-up callbacks (:meth:`MemoryStore.add_wakers`)
  instead of receiving a ``JobAdded``/``ScheduleUpdated`` event per fire.

Semantics kept from the stock store: a replaced task keeps its running-job count; a schedule's
or job's lease that expired may be taken again; start deadlines are enforced at acquire time;
results are kept only with ``result_expiration_time > 0``; ``cleanup()`` drops expired
results, releases jobs whose lease expired as ``abandoned``, and removes finished schedules
that have no job left.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from heapq import heappop, heappush
from logging import Logger
from uuid import UUID

import attrs
from apscheduler import (
    ConflictingIdError,
    ConflictPolicy,
    Event,
    Job,
    JobAcquired,
    JobAdded,
    JobOutcome,
    JobReleased,
    JobResult,
    Schedule,
    ScheduleAdded,
    ScheduleRemoved,
    ScheduleResult,
    ScheduleUpdated,
    Task,
    TaskAdded,
    TaskLookupError,
    TaskRemoved,
    TaskUpdated,
)
from apscheduler.abc import EventBroker
from apscheduler.datastores.base import BaseDataStore
from apscheduler.triggers.interval import IntervalTrigger

from .._clock import utcnow
from .._shared import SHARED_EMPTY
from .pin import require_engine_version

require_engine_version()

_zero = timedelta(0)
_set = object.__setattr__
"""Sets an attrs field without its converter: only for values that are already what the
converter would return (aware datetimes or None), on this hot path."""

ScheduleWaker = Callable[[datetime | None], None]
JobWaker = Callable[[], None]


def _set_time(obj: object, name: str, value: datetime | None) -> None:
    """Set a datetime field; naive values go through attrs' converter as before."""
    if value is None or value.tzinfo is not None:
        _set(obj, name, value)
    else:
        setattr(obj, name, value)


def _always(event_type: type[Event]) -> bool:
    return True


@attrs.define(eq=False, repr=False)
class MemoryStore(BaseDataStore):
    """Tasks, schedules and jobs in memory, for one process; every operation is indexed."""

    _tasks: dict[str, Task] = attrs.field(init=False, factory=dict)
    _schedules: dict[str, Schedule] = attrs.field(init=False, factory=dict)
    """Every schedule, by id."""
    _slots: dict[datetime, list[Schedule]] = attrs.field(init=False, factory=dict)
    """Per fire time, the schedules due then, in the order they got it. A schedule can
    only be in its current next_fire_time's slot; replaced, removed, paused, acquired or
    rescheduled ones are skipped when met (stale) and dropped by a rebuild now and then."""
    _fire_times: list[datetime] = attrs.field(init=False, factory=list)
    """Heap of the slots' fire times, each once."""
    _stale: int = attrs.field(init=False, default=0)
    _shared_values: dict[object, object] = attrs.field(init=False, factory=dict)
    """One object per distinct interval (timedelta or float) of the stored triggers."""
    _acquired: dict[str, Schedule] = attrs.field(init=False, factory=dict)
    """Schedules a scheduler has acquired and not released yet (out of the heap meanwhile)."""
    _jobs: dict[int, Job] = attrs.field(init=False, factory=dict)
    """Every job, by ``job.id.int`` (an int hashes in C; a UUID through two Python calls)."""
    _queue: deque[Job] = attrs.field(init=False, factory=deque)
    """Jobs ready to be acquired, oldest first."""
    _waiting: dict[str, deque[Job]] = attrs.field(init=False, factory=dict)
    """Per task, queued jobs that found the task at its max_running_jobs."""
    _held: dict[int, Job] = attrs.field(init=False, factory=dict)
    """Acquired jobs, by ``job.id.int``."""
    _next_lease_check: datetime | None = attrs.field(init=False, default=None)
    """No held job's lease expires before this (a lower bound; None: no job is held)."""
    _job_results: dict[UUID, JobResult] = attrs.field(init=False, factory=dict)
    _schedule_wakers: list[ScheduleWaker] = attrs.field(init=False, factory=list)
    _job_wakers: list[JobWaker] = attrs.field(init=False, factory=list)
    _wants: Callable[[type[Event]], bool] = attrs.field(init=False, default=_always)
    _now: Callable[[], datetime] = attrs.field(kw_only=True, default=utcnow)
    """The clock's ``now`` (a virtual one in tests): leases and start deadlines follow it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    async def start(
        self, exit_stack: AsyncExitStack, event_broker: EventBroker, logger: Logger
    ) -> None:
        await super().start(exit_stack, event_broker, logger)
        # A broker that can tell whether anyone listens (ours) spares building unheard events.
        wants = getattr(event_broker, "wants", None)
        self._wants = wants if callable(wants) else _always

    def add_wakers(
        self, *, schedules: ScheduleWaker | None = None, jobs: JobWaker | None = None
    ) -> Callable[[], None]:
        """Call ``schedules(next_fire_time)`` when a schedule is added or replaced, and
        ``jobs()`` when a job is queued or unblocked; returns the function that unregisters."""
        if schedules is not None:
            self._schedule_wakers.append(schedules)
        if jobs is not None:
            self._job_wakers.append(jobs)

        def remove() -> None:
            if schedules is not None and schedules in self._schedule_wakers:
                self._schedule_wakers.remove(schedules)
            if jobs is not None and jobs in self._job_wakers:
                self._job_wakers.remove(jobs)

        return remove

    def wants(self, event_type: type[Event]) -> bool:
        """True if publishing an event of this type reaches someone."""
        return self._wants(event_type)

    # ------------------------------------------------------------------------ tasks

    def _compact_task(self, task: Task) -> None:
        """Share what equal tasks can share (see :meth:`_compact_schedule`)."""
        if type(task.metadata) is dict and not task.metadata:
            _set(task, "metadata", SHARED_EMPTY)
        if task.func is not None:
            _set(task, "func", sys.intern(task.func))  # "module:qualname", often the same

    def _compact_schedule(self, schedule: Schedule) -> None:
        """Share the immutable or empty values idle schedules repeat (same values, one
        object): about 170 B per schedule. Only values nobody mutates are shared: APScheduler
        only ever copies a schedule's kwargs and metadata (jobs get copies; pause and replace
        build a new schedule), and :data:`SHARED_EMPTY` refuses to be changed in place."""
        if type(schedule.kwargs) is dict and not schedule.kwargs:
            _set(schedule, "kwargs", SHARED_EMPTY)
        if type(schedule.metadata) is dict and not schedule.metadata:
            _set(schedule, "metadata", SHARED_EMPTY)
        if schedule.job_result_expiration_time == _zero:
            _set(schedule, "job_result_expiration_time", _zero)
        trigger = schedule.trigger
        if type(trigger) is IntervalTrigger:
            # Its timedelta and float fields: one object per distinct value.
            for name in ("_interval", "weeks", "days", "hours", "minutes", "seconds"):
                value = getattr(trigger, name)
                if type(value) is int:
                    continue  # small ints are shared already
                shared = self._shared_values.get(value)
                if shared is None and len(self._shared_values) < 4096:
                    self._shared_values[value] = shared = value
                if shared is not None and shared is not value:
                    _set(trigger, name, shared)

    async def add_task(self, task: Task) -> None:
        self._compact_task(task)
        old = self._tasks.get(task.id)
        self._tasks[task.id] = task
        if old is not None:
            task.running_jobs = old.running_jobs
            # The limit may have changed: let its waiting jobs try again.
            self._unblock(task.id, every=True)
            if self._wants(TaskUpdated):
                await self._event_broker.publish(TaskUpdated(task_id=task.id))
        elif self._wants(TaskAdded):
            await self._event_broker.publish(TaskAdded(task_id=task.id))

    async def remove_task(self, task_id: str) -> None:
        try:
            del self._tasks[task_id]
        except KeyError:
            raise TaskLookupError(task_id) from None
        self._unblock(task_id, every=True)
        if self._wants(TaskRemoved):
            await self._event_broker.publish(TaskRemoved(task_id=task_id))

    async def get_task(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskLookupError(task_id) from None

    async def get_tasks(self) -> list[Task]:
        return sorted(self._tasks.values())

    # ------------------------------------------------------------------------ schedules

    async def get_schedules(self, ids: set[str] | None = None) -> list[Schedule]:
        schedules = self._schedules
        if ids is None:
            return list(schedules.values())
        return [schedules[schedule_id] for schedule_id in ids if schedule_id in schedules]

    def _enter(self, schedule: Schedule) -> None:
        """Make ``schedule`` the current one for its id; in its fire time's slot if it can
        fire."""
        self._schedules[schedule.id] = schedule
        self._slot(schedule)

    def _slot(self, schedule: Schedule) -> None:
        """Put the current ``schedule`` in its fire time's slot, if it can fire."""
        fire_time = schedule.next_fire_time
        if fire_time is not None and not schedule.paused:
            slot = self._slots.get(fire_time)
            if slot is None:
                self._slots[fire_time] = [schedule]
                heappush(self._fire_times, fire_time)
            else:
                slot.append(schedule)

    def _can_fire_at(self, schedule: Schedule, fire_time: datetime) -> bool:
        """True unless ``schedule`` went stale in the slot of ``fire_time``: replaced,
        removed, paused, acquired, or moved to another time since it was put there."""
        return (
            schedule.acquired_by is None
            and schedule.next_fire_time == fire_time
            and not schedule.paused
            and self._schedules.get(schedule.id) is schedule
        )

    def _went_stale(self) -> None:
        """A schedule in a slot was replaced or removed: rebuild the slots once stale
        references outnumber the schedules (amortized O(1))."""
        self._stale += 1
        if self._stale > len(self._schedules) + 64:
            self._stale = 0
            self._slots, self._fire_times = {}, []
            for schedule in list(self._schedules.values()):
                if schedule.acquired_by is None:
                    self._enter(schedule)

    async def add_schedule(self, schedule: Schedule, conflict_policy: ConflictPolicy) -> None:
        replaced = schedule.id in self._schedules
        if replaced:
            if conflict_policy is ConflictPolicy.do_nothing:
                return
            if conflict_policy is ConflictPolicy.exception:
                raise ConflictingIdError(schedule.id)  # type: ignore[no-untyped-call]
            self._acquired.pop(schedule.id, None)
            self._went_stale()
        self._compact_schedule(schedule)
        self._enter(schedule)
        for wake in self._schedule_wakers:
            wake(schedule.next_fire_time)
        event_type = ScheduleUpdated if replaced else ScheduleAdded
        if self._wants(event_type):
            await self._event_broker.publish(
                event_type(
                    schedule_id=schedule.id,
                    task_id=schedule.task_id,
                    next_fire_time=schedule.next_fire_time,
                )
            )

    async def remove_schedules(self, ids: Iterable[str], *, finished: bool = False) -> None:
        for schedule_id in list(ids):
            schedule = self._schedules.pop(schedule_id, None)
            if schedule is None:
                continue
            self._acquired.pop(schedule_id, None)
            self._went_stale()
            if self._wants(ScheduleRemoved):
                await self._event_broker.publish(
                    ScheduleRemoved(
                        schedule_id=schedule_id, task_id=schedule.task_id, finished=finished
                    )
                )

    async def acquire_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Schedule]:
        return self.take_schedules(scheduler_id, lease_duration, limit)

    def take_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Schedule]:
        """:meth:`acquire_schedules` without a coroutine (it never suspends): the engine's
        fast path."""
        now = self._now()
        until = now + lease_duration
        schedules: list[Schedule] = []
        if self._acquired:
            # Held and never released: ours again at once (a restarted loop), anyone's after
            # the lease (a scheduler that died).
            for schedule in list(self._acquired.values()):
                if len(schedules) >= limit:
                    break
                next_fire_time = schedule.next_fire_time
                if next_fire_time is None or next_fire_time > now:
                    continue
                held_until = schedule.acquired_until
                if schedule.acquired_by != scheduler_id and (
                    held_until is not None and now <= held_until
                ):
                    continue
                _set(schedule, "acquired_by", scheduler_id)
                _set(schedule, "acquired_until", until)
                schedules.append(schedule)
        fire_times, slots, acquired = self._fire_times, self._slots, self._acquired
        can_fire_at = self._can_fire_at
        while fire_times and len(schedules) < limit:
            fire_time = fire_times[0]
            if fire_time > now:
                break
            slot = slots[fire_time]
            taken = 0
            for schedule in slot:
                if len(schedules) >= limit:
                    break
                taken += 1
                if can_fire_at(schedule, fire_time):
                    _set(schedule, "acquired_by", scheduler_id)
                    _set(schedule, "acquired_until", until)
                    acquired[schedule.id] = schedule
                    schedules.append(schedule)
            if taken < len(slot):
                del slot[:taken]
            else:
                del slots[fire_time]
                heappop(fire_times)
        return schedules

    async def release_schedules(self, scheduler_id: str, results: Sequence[ScheduleResult]) -> None:
        wants_event = self._wants(ScheduleUpdated)
        for result in results:
            schedule = self.reschedule(
                result.schedule_id, result.last_fire_time, result.next_fire_time
            )
            if schedule is not None and wants_event:
                await self._event_broker.publish(
                    ScheduleUpdated(
                        schedule_id=schedule.id,
                        task_id=schedule.task_id,
                        next_fire_time=schedule.next_fire_time,
                    )
                )

    def reschedule(
        self, schedule_id: str, last_fire_time: datetime, next_fire_time: datetime | None
    ) -> Schedule | None:
        """Release one acquired schedule with its new fire times (no event; the engine's
        fast path, which publishes ``ScheduleUpdated`` itself only if someone listens)."""
        schedule = self._schedules.get(schedule_id)
        if schedule is None:
            return None  # removed while it was being processed
        self._acquired.pop(schedule_id, None)
        if last_fire_time.tzinfo is not None and (
            next_fire_time is None or next_fire_time.tzinfo is not None
        ):  # the engine's (aware) times: nothing to convert
            _set(schedule, "last_fire_time", last_fire_time)
            _set(schedule, "next_fire_time", next_fire_time)
        else:
            _set_time(schedule, "last_fire_time", last_fire_time)
            _set_time(schedule, "next_fire_time", next_fire_time)
        _set(schedule, "acquired_by", None)
        _set(schedule, "acquired_until", None)
        self._slot(schedule)  # (it is the current one for its id already)
        return schedule

    async def get_next_schedule_run_time(self) -> datetime | None:
        return self.next_run_time()

    def next_run_time(self) -> datetime | None:
        """The earliest fire time of a schedule that can fire (paused ones cannot)."""
        fire_times, slots = self._fire_times, self._slots
        earliest: datetime | None = None
        while fire_times:
            fire_time = fire_times[0]
            slot = slots[fire_time]
            stale = 0
            for schedule in slot:
                if self._can_fire_at(schedule, fire_time):
                    break
                stale += 1
            if stale < len(slot):
                del slot[:stale]
                earliest = fire_time
                break
            del slots[fire_time]  # nothing left to fire then
            heappop(fire_times)
        for schedule in self._acquired.values():
            # Held by a scheduler: due again for the others when its lease ends.
            candidate = schedule.acquired_until
            if schedule.next_fire_time is not None and candidate is not None:
                candidate = max(candidate, schedule.next_fire_time)
                if earliest is None or candidate < earliest:
                    earliest = candidate
        return earliest

    # ------------------------------------------------------------------------ jobs

    async def add_job(self, job: Job) -> None:
        self.queue_job(job)
        if self._wants(JobAdded):
            await self._event_broker.publish(
                JobAdded(job_id=job.id, task_id=job.task_id, schedule_id=job.schedule_id)
            )

    def queue_job(self, job: Job) -> None:
        """Queue a job and wake the job loops (no event)."""
        self._jobs[job.id.int] = job
        self._queue.append(job)
        for waker in self._job_wakers:
            waker()

    def queue_jobs(self, jobs: list[Job]) -> None:
        """Queue a batch of jobs, waking nobody and publishing nothing: the engine's fast
        path, which wakes its job loop and publishes ``JobAdded`` (if wanted) itself."""
        by_id = self._jobs
        for job in jobs:
            by_id[job.id.int] = job
        self._queue.extend(jobs)

    async def get_jobs(self, ids: Iterable[UUID] | None = None) -> list[Job]:
        jobs = self._jobs
        if ids is None:
            return list(jobs.values())
        keys = dict.fromkeys(job_id.int for job_id in ids)
        return [jobs[key] for key in keys if key in jobs]

    async def acquire_jobs(
        self, scheduler_id: str, lease_duration: timedelta, limit: int | None = None
    ) -> list[Job]:
        missed: list[Job] = []
        acquired = self.take_jobs(scheduler_id, lease_duration, limit, missed)
        if missed or (acquired and self._wants(JobAcquired)):
            await self.after_take(scheduler_id, acquired, missed)
        return acquired

    async def after_take(self, scheduler_id: str, acquired: list[Job], missed: list[Job]) -> None:
        """What :meth:`acquire_jobs` does after :meth:`take_jobs`, when there is anything to
        do: publish ``JobAcquired`` (if wanted) and release the ``missed`` jobs."""
        if acquired and self._wants(JobAcquired):
            for job in acquired:
                await self._event_broker.publish(
                    JobAcquired.from_job(job, scheduler_id=scheduler_id)
                )
        now = self._now()
        for job in missed:
            result = JobResult.from_job(job, JobOutcome.missed_start_deadline, finished_at=now)
            await self.release_job(scheduler_id, job, result)

    def take_jobs(
        self,
        scheduler_id: str,
        lease_duration: timedelta,
        limit: int | None,
        missed: list[Job],
    ) -> list[Job]:
        """Acquire queued jobs without a coroutine: the engine's fast path. Jobs past their
        start deadline go to ``missed`` instead; the caller must then await
        :meth:`after_take` (also when someone subscribes to ``JobAcquired``)."""
        now = self._now()
        if self._next_lease_check is not None and now > self._next_lease_check:
            self._requeue_expired(now)
        until = now + lease_duration
        acquired: list[Job] = []
        queue, jobs, tasks, held = self._queue, self._jobs, self._tasks, self._held
        while queue and (limit is None or len(acquired) < limit):
            job = queue.popleft()
            key = job.id.int
            if jobs.get(key) is not job:
                continue  # released before it was acquired
            if job.start_deadline is not None and job.start_deadline < now:
                missed.append(job)
                continue
            task = tasks.get(job.task_id)
            if task is not None:
                limit_ = task.max_running_jobs
                if limit_ is not None and task.running_jobs >= limit_:
                    self._waiting.setdefault(job.task_id, deque()).append(job)
                    continue
                # running_jobs has no converter or validator: attrs' __setattr__ adds nothing.
                _set(task, "running_jobs", task.running_jobs + 1)
            _set(job, "acquired_by", scheduler_id)
            _set(job, "acquired_until", until)
            held[key] = job
            acquired.append(job)
        if acquired and self._next_lease_check is None:
            self._next_lease_check = until
        return acquired

    def wants_acquired_events(self) -> bool:
        """True if :meth:`after_take` must run for acquired jobs (someone hears of them)."""
        return self._wants(JobAcquired)

    def _requeue_expired(self, now: datetime) -> None:
        """Jobs whose lease expired go back to the front of the queue (as in the stock
        store, another acquire may take them); recompute the next check."""
        earliest: datetime | None = None
        expired: list[Job] = []
        for job in self._held.values():
            until = job.acquired_until
            if until is not None and until < now:
                expired.append(job)
            elif until is not None and (earliest is None or until < earliest):
                earliest = until
        for job in reversed(expired):
            del self._held[job.id.int]
            self._give_back_slot(job.task_id)
            _set(job, "acquired_by", None)
            _set(job, "acquired_until", None)
            self._queue.appendleft(job)
        self._next_lease_check = earliest

    def _give_back_slot(self, task_id: str) -> None:
        task = self._tasks.get(task_id)
        if task is not None:
            _set(task, "running_jobs", task.running_jobs - 1)
            if task_id in self._waiting:
                self._unblock(task_id, every=False)

    def _unblock(self, task_id: str, *, every: bool) -> None:
        """Put a task's first waiting job (or all of them) back at the front of the queue."""
        waiting = self._waiting.get(task_id)
        if not waiting:
            return
        if every:
            del self._waiting[task_id]
            self._queue.extendleft(reversed(waiting))
        else:
            self._queue.appendleft(waiting.popleft())
            if not waiting:
                del self._waiting[task_id]
        for waker in self._job_wakers:
            waker()

    async def release_job(self, scheduler_id: str, job: Job, result: JobResult) -> None:
        if result.expires_at > result.finished_at:
            self._job_results[result.job_id] = result
        self.forget_job(job)
        if self._wants(JobReleased):
            await self._event_broker.publish(
                JobReleased.from_result(
                    result, scheduler_id, job.task_id, job.schedule_id, job.scheduled_fire_time
                )
            )

    def forget_job(self, job: Job) -> None:
        """Drop a finished job and give its task slot back (no result, no event: the
        engine's fast path, used when neither is wanted)."""
        key = job.id.int
        if self._jobs.pop(key, None) is None:
            return
        if self._held.pop(key, None) is not None and job.acquired_by:
            self._give_back_slot(job.task_id)
            if not self._held:
                self._next_lease_check = None

    def needs_job_result(self, job: Job) -> bool:
        """True if releasing ``job`` must build a ``JobResult`` (kept, or sent in an event)."""
        return job.result_expiration_time > _zero or self._wants(JobReleased)

    async def get_job_result(self, job_id: UUID) -> JobResult | None:
        return self._job_results.pop(job_id, None)

    async def extend_acquired_schedule_leases(
        self, scheduler_id: str, schedule_ids: set[str], duration: timedelta
    ) -> None:
        until = self._now() + duration
        for schedule_id in schedule_ids:
            schedule = self._acquired.get(schedule_id)
            if schedule is not None and schedule.acquired_by == scheduler_id:
                _set(schedule, "acquired_until", until)

    async def extend_acquired_job_leases(
        self, scheduler_id: str, job_ids: set[UUID], duration: timedelta
    ) -> None:
        until = self._now() + duration
        for job_id in job_ids:
            job = self._held.get(job_id.int)
            if job is not None and job.acquired_by == scheduler_id:
                _set(job, "acquired_until", until)

    async def reap_abandoned_jobs(self, scheduler_id: str) -> None:
        now = self._now()
        for job in [job for job in self._held.values() if job.acquired_by == scheduler_id]:
            result = JobResult.from_job(job, JobOutcome.abandoned, finished_at=now)
            await self.release_job(scheduler_id, job, result)

    async def cleanup(self) -> None:
        now = self._now()
        for job_id in [
            job_id for job_id, result in self._job_results.items() if result.expires_at <= now
        ]:
            del self._job_results[job_id]
        expired = [
            job
            for job in self._held.values()
            if job.acquired_until is not None and job.acquired_until < now
        ]
        for job in expired:
            assert job.acquired_by is not None
            result = JobResult.from_job(job, JobOutcome.abandoned, finished_at=now)
            await self.release_job(job.acquired_by, job, result)
        with_jobs = {job.schedule_id for job in self._jobs.values()}
        finished = [
            schedule_id
            for schedule_id, schedule in self._schedules.items()
            if schedule.next_fire_time is None and schedule_id not in with_jobs
        ]
        await self.remove_schedules(finished, finished=True)

    # ------------------------------------------------------------------------ for tests

    def stats(self) -> dict[str, int]:
        """Sizes of every index (tests check that nothing is left behind)."""
        return {
            "tasks": len(self._tasks),
            "schedules": len(self._schedules),
            "slots": sum(len(slot) for slot in self._slots.values()),
            "acquired": len(self._acquired),
            "jobs": len(self._jobs),
            "queue": len(self._queue),
            "waiting": sum(len(waiting) for waiting in self._waiting.values()),
            "held": len(self._held),
            "results": len(self._job_results),
            "wakers": len(self._schedule_wakers) + len(self._job_wakers),
        }
