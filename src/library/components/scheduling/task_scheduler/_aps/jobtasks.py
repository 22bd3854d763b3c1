"""Where an engine's job loop starts each job: plain tasks instead of anyio's task group.

The stock job loop spawns every job through anyio's task group, whose per-task wrapper and
cancel scope cost more than the rest of the spawn (a third of the CPU per run on trio). The
memory engine's job loop starts each job as a plain asyncio task, or in a trio nursery the
loop owns; on SQL stores :class:`~.sqljobloop.SQLJobLoop` does so on trio, and keeps anyio's
task group on asyncio (:class:`TaskGroupJobs`), whose cancellation spares the shielded
transaction of a job's release. Same rules for all: a job is held until it ends, cancelled
and awaited when the loop stops, and a job task's failure fails the loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import anyio
from anyio import CancelScope
from anyio.abc import TaskGroup
from apscheduler import Job

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


RunJob = Callable[[Job, Callable[..., Any], str], Coroutine[Any, Any, None]]
"""What runs one job in its task: the engine's ``_run_job`` (or, under virtual time, the
same wrapped as a unit of work the clock counts). It tells its :class:`JobTasks` of a failure
(:meth:`JobTasks.failed`) and, on asyncio, removes its task from :attr:`AsyncioJobs.tasks`."""


class JobTasks:
    """Where the job loop starts each job, and how it waits for them at stop."""

    def spawn(self, job: Job, func: Callable[..., Any]) -> None:
        raise NotImplementedError

    def failed(self, exc: BaseException) -> None:
        """Called by the job's own task with what it is about to raise."""

    def raise_failure(self) -> None:
        """Raise what a job task raised (other than cancellation), if any."""

    async def close(self) -> None:
        """Cancel the jobs still running and wait for them."""


class TaskGroupJobs(JobTasks):
    """Jobs in the job loop's anyio task group: the group propagates failures."""

    def __init__(self, task_group: TaskGroup, run: RunJob) -> None:
        self._run = run
        self._start_soon = task_group.start_soon

    def spawn(self, job: Job, func: Callable[..., Any]) -> None:
        self._start_soon(self._run, job, func, job.executor)


class TrioJobs(JobTasks):
    """Jobs in a trio nursery the job loop opens and closes (so it waits for them, and a
    job's failure fails the loop). Direct, not through anyio's task group, whose per-task
    wrapper and cancel scope were a third of the CPU per run on trio."""

    def __init__(self, nursery: Any, run: RunJob) -> None:
        self._run = run
        self._start_soon = nursery.start_soon

    def spawn(self, job: Job, func: Callable[..., Any]) -> None:
        self._start_soon(self._run, job, func, job.executor, name="apscheduler job")


class AsyncioJobs(JobTasks):
    """Jobs as plain asyncio tasks, owned by the job loop: each is held in a dict until it
    ends (it removes itself), all are cancelled and awaited when the loop stops, and one that
    fails fails the loop, as a child of anyio's task group would. ``SystemExit`` and
    ``KeyboardInterrupt`` leave the event loop at once, raised by asyncio itself, as they did
    from anyio's tasks. (No done callback: the task's own ``finally`` does the bookkeeping.)"""

    def __init__(self, wakeup: Callable[[], anyio.Event | None], run: RunJob) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup = wakeup
        """The job loop's current wake-up event (None once it stopped)."""
        self._run = run
        # asyncio.Task(...) directly skips create_task()'s Python frame, unless the loop has
        # a task factory, which must then make every task.
        self._new_task: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] = (
            partial(asyncio.Task, loop=loop)
            if loop.get_task_factory() is None
            else loop.create_task
        )
        self.tasks: dict[int, asyncio.Task[None]] = {}
        """Tasks still running, by ``job.id.int``: each one removes itself as it ends."""
        self._failures: list[BaseException] = []

    def spawn(self, job: Job, func: Callable[..., Any]) -> None:
        self.tasks[job.id.int] = self._new_task(self._run(job, func, job.executor))

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            return
        self._failures.append(exc)
        task = asyncio.current_task()
        if task is not None:
            # Its exception is raised by the job loop: mark it retrieved for asyncio.
            task.add_done_callback(_retrieve_exception)
        wakeup = self._wakeup()
        if wakeup is not None:
            wakeup.set()

    def raise_failure(self) -> None:
        failures, self._failures = self._failures, []
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise BaseExceptionGroup("job tasks failed", failures)

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        if tasks:
            for task in tasks:
                task.cancel()
            with CancelScope(shield=True):
                await asyncio.wait(tasks)
        self.tasks.clear()
        self.raise_failure()


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
