"""TaskScheduler: declarations, lifecycle and management, on APScheduler 4's AsyncScheduler."""

from __future__ import annotations

import copy
import os
import platform
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio import TASK_STATUS_IGNORED, CancelScope
from anyio.abc import TaskGroup, TaskStatus
from apscheduler import (
    AsyncScheduler,
    CoalescePolicy,
    ConflictPolicy,
    Job,
    Schedule,
    TaskLookupError,
)
from apscheduler._structures import MetadataType
from apscheduler.abc import Trigger

from ._config import SchedulerConfig
from ._engine import EXECUTOR_NAME, MEMORY_TASK_ID, make_engine, run_by_executor
from ._errors import DuplicateJobError, JobNotFoundError, SchedulerStateError, engine_errors
from ._executor import JobRuntime, RunRecord, TaskExecutor, logger
from ._jobs import JobOptions, JobSpec, job_id_for, make_spec, validate_job_id
from ._models import JobInfo, RunInfo, SchedulerState, SchedulerStatus
from ._reconcile import (
    as_metadata,
    check_storable,
    plan,
    spec_from_definition,
    stored_definition,
)
from ._siblings import warn_about_siblings
from ._stores import (
    CLEANUP_INTERVAL,
    LEASE_DURATION,
    SafeJSONSerializer,
    open_backend,
    parse_store_url,
)
from ._triggers import CronSpec, DateSpec, IntervalSpec, TriggerSpec

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import Unpack
    else:
        from typing_extensions import Unpack

F = TypeVar("F", bound=Callable[..., Any])
RunHook = Callable[[RunInfo], Any]

RESTART_DELAY_FIRST = 1.0
RESTART_DELAY_MAX = 30.0
RESTARTS_ALLOWED = 5
RESTART_WINDOW = 300.0
HOOK_BUFFER = 10_000
PREVIEW_SKIP_LIMIT = 100_000
TEARDOWN_GRACE = 5.0
"""Seconds shutdown gives queued hooks and engine teardown, after the jobs are done."""


