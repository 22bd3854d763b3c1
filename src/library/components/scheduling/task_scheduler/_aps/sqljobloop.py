"""The job loop of the engine on SQL stores: APScheduler 4.0.0a6's, with its per-job costs cut.

:class:`SQLJobLoop` replaces ``AsyncScheduler._process_jobs`` only; the schedule loop, the
per-job runner (``_run_job``) and every public method stay APScheduler's (or the subclass's
that builds on this one). What changes, per job acquired:

- the stock loop names each job's task with an f-string; on trio, it spawns every job through
  anyio's task group, whose per-task wrapper costs more than the rest of the spawn. Here a
  job is a task in a trio nursery the loop owns (:mod:`.jobtasks`, as the memory engine
  does); on asyncio it stays in anyio's task group, whose cancellation spares the shielded
  transaction of a job's release at stop;
- the stock loop asks the store for every job's ``Task`` (an awaited call per job, and on the
  SQL store a query per batch to answer them), only to find the callable it already holds
  for every task configured in this process. Here the store is told which tasks the engine
  knows (:meth:`remember_local_tasks`, when it has it) and fetches only the others;
- the stock loop woke for every ``JobReleased`` (our store announced one per release batch:
  with fires spread over time, one per run, and in every process), to find the queue empty
  almost every time. Here the store announces a release only when a job waits in the queue
  (:meth:`SQLStore._write_releases`), and a loop that filled up wakes itself when one of its
  jobs ends (:attr:`SQLJobLoop._full`).

Same rules otherwise: the same wake-ups for ``JobAdded``, leases extended every half lease,
abandoned jobs reaped at start, at most ``max_concurrent_jobs`` at once.
Written against 4.0.0a6 (checked at import); re-check it on any engine upgrade.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import attrs
import sniffio
from anyio import create_task_group
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

from .jobtasks import JobTasks, TaskGroupJobs, TrioJobs
from .pin import require_engine_version

require_engine_version()

_STARTED = RunState.started


@attrs.define(eq=False, repr=False)
class SQLJobLoop(AsyncScheduler):
    """``AsyncScheduler`` with a leaner job loop for our SQL store (see the module)."""

    _jobs_wakeup: anyio.Event | None = attrs.field(init=False, default=None)
    _full: bool = attrs.field(init=False, default=False)
    """Whether the last acquisition took as many jobs as the loop had room for: more may
    wait, and each job that ends here wakes the loop (the store announces a release only
    when a job waits in the queue as it writes it)."""

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
            jobs: JobTasks
            if library == "trio":
                import trio

                nursery = await exit_stack.enter_async_context(trio.open_nursery())
                jobs = TrioJobs(nursery, self._run_job)
            else:
                # anyio's task group, not plain tasks (AsyncioJobs): at stop a job's release
                # is a shielded transaction, which a plain task's cancel() would cut short,
                # leaving the connection in it (SQLite: the file stayed locked).
                jobs = TaskGroupJobs(task_group, self._run_job)
            task_status.started()
            await self.get_next_event(SchedulerStarted)
            callables = self._task_callables
            try:
                while self._state is _STARTED:
                    limit = self.max_concurrent_jobs - len(running)
                    self._full = limit <= 0
                    if limit > 0:
                        acquired = await store.acquire_jobs(
                            self.identity, self.lease_duration, limit
                        )
                        self._full = len(acquired) >= limit
                        for job in acquired:
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

    async def _run_job(self, job: Job, func: Callable[..., Any], executor: str) -> None:
        try:
            await super()._run_job(job, func, executor)
        finally:
            wakeup = self._jobs_wakeup
            if self._full and wakeup is not None:
                wakeup.set()  # room for one more, where more may wait (see _full)
