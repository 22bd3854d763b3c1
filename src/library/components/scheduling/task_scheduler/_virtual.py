"""Virtual time: a :class:`~._clock.Clock` that only moves when a test moves it.

The scheduler's collaborators bind the clock they are handed at start (``_clock``); with this
one, the memory engine waits for the clock instead of for real time, and every run is a *unit*
the clock keeps count of. Moving the clock (:meth:`VirtualTime.advance_to`) goes from event to
event - a schedule's fire time, or the deadline of a sleep or a timeout that a run waits for -
and at each one sets the time, wakes what is due and *settles*: it waits until no loop of the
engine has work in hand and every run has either finished or is parked in a virtual wait. So
fires run in order, each at its own instant, and a run that sleeps (or waits for a retry, or
hits a timeout) wakes at its virtual deadline.

A run that awaits something else (a real socket, a real ``anyio.sleep``) is waited for in real
time: the clock cannot know when it will end. ``stall_timeout`` bounds that wait.

Nothing here runs unless a test enters ``testing.virtual_time``.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
import sniffio

from ._clock import UTC, Clock, EngineProbe
from ._errors import InvalidValueError, SchedulerStateError, WaitTimeoutError

SPINS = 20
"""Checkpoints a settle spends on work in hand (a woken loop, a run just spawned, queued hooks)
before it waits for an event instead (or, for a loop's work, naps a millisecond of real time
between looks: that work may wait for real I/O)."""


class _Timer:
    __slots__ = ("deadline", "done", "fire")

    def __init__(self, deadline: datetime, fire: Callable[[], None]) -> None:
        self.deadline = deadline
        self.fire = fire
        self.done = False
        """Fired or cancelled: skipped when met in the heap."""


class Unit:
    """A run the clock waits for: busy from the moment it is spawned until it finishes,
    except while it is parked in a virtual wait."""

    __slots__ = ("label", "parked")

    def __init__(self, label: str) -> None:
        self.label = label
        self.parked = False


class _Timeout:
    """``move_on_after`` against virtual time: a cancel scope that a timer cancels."""

    __slots__ = ("_clock", "_fired", "_scope", "_seconds", "_timer")

    def __init__(self, clock: VirtualTime, seconds: float | None) -> None:
        self._clock = clock
        self._seconds = seconds
        self._scope = anyio.CancelScope()
        self._timer: _Timer | None = None
        self._fired = False

    def __enter__(self) -> anyio.CancelScope:
        scope = self._scope.__enter__()
        seconds = self._seconds
        if seconds is not None:
            if seconds <= 0:
                scope.cancel()
            else:
                self._timer = self._clock._add_timer(seconds, self._expire)
        return scope

    def _expire(self) -> None:
        # The cancelled task runs until it leaves the scope: busy until then.
        self._fired = True
        self._clock._busy += 1
        self._scope.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool:
        if self._timer is not None:
            self._timer.done = True
        try:
            return bool(self._scope.__exit__(exc_type, exc_val, exc_tb))
        finally:
            if self._fired:
                self._fired = False
                self._clock._less_busy()


class VirtualTime(Clock):
    """A clock that stands still until :meth:`advance_to` or :meth:`jump_to` moves it."""

    virtual = True

    def __init__(self, start: datetime, *, stall_timeout: float) -> None:
        super().__init__()
        self._now = start.astimezone(UTC)
        self.now = self._read
        self.sleep = self._sleep
        self.move_on_after = self._timeout
        self.stall_timeout = stall_timeout
        self._timers: list[tuple[datetime, int, _Timer]] = []
        self._order = itertools.count()
        self._busy = 0
        """Units spawned and not finished, minus those parked; plus timeouts that fired and
        whose scope has not been left yet."""
        self._idle: anyio.Event | None = None
        self._units: dict[Unit, None] = {}
        self._unit_of_task: dict[int, Unit] = {}
        self._current_task: Callable[[], object] = _no_task
        """The running task (asyncio's or trio's own, cheap), chosen once per event loop."""
        self._watch: anyio.CancelScope | None = None
        """The scope of a move; its deadline is the stall timeout of the current settle."""
        self._engine: EngineProbe | None = None
        self._watched: list[Callable[[], bool]] = []
        self._moving = False
        self._draining = False
        self._watch_expired = False
        self._real_time: Callable[[], float] = anyio.current_time
        self._checkpoint: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint
        """``anyio.current_time`` and ``anyio.lowlevel.checkpoint``, as the event loop's own
        functions (bound per move: anyio looks the backend up on every call)."""

    def _read(self) -> datetime:
        return self._now

    # -- waiting, for runs (and tests) -----------------------------------------------

    def _add_timer(self, seconds: float, fire: Callable[[], None]) -> _Timer:
        timer = _Timer(self._now + timedelta(seconds=seconds), fire)
        heapq.heappush(self._timers, (timer.deadline, next(self._order), timer))
        return timer

    def _current_unit(self) -> Unit | None:
        if not self._unit_of_task:
            return None
        return self._unit_of_task.get(id(self._current_task()))

    async def _sleep(self, seconds: float) -> None:
        """Wait until the clock has been moved ``seconds`` on."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        unit = self._current_unit()
        event = anyio.Event()
        woken = False

        def wake() -> None:
            nonlocal woken
            if unit is not None:
                unit.parked = False
            else:
                woken = True  # any other sleeper too resumes at its instant, before time moves
            self._busy += 1
            event.set()

        timer = self._add_timer(seconds, wake)
        if unit is not None:
            unit.parked = True
            self._less_busy()
        try:
            await event.wait()
        finally:
            timer.done = True
            if unit is not None and unit.parked:  # woken by a cancellation, not the clock
                unit.parked = False
                self._busy += 1
            if woken:
                self._less_busy()

    def _timeout(self, seconds: float | None) -> _Timeout:
        """``move_on_after`` in virtual time."""
        return _Timeout(self, seconds)

    async def drain(self) -> None:
        """Wait for the runs that do not wait for virtual time; those that do would wait
        forever (nobody moves the clock any more): the shutdown cancels them."""
        self._draining = True
        await self._settle()

    # -- what the engine and the scheduler call (TimeKeeper) -----------------------------

    def attach_engine(self, probe: EngineProbe) -> Callable[[], None]:
        self._engine = probe
        self._current_task = _task_getter()

        def detach() -> None:
            if self._engine is probe:
                self._engine = None

        return detach

    def watch(self, pending: Callable[[], bool]) -> Callable[[], None]:
        self._watched.append(pending)
        return lambda: self._watched.remove(pending)

    def begin(self, label: str) -> Unit:
        unit = Unit(label)
        self._units[unit] = None
        self._busy += 1
        return unit

    async def run(self, unit: object, func: Callable[..., Awaitable[None]], *args: Any) -> None:
        task = self.enter(unit)
        try:
            await func(*args)
        finally:
            self.leave(unit, task)

    def enter(self, unit: object) -> int:
        """The running task runs ``unit`` (until :meth:`leave`); returns its key."""
        assert isinstance(unit, Unit)
        task = id(self._current_task())
        self._unit_of_task[task] = unit
        return task

    def leave(self, unit: object, task: int) -> None:
        """The run of ``unit`` in the task ``task`` (from :meth:`enter`) has ended."""
        assert isinstance(unit, Unit)
        del self._unit_of_task[task]
        del self._units[unit]
        if unit.parked:  # pragma: no cover - a wait always unparks on its way out
            unit.parked = False
        else:
            self._less_busy()

    def _less_busy(self) -> None:
        self._busy -= 1
        if self._busy <= 0 and self._idle is not None:
            self._idle.set()

    # -- moving the clock ------------------------------------------------------------

    def check_target(self, target: datetime) -> datetime:
        if target.tzinfo is None:  # pragma: no cover - the public clock converts first
            raise InvalidValueError(f"a virtual time must be timezone-aware, got {target!r}")
        target = target.astimezone(UTC)
        if target < self._now:
            raise InvalidValueError(
                f"virtual time only moves forward: {target.isoformat()} is before now, "
                f"{self._now.isoformat()}"
            )
        return target

    async def advance_to(self, target: datetime) -> None:
        """Move to ``target`` event by event: each fire and each wait's deadline at its time."""
        await self._move(self.check_target(target), jump=False)

    async def jump_to(self, target: datetime) -> None:
        """Move to ``target`` at once, as if the event loop had been blocked meanwhile: what
        came due in between is handled late, at ``target``."""
        await self._move(self.check_target(target), jump=True)

    async def _move(self, target: datetime, *, jump: bool) -> None:
        if self._moving:
            raise SchedulerStateError(
                "the virtual clock is already being moved (by another task): "
                "await one advance before the next"
            )
        if self._draining:
            raise SchedulerStateError("virtual time has ended: the scheduler is shutting down")
        self._moving = True
        try:
            self._real_time, self._checkpoint = _loop_functions()
            deadline = self._real_time() + self.stall_timeout
            with anyio.CancelScope(deadline=deadline) as self._watch:
                await self._moving_to(target, jump=jump)
        finally:
            self._moving = False
            self._watch = None
        if self._watch_expired:
            self._watch_expired = False
            self._stalled()

    async def _moving_to(self, target: datetime, *, jump: bool) -> None:
        await self._settle()
        if jump:
            self._now = target
        timers = self._timers
        fired_at: datetime | None = None
        """The instant the engine last fired at: once it has, nothing is due then."""
        while True:
            # The next event: the earliest of the engine's next fire and the timers.
            engine = self._engine
            due = None if engine is None else engine.next_fire_time()
            while timers and timers[0][2].done:
                heapq.heappop(timers)
            when = due
            if timers and (when is None or timers[0][0] < when):
                when = timers[0][0]
            if when is None or when > target:
                break
            if when > self._now:
                self._now = when
            # At one instant: the waits due wake first, then the fires due start.
            if timers and timers[0][0] <= self._now and self._fire_timers():
                await self._settle()
                continue  # what the woken runs did may have changed what is due
            if due is not None and due <= self._now:
                if due == fired_at:  # pragma: no cover - a defect of the engine
                    raise SchedulerStateError(
                        f"the engine did not fire the schedule due at {due.isoformat()}"
                    )
                fired_at = self._now
                await engine.fire()  # type: ignore[union-attr]
                await self._settle()
        self._now = target
        await self._settle()

    def _fire_timers(self) -> bool:
        """Fire every timer due by now, earliest first (in the order they were set)."""
        fired = False
        timers, now = self._timers, self._now
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if not timer.done:
                timer.done = True
                fired = True
                timer.fire()
        return fired

    def _pending(self) -> bool:
        engine = self._engine
        if engine is not None and engine.pending():
            return True
        for pending in self._watched:
            if pending():
                return True
        return False

    async def _settle(self) -> None:
        """Wait until no loop has work in hand and every run has finished or is parked
        (within the stall timeout, enforced by the scope of the move, if any)."""
        watch = self._watch
        if watch is not None:
            deadline = self._real_time() + self.stall_timeout
            # Moved only now and then (each move costs a timer): the limit of one instant is
            # between three quarters of stall_timeout and all of it.
            if deadline - watch.deadline > min(0.5, self.stall_timeout / 4):
                watch.deadline = deadline
        spins = 0
        try:
            while True:
                if (self._busy > 0 and spins < SPINS) or self._pending():
                    spins += 1
                    if spins <= SPINS:
                        await self._checkpoint()
                    else:
                        await anyio.sleep(0.001)
                    continue
                if self._busy <= 0:
                    return
                self._idle = idle = anyio.Event()
                await idle.wait()
                self._idle = None
                spins = 0
        except anyio.get_cancelled_exc_class():
            if watch is not None and anyio.current_time() >= watch.deadline:
                self._watch_expired = True
            raise

    def _stalled(self) -> None:
        running = sorted({unit.label for unit in self._units if not unit.parked})
        what = ", ".join(repr(label) for label in running) or "the scheduler's own tasks"
        raise WaitTimeoutError(
            f"virtual time is stuck at {self._now.isoformat()}: after {self.stall_timeout} s "
            f"of real time, {what} neither finished nor waited for the virtual clock "
            f"(a job that waits should use scheduler.sleep(), not anyio.sleep() or "
            f"asyncio.sleep(); raise stall_timeout for slow real I/O)"
        )


