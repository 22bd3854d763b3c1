"""A persistent store seen from outside the app: read and manage its jobs without running them.

:class:`StoreAdmin` is what the ``task-scheduler`` command stands on. It opens the store the
app's workers share, never imports the app (a job is described from the definition stored
with its schedule, its callable only named), starts no engine and claims nothing:

- reads: the jobs (trigger, next run, pause state, the cluster's counts and last run), runs,
  live workers, and a status with the problems a monitor should hear of;
- writes: pause and resume (the same schedule rows the workers' own pause and resume write;
  a worker hears of them by NOTIFY on PostgreSQL, or looks every second on SQLite), and
  run-now, queued in the store for the live workers (a job of the engine's queue, taken by
  whichever worker is free, run under the job's rules and recorded in the history under the
  queued job's id, where :meth:`StoreAdmin.progress` follows it).
"""

from __future__ import annotations

import difflib
import os
import platform
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID
from zoneinfo import ZoneInfo

import anyio
from pydantic import BaseModel, ConfigDict, Field

from ._clock import utcnow
from ._config import JobDefaults, validate_timezone
from ._errors import InvalidValueError, JobNotFoundError, StoreUnavailableError
from ._history import WORKER_TIMEOUT, ClusterHistory, JobFacts, store_timeout
from ._log import logger
from ._models import JobInfo, Outcome, RunInfo, WorkerInfo
from ._reconcile import stored_definition
from ._runs import QUEUED_RUN_KEY
from ._triggers import spec_from_dict
from ._urls import StoreURL, parse_store_url

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:  # SQLAlchemy and APScheduler's SQL store: only persistent stores load them
    from apscheduler import Schedule

    from ._aps.sqlstore import SQLStore

MEMORY_STORE_REASON = (
    "memory:// keeps a scheduler's jobs inside the process that runs it: nothing outside "
    "that process can see or reach them. Manage that app through its own API "
    "(create_scheduler_router), or give the app and this command one persistent store "
    "(sqlite:///path/to/jobs.db or postgresql://user@host:port/db)"
)
"""Why the command cannot manage a memory store."""
SUGGESTIONS = 3
"""Close matches an unknown job id's error suggests, at most."""
POLL_INTERVAL = 0.2
"""Seconds between two looks at a queued run's progress."""
UNRECORDED_GRACE = 10.0
"""Seconds a taken run may go without a row in the history before it counts as lost (the
worker writes its runs every 0.2 s)."""


class StoreStatus(BaseModel):
    """The cluster of a persistent store, as the ``status`` command reports it."""

    model_config = ConfigDict(frozen=True)

    store: str = Field(description="The store's URL, without its password.")
    healthy: bool = Field(description="A worker is live and no job is stale.")
    problems: list[str] = Field(default_factory=list, description="Why it is not healthy.")
    jobs: int = 0
    paused: int = 0
    runs_in_progress: int = Field(0, description="On live workers.")
    queued_runs: int = Field(0, description="Run-nows waiting for a free worker.")
    stale_jobs: list[str] = Field(
        default_factory=list,
        description="Unpaused jobs with max_staleness whose last success (on any worker, or "
        "the oldest live worker's start) is older.",
    )
    workers: list[WorkerInfo] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class QueuedRun:
    """A run-now waiting in the store for a worker."""

    job_id: str
    fire_id: str
    """The id of the engine job in the queue; the runs it produces carry it."""
    requested_at: datetime


@dataclass(frozen=True, slots=True)
class RunProgress:
    """How far a queued run has come."""

    queued: bool
    """Still in the store's queue (waiting for a worker, or taken and running)."""
    attempts: list[RunInfo]
    """Its attempts so far, first attempt first."""
    done: bool
    """Its last attempt has ended and nothing more is to come."""
    lost: bool = False
    """A worker took it but no attempt was ever recorded (see that worker's log)."""

    @property
    def last(self) -> RunInfo | None:
        return self.attempts[-1] if self.attempts else None


def admin_store(url: str) -> StoreURL:
    """Parse ``url`` for the command: a persistent store, or an InvalidValueError saying why."""
    store = parse_store_url(url)
    if store.kind == "memory":
        raise InvalidValueError(MEMORY_STORE_REASON)
    return store


