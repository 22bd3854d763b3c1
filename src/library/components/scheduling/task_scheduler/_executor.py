"""The JobExecutor: runs each fire of a job and records what happened.

APScheduler hands every queued job to :meth:`TaskExecutor.run_job`, inside the engine's job
task group. Here each fire gets its checks (draining, misfire grace, max_instances, jitter),
its attempts (each under a cancel scope when the job has a timeout; sync callables in worker
threads), its retries, and one recorded outcome per attempt. Nothing a job raises leaves this
module (``SystemExit`` fails the run, as in APScheduler 3), except cancellation and
``KeyboardInterrupt``.

This is the hot path: per run it allocates one small record and formats no log message that
no handler wants.
"""

from __future__ import annotations

import functools
import inspect
import random
from collections import deque
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import anyio
from anyio import TASK_STATUS_IGNORED, get_cancelled_exc_class
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from apscheduler import Job
from apscheduler.abc import JobExecutor

from ._clock import REAL_CLOCK, Clock
from ._errors import JobNotFoundError, SchedulerStateError
from ._jobs import JobSpec
from ._log import logger
from ._models import Outcome
from ._registry import JobRegistry, JobRuntime
from ._runs import (
    OUTCOME_INDEX,
    QUEUED_RUN_KEY,
    RunObserver,
    RunRecord,
    log_run,
    next_seq,
    retry_delay,
)
from ._threads import JobThreads

if TYPE_CHECKING:
    from ._depends import DependencyOverrides
    from ._history import RunRecorder

_SUCCESS = Outcome.success
"""(A module constant: on Python 3.11, each read of an enum member from its class costs a
descriptor call, ~50 ns, and the hot path read this one three times per run.)"""

RETRY_BUFFER = 1000
"""Retries of abandoned runs waiting to start (each is a job id: a small buffer is plenty)."""


@dataclass(slots=True, eq=False)
class RunRequest:
    """A run-now: it holds its max_instances slot from the moment it is asked for."""

    runtime: JobRuntime
    record: RunRecord
    done: anyio.Event
    final: RunRecord | None = None


