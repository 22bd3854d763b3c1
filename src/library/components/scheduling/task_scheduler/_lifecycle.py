"""Start, supervise, drain and stop: the scheduler's lifecycle, one explicit state machine.

::

    stopped --start()--> starting --engine up--> running --shutdown()/request_stop()--> draining
       ^                  ^    |                   |                                      |
       |                  |    +--crash--> starting (restart, with backoff)               v
       |                  +------------------------+-- too many crashes --> failed    stopping
       +------------------------------------------------------------------------------ (closed)

- **starting**: the store, broker, hook and retry tasks and the engine are being opened, or
  the engine is being restarted after a crash (it is supervised: trap 6).
- **running**: fires run.
- **draining**: no new run starts (fires coming due are left to other processes on a shared
  store); running jobs get ``shutdown_timeout`` seconds.
- **stopping**: what still runs is cancelled, the engine stops and gives back its claims, the
  hooks deliver what is queued, then the task group closes.
- **failed**: the engine crashed too often; nothing runs until :meth:`Lifecycle.shutdown` and
  a new start.

Every task the scheduler starts lives in one task group, owned by the task that called
``start()`` (structured concurrency): none outlives ``shutdown()``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from enum import Enum
from functools import partial
from types import TracebackType
from typing import Any, cast

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio import TASK_STATUS_IGNORED, CancelScope
from anyio.abc import TaskGroup, TaskStatus
from apscheduler import AsyncScheduler

from ._backend import Backend
from ._clock import REAL_CLOCK, Clock, TimeKeeper
from ._config import SchedulerConfig
from ._errors import SchedulerStateError
from ._executor import TaskExecutor
from ._gcfreeze import freeze_heap
from ._hooks import HookDispatcher
from ._log import logger
from ._models import SchedulerState, WorkerState
from ._registry import JobRegistry
from ._urls import redact

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

LAG_CHECK_INTERVAL = 0.5
"""Seconds between two looks at the event loop: how late a sleep of this long wakes is the
time the loop was blocked (one wake-up per half second: nothing on the hot path)."""
LAG_WARNING = 1.0
"""Seconds of a blocked event loop that are logged as a WARNING, naming the jobs."""
LAG_WINDOW = 300.0
"""Seconds over which status reports the worst lag."""
RESTART_DELAY_FIRST = 1.0
RESTART_DELAY_MAX = 30.0
RESTARTS_ALLOWED = 5
RESTART_WINDOW = 300.0
TEARDOWN_GRACE = 5.0
"""Seconds shutdown gives queued hooks and engine teardown, after the jobs are done."""


class Phase(Enum):
    """Where the lifecycle is; :attr:`state` is what users see of it."""

    stopped = "stopped"
    starting = "starting"
    running = "running"
    draining = "draining"
    stopping = "stopping"
    failed = "failed"

    @property
    def state(self) -> SchedulerState:
        """The public state: ``draining`` shows as ``stopping``."""
        return "stopping" if self is Phase.draining else self.value


def root_exception(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def leaf_exceptions(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside ``group`` and its nested groups."""
    leaves: list[BaseException] = []
    for inner in group.exceptions:
        if isinstance(inner, BaseExceptionGroup):
            leaves.extend(leaf_exceptions(inner))
        else:
            leaves.append(inner)
    return leaves