def _no_task() -> object:  # pragma: no cover - replaced when an engine attaches
    return None


def _loop_functions() -> tuple[Callable[[], float], Callable[[], Awaitable[None]]]:
    """The running event loop's clock and checkpoint, as anyio's ``current_time`` and
    ``lowlevel.checkpoint`` call them, without anyio's look-up of the backend per call
    (a tenth of the time per fire, in a long advance)."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.current_time, trio.lowlevel.checkpoint
    return asyncio.get_running_loop().time, partial(asyncio.sleep, 0)


def _task_getter() -> Callable[[], object]:
    """The running event loop's own "current task" function, as a C call: trio's; asyncio's
    on Python 3.12+; on 3.11, whose ``asyncio.current_task`` is Python code (get the running
    loop, then look its task up in asyncio's table: 3 % of the CPU per fire), that table's
    look-up for this loop, if asyncio still has the table and it agrees with
    ``current_task()`` here."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_task
    current_task: Callable[[], object] = asyncio.current_task
    table = getattr(asyncio.tasks, "_current_tasks", None)
    if not inspect.isbuiltin(current_task) and type(table) is dict:
        loop = asyncio.get_running_loop()
        lookup = partial(table.get, loop)
        if lookup() is current_task() is not None:
            return lookup
    return current_task