class TaskExecutor(JobExecutor):
    """Runs our jobs for APScheduler: timeouts, threads, limits, retries, outcomes.

    Also hears, as the SQL store's ``RunNotices``, of the fires the store records on its
    own: it records them, and queues a retry of an abandoned run for its own task to start.
    """

    def __init__(
        self,
        *,
        registry: JobRegistry,
        tz: ZoneInfo,
        history_size: int,
        thread_limit: int,
        adopt: Callable[[Job], JobRuntime | None] | None = None,
        on_finished: Callable[[RunRecord], None] | None = None,
        recorder: RunRecorder | None = None,
        overrides: DependencyOverrides | None = None,
    ) -> None:
        self.tz = tz
        self.history_size = history_size
        self._jobs = registry.by_id
        self._adopt = adopt
        """Called for a fire of an unknown job: one another process added at run time."""
        self._on_finished = on_finished
        """Called with every finished attempt (the hook dispatcher)."""
        self._recorder = recorder
        """Records each attempt's start and end for the cluster (persistent stores)."""
        self._observer: RunObserver | None = None
        """Metrics and tracing of each attempt (None, and no cost, while both are off)."""
        self._overrides = overrides
        """Dependency overrides, for jobs with ``Depends`` parameters."""
        self._threads = JobThreads[JobRuntime](
            thread_limit, self._thread_abandoned, self._thread_ended
        )
        self._run_now_scopes: set[anyio.CancelScope] = set()
        self._in_progress = 0
        self._draining = False
        self._drain_event: anyio.Event | None = None
        self._idle: anyio.Event | None = None
        self._retry_send: MemoryObjectSendStream[str] | None = None
        self._bind(REAL_CLOCK)

    def _bind(self, clock: Clock) -> None:
        """Read the time and wait by ``clock`` (bound once per start: nothing per run)."""
        self._clock = clock
        self._now = clock.now
        self._sleep = clock.sleep
        self._move_on_after = clock.move_on_after

    # -- bookkeeping -------------------------------------------------------------------

    @property
    def in_progress(self) -> int:
        return self._in_progress

    @property
    def abandoned_threads(self) -> int:
        """Threads of plain ``def`` runs that ended (timed out, cancelled) and still run."""
        return self._threads.abandoned

    def _thread_abandoned(self, runtime: JobRuntime) -> None:
        # The run has ended; its thread holds the job's max_instances slot until it ends,
        # so a hung job's later fires are skipped instead of starting thread after thread.
        runtime.running += 1

    def _thread_ended(self, runtime: JobRuntime) -> None:
        runtime.running -= 1
        if runtime.slot_freed is not None:
            runtime.slot_freed.set()
            runtime.slot_freed = None
        logger.info("job %r: the worker thread of a run that had ended returned", runtime.spec.id)

    # -- lifecycle ---------------------------------------------------------------------

    def observe(self, observer: RunObserver | None) -> None:
        """Tell ``observer`` of every attempt from now on (None: of none)."""
        self._observer = observer

    def open(self, clock: Clock = REAL_CLOCK) -> None:
        """Called by the lifecycle in its event loop before the engine starts; runs read
        the time and wait by ``clock`` until the next ``open``."""
        self._bind(clock)
        self._draining = False
        self._drain_event = anyio.Event()
        self._idle = None
        self._threads.open()
        self._retry_send = None

    async def serve_retries(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Start the queued retries of abandoned runs, until :meth:`begin_drain`."""
        send, receive = anyio.create_memory_object_stream[str](RETRY_BUFFER)
        self._retry_send = send
        with send:
            async with receive, anyio.create_task_group() as task_group:
                task_status.started()
                async for job_id in receive:
                    try:
                        request, _ = self.request_run(job_id)
                    except (SchedulerStateError, JobNotFoundError) as exc:
                        logger.warning("could not retry abandoned job %r: %s", job_id, exc)
                        continue
                    if request is not None:
                        task_group.start_soon(self.run_now, request, name=f"retry {job_id}")

    async def start(self, exit_stack: AsyncExitStack) -> None:
        """APScheduler's hook: nothing to set up beyond what :meth:`open` did."""

    def begin_drain(self) -> None:
        """No new fire starts from now on; waiting retries give up."""
        self._draining = True
        if self._drain_event is not None:
            self._drain_event.set()
        if self._retry_send is not None:
            self._retry_send.close()  # serve_retries ends once its retries in progress do
        for runtime in self._jobs.values():
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

    def blocking_suspects(self, since: datetime) -> list[str]:
        """Async jobs whose attempt was running at ``since`` (or later): those that may have
        blocked the event loop then. A scan of every job: only when a block was seen."""
        suspects = []
        for job_id, runtime in self._jobs.items():
            if not runtime.spec.is_async:
                continue  # plain functions run in worker threads
            records = [*runtime.active, *(() if runtime.last is None else (runtime.last,))]
            for record in records:
                started, finished = record.started_at, record.finished_at
                if started is not None and (finished is None or finished >= since):
                    suspects.append(job_id)
                    break
        return suspects

    def running_jobs(self) -> list[str]:
        return [job_id for job_id, runtime in self._jobs.items() if runtime.running]

    def cancel_run_nows(self) -> None:
        """Cancel the run-nows still in progress (the engine's stop() cancels the rest)."""
        for scope in self._run_now_scopes:
            scope.cancel()

    # -- what the SQL store records on its own (its RunNotices) ---------------------------

    def abandoned(self, job: Job) -> None:
        """A fire whose process died while running it (found by this process's sweep);
        retried here, by :meth:`serve_retries`, if the job has retries."""
        runtime = self._jobs.get(job.task_id)
        if runtime is None:
            return
        message = f"the process running it ({job.acquired_by}) stopped before it finished"
        self._record_unrun(runtime, job, Outcome.abandoned, message, fire_id=str(job.id))
        if runtime.spec.options.retries and not self._draining and self._retry_send is not None:
            try:
                self._retry_send.send_nowait(job.task_id)
            except (anyio.WouldBlock, anyio.ClosedResourceError) as exc:
                logger.warning("could not retry abandoned job %r: %r", job.task_id, exc)

    def skipped(self, job: Job, running: int) -> None:
        """A fire that came due while max_instances runs were in progress in any process."""
        runtime = self._jobs.get(job.task_id)
        if runtime is None:
            return
        limit = runtime.spec.options.max_instances
        message = f"{running} run(s) in progress across processes, max_instances is {limit}"
        self._record_unrun(runtime, job, Outcome.skipped, message)

    def _record_unrun(
        self,
        runtime: JobRuntime,
        job: Job,
        outcome: Outcome,
        message: str,
        fire_id: str | None = None,
    ) -> None:
        scheduled = job.scheduled_fire_time or job.created_at
        record = RunRecord(next_seq(), runtime.spec.id, 1, scheduled)
        record.finished_at = self._now()
        self._finish(runtime, record, outcome, None, message, fire_id=fire_id)

    # -- run now -----------------------------------------------------------------------

    def request_run(self, job_id: str) -> tuple[RunRequest | None, RunRecord]:
        """Reserve a run-now of ``job_id``; a request at the limit is recorded ``skipped``.

        A run-now runs in this process (:meth:`run_now`), never through the engine's shared
        queue: with several processes, another one would pick it up, and its caller could
        neither wait for it nor see how it ended.
        """
        if self._draining:
            raise SchedulerStateError("the scheduler is shutting down: no new runs")
        runtime = self._jobs.get(job_id)
        if runtime is None:
            raise JobNotFoundError(job_id)
        record = RunRecord(next_seq(), job_id, 1, self._now())
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
        if schedule_id is None:
            await self._run_queued(job)  # never a scheduled fire: those have a schedule
            return
        runtime = self._jobs.get(schedule_id)
        if runtime is None:
            runtime = self._adopt(job) if self._adopt is not None else None
            if runtime is None:
                return  # removed after this fire was queued
        fire_time: datetime | None = job.scheduled_fire_time
        if fire_time is None:
            return  # not ours: we never queue unscheduled jobs
        spec = runtime.spec
        record = RunRecord(next_seq(), spec.id, 1, fire_time)
        if runtime.paused:
            # Enqueued before the job was paused: on a shared store it can wait in the queue
            # (a stopping process leaves it there) until after a restart. No run starts.
            record.finished_at = self._now()
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
                record.finished_at = self._now()
                # Never started: not a cancelled run (that is one stopped while it ran).
                message = "not started: the scheduler is shutting down"
                self._finish(runtime, record, Outcome.skipped, None, message)
                return
            if runtime.running < options.max_instances:
                break
            if options.coalesce or not self._in_backlog(runtime, fire_time):
                record.finished_at = self._now()
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
        # The fire id is only read by the recorder (persistent stores): no str(UUID) else.
        await self._run_fire(runtime, record, None if self._recorder is None else str(job.id))

    async def _run_queued(self, job: Job) -> None:
        """A run-now queued in the store from outside (``task-scheduler run``): run it here,
        under the job's rules as a run-now (a paused job runs too; at ``max_instances`` it
        is ``skipped``), ``missed`` if it waited in the queue longer than the job's
        ``misfire_grace_time``. Every attempt carries the engine job's id as its fire id:
        whoever asked finds the runs by it, and a survivor finishes the one in progress if
        this process dies."""
        requested_by = job.metadata.get(QUEUED_RUN_KEY) if job.metadata else None
        if requested_by is None:
            return  # not ours: we queue no other unscheduled jobs
        runtime = self._jobs.get(job.task_id)
        if runtime is None:
            runtime = self._adopt(job) if self._adopt is not None else None
            if runtime is None:
                logger.warning(
                    "run-now of job %r requested by %s: no such job here, not run",
                    job.task_id,
                    requested_by,
                )
                return
        options = runtime.spec.options
        fire_id = str(job.id)
        record = RunRecord(next_seq(), runtime.spec.id, 1, job.created_at)
        if self._draining:
            message = "not started: the scheduler is shutting down"
        elif runtime.running >= options.max_instances:
            message = (
                f"{runtime.running} run(s) in progress, max_instances is {options.max_instances}"
            )
        else:
            grace = options.misfire_grace_time
            if grace is not None and self._missed(runtime, record, grace, fire_id):
                return
            logger.info("job %r: run-now requested by %s", runtime.spec.id, requested_by)
            self._hold(runtime, record)
            await self._run_fire(runtime, record, fire_id, every_attempt=True)
            return
        record.finished_at = self._now()
        self._finish(runtime, record, Outcome.skipped, None, message, record_fire=fire_id)

    def _missed(
        self, runtime: JobRuntime, record: RunRecord, grace: float, fire_id: str | None = None
    ) -> bool:
        """Record the fire as ``missed`` if it is later than ``grace`` seconds now."""
        now = self._now()
        late = (now - record.scheduled_at).total_seconds()
        if late <= grace:
            return False
        record.finished_at = now
        message = f"started {late:.3f} s late, misfire_grace_time is {grace} s"
        self._finish(runtime, record, Outcome.missed, None, message, record_fire=fire_id)
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

    async def _jitter(self, jitter: float, grace: float | None, fire_time: datetime) -> None:
        # Trap 8 (4.0.0a6): the engine's max_jitter delays nothing, so we wait here, never so
        # long that the run would pass its misfire_grace_time.
        limit = jitter
        if grace is not None:
            limit = min(limit, grace - (self._now() - fire_time).total_seconds())
        if limit > 0:
            await self._sleep(random.uniform(0, limit))

    async def _run_fire(
        self,
        runtime: JobRuntime,
        record: RunRecord,
        fire_id: str | None = None,
        *,
        every_attempt: bool = False,
    ) -> RunRecord:
        """All attempts of one fire (:meth:`_hold` counted it); returns the last attempt.

        ``fire_id``: the engine job's id, for a scheduled fire (the history finishes its
        run as ``abandoned`` by that id if this process dies while running it); for the
        first attempt only, unless ``every_attempt`` (a queued run-now: its caller follows
        its attempts by that id).
        """
        try:
            while True:
                delay = await self._attempt(runtime, record, fire_id)
                if not every_attempt:
                    fire_id = None  # retries are new attempts, run by this process
                if delay is None:
                    return record
                record = RunRecord(
                    next_seq(), record.job_id, record.attempt + 1, record.scheduled_at
                )
                runtime.add_active(record)
                if not await self._retry_wait(delay):
                    runtime.drop_active(record)
                    record.finished_at = self._now()
                    message = "scheduler stopped"
                    self._finish(
                        runtime, record, Outcome.cancelled, None, message,
                        record_fire=fire_id if every_attempt else None,
                    )  # fmt: skip
                    return record
        finally:
            self._release(runtime)

    async def _retry_wait(self, delay: float) -> bool:
        """Sleep before a retry; False if the scheduler began to shut down meanwhile."""
        if self._clock.virtual:
            # A wait for virtual time; the clock cancels it when the drain begins.
            try:
                await self._sleep(delay)
            except get_cancelled_exc_class():
                return False
            return not self._draining
        if self._drain_event is None:
            await anyio.sleep(delay)
            return True
        try:
            with anyio.move_on_after(delay):
                await self._drain_event.wait()
        except get_cancelled_exc_class():
            return False
        return not self._draining

    def _retry_in(self, runtime: JobRuntime, record: RunRecord) -> float | None:
        """Seconds until the retry that follows this failed attempt; None if none follows."""
        options = runtime.spec.options
        if record.attempt > options.retries or self._draining:
            return None
        return retry_delay(options.retry_delay, record.attempt)

    async def _attempt(
        self, runtime: JobRuntime, record: RunRecord, fire_id: str | None = None
    ) -> float | None:
        """Run one attempt and record it; the seconds until its retry, None if none follows.

        Whether a retry follows is decided here, before the attempt is recorded, so that its
        log line says so (a WARNING without traceback, instead of an ERROR with one).
        ``fire_id``: the engine job's id, for the first attempt of a scheduled fire.
        """
        spec = runtime.spec
        timeout = spec.options.timeout
        record.started_at = self._now()
        if self._recorder is not None:
            self._recorder.started(record, fire_id)
        if self._observer is not None:
            self._observer.started(record)
        try:
            if timeout is None:
                if spec.is_async and spec.dependencies is None:
                    await spec.func(*spec.args, **spec.kwargs)  # _call's common case, inline
                else:
                    await self._call(spec, runtime)
            else:
                with self._move_on_after(timeout) as scope:
                    await self._call(spec, runtime)
                if scope.cancelled_caught:
                    if not spec.is_async:
                        logger.warning(
                            "job %r timed out after %s s; its worker thread is abandoned and "
                            "keeps running until the function returns",
                            spec.id,
                            timeout,
                        )
                    retry_in = self._retry_in(runtime, record)
                    message = f"timed out after {timeout} s"
                    self._end(
                        runtime, record, Outcome.timed_out, None, message, "TimeoutError", retry_in
                    )
                    return retry_in
        except get_cancelled_exc_class():
            if not spec.is_async:
                logger.warning(
                    "job %r was cancelled; its worker thread is abandoned and keeps running "
                    "until the function returns",
                    spec.id,
                )
            self._end(runtime, record, Outcome.cancelled, None, None)
            raise
        except (Exception, SystemExit) as exc:
            # SystemExit too, as in APScheduler 3: a job (or a function shared with a CLI)
            # that calls sys.exit() fails its run; it does not stop the app.
            retry_in = self._retry_in(runtime, record)
            self._end(runtime, record, Outcome.error, exc, str(exc), None, retry_in)
            return retry_in
        except BaseException:  # KeyboardInterrupt (Ctrl-C; trio raises it in any task)
            # Not the job's failure: the run was stopped while it ran. Recorded without a
            # traceback (Ctrl-C is no error to report), then it stops the scheduler.
            message = "interrupted (KeyboardInterrupt: Ctrl-C)"
            self._end(runtime, record, Outcome.cancelled, None, message)
            raise
        self._end(runtime, record, _SUCCESS, None, None)
        return None

    async def _call(
        self, spec: JobSpec, runtime: JobRuntime, kwargs: dict[str, Any] | None = None
    ) -> None:
        if kwargs is None:
            if spec.dependencies is not None:
                # Resolved per attempt, in this task; generator dependencies close after it.
                async with spec.dependencies.resolve(spec.kwargs, self._overrides) as kwargs:
                    await self._call(spec, runtime, kwargs)
                return
            kwargs = spec.kwargs
        if spec.is_async:
            await spec.func(*spec.args, **kwargs)
            return
        # Trap 3 (4.0.0a6): the engine's default executor calls plain functions on the event
        # loop thread. Ours go to a worker thread; a thread cannot be cancelled, so it is
        # abandoned (and that is logged) when its run times out or is cancelled - and holds
        # its job's max_instances slot until it ends (_threads).
        call = functools.partial(spec.func, *spec.args, **kwargs)
        result = await self._threads.run(call, runtime)
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
        retry_in: float | None = None,
    ) -> None:
        record.finished_at = self._now()
        runtime.drop_active(record)
        self._finish(runtime, record, outcome, exc, message, error_type, retry_in)

    def _finish(
        self,
        runtime: JobRuntime,
        record: RunRecord,
        outcome: Outcome,
        exc: BaseException | None,
        message: str | None,
        error_type: str | None = None,
        retry_in: float | None = None,
        fire_id: str | None = None,
        record_fire: str | None = None,
    ) -> None:
        """Record a finished attempt: history, counts, the log line, the hooks.

        ``retry_in``: seconds until the retry that follows it (None: none follows).
        ``fire_id``: a dead process's run, found by this one; ``record_fire``: the fire id
        of a queued run-now's attempt that never started.
        """
        record.outcome = outcome
        if exc is not None:
            record.error_type = type(exc).__name__
        elif error_type is not None:
            record.error_type = error_type
        if outcome is not _SUCCESS:
            record.error_message = message
        history = runtime.history
        if history is None:
            history = runtime.history = deque(maxlen=self.history_size)
        history.appendleft(record.row())
        counts = runtime.counts
        if type(counts) is not list:  # still the shared zeros: never mutated, replaced
            counts = runtime.counts = list(counts)
        counts[OUTCOME_INDEX[outcome]] += 1
        runtime.last = record
        if outcome is _SUCCESS:
            runtime.last_success = record.finished_at
        log_run(record, exc, runtime.spec.options.retries, retry_in)
        if self._recorder is not None:
            if fire_id is not None:  # a dead process's run: its row is finished by fire id
                self._recorder.abandoned(record, fire_id)
            else:
                self._recorder.finished(record, record_fire)
        if self._on_finished is not None:
            self._on_finished(record)
        if self._observer is not None:
            self._observer.finished(record, exc)
