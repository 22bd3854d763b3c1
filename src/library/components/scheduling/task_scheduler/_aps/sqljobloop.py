"""The job loop of the engine on SQL stores: APScheduler 4.0.0a6's, with its per-job costs cut.

:class:`SQLJobLoop` replaces ``AsyncScheduler._process_jobs`` only; the schedule loop, the
per-job runner (``_run_job``) and every public method stay APScheduler's (or the subclass's
that builds on this one). What changes, per job acquired:

- the stock loop spawns every job through anyio's task group, whose per-task wrapper and
  cancel scope cost more than the rest of the spawn, and names each task with an f-string.
  Here each job is a plain asyncio task, or a task in a trio nursery the loop owns (as the
  memory engine does): held until it ends, cancelled and awaited when the loop stops, and a
  job task's failure fails the loop, as a task group's child would;
- the stock loop asks the store for every job's ``Task`` (an awaited call per job, and on the
  SQL store a query per batch to answer them), only to find the callable it already holds
  for every task configured in this process. Here the store is told which tasks the engine
  knows (:meth:`remember_local_tasks`, when it has it) and fetches only the others.

Same rules otherwise: the same wake-ups (``JobAdded``, ``JobReleased``), leases extended
every half lease, abandoned jobs reaped at start, at most ``max_concurrent_jobs`` at once.
Written against 4.0.0a6 (checked at import); re-check it on any engine upgrade.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import anyio
import attrs
import sniffio
from anyio import CancelScope, create_task_group
from anyio.abc import TaskStatus
from apscheduler import (
    AsyncScheduler,
    Event,
    Job,
    JobAdded,
    JobReleased,
    RunState,
    SchedulerStarted,
)

from .pin import require_engine_version

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

require_engine_version()

_STARTED = RunState.started

RunJob = Callable[[Job, Callable[..., Any], str], Coroutine[Any, Any, None]]


@attrs.define(eq=False, repr=False)
class SQLJobLoop(AsyncScheduler):
    """``AsyncScheduler`` whose job loop starts jobs as plain tasks (see the module)."""

    _jobs_wakeup: anyio.Event | None = attrs.field(init=False, default=None)

    async def _process_jobs(self, *, task_status: TaskStatus[None]) -> None:
        library = sniffio.current_async_library()
        if library not in ("asyncio", "trio"):  # pragma: no cover - anyio runs on these only
            await super()._process_jobs(task_status=task_status)
            return
        store = self.data_store
        running = self._running_jobs

        def wake(event: Event) -> None:
            wakeup = self._jobs_wakeup
            if wakeup is not None and len(running) < self.max_concurrent_jobs:
                wakeup.set()

        async def extend_job_leases() -> None:
            # As the stock loop: a job running longer than its lease must keep it.
            while self._state in (RunState.starting, RunState.started):
                await anyio.sleep(self.lease_duration.total_seconds() / 2)
                if job_ids := {job.id for job in running}:
                    await store.extend_acquired_job_leases(
                        self.identity, job_ids, self.lease_duration
                    )

        await store.reap_abandoned_jobs(self.identity)
        remember = getattr(store, "remember_local_tasks", None)
        if remember is not None:
            remember(self._task_callables)
        self._jobs_wakeup = anyio.Event()
        async with AsyncExitStack() as exit_stack:
            for job_executor in self.job_executors.values():
                await job_executor.start(exit_stack)
            task_group = await exit_stack.enter_async_context(create_task_group())
            task_group.start_soon(
                extend_job_leases, name=f"Scheduler {self.identity!r} job lease extension loop"
            )
            exit_stack.enter_context(
                # Called in the broker's task (a plain function: no coroutine per event).
                self.event_broker.subscribe(wake, {JobAdded, JobReleased})
            )
            jobs: _Jobs
            if library == "trio":
                import trio

                nursery = await exit_stack.enter_async_context(trio.open_nursery())
                jobs = _TrioJobs(nursery, self._run_job)
            else:
                asyncio_jobs = _AsyncioJobs(self, self._run_job)
                exit_stack.push_async_callback(asyncio_jobs.close)
                jobs = asyncio_jobs
            task_status.started()
            await self.get_next_event(SchedulerStarted)
            callables = self._task_callables
            try:
                while self._state is _STARTED:
                    limit = self.max_concurrent_jobs - len(running)
                    if limit > 0:
                        for job in await store.acquire_jobs(
                            self.identity, self.lease_duration, limit
                        ):
                            func = callables.get(job.task_id)
                            if func is None:
                                func = self._get_task_callable(await store.get_task(job.task_id))
                            running.add(job)
                            jobs.spawn(job, func)
                    await self._jobs_wakeup.wait()
                    self._jobs_wakeup = anyio.Event()
                    jobs.raise_failure()
            finally:
                self._jobs_wakeup = None


class _Jobs:
    """Where the job loop starts each job."""

    def spawn(self, job: Job, func: Callable[..., Any]) -> None:
        raise NotImplementedError

    def raise_failure(self) -> None:
        """Raise what a job task raised (other than cancellation), if any."""


class _TrioJobs(_Jobs):
    """Jobs in a trio nursery the job loop opens and closes (it waits for them, and a job's
    failure fails the loop). Direct, not through anyio's task group and its wrapper."""

    def __init__(self, nursery: Any, run: RunJob) -> None:
        self._run = run
        self._start_soon = nursery.start_soon

    def spawn(self, job: Job, func: Callable[..., Any]) -> None:
        self._start_soon(self._run, job, func, job.executor, name="apscheduler job")


class _AsyncioJobs(_Jobs):
    """Jobs as plain asyncio tasks owned by the job loop: each held until it ends, all
    cancelled and awaited when the loop stops, and one that fails fails the loop, as a
    child of anyio's task group would (``SystemExit`` and ``KeyboardInterrupt`` leave the
    event loop at once, raised by asyncio itself, as they did from anyio's tasks)."""

    def __init__(self, engine: SQLJobLoop, run: RunJob) -> None:
        loop = asyncio.get_running_loop()
        self._engine = engine
        self._run = run
        # asyncio.Task(...) directly skips create_task()'s Python frame, unless the loop has
        # a task factory, which must then make every task.
        self._new_task: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] = (
            partial(asyncio.Task, loop=loop)
            if loop.get_task_factory() is None
            else loop.create_task
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures: list[BaseException] = []

    def spawn(self, job: Job, func: Callable[..., Any]) -> None:
        self._tasks.add(self._new_task(self._track(job, func)))

    async def _track(self, job: Job, func: Callable[..., Any]) -> None:
        try:
            await self._run(job, func, job.executor)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failures.append(exc)
            wakeup = self._engine._jobs_wakeup
            if wakeup is not None:
                wakeup.set()
            task = asyncio.current_task()
            if task is not None:
                # Its exception is raised by the job loop: mark it retrieved for asyncio.
                task.add_done_callback(_retrieve_exception)
            raise
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)

    def raise_failure(self) -> None:
        failures, self._failures = self._failures, []
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise BaseExceptionGroup("job tasks failed", failures)

    async def close(self) -> None:
        tasks = list(self._tasks)
        if tasks:
            for task in tasks:
                task.cancel()
            with CancelScope(shield=True):
                await asyncio.wait(tasks)
        self._tasks.clear()
        self.raise_failure()


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