def _root_exception(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _root_message(exc: BaseException) -> str:
    """The first real error inside (possibly nested) exception groups, as 'Type: message'."""
    exc = _root_exception(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TaskScheduler:
    """Schedules async and sync callables, and runs them on an anyio event loop.

    Declare jobs with :meth:`interval`, :meth:`cron` and :meth:`at`, or add them at run
    time with the ``add_*_job`` methods; run the scheduler with ``async with scheduler:``,
    ``FastAPI(lifespan=scheduler.lifespan)``, or :meth:`start` and :meth:`shutdown` called
    from the same task.
    """

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config if config is not None else SchedulerConfig()
        self._tz = self.config.tzinfo
        self._finished: set[str] = set()
        """Jobs whose trigger has nothing left to fire (not in the engine)."""
        self._executor = TaskExecutor(
            tz=self._tz,
            history_size=self.config.history_size,
            thread_limit=self.config.max_concurrent_jobs,
        )
        self._jobs = self._executor.jobs
        """Every job (its spec and live state) by id, in the order they were added: the
        executor's own table, so that a job costs one entry (issue #7)."""
        self._hooks: list[RunHook] = []
        self._state: SchedulerState = "stopped"
        self._engine: AsyncScheduler | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None
        self._stopping = False
        self._drained: anyio.Event | None = None
        self._stop_request: anyio.Event | None = None
        self._loop_token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._cancel_owner_on_stop_request = False
        self._watcher_scope: CancelScope | None = None
        self._hook_send: Any = None
        self._hooks_dropped = 0
        self._started_at: datetime | None = None
        self._engine_restarts = 0
        self._last_engine_error: str | None = None
        self._identity = f"{platform.node()}:{os.getpid()}:{id(self):x}"
        self._store = parse_store_url(self.config.store)
        self._serializer = SafeJSONSerializer()

    # ------------------------------------------------------------------ declaring jobs

    def interval(
        self,
        *,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        start: datetime | None = None,
        end: datetime | None = None,
        **options: Unpack[JobOptions],
    ) -> Callable[[F], F]:
        """Run the decorated function every given interval (first run one interval after start)."""

        def decorate(func: F) -> F:
            job_id = job_id_for(func, options)
            trigger = IntervalSpec(
                weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds,
                start=start, end=end, tz=self._tz,
            )  # fmt: skip
            self._declare(func, job_id, trigger, options)
            return func

        return decorate

    def cron(
        self,
        expression: str | None = None,
        *,
        year: int | str | None = None,
        month: int | str | None = None,
        day: int | str | None = None,
        week: int | str | None = None,
        day_of_week: int | str | None = None,
        hour: int | str | None = None,
        minute: int | str | None = None,
        second: int | str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        **options: Unpack[JobOptions],
    ) -> Callable[[F], F]:
        """Run the decorated function when a cron expression or cron fields match."""
        fields = {
            "year": year, "month": month, "day": day, "week": week,
            "day_of_week": day_of_week, "hour": hour, "minute": minute, "second": second,
        }  # fmt: skip

        def decorate(func: F) -> F:
            job_id = job_id_for(func, options)
            trigger = CronSpec(
                expression, fields, start=start, end=end, tz=self._tz, hash_id=job_id
            )
            self._declare(func, job_id, trigger, options)
            return func

        return decorate

    def at(self, when: datetime, **options: Unpack[JobOptions]) -> Callable[[F], F]:
        """Run the decorated function once, at ``when`` (naive: in the configured timezone)."""

        def decorate(func: F) -> F:
            job_id = job_id_for(func, options)
            self._declare(func, job_id, DateSpec(when, tz=self._tz), options)
            return func

        return decorate

    def _declare(
        self,
        func: Callable[..., Any],
        job_id: str,
        trigger: TriggerSpec,
        options: Mapping[str, Any],
    ) -> None:
        if self._state != "stopped":
            raise SchedulerStateError(
                f"cannot declare job {job_id!r} with a decorator while the scheduler runs; "
                f"use add_interval_job(), add_cron_job() or add_date_job() at run time"
            )
        spec = make_spec(func, job_id, trigger, options, self.config.job_defaults, declared=True)
        self._register(spec)

    def _register(self, spec: JobSpec) -> None:
        if spec.id in self._jobs:
            raise DuplicateJobError(spec.id)
        if self._store.persistent:
            check_storable(spec, self._serializer)
        self._executor.register(spec)

    # ------------------------------------------------------------------ adding at run time

    async def add_interval_job(
        self,
        func: Callable[..., Any],
        job_id: str,
        *,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        start: datetime | None = None,
        end: datetime | None = None,
        **options: Unpack[JobOptions],
    ) -> JobInfo:
        """Add a job that runs every given interval; usable before or after :meth:`start`."""
        trigger = IntervalSpec(
            weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds,
            start=start, end=end, tz=self._tz,
        )  # fmt: skip
        return await self._add(func, job_id, trigger, options)

    async def add_cron_job(
        self,
        func: Callable[..., Any],
        job_id: str,
        cron_expression: str | None = None,
        *,
        year: int | str | None = None,
        month: int | str | None = None,
        day: int | str | None = None,
        week: int | str | None = None,
        day_of_week: int | str | None = None,
        hour: int | str | None = None,
        minute: int | str | None = None,
        second: int | str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        **options: Unpack[JobOptions],
    ) -> JobInfo:
        """Add a job that runs when a cron expression (or cron fields) match."""
        fields = {
            "year": year, "month": month, "day": day, "week": week,
            "day_of_week": day_of_week, "hour": hour, "minute": minute, "second": second,
        }  # fmt: skip
        job_id = self._check_job_id(job_id, options)
        trigger = CronSpec(
            cron_expression, fields, start=start, end=end, tz=self._tz, hash_id=job_id
        )
        return await self._add(func, job_id, trigger, options)

    async def add_date_job(
        self, func: Callable[..., Any], job_id: str, run_at: datetime, **options: Unpack[JobOptions]
    ) -> JobInfo:
        """Add a job that runs once at ``run_at`` (a time already past runs at once)."""
        return await self._add(func, job_id, DateSpec(run_at, tz=self._tz), options)

    @staticmethod
    def _check_job_id(job_id: str, options: Mapping[str, Any]) -> str:
        if "id" in options and options["id"] != job_id:
            raise ValueError(f"give the job id once: job_id={job_id!r} but id={options['id']!r}")
        return validate_job_id(job_id)

    async def _add(
        self,
        func: Callable[..., Any],
        job_id: str,
        trigger: TriggerSpec,
        options: Mapping[str, Any],
    ) -> JobInfo:
        job_id = self._check_job_id(job_id, options)
        options = {key: value for key, value in options.items() if key != "id"}
        spec = make_spec(func, job_id, trigger, options, self.config.job_defaults, declared=False)
        self._register(spec)
        if self._engine is not None and self._state in ("running", "starting"):
            try:
                await self._install(self._engine, spec, _utcnow(), allow_past=True)
            except BaseException:
                self._executor.unregister(spec.id)
                raise
        return await self.get_job(job_id)

    async def _configure_task(self, engine: AsyncScheduler, spec: JobSpec) -> None:
        """The job's own engine task, on a persistent store (on the memory store, every job
        is scheduled under the one task :meth:`_install_all` configures)."""
        with engine_errors(spec.id):
            # Traps 1 and 2 (4.0.0a6): configure the task by explicit id and schedule by that
            # id, never by the callable: scheduling by callable resets the task's settings,
            # and closures, lambdas and bound methods cannot be referenced by name.
            await engine.configure_task(
                spec.id,
                func=spec.func,
                job_executor=EXECUTOR_NAME,
                # max_instances is ours: a fire at the limit is skipped, never queued (trap
                # 7). Several processes share the engine's per-task count, which SQLStore
                # keeps exact and turns into a skip when a fire comes due at the limit.
                max_running_jobs=spec.options.max_instances,
                misfire_grace_time=None,  # misfire_grace_time is ours too: recorded `missed`
            )

    async def _install(
        self,
        engine: AsyncScheduler,
        spec: JobSpec,
        now: datetime,
        *,
        allow_past: bool,
        # Trap 11 (4.0.0a6): the default do_nothing keeps an old definition silently.
        policy: ConflictPolicy = ConflictPolicy.exception,
    ) -> None:
        """Hand one job to the engine: its task (by explicit id) and its schedule."""
        trigger = spec.trigger.build(now, allow_past=allow_past)
        if trigger is None:
            self._finished.add(spec.id)
            runtime = self._jobs.get(spec.id)
            if isinstance(spec.trigger, DateSpec) and (runtime is None or runtime.last is None):
                logger.warning(
                    "one-time job %r was due at %s, which passed before the scheduler started: "
                    "it will not run",
                    spec.id,
                    spec.trigger.run_at.astimezone(self._tz).isoformat(),
                )
            return
        self._finished.discard(spec.id)
        metadata: MetadataType = {}
        if self._store.persistent:
            await self._configure_task(engine, spec)
            task_id = spec.id
            metadata.update(as_metadata(spec))
        else:
            # One engine task for every job (configured by _install_all): no limit to keep
            # per task in one process, and ~180 B less per job (issue #7). The executor
            # finds each fire's job by its schedule id, which is the job id.
            task_id = MEMORY_TASK_ID
        with engine_errors(spec.id):
            await engine.add_schedule(
                task_id,
                trigger,
                id=spec.id,
                paused=spec.paused,
                coalesce=CoalescePolicy.latest if spec.options.coalesce else CoalescePolicy.all,
                misfire_grace_time=None,
                metadata=metadata,
                conflict_policy=policy,
            )

    # ------------------------------------------------------------------ managing jobs

    def _spec(self, job_id: str) -> JobSpec:
        try:
            return self._jobs[job_id].spec
        except KeyError:
            raise JobNotFoundError(job_id) from None

    def _live_engine(self) -> AsyncScheduler | None:
        return self._engine if self._state in ("running", "starting") else None

    async def pause_job(self, job_id: str) -> JobInfo:
        """Stop firing the job until :meth:`resume_job`; a run in progress goes on."""
        spec = self._spec(job_id)
        if not spec.paused:
            spec.paused = True
            engine = self._live_engine()
            if engine is not None and job_id not in self._finished:
                with engine_errors(job_id):
                    await engine.pause_schedule(job_id)
        return await self.get_job(job_id)

    async def resume_job(self, job_id: str) -> JobInfo:
        """Fire the job again, from now on: fires missed while paused are not run."""
        spec = self._spec(job_id)
        if spec.paused:
            spec.paused = False
            engine = self._live_engine()
            if engine is not None and job_id not in self._finished:
                with engine_errors(job_id):
                    await engine.unpause_schedule(job_id, resume_from="now")
        return await self.get_job(job_id)

    async def remove_job(self, job_id: str) -> None:
        """Remove the job; a run in progress is allowed to finish."""
        self._spec(job_id)
        engine = self._live_engine()
        if engine is not None:
            await engine.remove_schedule(job_id)
            if self._store.persistent:  # on the memory store, jobs share one task
                await self._remove_task(engine, job_id)
        self._finished.discard(job_id)
        self._executor.unregister(job_id)

    async def get_job(self, job_id: str) -> JobInfo:
        """The job with this id; :class:`JobNotFoundError` if there is none."""
        spec = self._spec(job_id)
        schedule: Schedule | None = None
        engine = self._live_engine()
        if engine is not None and job_id not in self._finished:
            schedules = await engine.data_store.get_schedules({job_id})
            schedule = schedules[0] if schedules else None
        return self._job_info(spec, schedule)

    async def get_jobs(self) -> list[JobInfo]:
        """Every job, in the order they were added."""
        schedules: dict[str, Schedule] = {}
        engine = self._live_engine()
        if engine is not None:
            schedules = {s.id: s for s in await engine.data_store.get_schedules()}
        return [
            self._job_info(job.spec, schedules.get(job_id)) for job_id, job in self._jobs.items()
        ]

    def _job_info(self, spec: JobSpec, schedule: Schedule | None) -> JobInfo:
        runtime = self._jobs[spec.id]
        next_run: datetime | None = None
        if schedule is not None and not spec.paused and schedule.next_fire_time is not None:
            next_run = schedule.next_fire_time.astimezone(self._tz)
        options = spec.options
        return JobInfo(
            id=spec.id,
            name=spec.name,
            func=spec.func_ref,
            trigger=spec.trigger.info(),
            next_run_time=next_run,
            paused=spec.paused,
            timeout=options.timeout,
            max_instances=options.max_instances,
            coalesce=options.coalesce,
            misfire_grace_time=options.misfire_grace_time,
            retries=options.retries,
            retry_delay=options.retry_delay,
            jitter=options.jitter,
            max_staleness=options.max_staleness,
            running=runtime.running,
            last_run=self._executor.last_run(runtime),
            counts=runtime.run_counts(),
        )

    async def preview(self, job_id: str, count: int = 10) -> list[datetime]:
        """The next ``count`` fire times the job will really have, in the configured timezone.

        From now on (or from the job's ``start``, when later). Empty for a finished job; for
        a paused job, the times it would have if resumed now.
        """
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1000:
            raise ValueError(f"count must be an integer from 1 to 1000, got {count!r}")
        spec = self._spec(job_id)
        if job_id in self._finished:
            return []
        now = _utcnow()
        times: list[datetime] = []
        engine = self._live_engine()
        schedules = [] if engine is None else await engine.data_store.get_schedules({job_id})
        if schedules:
            # Continue the engine's own trigger (a copy), so the preview is what will run.
            schedule = schedules[0]
            trigger: Trigger | None = copy.deepcopy(schedule.trigger)
            fire_time = schedule.next_fire_time
        else:
            trigger = spec.trigger.build(now, allow_past=not spec.declared)
            fire_time = None if trigger is None else trigger.next()
        skipped = 0
        while fire_time is not None and len(times) < count:
            if fire_time >= now or not spec.paused:
                times.append(fire_time.astimezone(self._tz))
            elif (skipped := skipped + 1) > PREVIEW_SKIP_LIMIT:
                # Paused for very long on a short interval: resuming restarts the grid at now.
                trigger = spec.trigger.build(now)
                fire_time = None if trigger is None else trigger.next()
                continue
            fire_time = trigger.next() if trigger is not None else None
        return times

    async def get_runs(self, job_id: str, limit: int | None = None) -> list[RunInfo]:
        """Recent runs of the job, newest first (runs in progress included)."""
        self._spec(job_id)
        return self._executor.runs(job_id, self.config.history_size if limit is None else limit)

    async def run_job(self, job_id: str, *, wait: bool = True) -> RunInfo:
        """Fire the job once now, outside its schedule, under all its rules.

        With ``wait=True`` returns the fire's final attempt; with ``wait=False``, at once,
        the in-progress first attempt. A fire at the ``max_instances`` limit is ``skipped``.
        """
        self._spec(job_id)
        task_group = self._task_group
        if task_group is None or self._live_engine() is None or self._stopping:
            raise SchedulerStateError(
                f"cannot run job {job_id!r} now: the scheduler is {self._state}"
            )
        request, record = self._executor.request_run(job_id)
        if request is not None:
            task_group.start_soon(self._executor.run_now, request, name=f"run {job_id}")
            if wait:
                await request.done.wait()
                record = request.final or request.record
        return record.info(self._executor.prefix, self._tz)

    # ------------------------------------------------------------------ hooks and status

    def on_run_finished(self, callback: RunHook) -> RunHook:
        """Call ``callback(run_info)`` (sync or async) after every finished run attempt.

        Hooks run one at a time in a task of the scheduler's, never inside a job; a hook
        that raises is logged and changes nothing else. Usable as a decorator.
        """
        self._hooks.append(callback)
        self._executor.finished_sink = self._send_to_hooks
        return callback

    def _send_to_hooks(self, record: RunRecord) -> None:
        if self._hook_send is None:
            return
        try:
            self._hook_send.send_nowait(record)
        except anyio.WouldBlock:
            self._hooks_dropped += 1
            if self._hooks_dropped == 1 or self._hooks_dropped % 1000 == 0:
                logger.warning(
                    "on_run_finished hooks are %d runs behind; %d run(s) not delivered so far",
                    HOOK_BUFFER,
                    self._hooks_dropped,
                )
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def _dispatch_hooks(self, receive: Any) -> None:
        async with receive:
            async for record in receive:
                info = record.info(self._executor.prefix, self._tz)
                for hook in list(self._hooks):
                    try:
                        result = hook(info)
                        if hasattr(result, "__await__"):
                            await result
                    except Exception:
                        logger.exception("on_run_finished hook %r failed", hook)

    async def get_status(self) -> SchedulerStatus:
        """The scheduler's state, engine restarts and last engine error, and run counts."""
        return SchedulerStatus(
            state=self._state,
            started_at=None if self._started_at is None else self._started_at.astimezone(self._tz),
            engine_restarts=self._engine_restarts,
            last_engine_error=self._last_engine_error,
            job_count=len(self._jobs),
            runs_in_progress=self._executor.in_progress,
            stale_jobs=self._stale_jobs(),
        )

    def _stale_jobs(self) -> list[str]:
        """Unpaused jobs with ``max_staleness`` whose last success (or start) is older than it."""
        if self._started_at is None or self._state not in ("running", "starting", "failed"):
            return []
        now = _utcnow()
        stale = []
        for job in self._jobs.values():
            spec = job.spec
            limit = spec.options.max_staleness
            if limit is None or spec.paused:
                continue
            last_success = job.last_success
            since = (
                self._started_at if last_success is None else max(last_success, self._started_at)
            )
            if (now - since).total_seconds() > limit:
                stale.append(spec.id)
        return stale

    @property
    def state(self) -> SchedulerState:
        """``stopped``, ``starting``, ``running``, ``stopping`` or ``failed``."""
        return self._state

    @property
    def timezone(self) -> str:
        return self.config.timezone

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start running jobs. Call :meth:`shutdown` later *from the same task*."""
        if self._state not in ("stopped", "failed"):
            raise SchedulerStateError(f"cannot start: the scheduler is already {self._state}")
        if self._exit_stack is not None:  # a failed run left its scope open
            await self._close_scope()
        self._state = "starting"
        self._stopping = False
        self._drained = None
        self._stop_request = anyio.Event()
        self._loop_token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        self._engine_restarts = 0
        self._last_engine_error = None
        self._executor.open()
        stack = AsyncExitStack()
        task_group: TaskGroup | None = None
        try:
            # Opened first, so that it closes last: after every task that uses it has ended.
            data_store, event_broker = await open_backend(
                self._store,
                self.config.event_broker,
                connect_timeout=self.config.connect_timeout,
                exit_stack=stack,
            )
            task_group = await stack.enter_async_context(anyio.create_task_group())
            send, receive = anyio.create_memory_object_stream[RunRecord](HOOK_BUFFER)
            self._hook_send = send
            task_group.start_soon(self._dispatch_hooks, receive, name="task_scheduler hooks")
            self._watcher_scope = await task_group.start(
                self._watch_stop_request,
                self._stop_request,
                self._cancel_owner_on_stop_request,
                name="task_scheduler stop requests",
            )
            self._engine = make_engine(
                data_store=data_store,
                event_broker=event_broker,
                executor=self._executor,
                identity=self._identity,
                max_concurrent_jobs=self.config.max_concurrent_jobs,
            )
            if self._store.persistent:
                # Recover from a dead process within ~10 s rather than 30 s or 15 min.
                self._engine.lease_duration = timedelta(seconds=LEASE_DURATION)
                self._engine.cleanup_interval = timedelta(seconds=CLEANUP_INTERVAL)
                # SQLStore (sqlalchemy is optional, so no isinstance)
                if hasattr(data_store, "on_abandoned") and hasattr(data_store, "on_skipped"):
                    data_store.on_abandoned = self._on_abandoned
                    data_store.on_skipped = self._on_skipped
                self._executor.adopt = self._adopt_job
            await task_group.start(self._supervise, name="task_scheduler engine supervisor")
        except BaseException:
            self._state = "stopped"
            self._engine = None
            self._hook_send = None
            if task_group is not None:
                task_group.cancel_scope.cancel()  # the hook and stop-request tasks wait forever
            try:
                await stack.aclose()
            except BaseExceptionGroup:
                pass  # the task group reports the same failure we are raising
            raise
        if not self._store.persistent:
            declared = [job_id for job_id, job in self._jobs.items() if job.spec.declared]
            lock = warn_about_siblings(declared)
            if lock is not None:
                stack.callback(lock.release)
        self._exit_stack = stack
        self._task_group = task_group
        self._started_at = _utcnow()
        self._state = "running"
        logger.info("task scheduler started with %d job(s)", len(self._jobs))

    def _adopt_job(self, job: Job) -> JobRuntime | None:
        """Take over a job another process added at run time, from its fire's metadata."""
        data = stored_definition(job)
        if data is None or job.task_id in self._jobs:
            return None
        try:
            spec = spec_from_definition(job.task_id, data, self._tz, paused=False)
        except Exception as exc:
            logger.error("job %r from the store cannot be loaded here: %s", job.task_id, exc)
            return None
        return self._executor.register(spec)

    async def _on_abandoned(self, job: Job) -> None:
        """Record a run a dead process left unfinished, and retry it if the job has retries."""
        runtime = self._jobs.get(job.task_id)
        if runtime is None:
            return
        self._executor.record_abandoned(runtime, job)
        if runtime.spec.options.retries and not self._stopping:
            try:
                await self.run_job(job.task_id, wait=False)
            except (SchedulerStateError, JobNotFoundError) as exc:
                logger.warning("could not retry abandoned job %r: %s", job.task_id, exc)

    def _on_skipped(self, job: Job, running: int) -> None:
        """Record a fire this process found at max_instances across all processes."""
        runtime = self._jobs.get(job.task_id)
        if runtime is not None:
            self._executor.record_skipped(runtime, job, running)

    async def _release_claims(self, engine: AsyncScheduler) -> None:
        """After a clean stop, give back what the engine still claims (SQL stores)."""
        release = getattr(engine.data_store, "release_claims", None)
        if release is None:
            return
        try:
            with anyio.fail_after(TEARDOWN_GRACE):
                count = await release(self._identity)
        except Exception as exc:
            logger.warning("could not give back claimed schedules at shutdown: %s", exc)
        else:
            if count:
                logger.info("gave back %d claimed schedule(s) and unstarted job(s)", count)

    async def _close_hooks(self) -> None:
        send, self._hook_send = self._hook_send, None
        if send is not None:
            await send.aclose()

    async def _install_all(self, engine: AsyncScheduler) -> None:
        if not self._store.persistent:
            await engine.configure_task(
                MEMORY_TASK_ID,
                func=run_by_executor,
                job_executor=EXECUTOR_NAME,
                max_running_jobs=None,  # max_instances is ours, per job (trap 7)
                misfire_grace_time=None,  # misfire_grace_time is ours too: recorded `missed`
            )
            now = _utcnow()
            for spec in [job.spec for job in self._jobs.values()]:
                await self._install(engine, spec, now, allow_past=False)
            return
        specs = {job_id: job.spec for job_id, job in self._jobs.items()}
        for spec in specs.values():
            check_storable(spec, self._serializer, resolve=True)
        todo = plan(specs, list(await engine.get_schedules()))
        for spec in todo.create:
            # do_nothing: several processes starting at once each try to create it.
            await self._install(
                engine, spec, _utcnow(), allow_past=False, policy=ConflictPolicy.do_nothing
            )
        for spec, schedule in todo.keep:
            spec.paused = schedule.paused  # the store's pause state and next fire time stay
            await self._configure_task(engine, spec)
        for spec in todo.replace:
            old = await engine.data_store.get_schedules({spec.id})
            if old:
                spec.paused = old[0].paused
            # A changed definition gets a fresh trigger from now: no extra run (trap 11).
            await self._install(
                engine, spec, _utcnow(), allow_past=False, policy=ConflictPolicy.replace
            )
            logger.info("job %r changed since it was stored: updated", spec.id)
        for job_id in todo.remove:
            await engine.remove_schedule(job_id)
            await self._remove_task(engine, job_id)
            logger.info("job %r is no longer declared: removed from the store", job_id)
        for job_id, data, schedule in todo.adopt:
            await self._adopt(engine, job_id, data, paused=schedule.paused)

    async def _adopt(
        self, engine: AsyncScheduler, job_id: str, data: dict[str, Any], *, paused: bool
    ) -> JobSpec | None:
        """Take over a job added at run time, by this process earlier or by another one."""
        try:
            spec = spec_from_definition(job_id, data, self._tz, paused=paused)
        except Exception as exc:
            logger.error("stored job %r cannot be loaded, it will not run here: %s", job_id, exc)
            return None
        self._executor.register(spec)
        await self._configure_task(engine, spec)
        return spec

    @staticmethod
    async def _remove_task(engine: AsyncScheduler, job_id: str) -> None:
        try:
            await engine.data_store.remove_task(job_id)
        except TaskLookupError:
            pass

    async def _supervise(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Run the engine; restart it with backoff if it crashes (trap 6), then give up."""
        assert self._engine is not None
        engine = self._engine
        installed = started = False
        delay = RESTART_DELAY_FIRST
        crashes: deque[float] = deque()
        while True:
            try:
                async with engine:
                    if not installed:
                        await self._install_all(engine)
                        installed = True
                    await engine.start_in_background()
                    if not started:
                        started = True
                        task_status.started()
                    elif self._state == "starting":
                        self._state = "running"
                        logger.warning("APScheduler engine restarted")
                    await engine.wait_until_stopped()
                    if self._stopping:
                        await self._release_claims(engine)
                if self._stopping:
                    return
                raise RuntimeError("the APScheduler engine stopped on its own")
            except Exception as exc:
                if not started:
                    # Failing to start is the caller's error to see, not a task group's.
                    raise _root_exception(exc) from None
                if self._stopping:
                    return
                message = _root_message(exc)
                self._last_engine_error = message
                now = time.monotonic()
                crashes.append(now)
                while crashes and crashes[0] < now - RESTART_WINDOW:
                    crashes.popleft()
                if len(crashes) > RESTARTS_ALLOWED:
                    self._state = "failed"
                    logger.critical(
                        "APScheduler engine crashed %d times in %.0f s, giving up: %s; "
                        "no job will run until the scheduler is restarted",
                        len(crashes),
                        RESTART_WINDOW,
                        message,
                        exc_info=exc,
                    )
                    return
                self._state = "starting"
                logger.critical(
                    "APScheduler engine crashed: %s; restarting in %.0f s", message, delay,
                    exc_info=exc,
                )  # fmt: skip
                await anyio.sleep(delay)
                delay = min(delay * 2, RESTART_DELAY_MAX)
                self._engine_restarts += 1
                if self._stopping:
                    return

    async def shutdown(self) -> None:
        """Stop: no new runs; running jobs get ``shutdown_timeout`` seconds, then are cancelled.

        Returns when no task of the scheduler's is left. Must be called from the task that
        called :meth:`start` (structured concurrency: the scheduler's tasks live in a task
        group that task owns). From elsewhere, use :meth:`request_stop`. A no-op when stopped.
        """
        await self._shutdown(None, None, None)

    async def _shutdown(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool:
        if self._exit_stack is None:
            return False
        await self._drain()
        suppress = await self._close_scope(exc_type, exc_val, exc_tb)
        logger.info("task scheduler stopped")
        return suppress

    def request_stop(self) -> None:
        """Ask the scheduler to stop, from any task or thread (a signal handler, an endpoint).

        Runs the same drain as :meth:`shutdown`. Inside ``async with scheduler:`` the block is
        then cancelled, so the owner leaves it; with :meth:`start`/``lifespan`` the owner's
        own :meth:`shutdown` finishes the job. A no-op when the scheduler is not running.
        """
        event, token = self._stop_request, self._loop_token
        if event is None or event.is_set():
            return
        if threading.get_ident() == self._loop_thread:
            event.set()
            return
        try:
            anyio.from_thread.run_sync(event.set, token=token)
        except anyio.RunFinishedError:
            pass

    async def _watch_stop_request(
        self, event: anyio.Event, cancel_owner: bool, *, task_status: TaskStatus[CancelScope]
    ) -> None:
        with CancelScope() as scope:
            task_status.started(scope)
            await event.wait()
            await self._drain()
            if cancel_owner and self._task_group is not None:
                self._task_group.cancel_scope.cancel()

    async def _drain(self) -> None:
        """No new runs; wait up to shutdown_timeout for running ones; stop the engine. Once.

        Shielded: a cancelled owner (Ctrl-C, or request_stop's own cancellation of an
        ``async with`` block) still gives running jobs their time and closes in order.
        """
        with CancelScope(shield=True):
            if self._drained is not None:
                await self._drained.wait()
                return
            self._drained = anyio.Event()
            self._state = "stopping"
            try:
                if self._engine is not None:
                    # A shared store's fires go to the other processes (or wait for the
                    # next start) rather than being taken here only to be cancelled.
                    stop_taking = getattr(self._engine.data_store, "stop_taking_jobs", None)
                    if stop_taking is not None:
                        stop_taking()
                self._executor.begin_drain()
                timeout = self.config.shutdown_timeout
                if not await self._executor.wait_idle(timeout):
                    logger.warning(
                        "shutdown: run(s) of %s still in progress after %s s; cancelling them",
                        ", ".join(repr(job_id) for job_id in self._executor.running_jobs()),
                        timeout,
                    )
                self._stopping = True
                self._executor.cancel_run_nows()
                if self._engine is not None:
                    stop_claiming = getattr(self._engine.data_store, "stop_claiming", None)
                    if stop_claiming is not None:
                        await stop_claiming(TEARDOWN_GRACE)
                    await self._engine.stop()
                await self._close_hooks()
            finally:
                self._drained.set()

    async def _close_scope(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool:
        """Leave the task group start() entered; True if it absorbed the owner's exception
        (the cancellation :meth:`request_stop` sent into an ``async with`` block)."""
        stack, self._exit_stack = self._exit_stack, None
        try:
            if self._watcher_scope is not None:
                self._watcher_scope.cancel()
            if self._task_group is not None:
                # Queued hooks and the engine's teardown get a short grace, then are cancelled.
                # (A deadline on the group's own scope: a new scope around its exit would
                # break the nesting of cancel scopes.)
                self._task_group.cancel_scope.deadline = anyio.current_time() + TEARDOWN_GRACE
            if stack is not None:
                return bool(await stack.__aexit__(exc_type, exc_val, exc_tb))
            return False
        finally:
            self._stop_request = None
            self._watcher_scope = None
            self._task_group = None
            self._engine = None
            self._state = "stopped"

    async def __aenter__(self) -> TaskScheduler:
        self._cancel_owner_on_stop_request = True
        try:
            await self.start()
        finally:
            self._cancel_owner_on_stop_request = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool:
        return await self._shutdown(exc_type, exc_val, exc_tb)

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[dict[str, Any]]:
        """A FastAPI/Starlette lifespan: ``FastAPI(lifespan=scheduler.lifespan)``.

        Yields the lifespan state ``{"task_scheduler": scheduler}``.
        """
        await self.start()
        try:
            yield {"task_scheduler": self}
        finally:
            await self.shutdown()


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)
