"""TaskScheduler, the facade: declare jobs, add them at run time, manage and query them.

What it stands on, each built here once and handed what it calls:

- :class:`~._registry.JobRegistry`: every job's definition and runtime state;
- :class:`~._backend.Backend`: how jobs live in the engine for the configured store;
- :class:`~._executor.TaskExecutor`: runs each fire and records it;
- :class:`~._hooks.HookDispatcher`: ``on_run_finished`` hooks;
- :class:`~._lifecycle.Lifecycle`: start, supervise, drain and stop.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from apscheduler import Schedule
from apscheduler.abc import Trigger

from ._backend import make_backend
from ._clock import Clock, TimeKeeper
from ._config import SchedulerConfig
from ._depends import DependencyOverrides
from ._errors import (
    DuplicateJobError,
    InvalidTypeError,
    InvalidValueError,
    JobNotFoundError,
    MissingDependencyError,
    SchedulerStateError,
)
from ._executor import TaskExecutor
from ._history import History, JobFacts, LocalHistory, Worker
from ._hooks import HookDispatcher, RunHook
from ._jobs import JobOptions, JobSpec, job_id_for, make_spec, validate_job_id
from ._lifecycle import Lifecycle, Phase
from ._models import JobInfo, Outcome, RunInfo, SchedulerState, SchedulerStatus, WorkerInfo
from ._registry import JobRegistry, JobRuntime
from ._runs import RunObserver, RunRecord
from ._triggers import CronSpec, DateSpec, IntervalSpec, TriggerSpec, as_aware

if TYPE_CHECKING:
    from ._metrics import SchedulerMetrics

    if sys.version_info >= (3, 11):
        from typing import Unpack
    else:
        from typing_extensions import Unpack

F = TypeVar("F", bound=Callable[..., Any])

METRICS_EXTRA = 'pip install "fastapi-task-scheduler[metrics]"'

PREVIEW_SKIP_LIMIT = 100_000


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
        self._worker = Worker.here()
        self._registry = JobRegistry()
        self._hooks = HookDispatcher(self._tz, self._worker.id)
        self._backend = make_backend(self.config, self._registry, self._worker)
        self._overrides = DependencyOverrides()
        self._executor = TaskExecutor(
            registry=self._registry,
            tz=self._tz,
            history_size=self.config.history_size,
            thread_limit=self.config.max_concurrent_jobs,
            adopt=self._backend.adopt,
            on_finished=self._hooks.notify,
            recorder=self._backend.recorder,
            overrides=self._overrides,
        )
        self._lifecycle = Lifecycle(
            self.config,
            self._registry,
            self._backend,
            self._executor,
            self._hooks,
            identity=self._worker.id,
        )
        self._local = LocalHistory(
            self._registry, self._tz, self._worker, self._lifecycle.worker_status, self._utcnow
        )
        self._prometheus: SchedulerMetrics | None = None
        self._otel: RunObserver | None = None

    def _utcnow(self) -> datetime:
        """The scheduler's time, in UTC: real, or virtual under ``testing.virtual_time``."""
        return self._lifecycle.clock.now()

    def _history(self) -> History:
        """The cluster's history while a persistent store is open, else this process's."""
        return self._backend.cluster_history() or self._local

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
        if self._lifecycle.phase is not Phase.stopped:
            raise SchedulerStateError(
                f"cannot declare job {job_id!r} with a decorator while the scheduler runs; "
                f"use add_interval_job(), add_cron_job() or add_date_job() at run time"
            )
        spec = make_spec(func, job_id, trigger, options, self.config.job_defaults, declared=True)
        self._register(spec, options)

    def _register(self, spec: JobSpec, options: Mapping[str, Any]) -> JobRuntime:
        if spec.id in self._registry:
            raise DuplicateJobError(spec.id)
        self._backend.check_storable(spec)
        return self._registry.add(spec, paused=bool(options.get("paused", False)))

    @property
    def dependency_overrides(self) -> dict[Callable[..., Any], Callable[..., Any]]:
        """Replacements for jobs' ``Depends`` dependencies: ``{original: replacement}``, as
        FastAPI's ``app.dependency_overrides`` (which jobs also honour while the scheduler runs
        in that app's lifespan; where both replace one dependency, this one wins). Read at
        every run: tests may change it while the scheduler runs."""
        return self._overrides.own

    @dependency_overrides.setter
    def dependency_overrides(self, overrides: dict[Callable[..., Any], Callable[..., Any]]) -> None:
        if not isinstance(overrides, dict):
            raise InvalidTypeError(
                f"dependency_overrides must be a dict of {{dependency: replacement}}, "
                f"got {overrides!r}"
            )
        self._overrides.own = overrides

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
            raise InvalidValueError(
                f"give the job id once: job_id={job_id!r} but id={options['id']!r}"
            )
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
        runtime = self._register(spec, options)
        engine = self._lifecycle.live_engine
        if engine is not None:
            try:
                await self._backend.place(engine, runtime)
            except BaseException:
                self._registry.remove(spec.id)
                raise
        return await self.get_job(job_id)

    # ------------------------------------------------------------------ managing jobs

    async def pause_job(self, job_id: str) -> JobInfo:
        """Stop firing the job until :meth:`resume_job`; a run in progress goes on."""
        runtime = await self._runtime(job_id)
        await self._refresh_paused([runtime])
        if not runtime.paused:
            runtime.paused = True
            engine = self._lifecycle.live_engine
            if engine is not None and job_id not in self._registry.finished:
                try:
                    await self._backend.pause(engine, job_id)
                except BaseException:
                    runtime.paused = False  # not paused in the store: a retry must write again
                    raise
        return await self.get_job(job_id)

    async def resume_job(self, job_id: str) -> JobInfo:
        """Fire the job again, from now on: fires missed while paused are not run."""
        runtime = await self._runtime(job_id)
        await self._refresh_paused([runtime])
        if runtime.paused:
            runtime.paused = False
            engine = self._lifecycle.live_engine
            if engine is not None and job_id not in self._registry.finished:
                try:
                    await self._backend.resume(engine, job_id)
                except BaseException:
                    runtime.paused = True  # still paused in the store: a retry must write again
                    raise
        return await self.get_job(job_id)

    async def _refresh_paused(self, runtimes: list[JobRuntime]) -> None:
        """Take each job's pause state from the engine's schedule: on a shared store, another
        worker may have paused or resumed it (the schedule in the store is the truth)."""
        engine = self._lifecycle.live_engine
        if engine is None:
            return
        ids = {runtime.spec.id for runtime in runtimes} - self._registry.finished
        if not ids:
            return
        schedules = await self._backend.schedules(engine, ids)
        self._take_paused(runtimes, schedules)

    @staticmethod
    def _take_paused(runtimes: list[JobRuntime], schedules: dict[str, Schedule]) -> None:
        for runtime in runtimes:
            schedule = schedules.get(runtime.spec.id)
            if schedule is not None:
                runtime.paused = schedule.paused

    async def _runtime(self, job_id: str) -> JobRuntime:
        """The job with this id: declared or added here or, on a shared store, added at run
        time by another process since this one started (taken from its schedule in the
        store); :class:`JobNotFoundError` if there is none."""
        try:
            return self._registry[job_id]
        except JobNotFoundError:
            adopted = await self._adopt({job_id})
            if job_id not in adopted:
                raise
            return adopted[job_id]

    async def _adopt(
        self, ids: set[str] | None, schedules: dict[str, Schedule] | None = None
    ) -> dict[str, JobRuntime]:
        """Register the jobs of the store's schedules (of ``ids``, or all) that another
        process added at run time; ``schedules``: those already read."""
        engine = self._lifecycle.live_engine
        if engine is None:
            return {}
        if schedules is None:
            schedules = await self._backend.schedules(engine, ids)
        adopted: dict[str, JobRuntime] = {}
        for job_id, schedule in schedules.items():
            if job_id not in self._registry:
                runtime = self._backend.adopt_schedule(schedule)
                if runtime is not None:
                    adopted[job_id] = runtime
        return adopted

    async def remove_job(self, job_id: str) -> None:
        """Remove the job; a run in progress is allowed to finish."""
        engine = self._lifecycle.live_engine
        if job_id not in self._registry and job_id in self._backend.unloadable():
            if engine is not None:  # a row of the store that cannot be loaded: not registered
                await self._backend.remove(engine, job_id)
            return
        await self._runtime(job_id)
        if engine is not None:
            await self._backend.remove(engine, job_id)
        self._registry.remove(job_id)

    async def get_job(self, job_id: str) -> JobInfo:
        """The job with this id; :class:`JobNotFoundError` if there is none."""
        runtime = await self._runtime(job_id)
        schedule: Schedule | None = None
        engine = self._lifecycle.live_engine
        if engine is not None and job_id not in self._registry.finished:
            schedule = (await self._backend.schedules(engine, {job_id})).get(job_id)
            self._take_paused([runtime], {job_id: schedule} if schedule is not None else {})
        facts = await self._history().facts([runtime])
        return self._job_info(runtime, schedule, facts[job_id])

    async def get_jobs(self) -> list[JobInfo]:
        """Every job, in the order they were added."""
        schedules: dict[str, Schedule] = {}
        engine = self._lifecycle.live_engine
        if engine is not None:
            schedules = await self._backend.schedules(engine)
            await self._adopt(None, schedules)  # added at run time by another process
        runtimes = list(self._registry)
        self._take_paused(runtimes, schedules)
        facts = await self._history().facts(runtimes)
        return [
            self._job_info(runtime, schedules.get(runtime.spec.id), facts[runtime.spec.id])
            for runtime in runtimes
        ]

    def _job_info(self, runtime: JobRuntime, schedule: Schedule | None, facts: JobFacts) -> JobInfo:
        spec = runtime.spec
        next_run: datetime | None = None
        if schedule is not None and not runtime.paused and schedule.next_fire_time is not None:
            next_run = schedule.next_fire_time.astimezone(self._tz)
        return facts.job_info(
            (spec.id, spec.name, spec.func_ref, spec.trigger.info()),
            spec.options,
            next_run_time=next_run,
            paused=runtime.paused,
        )

    async def preview(self, job_id: str, count: int = 10) -> list[datetime]:
        """The next ``count`` fire times the job will really have, in the configured timezone.

        From now on (or from the job's ``start``, when later). Empty for a finished job; for
        a paused job, the times it would have if resumed now.
        """
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1000:
            raise InvalidValueError(f"count must be an integer from 1 to 1000, got {count!r}")
        runtime = await self._runtime(job_id)
        spec = runtime.spec
        if job_id in self._registry.finished:
            return []
        now = self._utcnow()
        times: list[datetime] = []
        engine = self._lifecycle.live_engine
        schedule = None
        if engine is not None:
            schedule = (await self._backend.schedules(engine, {job_id})).get(job_id)
        if schedule is not None:
            # Continue the engine's own trigger (a copy), so the preview is what will run.
            trigger: Trigger | None = copy.deepcopy(schedule.trigger)
            fire_time = schedule.next_fire_time
        else:
            trigger = spec.trigger.build(now, allow_past=not spec.declared)
            fire_time = None if trigger is None else trigger.next()
        skipped = 0
        while fire_time is not None and len(times) < count:
            if fire_time >= now or not runtime.paused:
                times.append(fire_time.astimezone(self._tz))
            elif (skipped := skipped + 1) > PREVIEW_SKIP_LIMIT:
                # Paused for very long on a short interval: resuming restarts the grid at now.
                trigger = spec.trigger.build(now)
                fire_time = None if trigger is None else trigger.next()
                continue
            fire_time = trigger.next() if trigger is not None else None
        return times

    async def get_runs(
        self,
        job_id: str | None,
        limit: int = 20,
        *,
        outcome: Outcome | str | None = None,
        before: datetime | None = None,
    ) -> list[RunInfo]:
        """Runs of the job (or of every job, with ``None``), newest first, runs in progress
        included: on a persistent store every worker's, kept across restarts.

        ``outcome``: only runs that ended so; ``before``: only runs that started (or were
        recorded) before it - the ``started_at`` (or ``finished_at``) of the last run of a
        page gives the next page. At most ``limit`` (1 to 1000).
        """
        if job_id is not None:
            await self._runtime(job_id)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise InvalidValueError(f"limit must be an integer from 1 to 1000, got {limit!r}")
        if outcome is not None and not isinstance(outcome, Outcome):
            try:
                outcome = Outcome(outcome)
            except ValueError:
                valid = ", ".join(item.value for item in Outcome)
                raise InvalidValueError(
                    f"unknown outcome {outcome!r}; valid outcomes: {valid}"
                ) from None
        if before is not None:
            before = as_aware(before, self._tz, "before")
        return await self._history().runs(job_id, limit, outcome, before)

    async def get_workers(self) -> list[WorkerInfo]:
        """The live workers: every process sharing a persistent store (this one on memory://),
        oldest first. A stopped worker leaves at once, a killed one within ~12 s."""
        return await self._history().workers()

    async def run_job(self, job_id: str, *, wait: bool = True) -> RunInfo:
        """Fire the job once now, outside its schedule, under all its rules.

        With ``wait=True`` returns the fire's final attempt; with ``wait=False``, at once,
        the in-progress first attempt. A fire at the ``max_instances`` limit is ``skipped``.
        """
        await self._runtime(job_id)
        task_group = self._lifecycle.task_group
        if task_group is None or self._lifecycle.live_engine is None:
            raise SchedulerStateError(
                f"cannot run job {job_id!r} now: the scheduler is {self.state}"
            )
        request, record = self._executor.request_run(job_id)
        if request is not None:
            clock = self._lifecycle.clock
            if clock.virtual:  # a unit of work the virtual clock waits for, as fires are
                keeper = cast(TimeKeeper, clock)
                unit = keeper.begin(job_id)
                task_group.start_soon(
                    keeper.run, unit, self._executor.run_now, request, name=f"run {job_id}"
                )
            else:
                task_group.start_soon(self._executor.run_now, request, name=f"run {job_id}")
            if wait:
                await request.done.wait()
                record = request.final or request.record
        return record.info(self._tz, self._worker.id)

    # ------------------------------------------------------------------ hooks and status

    def on_run_finished(self, callback: RunHook) -> RunHook:
        """Call ``callback(run_info)`` (sync or async) after every finished run attempt.

        Hooks run one at a time in a task of the scheduler's, never inside a job; a hook
        that raises is logged and changes nothing else. Usable as a decorator.
        """
        self._hooks.add(callback)
        return callback

    def metrics_collector(self) -> SchedulerMetrics:
        """This scheduler's Prometheus collector (the same one every call), in a registry of
        its own (``.registry``): what ``GET {prefix}/metrics`` serves.

        To serve it from an app's existing ``/metrics`` as well, register it in that registry:
        ``prometheus_client.REGISTRY.register(scheduler.metrics_collector())``. The run
        histograms count this process's runs from the first call on.
        :class:`MissingDependencyError` without ``prometheus_client`` (the ``metrics`` extra).
        """
        if self._prometheus is None:
            try:
                from ._metrics import SchedulerMetrics, Source
            except ImportError as exc:
                if not (exc.name or "").startswith("prometheus_client"):
                    raise
                raise MissingDependencyError(
                    f"Prometheus metrics need prometheus_client: {METRICS_EXTRA}"
                ) from exc
            lifecycle = self._lifecycle
            self._prometheus = SchedulerMetrics(
                Source(
                    jobs=lambda: self.get_jobs(),
                    workers=lambda: self.get_workers(),
                    job_ids=self._registry.by_id.keys,
                    state=lambda: lifecycle.state,
                    engine_restarts=lambda: lifecycle.engine_restarts,
                    spawn=lambda func: lifecycle.spawn(func, "task_scheduler metrics refresh"),
                    clock=time.monotonic,
                )
            )
            self._observe()
        return self._prometheus

    def _observe(self) -> None:
        """Hand the executor what observes each run: Prometheus' histograms once asked for,
        OpenTelemetry when its providers were set at start; nothing (no cost) otherwise."""
        observers = [found for found in (self._prometheus, self._otel) if found is not None]
        if not observers:
            self._executor.observe(None)
        elif len(observers) == 1:
            self._executor.observe(observers[0])
        else:
            self._executor.observe(_Observers(observers))

    def _look_for_otel(self) -> None:
        """At start: OpenTelemetry's providers, if its API is installed and the app set any."""
        if self._lifecycle.phase not in (Phase.stopped, Phase.failed):
            return  # already running (start() refuses): its runs keep their observer
        try:
            from ._otel import observer
        except ImportError as exc:
            if not (exc.name or "").startswith("opentelemetry"):
                raise
            self._otel = None
        else:
            self._otel = observer()
        self._observe()

    async def get_status(self) -> SchedulerStatus:
        """The scheduler's state, engine restarts and last engine error, run counts, stale
        jobs (judged by the cluster's last successes on a persistent store) and workers."""
        lifecycle = self._lifecycle
        started_at = lifecycle.started_at
        history = self._history()
        return SchedulerStatus(
            state=lifecycle.state,
            started_at=None if started_at is None else started_at.astimezone(self._tz),
            engine_restarts=lifecycle.engine_restarts,
            last_engine_error=lifecycle.last_engine_error,
            job_count=len(self._registry),
            runs_in_progress=self._executor.in_progress,
            stale_jobs=await self._stale_jobs(history),
            unloadable_jobs=sorted(self._backend.unloadable()),
            worker_id=self._worker.id,
            loop_lag=round(lifecycle.loop_lag, 3),
            workers=len(await history.workers()),
            abandoned_threads=self._executor.abandoned_threads,
        )

    async def _stale_jobs(self, history: History) -> list[str]:
        """Unpaused jobs with ``max_staleness`` whose last success, on any worker (or this
        worker's start, if later), is older than it."""
        started_at = self._lifecycle.started_at
        if started_at is None or self.state not in ("running", "starting", "failed"):
            return []
        watched = [
            runtime for runtime in self._registry if runtime.spec.options.max_staleness is not None
        ]
        await self._refresh_paused(watched)  # paused by any worker: not stale
        watched = [runtime for runtime in watched if not runtime.paused]
        if not watched:
            return []
        facts = await history.facts(watched)
        now = self._utcnow()
        stale = []
        for runtime in watched:
            limit = runtime.spec.options.max_staleness
            assert limit is not None
            last_success = facts[runtime.spec.id].last_success_at
            since = started_at if last_success is None else max(last_success, started_at)
            if (now - since).total_seconds() > limit:
                stale.append(runtime.spec.id)
        return stale

    @property
    def state(self) -> SchedulerState:
        """``stopped``, ``starting``, ``running``, ``stopping`` or ``failed``."""
        return self._lifecycle.state

    @property
    def timezone(self) -> str:
        return self.config.timezone

    # ------------------------------------------------------------------ time

    def now(self) -> datetime:
        """The scheduler's time, in its timezone: the real time, or the virtual time of
        ``testing.virtual_time`` while a test runs the scheduler under it."""
        return self._lifecycle.clock.now().astimezone(self._tz)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` by the scheduler's time: ``anyio.sleep``, or under
        ``testing.virtual_time`` until the test's clock has moved that far on (so a job that
        waits this way is tested without waiting)."""
        await self._lifecycle.clock.sleep(seconds)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start running jobs. Call :meth:`shutdown` later *from the same task*."""
        self._look_for_otel()
        await self._lifecycle.start()

    async def shutdown(self) -> None:
        """Stop: no new runs; running jobs get ``shutdown_timeout`` seconds, then are cancelled.

        Returns when no task of the scheduler's is left. Must be called from the task that
        called :meth:`start` (structured concurrency: the scheduler's tasks live in a task
        group that task owns). From elsewhere, use :meth:`request_stop`. A no-op when stopped.
        """
        await self._lifecycle.shutdown()

    def request_stop(self) -> None:
        """Ask the scheduler to stop, from any task or thread (a signal handler, an endpoint).

        Runs the same drain as :meth:`shutdown`. Inside ``async with scheduler:`` the block is
        then cancelled, so the owner leaves it; with :meth:`start`/``lifespan`` the owner's
        own :meth:`shutdown` finishes the job. A no-op when the scheduler is not running.
        """
        self._lifecycle.request_stop()

    async def _start_under(self, clock: Clock) -> None:
        """``async with``'s start, by ``clock``'s time (``testing.virtual_time``)."""
        await self._lifecycle.start(cancel_owner_on_stop_request=True, clock=clock)

    async def __aenter__(self) -> TaskScheduler:
        self._look_for_otel()
        await self._lifecycle.start(cancel_owner_on_stop_request=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool:
        return await self._lifecycle.shutdown(exc_type, exc_val, exc_tb)

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[dict[str, Any]]:
        """A FastAPI/Starlette lifespan: ``FastAPI(lifespan=scheduler.lifespan)``.

        Yields the lifespan state ``{"task_scheduler": scheduler}``. While it runs, jobs'
        dependencies honour ``app.dependency_overrides``.
        """
        self._overrides.app = app  # before start(): a job due at once sees it too
        try:
            await self.start()
            try:
                yield {"task_scheduler": self}
            finally:
                await self.shutdown()
        finally:
            self._overrides.app = None


class _Observers:
    """Several run observers as one (Prometheus and OpenTelemetry both on)."""

    def __init__(self, observers: list[RunObserver]) -> None:
        self._observers = observers

    def started(self, record: RunRecord) -> None:
        for observer in self._observers:
            observer.started(record)

    def finished(self, record: RunRecord, exc: BaseException | None) -> None:
        for observer in self._observers:
            observer.finished(record, exc)