def root_message(exc: BaseException) -> str:
    """The first real error inside (possibly nested) exception groups, as 'Type: message'."""
    exc = root_exception(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Lifecycle:
    """The running half of a :class:`TaskScheduler`: its phase, task group and engine."""

    def __init__(
        self,
        config: SchedulerConfig,
        registry: JobRegistry,
        backend: Backend,
        executor: TaskExecutor,
        hooks: HookDispatcher,
        identity: str,
    ) -> None:
        self._config = config
        self._registry = registry
        self._backend = backend
        self._executor = executor
        self._hooks = hooks
        self._identity = identity
        self.phase = Phase.stopped
        self.engine: AsyncScheduler | None = None
        self.task_group: TaskGroup | None = None
        """The task group every task of the scheduler runs in, while it is open."""
        self.started_at: datetime | None = None
        self.engine_restarts = 0
        self.last_engine_error: str | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._drain_done: anyio.Event | None = None
        """Made when the drain begins (it runs once), set when it has ended."""
        self._stop_request: anyio.Event | None = None
        self._loop_token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._watcher_scope: CancelScope | None = None
        self._watchdog_scope: CancelScope | None = None
        self._lag = 0.0
        self._lag_at = 0.0
        self.clock: Clock = REAL_CLOCK
        """The time the current run reads and waits by (real, unless ``testing.virtual_time``
        started it); handed to the executor and the backend at each start."""

    @property
    def state(self) -> SchedulerState:
        return self.phase.state

    def worker_status(self) -> tuple[WorkerState, datetime | None, int]:
        """This worker's state, start time and runs in progress (for its heartbeat)."""
        phase = self.phase
        state: WorkerState = "stopping" if phase.state == "stopped" else phase.state
        return state, self.started_at, self._executor.in_progress

    @property
    def stopping(self) -> bool:
        """The engine is being stopped for good (after the drain): nothing is restarted."""
        return self.phase is Phase.stopping

    @property
    def live_engine(self) -> AsyncScheduler | None:
        """The engine, while jobs can be placed in it (starting or running)."""
        if self.phase is Phase.starting or self.phase is Phase.running:
            return self.engine
        return None

    def spawn(self, func: Callable[[], Coroutine[Any, Any, None]], name: str) -> bool:
        """Start ``func`` in the scheduler's task group, from any thread; False (nothing
        started) unless running. A metrics collector scraped elsewhere refreshes itself so."""
        task_group, token = self.task_group, self._loop_token
        if task_group is None or token is None or self.phase is not Phase.running:
            return False
        if threading.get_ident() == self._loop_thread:
            task_group.start_soon(func, name=name)
            return True
        try:
            anyio.from_thread.run_sync(partial(task_group.start_soon, func, name=name), token=token)
        except anyio.RunFinishedError:
            return False
        return True

    # -- start -----------------------------------------------------------------------

    async def start(
        self, *, cancel_owner_on_stop_request: bool = False, clock: Clock = REAL_CLOCK
    ) -> None:
        """Open everything and start the engine; the caller's task owns the task group.

        ``clock``: the time this run follows (a virtual one: ``testing.virtual_time``).
        """
        if self.phase is not Phase.stopped and self.phase is not Phase.failed:
            raise SchedulerStateError(f"cannot start: the scheduler is already {self.state}")
        if self._exit_stack is not None:  # a failed run left its scope open
            await self._close_scope()
        self.phase = Phase.starting
        self._drain_done = None
        self._stop_request = anyio.Event()
        self._loop_token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        self.engine_restarts = 0
        self.last_engine_error = None
        self.clock = clock
        self._executor.open(clock)
        stack = AsyncExitStack()
        task_group: TaskGroup | None = None
        try:
            if clock.virtual:
                # Hooks still to deliver are work the virtual clock waits for.
                stack.callback(cast(TimeKeeper, clock).watch(self._hooks.busy))
            # Opened first, so that the store closes last: after every task that uses it.
            self.engine = await self._backend.open(stack, self._executor, self._identity, clock)
            # After every task has ended (runs cancelled at the end included), before the
            # store closes: the last runs are written and this worker leaves the list.
            stack.push_async_callback(self._backend.close_history)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            await task_group.start(self._hooks.serve, name="task_scheduler hooks")
            await task_group.start(self._executor.serve_retries, name="task_scheduler retries")
            self._watchdog_scope = await task_group.start(
                self._watch_loop, name="task_scheduler loop watchdog"
            )
            self._watcher_scope = await task_group.start(
                self._watch_stop_request,
                self._stop_request,
                cancel_owner_on_stop_request,
                name="task_scheduler stop requests",
            )
            await task_group.start(self._supervise, name="task_scheduler engine supervisor")
            self.started_at = clock.now()
            self.phase = Phase.running
            # Once the engine has started (the store has created its tables): this worker
            # joins the list as running.
            await task_group.start(
                self._backend.serve_history, self.worker_status, name="task_scheduler history"
            )
            if self._config.gc_freeze:
                # What start built (and the app before it) stays out of full collections,
                # until the scope closes (_gcfreeze).
                stack.callback(freeze_heap())
        except BaseException:
            self.phase = Phase.stopped
            self.engine = None
            self.clock = REAL_CLOCK
            if task_group is not None:
                task_group.cancel_scope.cancel()  # the hook and stop-request tasks wait forever
            try:
                await stack.aclose()
            except BaseExceptionGroup:
                pass  # the task group reports the same failure we are raising
            raise
        self._exit_stack = stack
        self.task_group = task_group
        logger.info(
            "task scheduler started with %d job(s) on store %s",
            len(self._registry),
            redact(self._config.store),
        )

    async def _supervise(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Run the engine; restart it with backoff if it crashes (trap 6), then give up."""
        assert self.engine is not None
        engine = self.engine
        installed = started = False
        delay = RESTART_DELAY_FIRST
        crashes: deque[float] = deque()
        while True:
            try:
                async with engine:
                    if not installed:
                        await self._backend.install_all(engine)
                        installed = True
                    await engine.start_in_background()
                    if not started:
                        started = True
                        task_status.started()
                    elif self.phase is Phase.starting:
                        self.phase = Phase.running
                        logger.warning("APScheduler engine restarted")
                    await engine.wait_until_stopped()
                    if self.stopping:
                        await self._release_claims(engine)
                if self.stopping:
                    return
                raise RuntimeError("the APScheduler engine stopped on its own")
            except Exception as exc:
                if not started:
                    # Failing to start is the caller's error to see, not a task group's.
                    raise root_exception(exc) from None
                if self.stopping:
                    return
                if not self._crashed(exc, crashes, delay):
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, RESTART_DELAY_MAX)
                self.engine_restarts += 1
                if self.stopping:
                    return

    def _crashed(self, exc: Exception, crashes: deque[float], delay: float) -> bool:
        """Record an engine crash; False (and ``failed``) when it crashed too often."""
        message = root_message(exc)
        self.last_engine_error = message
        now = time.monotonic()
        crashes.append(now)
        while crashes and crashes[0] < now - RESTART_WINDOW:
            crashes.popleft()
        if len(crashes) > RESTARTS_ALLOWED:
            self.phase = Phase.failed
            logger.critical(
                "APScheduler engine crashed %d times in %.0f s, giving up: %s; "
                "no job will run until the scheduler is restarted",
                len(crashes),
                RESTART_WINDOW,
                message,
                exc_info=exc,
            )
            return False
        if self.phase is Phase.running:
            self.phase = Phase.starting
        logger.critical(
            "APScheduler engine crashed: %s; restarting in %.0f s", message, delay, exc_info=exc
        )
        return True

    async def _release_claims(self, engine: AsyncScheduler) -> None:
        """After a clean stop, give back what the engine still claims (SQL stores)."""
        try:
            with anyio.fail_after(TEARDOWN_GRACE):
                count = await self._backend.release_claims(self._identity)
        except Exception as exc:
            logger.warning("could not give back claimed schedules at shutdown: %s", exc)
        else:
            if count:
                logger.info("gave back %d claimed schedule(s) and unstarted job(s)", count)

    @property
    def loop_lag(self) -> float:
        """The longest the event loop was blocked in the last LAG_WINDOW seconds."""
        if anyio.current_time() - self._lag_at > LAG_WINDOW:
            return 0.0
        return self._lag

    async def _watch_loop(self, *, task_status: TaskStatus[CancelScope]) -> None:
        """Notice an event loop blocked by a job (``time.sleep`` in ``async def``): its other
        jobs start late and health probes time out, while the job itself looks fine."""
        with CancelScope() as scope:
            task_status.started(scope)
            await self._watch(anyio.current_time)

    async def _watch(self, clock: Callable[[], float]) -> None:
        while True:
            expected = clock() + LAG_CHECK_INTERVAL
            await anyio.sleep(LAG_CHECK_INTERVAL)
            now = clock()
            lag = now - expected
            if lag > self._lag or now - self._lag_at > LAG_WINDOW:
                self._lag, self._lag_at = max(lag, 0.0), now
            if lag > LAG_WARNING:
                since = self.clock.now() - timedelta(seconds=lag)
                suspects = self._executor.blocking_suspects(since)
                logger.warning(
                    "the event loop was blocked for %.1f s: every job and request waited; "
                    "running then: %s (blocking code in an async def job belongs in a plain "
                    "def job, which runs in a worker thread)",
                    lag,
                    ", ".join(repr(job_id) for job_id in suspects) or "no job",
                )

    # -- stop ------------------------------------------------------------------------

    async def shutdown(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool:
        """Drain, then close the task group; True if it absorbed the owner's exception."""
        if self._exit_stack is None:
            return False
        try:
            await self._drain()
            return await self._close_scope(exc_type, exc_val, exc_tb)
        finally:
            logger.info("task scheduler stopped")

    def request_stop(self) -> None:
        """Ask for the drain from any task or thread; a no-op unless running."""
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
            if cancel_owner and self.task_group is not None:
                self.task_group.cancel_scope.cancel()

    async def _drain(self) -> None:
        """draining: no new runs, wait up to shutdown_timeout; stopping: stop the engine. Once.

        Shielded: a cancelled owner (Ctrl-C, or request_stop's own cancellation of an
        ``async with`` block) still gives running jobs their time and closes in order.
        """
        with CancelScope(shield=True):
            if self._drain_done is not None:
                await self._drain_done.wait()
                return
            self._drain_done = anyio.Event()
            self.phase = Phase.draining
            try:
                engine = self.engine
                if engine is not None:
                    self._backend.stop_taking_jobs()
                self._executor.begin_drain()
                timeout = self._config.shutdown_timeout
                if self.clock.virtual:
                    # Runs that wait for virtual time would wait forever (nobody moves the
                    # clock any more): the engine's stop cancels them below.
                    with anyio.move_on_after(timeout):
                        await cast(TimeKeeper, self.clock).drain()
                elif not await self._executor.wait_idle(timeout):
                    logger.warning(
                        "shutdown: run(s) of %s still in progress after %s s; cancelling them",
                        ", ".join(repr(job_id) for job_id in self._executor.running_jobs()),
                        timeout,
                    )
                self.phase = Phase.stopping
                self._executor.cancel_run_nows()
                if engine is not None:
                    await self._backend.stop_claiming(TEARDOWN_GRACE)
                    await engine.stop()
                await self._hooks.close()
                self._backend.stop_history()
            finally:
                self._drain_done.set()

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
            for scope in (self._watcher_scope, self._watchdog_scope):
                if scope is not None:
                    scope.cancel()
            if self.task_group is not None:
                # Queued hooks and the engine's teardown get a short grace, then are cancelled.
                # (A deadline on the group's own scope: a new scope around its exit would
                # break the nesting of cancel scopes.)
                self.task_group.cancel_scope.deadline = anyio.current_time() + TEARDOWN_GRACE
            if stack is not None:
                try:
                    return bool(await stack.__aexit__(exc_type, exc_val, exc_tb))
                except BaseExceptionGroup as group:
                    # trio's nurseries wrap everything in a group (strict exception groups):
                    # the owner's own exception (an error in its block) leaves as it came in,
                    # as on asyncio, not as a nested group. So does Ctrl-C, which trio may
                    # deliver in any task - the owner's, a job's, the engine's.
                    leaves = leaf_exceptions(group)
                    if exc_val is not None and all(leaf is exc_val for leaf in leaves):
                        raise exc_val from None
                    if leaves and all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
                        interrupt = exc_val if isinstance(exc_val, KeyboardInterrupt) else None
                        raise (interrupt or leaves[0]) from None
                    raise
            return False
        finally:
            self._stop_request = None
            self._watcher_scope = self._watchdog_scope = None
            self.task_group = None
            self.engine = None
            self.phase = Phase.stopped
            self.clock = REAL_CLOCK