class StoreAdmin:
    """Reads and manages the jobs of a persistent store, from outside any scheduler.

    Open it with :meth:`open` (an async context manager); every read is the cluster's, as
    every worker answers it.
    """

    def __init__(self, store: StoreURL, data_store: SQLStore, tz: ZoneInfo) -> None:
        from ._aps.history import RunHistory

        self.store = store
        self._data_store = data_store
        self._tz = tz
        self._history = ClusterHistory(RunHistory(data_store), None, tz)
        self._requester = f"task-scheduler command ({platform.node() or 'localhost'}:{os.getpid()})"

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        event_broker: str | None = None,
        timezone: str = "UTC",
        connect_timeout: float = 10.0,
    ) -> AsyncIterator[StoreAdmin]:
        """Open the store at ``url`` (never memory://: :data:`MEMORY_STORE_REASON`).

        ``event_broker``: the Redis broker the app's workers use, if they use one (they hear
        pause, resume and run-now through it). :class:`StoreUnavailableError` if the store
        does not answer, or holds no scheduler's tables.
        """
        from ._aps.stores import open_admin_store

        store = admin_store(url)
        tz = ZoneInfo(validate_timezone(timezone))
        try:
            async with AsyncExitStack() as stack:
                data_store = await open_admin_store(
                    store, event_broker, connect_timeout=connect_timeout, exit_stack=stack
                )
                if data_store is None:
                    raise StoreUnavailableError(
                        f"the store {store.display} holds no task scheduler tables: no "
                        f"scheduler has started on it yet (is it the store the app uses?)"
                    )
                yield cls(store, data_store, tz)
        except BaseExceptionGroup as group:
            # The Redis broker's task group wraps what the block raised: raise it as it was.
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
                raise group.exceptions[0] from None
            raise

    # -- jobs -----------------------------------------------------------------------------

    async def _schedules(self, ids: set[str] | None = None) -> dict[str, Schedule]:
        """Our schedules (those carrying a job definition), by job id."""
        with store_timeout():
            found = await self._data_store.get_schedules(ids)
        return {
            schedule.id: schedule for schedule in found if stored_definition(schedule) is not None
        }

    async def _schedule(self, job_id: str) -> Schedule:
        schedules = await self._schedules({job_id})
        if job_id in schedules:
            return schedules[job_id]
        raise JobNotFoundError(job_id, self._close_matches(job_id, await self._schedules()))

    @staticmethod
    def _close_matches(job_id: str, known: Mapping[str, object]) -> list[str]:
        if not isinstance(job_id, str):
            return []
        return difflib.get_close_matches(job_id, list(known), n=SUGGESTIONS, cutoff=0.6)

    async def jobs(self) -> list[JobInfo]:
        """Every job of the store, by id."""
        schedules = await self._schedules()
        facts = await self._history.facts_of(sorted(schedules))
        infos = (self._job_info(schedules[job_id], facts[job_id]) for job_id in sorted(schedules))
        return [info for info in infos if info is not None]

    async def job(self, job_id: str) -> JobInfo:
        """The job; :class:`JobNotFoundError` (with close matches) if the store has none."""
        schedule = await self._schedule(job_id)
        facts = await self._history.facts_of([job_id])
        info = self._job_info(schedule, facts[job_id])
        if info is None:
            raise InvalidValueError(f"the stored definition of job {job_id!r} cannot be read")
        return info

    def _job_info(self, schedule: Schedule, facts: JobFacts) -> JobInfo | None:
        data = stored_definition(schedule)
        assert data is not None
        try:
            zone = data.get("timezone")
            trigger_tz = ZoneInfo(validate_timezone(zone)) if isinstance(zone, str) else self._tz
            trigger = spec_from_dict(data["trigger"], trigger_tz).info()
            options = JobDefaults.model_validate(data["options"])
            name, func = str(data["name"]), str(data["func"])
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("stored job %r cannot be read, left out: %s", schedule.id, exc)
            return None
        next_run: datetime | None = None
        if not schedule.paused and schedule.next_fire_time is not None:
            next_run = schedule.next_fire_time.astimezone(self._tz)
        return facts.job_info(
            (schedule.id, name, func, trigger), options,
            next_run_time=next_run, paused=schedule.paused,
        )  # fmt: skip

    async def pause(self, job_id: str) -> JobInfo:
        """Stop firing the job, on every worker, until :meth:`resume`; runs in progress go on."""
        await self._set_paused(job_id, True)
        return await self.job(job_id)

    async def resume(self, job_id: str) -> JobInfo:
        """Fire the job again from now on (fires missed while paused are not run)."""
        await self._set_paused(job_id, False)
        return await self.job(job_id)

    async def _set_paused(self, job_id: str, paused: bool) -> None:
        await self._schedule(job_id)
        with store_timeout():
            written = await self._data_store.set_paused(job_id, paused)
        if written is None:  # removed meanwhile
            raise JobNotFoundError(job_id, self._close_matches(job_id, await self._schedules()))

    # -- run now --------------------------------------------------------------------------

    async def run(self, job_id: str) -> QueuedRun:
        """Queue a run-now of the job for the live workers: the first free one runs it once,
        under the job's rules (a paused job runs too; at its max_instances it waits for a
        slot, which runs across processes hold). It waits in the queue if no worker is live."""
        from apscheduler import Job

        from ._aps.engine import EXECUTOR_NAME

        schedule = await self._schedule(job_id)
        metadata = {**schedule.metadata, QUEUED_RUN_KEY: self._requester}
        job = Job(task_id=job_id, executor=EXECUTOR_NAME, metadata=metadata)
        with store_timeout():
            await self._data_store.add_job(job)
        return QueuedRun(job_id, str(job.id), job.created_at.astimezone(self._tz))

    async def progress(self, queued: QueuedRun) -> RunProgress:
        """Where a queued run is now: waiting or running, its attempts, whether it is done."""
        with store_timeout():
            in_queue = bool(await self._data_store.get_jobs([UUID(queued.fire_id)]))
        attempts = await self._history.fire_runs(queued.fire_id)
        last = attempts[-1] if attempts else None
        done = not in_queue and last is not None and last.outcome is not None
        return RunProgress(in_queue, attempts, done)

    async def wait(self, queued: QueuedRun, limit: float) -> RunProgress:
        """Follow a queued run until it is done, lost, or ``limit`` seconds have passed
        (then its progress as it is)."""
        retries = (await self.job(queued.job_id)).retries
        progress = await self.progress(queued)
        gone_since: float | None = None
        with anyio.move_on_after(limit):
            while not self._final(progress, retries, gone_since):
                if progress.done:
                    # A failed attempt with retries left: the worker released the run after
                    # its last attempt, whose row may not be written yet (batched, 0.2 s).
                    gone_since = anyio.current_time() if gone_since is None else gone_since
                elif not progress.queued and not progress.attempts:
                    # Taken and finished by a worker, and no attempt recorded yet: its
                    # runs are written within a fraction of a second, unless it had none.
                    now = anyio.current_time()
                    gone_since = now if gone_since is None else gone_since
                    if now - gone_since > UNRECORDED_GRACE:
                        return RunProgress(False, [], False, lost=True)
                await anyio.sleep(POLL_INTERVAL)
                progress = await self.progress(queued)
        return progress

    @staticmethod
    def _final(progress: RunProgress, retries: int, since: float | None) -> bool:
        """Done, and its last attempt is the last to come (not a failure that is retried,
        its last retry, or no newer attempt within UNRECORDED_GRACE)."""
        last = progress.last
        if not progress.done or last is None:
            return False
        if last.outcome not in (Outcome.error, Outcome.timed_out) or last.attempt > retries:
            return True
        return since is not None and anyio.current_time() - since > UNRECORDED_GRACE

    # -- runs, workers, status --------------------------------------------------------------

    async def runs(
        self, job_id: str | None = None, limit: int = 20, outcome: Outcome | None = None
    ) -> list[RunInfo]:
        """Runs, newest first, runs in progress included: of one job, or of every job."""
        if not 1 <= limit <= 1000:
            raise InvalidValueError(f"limit must be an integer from 1 to 1000, got {limit!r}")
        if job_id is not None:
            await self._schedule(job_id)
        return await self._history.runs(job_id, limit, outcome, None)

    async def workers(self) -> list[WorkerInfo]:
        """The live workers, oldest first."""
        return await self._history.workers()

    async def status(self) -> StoreStatus:
        """The cluster's health: live workers, stale jobs, runs in progress and queued."""
        jobs = await self.jobs()
        workers = await self.workers()
        with store_timeout():
            queued = [
                job
                for job in await self._data_store.get_jobs()
                if job.schedule_id is None and job.acquired_by is None
            ]
        stale = self._stale(jobs, workers)
        problems = []
        if not workers:
            seconds = int(WORKER_TIMEOUT)
            problems.append(f"no live worker (none has beaten its heart in {seconds} s)")
        if stale:
            problems.append(f"stale job(s): {', '.join(stale)}")
        return StoreStatus(
            store=self.store.display,
            healthy=not problems,
            problems=problems,
            jobs=len(jobs),
            paused=sum(job.paused for job in jobs),
            runs_in_progress=sum(job.running for job in jobs),
            queued_runs=len(queued),
            stale_jobs=stale,
            workers=workers,
        )

    @staticmethod
    def _stale(jobs: Sequence[JobInfo], workers: Sequence[WorkerInfo]) -> list[str]:
        """As each worker judges it (the health route), for the cluster: since the oldest
        live worker started, or the last success if later."""
        if not workers:
            return []
        running_since = min(worker.started_at for worker in workers)
        now = utcnow()
        stale = []
        for job in jobs:
            if job.paused or job.max_staleness is None:
                continue
            since = running_since
            if job.last_success_at is not None and job.last_success_at > since:
                since = job.last_success_at
            if now - since > timedelta(seconds=job.max_staleness):
                stale.append(job.id)
        return stale


def as_json(value: Any) -> Any:
    """A model (or a list of models) as JSON data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [as_json(item) for item in value]
    return value
