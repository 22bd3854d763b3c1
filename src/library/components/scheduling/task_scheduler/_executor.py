"""The JobExecutor: runs each fire of a job and records what happened.

APScheduler hands every queued job to :meth:`TaskExecutor.run_job`, inside the engine's job
task group. Here each fire gets its checks (draining, misfire grace, max_instances, jitter),
its attempts (each under a cancel scope when the job has a timeout; sync callables in worker
threads), its retries, and one recorded outcome per attempt. Nothing a job raises leaves this
module, except cancellation and ``BaseException`` such as ``KeyboardInterrupt``.

This is the hot path: per run it allocates one small record and formats no log message that
no handler wants.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import secrets
from collections import deque
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

import anyio
from anyio import CapacityLimiter, get_cancelled_exc_class, to_thread
from apscheduler import Job
from apscheduler.abc import JobExecutor

from ._errors import SchedulerStateError
from ._jobs import JobSpec
from ._models import Outcome, RunCounts, RunInfo

logger = logging.getLogger("library.components.scheduling.task_scheduler")

RETRY_DELAY_CAP = 300.0
"""Seconds: exponential retry backoff never waits longer than this."""

_OUTCOMES = tuple(Outcome)
_OUTCOME_INDEX = {outcome: index for index, outcome in enumerate(_OUTCOMES)}
_LOG_LEVELS = {
    Outcome.success: logging.INFO,
    Outcome.cancelled: logging.INFO,
    Outcome.timed_out: logging.WARNING,
    Outcome.skipped: logging.WARNING,
    Outcome.missed: logging.WARNING,
    Outcome.error: logging.ERROR,
    Outcome.abandoned: logging.ERROR,
}
_utc = timezone.utc


def _now() -> datetime:
    return datetime.now(_utc)


@dataclass(slots=True, eq=False)
class RunRecord:
    """One attempt, as the executor keeps it (a RunInfo is only built when someone asks)."""

    seq: int
    job_id: str
    attempt: int
    scheduled_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: Outcome | None = None
    error_type: str | None = None
    error_message: str | None = None

    def info(self, prefix: str, tz: ZoneInfo) -> RunInfo:
        started, finished = self.started_at, self.finished_at
        duration = None
        if started is not None and finished is not None:
            duration = (finished - started).total_seconds()
        return RunInfo.model_construct(
            run_id=f"{prefix}-{self.seq}",
            job_id=self.job_id,
            attempt=self.attempt,
            scheduled_at=self.scheduled_at.astimezone(tz),
            started_at=None if started is None else started.astimezone(tz),
            finished_at=None if finished is None else finished.astimezone(tz),
            duration=duration,
            outcome=self.outcome,
            error_type=self.error_type,
            error_message=self.error_message,
        )


_NO_RECORDS: tuple[RunRecord, ...] = ()
_NO_COUNTS: tuple[int, ...] = (0,) * len(_OUTCOMES)


@dataclass(slots=True, eq=False)
class JobRuntime:
    """The live state of one job: its spec, runs in progress, history and counters.

    An idle job costs this object only (96 B): its history, runs in progress and counters
    start as shared immutable empties and get their own containers at their first write
    (issue #7: memory per idle schedule).
    """

    spec: JobSpec
    history: deque[RunRecord] | None = None
    """Finished attempts, newest first; made at the first one (an idle job costs no deque)."""
    running: int = 0
    """Fires in progress, including one waiting for its retry: they hold max_instances slots."""
    active: list[RunRecord] | tuple[RunRecord, ...] = _NO_RECORDS
    """Attempts in progress, oldest first: the shared empty tuple until the first one."""
    counts: list[int] | tuple[int, ...] = _NO_COUNTS
    """Finished attempts per outcome (in ``Outcome`` order): shared zeros until the first."""
    last: RunRecord | None = None
    last_success: datetime | None = None
    slot_freed: anyio.Event | None = None
    """Set when a run ends: backlog fires waiting for a max_instances slot check again."""

    def run_counts(self) -> RunCounts:
        return RunCounts(**{o.value: n for o, n in zip(_OUTCOMES, self.counts, strict=True)})

    def add_active(self, record: RunRecord) -> None:
        active = self.active
        if type(active) is list:
            active.append(record)
        else:  # still the shared empty tuple: never mutated, replaced
            self.active = [record]

    def drop_active(self, record: RunRecord) -> None:
        """Forget an attempt in progress (no error if it is not there)."""
        active = self.active
        if type(active) is list:
            try:
                active.remove(record)
            except ValueError:
                pass


@dataclass(slots=True, eq=False)
class RunRequest:
    """A run-now: it holds its max_instances slot from the moment it is asked for."""

    runtime: JobRuntime
    record: RunRecord
    done: anyio.Event
    final: RunRecord | None = None


class TaskExecutor(JobExecutor):
    """Runs our jobs for APScheduler: timeouts, threads, limits, retries, outcomes."""

    def __init__(self, *, tz: ZoneInfo, history_size: int, thread_limit: int) -> None:
        self.tz = tz
        self.history_size = history_size
        self.jobs: dict[str, JobRuntime] = {}
        self.adopt: Callable[[Job], JobRuntime | None] | None = None
        """Called for a job of an unknown task: one another process added at run time."""
        self.finished_sink: Callable[[RunRecord], None] | None = None
        """Called with every finished attempt (the scheduler feeds its hooks from it)."""
        self.prefix = secrets.token_hex(4)
        self._seq = count(1)
        self._thread_limit = thread_limit
        self._limiter: CapacityLimiter | None = None
        self._run_now_scopes: set[anyio.CancelScope] = set()
        self._in_progress = 0
        self._draining = False
        self._drain_event: anyio.Event | None = None
        self._idle: anyio.Event | None = None

    # -- bookkeeping -------------------------------------------------------------------

    def register(self, spec: JobSpec) -> JobRuntime:
        runtime = self.jobs.get(spec.id)
        if runtime is None:
            runtime = JobRuntime(spec)
            self.jobs[spec.id] = runtime
        else:
            runtime.spec = spec
        return runtime

    def unregister(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    @property
    def in_progress(self) -> int:
        return self._in_progress

    def runs(self, job_id: str, limit: int) -> list[RunInfo]:
        runtime = self.jobs[job_id]
        records = [*reversed(runtime.active), *(runtime.history or ())][:limit]
        return [record.info(self.prefix, self.tz) for record in records]

    def last_run(self, runtime: JobRuntime) -> RunInfo | None:
        return None if runtime.last is None else runtime.last.info(self.prefix, self.tz)

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Called by the scheduler in its event loop before the engine starts."""
        self._draining = False
        self._drain_event = anyio.Event()
        self._idle = None
        self._limiter = CapacityLimiter(self._thread_limit)

    async def start(self, exit_stack: AsyncExitStack) -> None:
        """APScheduler's hook: nothing to set up beyond what :meth:`open` did."""

    def begin_drain(self) -> None:
        """No new fire starts from now on; waiting retries give up."""
        self._draining = True
        if self._drain_event is not None:
            self._drain_event.set()
        for runtime in self.jobs.values():
            if runtime.slot_freed is not None:
                runtime.slot_freed.set()
                runtime.slot_freed = None

    async def wait_idle(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for every run in progress to end; True if none is left."""
        if self._in_progress:
            self._idle = anyio.Event()
            with anyio.move_on_after(grace):
                await self._idle.wait()
        return self._in_progress == 0

    def running_jobs(self) -> list[str]:
        return [job_id for job_id, runtime in self.jobs.items() if runtime.running]

    def cancel_run_nows(self) -> None:
        """Cancel the run-nows still in progress (the engine's stop() cancels the rest)."""
        for scope in self._run_now_scopes:
            scope.cancel()

    def record_abandoned(self, runtime: JobRuntime, job: Job) -> None:
        """A fire whose process died while running it (found by another process)."""
        message = f"the process running it ({job.acquired_by}) stopped before it finished"
        self._record_unrun(runtime, job, Outcome.abandoned, message)

    def record_skipped(self, runtime: JobRuntime, job: Job, running: int) -> None:
        """A fire that came due while max_instances runs were in progress in any process."""
        limit = runtime.spec.options.max_instances
        message = f"{running} run(s) in progress across processes, max_instances is {limit}"
        self._record_unrun(runtime, job, Outcome.skipped, message)

    def _record_unrun(self, runtime: JobRuntime, job: Job, outcome: Outcome, message: str) -> None:
        scheduled = job.scheduled_fire_time or job.created_at
        record = RunRecord(next(self._seq), runtime.spec.id, 1, scheduled)
        record.finished_at = _now()
        self._finish(runtime, record, outcome, None, message)

    # -- run now -----------------------------------------------------------------------

    def request_run(self, job_id: str) -> tuple[RunRequest | None, RunRecord]:
        """Reserve a run-now of ``job_id``; a request at the limit is recorded ``skipped``.

        A run-now runs in this process (:meth:`run_now`), never through the engine's shared
        queue: with several processes, another one would pick it up, and its caller could
        neither wait for it nor see how it ended.
        """
        if self._draining:
            raise SchedulerStateError("the scheduler is shutting down: no new runs")
        runtime = self.jobs[job_id]
        record = RunRecord(next(self._seq), job_id, 1, _now())
        if runtime.running >= runtime.spec.options.max_instances:
            record.finished_at = record.scheduled_at
            self._finish(runtime, record, Outcome.skipped, None, None)
            return None, record
        self._hold(runtime, record)
        return RunRequest(runtime, record, anyio.Event()), record

    async def run_now(self, request: RunRequest) -> None:
        """Run a reserved run-now, in a task of the scheduler's own task group."""
        with anyio.CancelScope() as scope:
            self._run_now_scopes.add(scope)
            try:
                request.final = await self._run_fire(request.runtime, request.record)
            finally:
                self._run_now_scopes.discard(scope)
                request.done.set()

    # -- the hot path ------------------------------------------------------------------

    async def run_job(self, func: Callable[..., Any], job: Job) -> None:
        # By schedule id, which is our job id on every store; the task id is the job id on
        # persistent stores only (on the memory store, every job is scheduled under one task).
        schedule_id = job.schedule_id
        runtime = None if schedule_id is None else self.jobs.get(schedule_id)
        if runtime is None:
            runtime = self.adopt(job) if self.adopt is not None else None
            if runtime is None:
                return  # removed after this fire was queued
        fire_time: datetime | None = job.scheduled_fire_time
        if fire_time is None:
            return  # not ours: we never queue unscheduled jobs
        spec = runtime.spec
        record = RunRecord(next(self._seq), spec.id, 1, fire_time)
        if spec.paused:
            # Enqueued before the job was paused: on a shared store it can wait in the queue
            # (a stopping process leaves it there) until after a restart. No run starts.
            record.finished_at = _now()
            self._finish(runtime, record, Outcome.skipped, None, "the job was paused")
            return
        options = spec.options
        grace = options.misfire_grace_time
        if grace is not None and self._missed(runtime, record, grace):
            return
        if options.jitter and not self._draining:
            # Checked for a misfire before, not after: the jitter itself never causes one.
            await self._jitter(options.jitter, grace, fire_time)
        while True:
            if self._draining:
                record.finished_at = _now()
                self._finish(runtime, record, Outcome.cancelled, None, "scheduler is shutting down")
                return
            if runtime.running < options.max_instances:
                break
            if options.coalesce or not self._in_backlog(runtime, fire_time):
                record.finished_at = _now()
                message = (
                    f"{runtime.running} run(s) in progress, "
                    f"max_instances is {options.max_instances}"
                )
                self._finish(runtime, record, Outcome.skipped, None, message)
                return
            if runtime.slot_freed is None:
                runtime.slot_freed = anyio.Event()
            await runtime.slot_freed.wait()
            if grace is not None and self._missed(runtime, record, grace):
                return
        self._hold(runtime, record)
        await self._run_fire(runtime, record)

    def _missed(self, runtime: JobRuntime, record: RunRecord, grace: float) -> bool:
        """Record the fire as ``missed`` if it is later than ``grace`` seconds now."""
        now = _now()
        late = (now - record.scheduled_at).total_seconds()
        if late <= grace:
            return False
        record.finished_at = now
        message = f"started {late:.3f} s late, misfire_grace_time is {grace} s"
        self._finish(runtime, record, Outcome.missed, None, message)
        return True

    @staticmethod
    def _in_backlog(runtime: JobRuntime, fire_time: datetime) -> bool:
        """True if ``fire_time`` was already due when a run in progress started.

        Such fires are one backlog (coalesce=False runs each of them): they wait for a slot
        and run one after another, as in APScheduler 3. A fire that comes due while the job
        runs is skipped.
        """
        for other in runtime.active:
            started = other.started_at
            if started is not None and fire_time <= started:
                return True
        return False

    def _hold(self, runtime: JobRuntime, record: RunRecord) -> None:
        """A fire takes its max_instances slot and counts as in progress until it ends."""
        runtime.running += 1
        runtime.add_active(record)
        self._in_progress += 1

    def _release(self, runtime: JobRuntime) -> None:
        runtime.running -= 1
        if runtime.slot_freed is not None:
            runtime.slot_freed.set()
            runtime.slot_freed = None
        self._in_progress -= 1
        if self._in_progress == 0 and self._idle is not None:
            self._idle.set()

    @staticmethod
    async def _jitter(jitter: float, grace: float | None, fire_time: datetime) -> None:
        # Trap 8 (4.0.0a6): the engine's max_jitter delays nothing, so we wait here, never so
        # long that the run would pass its misfire_grace_time.
        limit = jitter
        if grace is not None:
            limit = min(limit, grace - (_now() - fire_time).total_seconds())
        if limit > 0:
            await anyio.sleep(random.uniform(0, limit))

    async def _run_fire(self, runtime: JobRuntime, record: RunRecord) -> RunRecord:
        """All attempts of one fire (:meth:`_hold` counted it); returns the last attempt."""
        try:
            options = runtime.spec.options
            while True:
                outcome = await self._attempt(runtime, record)
                if outcome not in (Outcome.error, Outcome.timed_out):
                    return record
                if record.attempt > options.retries or self._draining:
                    return record
                record = RunRecord(
                    next(self._seq), record.job_id, record.attempt + 1, record.scheduled_at
                )
                runtime.add_active(record)
                if not await self._retry_wait(retry_delay(options.retry_delay, record.attempt - 1)):
                    runtime.drop_active(record)
                    record.finished_at = _now()
                    self._finish(runtime, record, Outcome.cancelled, None, "scheduler stopped")
                    return record
        finally:
            self._release(runtime)

    async def _retry_wait(self, delay: float) -> bool:
        """Sleep before a retry; False if the scheduler began to shut down meanwhile."""
        if self._drain_event is None:
            await anyio.sleep(delay)
            return True
        try:
            with anyio.move_on_after(delay):
                await self._drain_event.wait()
        except get_cancelled_exc_class():
            return False
        return not self._draining

    async def _attempt(self, runtime: JobRuntime, record: RunRecord) -> Outcome:
        spec = runtime.spec
        timeout = spec.options.timeout
        record.started_at = _now()
        try:
            if timeout is None:
                await self._call(spec)
            else:
                with anyio.move_on_after(timeout) as scope:
                    await self._call(spec)
                if scope.cancelled_caught:
                    if not spec.is_async:
                        logger.warning(
                            "job %r timed out after %s s; its worker thread is abandoned and "
                            "keeps running until the function returns",
                            spec.id,
                            timeout,
                        )
                    return self._end(
                        runtime,
                        record,
                        Outcome.timed_out,
                        None,
                        f"timed out after {timeout} s",
                        "TimeoutError",
                    )
        except get_cancelled_exc_class():
            if not spec.is_async:
                logger.warning(
                    "job %r was cancelled; its worker thread is abandoned and keeps running "
                    "until the function returns",
                    spec.id,
                )
            self._end(runtime, record, Outcome.cancelled, None, None)
            raise
        except Exception as exc:
            return self._end(runtime, record, Outcome.error, exc, str(exc))
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: record, then propagate
            self._end(runtime, record, Outcome.error, exc, str(exc))
            raise
        return self._end(runtime, record, Outcome.success, None, None)

    async def _call(self, spec: JobSpec) -> None:
        if spec.is_async:
            await spec.func(*spec.args, **spec.kwargs)
            return
        # Trap 3 (4.0.0a6): the engine's default executor calls plain functions on the event
        # loop thread. Ours go to a worker thread; a thread cannot be cancelled, so it is
        # abandoned (and that is logged) when its run times out or is cancelled.
        call = functools.partial(spec.func, *spec.args, **spec.kwargs)
        result = await to_thread.run_sync(call, abandon_on_cancel=True, limiter=self._limiter)
        if inspect.isawaitable(result):
            await result

    def _end(
        self,
        runtime: JobRuntime,
        record: RunRecord,
        outcome: Outcome,
        exc: BaseException | None,
        message: str | None,
        error_type: str | None = None,
    ) -> Outcome:
        record.finished_at = _now()
        runtime.drop_active(record)
        self._finish(runtime, record, outcome, exc, message, error_type)
        return outcome

    def _finish(
        self,
        runtime: JobRuntime,
        record: RunRecord,
        outcome: Outcome,
        exc: BaseException | None,
        message: str | None,
        error_type: str | None = None,
    ) -> None:
        record.outcome = outcome
        if exc is not None:
            record.error_type = type(exc).__name__
        elif error_type is not None:
            record.error_type = error_type
        if outcome is not Outcome.success:
            record.error_message = message
        history = runtime.history
        if history is None:
            history = runtime.history = deque(maxlen=self.history_size)
        history.appendleft(record)
        counts = runtime.counts
        if type(counts) is not list:  # still the shared zeros: never mutated, replaced
            counts = runtime.counts = list(counts)
        counts[_OUTCOME_INDEX[outcome]] += 1
        runtime.last = record
        if outcome is Outcome.success:
            runtime.last_success = record.finished_at
        level = _LOG_LEVELS[outcome]
        if logger.isEnabledFor(level):
            self._log(level, record, exc)
        if self.finished_sink is not None:
            self.finished_sink(record)

    def _log(self, level: int, record: RunRecord, exc: BaseException | None) -> None:
        run_id = f"{self.prefix}-{record.seq}"
        duration = None
        if record.started_at is not None and record.finished_at is not None:
            duration = (record.finished_at - record.started_at).total_seconds()
        outcome = record.outcome.value if record.outcome is not None else None
        extra = {"job_id": record.job_id, "run_id": run_id, "outcome": outcome}
        extra["duration"] = duration  # type: ignore[assignment]
        extra["attempt"] = record.attempt  # type: ignore[assignment]
        detail = f": {record.error_message}" if record.error_message else ""
        logger.log(
            level,
            "job %r run %s (attempt %d) %s%s",
            record.job_id,
            run_id,
            record.attempt,
            outcome,
            detail,
            extra=extra,
            exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
        )


def retry_delay(base: float, retry: int) -> float:
    """Seconds before retry number ``retry`` (1-based): doubling from ``base``, capped, jittered."""
    delay = min(base * 2.0 ** (retry - 1), max(base, RETRY_DELAY_CAP))
    return delay * random.uniform(0.5, 1.0)
