"""The seam between the scheduler and a kind of store: how jobs live in the engine.

One interface, :class:`Backend`, and two implementations chosen once from the store URL:

- :class:`MemoryBackend` (``memory://``): one process, every job scheduled under one engine
  task, nothing survives the process; a sibling process running the same jobs on its own
  memory store is warned about.
- :class:`SQLBackend` (``sqlite://``, ``postgresql://``): each job its own engine task (its
  ``max_instances`` holds across processes) and its definition stored with its schedule;
  declared jobs are reconciled with the store at start, jobs other processes added are
  adopted, dead processes' runs are recorded by the store (through the executor's notices),
  and a stopping process gives its claims back.

The lifecycle and the facade call only what :class:`Backend` declares; everything about a
store's kind is decided here, never by testing a flag elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from apscheduler import (
    AsyncScheduler,
    CoalescePolicy,
    ConflictPolicy,
    Job,
    Schedule,
    TaskLookupError,
)
from apscheduler.abc import DataStore, EventBroker

from ._aps.engine import EXECUTOR_NAME, MEMORY_TASK_ID, make_engine, run_by_executor
from ._aps.errors import engine_errors
from ._aps.leases import CLEANUP_INTERVAL, LEASE_DURATION, VIRTUAL_LEASE
from ._aps.serializer import SafeJSONSerializer
from ._aps.stores import open_memory_store, open_sql_store
from ._clock import REAL_CLOCK, Clock
from ._config import SchedulerConfig
from ._errors import UnsupportedError
from ._executor import TaskExecutor
from ._history import ClusterHistory, History, RunRecorder, Worker, WorkerStatus, store_timeout
from ._jobs import JobSpec
from ._log import logger
from ._reconcile import (
    as_metadata,
    check_storable,
    namespace_of,
    plan,
    spec_from_definition,
    stored_definition,
)
from ._registry import JobRegistry, JobRuntime
from ._siblings import warn_about_siblings
from ._triggers import DateSpec
from ._urls import StoreURL, parse_store_url

if TYPE_CHECKING:  # sqlalchemy is an optional dependency
    from ._aps.history import RunHistory
    from ._aps.sqlstore import SQLStore


class Backend(Protocol):
    """How jobs are placed in the engine, for one kind of store."""

    recorder: RunRecorder | None
    """Where the executor records runs for the cluster (None: the process's memory only)."""

    def check_storable(self, spec: JobSpec) -> None:
        """Raise :class:`InvalidValueError` if this store could not hold ``spec``."""

    def adopt(self, job: Job) -> JobRuntime | None:
        """The job of a fire nobody here declared (another process added it), or None."""

    def adopt_schedule(self, schedule: Schedule) -> JobRuntime | None:
        """The job of a schedule in the store that nobody here declared (another process
        added it at run time, since this one started), or None."""

    async def open(
        self,
        exit_stack: AsyncExitStack,
        executor: TaskExecutor,
        identity: str,
        clock: Clock = REAL_CLOCK,
    ) -> AsyncScheduler:
        """Open the store and broker (closed by ``exit_stack``); the engine that runs them,
        by ``clock``'s time (a virtual clock: memory store only, checked by ``testing``)."""

    async def install_all(self, engine: AsyncScheduler) -> None:
        """Place every registered job in the engine (at each engine start)."""

    async def place(self, engine: AsyncScheduler, runtime: JobRuntime) -> None:
        """Place one job added while the engine runs."""

    async def remove(self, engine: AsyncScheduler, job_id: str) -> None:
        """Take a job out of the engine."""

    async def pause(self, engine: AsyncScheduler, job_id: str) -> None:
        """Stop firing the job's schedule."""

    async def resume(self, engine: AsyncScheduler, job_id: str) -> None:
        """Fire the job's schedule again, from now on."""

    async def schedules(
        self, engine: AsyncScheduler, ids: set[str] | None = None
    ) -> dict[str, Schedule]:
        """The engine's schedules (of ``ids``), by job id."""

    def unloadable(self) -> dict[str, str]:
        """Job ids with a row in the store this process cannot load, and why."""

    def stop_taking_jobs(self) -> None:
        """Draining: fires still coming due go to other processes, or wait for a restart."""

    async def stop_claiming(self, grace: float) -> None:
        """Claim no more schedules; wait up to ``grace`` s for the batch in hand."""

    async def release_claims(self, identity: str) -> int:
        """After a clean stop: give back what this process still claims; return how many."""

    async def serve_history(
        self, status: WorkerStatus, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Keep the cluster's history and this worker's heartbeat (until cancelled)."""

    def stop_history(self) -> None:
        """End :meth:`serve_history` (the drain is over)."""

    async def close_history(self) -> None:
        """Write the last runs and leave the list of workers (before the store closes)."""

    def cluster_history(self) -> History | None:
        """The cluster's history while the store is open; None: ask this process."""


def make_backend(config: SchedulerConfig, registry: JobRegistry, worker: Worker) -> Backend:
    """The backend for ``config.store``."""
    store = parse_store_url(config.store)
    if store.kind == "memory":
        return MemoryBackend(config, registry)
    return SQLBackend(config, registry, store, worker)


class _EngineBackend(ABC):
    """What both backends share: placing a schedule, and the engine's settings."""

    def __init__(self, config: SchedulerConfig, registry: JobRegistry) -> None:
        self._config = config
        self._registry = registry
        self._tz: ZoneInfo = config.tzinfo
        self._now = REAL_CLOCK.now
        """The clock of the current run's ``now`` (set by ``open``)."""

    def _engine(
        self,
        data_store: DataStore,
        event_broker: EventBroker,
        executor: TaskExecutor,
        identity: str,
        clock: Clock = REAL_CLOCK,
        **settings: timedelta,
    ) -> AsyncScheduler:
        return make_engine(
            data_store=data_store,
            event_broker=event_broker,
            executor=executor,
            identity=identity,
            max_concurrent_jobs=self._config.max_concurrent_jobs,
            clock=clock,
            **settings,
        )

    @abstractmethod
    async def _task_for(self, engine: AsyncScheduler, spec: JobSpec) -> str:
        """The engine task ``spec`` is scheduled under (configured if need be)."""

    def _metadata(self, spec: JobSpec) -> dict[str, Any]:
        return {}

    async def _schedule(
        self,
        engine: AsyncScheduler,
        runtime: JobRuntime,
        now: datetime,
        *,
        allow_past: bool,
        # Trap 11 (4.0.0a6): the default do_nothing keeps an old definition silently.
        policy: ConflictPolicy = ConflictPolicy.exception,
    ) -> None:
        """Hand one job to the engine; a trigger with nothing left marks it finished."""
        spec = runtime.spec
        trigger = spec.trigger.build(now, allow_past=allow_past)
        if trigger is None:
            self._registry.finished.add(spec.id)
            if isinstance(spec.trigger, DateSpec) and runtime.last is None:
                logger.warning(
                    "one-time job %r was due at %s, which passed before the scheduler started: "
                    "it will not run",
                    spec.id,
                    spec.trigger.run_at.astimezone(self._tz).isoformat(),
                )
            return
        self._registry.finished.discard(spec.id)
        task_id = await self._task_for(engine, spec)
        with engine_errors(spec.id):
            await engine.add_schedule(
                task_id,
                trigger,
                id=spec.id,
                paused=runtime.paused,
                coalesce=CoalescePolicy.latest if spec.options.coalesce else CoalescePolicy.all,
                misfire_grace_time=None,
                metadata=self._metadata(spec),
                conflict_policy=policy,
            )

    # The management calls: a store that does not answer raises StoreUnavailableError
    # within a few seconds (APScheduler retries a lost connection for a minute or more).

    async def place(self, engine: AsyncScheduler, runtime: JobRuntime) -> None:
        with store_timeout():
            await self._schedule(engine, runtime, self._now(), allow_past=True)

    async def pause(self, engine: AsyncScheduler, job_id: str) -> None:
        with store_timeout(), engine_errors(job_id):
            await engine.pause_schedule(job_id)

    async def resume(self, engine: AsyncScheduler, job_id: str) -> None:
        with store_timeout(), engine_errors(job_id):
            await engine.unpause_schedule(job_id, resume_from=self._now())

    async def remove(self, engine: AsyncScheduler, job_id: str) -> None:
        with store_timeout():
            await self._remove(engine, job_id)

    async def schedules(
        self, engine: AsyncScheduler, ids: set[str] | None = None
    ) -> dict[str, Schedule]:
        """The engine's schedules (of ``ids``), by job id."""
        with store_timeout():
            found = await engine.data_store.get_schedules(ids)
        return {schedule.id: schedule for schedule in found}

    @abstractmethod
    async def _remove(self, engine: AsyncScheduler, job_id: str) -> None:
        """Take a job out of the engine."""


class MemoryBackend(_EngineBackend):
    """``memory://``: one process; every job under one engine task."""

    recorder: RunRecorder | None = None  # the executor's memory is the whole truth

    def check_storable(self, spec: JobSpec) -> None:
        pass  # anything callable runs from memory

    def adopt(self, job: Job) -> JobRuntime | None:
        return None  # one process: every job is declared or added here

    def adopt_schedule(self, schedule: Schedule) -> JobRuntime | None:
        return None

    async def open(
        self,
        exit_stack: AsyncExitStack,
        executor: TaskExecutor,
        identity: str,
        clock: Clock = REAL_CLOCK,
    ) -> AsyncScheduler:
        self._now = clock.now
        data_store, event_broker = await open_memory_store(
            self._config.event_broker,
            connect_timeout=self._config.connect_timeout,
            now=clock.now,
        )
        settings = {"lease_duration": timedelta(seconds=VIRTUAL_LEASE)} if clock.virtual else {}
        engine = self._engine(data_store, event_broker, executor, identity, clock, **settings)
        declared = [runtime.spec.id for runtime in self._registry if runtime.spec.declared]
        lock = warn_about_siblings(declared)
        if lock is not None:
            exit_stack.callback(lock.release)
        return engine

    async def install_all(self, engine: AsyncScheduler) -> None:
        await engine.configure_task(
            MEMORY_TASK_ID,
            func=run_by_executor,
            job_executor=EXECUTOR_NAME,
            max_running_jobs=None,  # max_instances is ours, per job (trap 7)
            misfire_grace_time=None,  # misfire_grace_time is ours too: recorded `missed`
        )
        now = self._now()
        for runtime in self._registry:
            await self._schedule(engine, runtime, now, allow_past=False)

    async def _task_for(self, engine: AsyncScheduler, spec: JobSpec) -> str:
        # One engine task for every job (configured by install_all): no limit to keep per
        # task in one process, and ~180 B less per job (memory per idle schedule). The
        # executor finds each fire's job by its schedule id, which is the job id.
        return MEMORY_TASK_ID

    async def _remove(self, engine: AsyncScheduler, job_id: str) -> None:
        await engine.remove_schedule(job_id)  # jobs share one task: it stays

    def unloadable(self) -> dict[str, str]:
        return {}  # nothing is ever loaded from outside this process

    # One process: nothing to leave to others or to give back at a stop.
    def stop_taking_jobs(self) -> None:
        pass

    async def stop_claiming(self, grace: float) -> None:
        pass

    async def release_claims(self, identity: str) -> int:
        return 0

    async def serve_history(
        self, status: WorkerStatus, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()

    def stop_history(self) -> None:
        pass

    async def close_history(self) -> None:
        pass

    def cluster_history(self) -> History | None:
        return None


class SQLBackend(_EngineBackend):
    """``sqlite://`` and ``postgresql://``: schedules and job definitions in the database."""

    def __init__(
        self, config: SchedulerConfig, registry: JobRegistry, store: StoreURL, worker: Worker
    ) -> None:
        super().__init__(config, registry)
        self._store = store
        self._serializer = SafeJSONSerializer()
        self._namespace = config.namespace
        self._data_store: SQLStore | None = None
        """The store of the current run (its drain calls)."""
        self.recorder: RunRecorder | None = RunRecorder(
            worker, keep=config.history_size, max_age=config.history_max_age
        )
        self._history: RunHistory | None = None
        """The history tables of the current run's store."""

    def check_storable(self, spec: JobSpec) -> None:
        check_storable(spec, self._serializer)

    async def open(
        self,
        exit_stack: AsyncExitStack,
        executor: TaskExecutor,
        identity: str,
        clock: Clock = REAL_CLOCK,
    ) -> AsyncScheduler:
        if clock.virtual:
            raise UnsupportedError(
                f"virtual time runs on the memory store only, not on {self._store.kind}://"
            )
        data_store, event_broker = await open_sql_store(
            self._store,
            self._config.event_broker,
            connect_timeout=self._config.connect_timeout,
            exit_stack=exit_stack,
            notices=executor,
        )
        from ._aps.history import RunHistory

        self._data_store = data_store
        self._history = RunHistory(data_store)
        exit_stack.callback(self._closed)
        # Recover from a dead process within ~10 s rather than 30 s or 15 min.
        return self._engine(
            data_store,
            event_broker,
            executor,
            identity,
            lease_duration=timedelta(seconds=LEASE_DURATION),
            cleanup_interval=timedelta(seconds=CLEANUP_INTERVAL),
        )

    async def _configure_task(self, engine: AsyncScheduler, spec: JobSpec) -> None:
        """The job's own engine task."""
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

    async def _task_for(self, engine: AsyncScheduler, spec: JobSpec) -> str:
        await self._configure_task(engine, spec)
        return spec.id

    def _metadata(self, spec: JobSpec) -> dict[str, Any]:
        return dict(as_metadata(spec, self._namespace))  # the definition travels with it

    async def install_all(self, engine: AsyncScheduler) -> None:
        """Reconcile the declared jobs with the store, and adopt the jobs added at run time."""
        registry = self._registry
        specs = {spec.id: spec for spec in registry.specs()}
        for spec in specs.values():
            check_storable(spec, self._serializer, resolve=True)
        todo = plan(specs, list(await engine.get_schedules()), self._namespace)
        for spec in todo.create:
            # do_nothing: several processes starting at once each try to create it.
            await self._schedule(
                engine, registry[spec.id], self._now(), allow_past=False,
                policy=ConflictPolicy.do_nothing,
            )  # fmt: skip
        for spec, schedule in todo.keep:
            registry[spec.id].paused = schedule.paused  # the store's pause state and next
            await self._configure_task(engine, spec)  # fire time stay
        for spec in todo.replace:
            runtime = registry[spec.id]
            stored = await self.schedules(engine, {spec.id})
            if spec.id in stored:
                runtime.paused = stored[spec.id].paused
            # A changed definition gets a fresh trigger from now: no extra run (trap 11).
            await self._schedule(
                engine, runtime, self._now(), allow_past=False, policy=ConflictPolicy.replace
            )
            logger.info("job %r changed since it was stored: updated", spec.id)
        for job_id in todo.remove:
            await engine.remove_schedule(job_id)
            await self._remove_task(engine, job_id)
            logger.warning(
                "job %r is no longer declared in namespace %r: removed from the store",
                job_id,
                self._namespace,
            )
        for job_id, data, schedule in todo.adopt:
            runtime_or_none = self._load(job_id, data, paused=schedule.paused)
            if runtime_or_none is not None:
                await self._configure_task(engine, runtime_or_none.spec)

    def _load(self, job_id: str, data: dict[str, Any], *, paused: bool) -> JobRuntime | None:
        """Register a job added at run time (here earlier, or by another process)."""
        try:
            spec = spec_from_definition(job_id, data, self._tz)
        except Exception as exc:
            logger.error("stored job %r cannot be loaded, it will not run here: %s", job_id, exc)
            return None
        return self._registry.put(spec, paused=paused)

    def adopt(self, job: Job) -> JobRuntime | None:
        """Take over a job another process added at run time, from its fire's metadata."""
        return self._adopt(job.task_id, stored_definition(job), paused=False)

    def adopt_schedule(self, schedule: Schedule) -> JobRuntime | None:
        """Take over a job another process added at run time, from its schedule."""
        return self._adopt(schedule.id, stored_definition(schedule), paused=schedule.paused)

    def _adopt(
        self, job_id: str, data: dict[str, Any] | None, *, paused: bool
    ) -> JobRuntime | None:
        if data is None or job_id in self._registry:
            return None
        if namespace_of(data) != self._namespace:
            return None  # another app's job, on a store both share
        return self._load(job_id, data, paused=paused)

    async def _remove(self, engine: AsyncScheduler, job_id: str) -> None:
        await engine.remove_schedule(job_id)
        await self._remove_task(engine, job_id)

    @staticmethod
    async def _remove_task(engine: AsyncScheduler, job_id: str) -> None:
        try:
            await engine.data_store.remove_task(job_id)
        except TaskLookupError:
            pass

    def _closed(self) -> None:
        self._data_store = self._history = None

    async def serve_history(
        self, status: WorkerStatus, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        assert self.recorder is not None and self._history is not None
        await self.recorder.serve(self._history, status, task_status=task_status)

    def stop_history(self) -> None:
        if self.recorder is not None:
            self.recorder.stop()

    async def close_history(self) -> None:
        if self.recorder is not None:
            await self.recorder.close()

    def cluster_history(self) -> History | None:
        if self._history is None or self.recorder is None:
            return None
        return ClusterHistory(self._history, self.recorder, self._tz)

    def unloadable(self) -> dict[str, str]:
        return {} if self._data_store is None else dict(self._data_store.unloadable)

    def stop_taking_jobs(self) -> None:
        # A shared store's fires go to the other processes (or wait for the next start)
        # rather than being taken here only to be cancelled.
        if self._data_store is not None:
            self._data_store.stop_taking_jobs()

    async def stop_claiming(self, grace: float) -> None:
        if self._data_store is not None:
            await self._data_store.stop_claiming(grace)

    async def release_claims(self, identity: str) -> int:
        if self._data_store is None:
            return 0
        return await self._data_store.release_claims(identity)
