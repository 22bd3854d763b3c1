"""Helpers for testing code that uses a :class:`TaskScheduler`.

.. code-block:: python

    async with scheduler:
        await scheduler.run_job("my-job")                 # one run now, awaited
        runs = await wait_for_runs(scheduler, "heartbeat", 3)

    async with virtual_time(scheduler, start=datetime(2026, 3, 6, tzinfo=NEW_YORK)) as clock:
        await clock.advance(days=3)                       # 3 days of fires, run now, in order
        runs = await scheduler.get_runs("report", limit=100)
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from types import TracebackType

import anyio

from ._clock import utcnow
from ._errors import (
    InvalidTypeError,
    InvalidValueError,
    SchedulerStateError,
    UnsupportedError,
    WaitTimeoutError,
)
from ._models import Outcome, RunInfo
from ._scheduler import TaskScheduler
from ._triggers import as_aware
from ._urls import parse_store_url
from ._virtual import VirtualTime

__all__ = ["VirtualClock", "virtual_time", "wait_for_runs"]


async def wait_for_runs(
    scheduler: TaskScheduler,
    job_id: str,
    count: int = 1,
    *,
    outcome: Outcome | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - a test helper with a default bound
) -> list[RunInfo]:
    """Wait until ``job_id`` has finished ``count`` run attempts (of ``outcome``, if given).

    Returns the job's recent finished runs (of ``outcome``, if given), newest first.
    Raises :class:`WaitTimeoutError` (a :class:`TimeoutError`), naming what was seen, if that
    takes over ``timeout`` seconds.
    """
    seen = 0
    with anyio.move_on_after(timeout):
        while True:
            counts = (await scheduler.get_job(job_id)).counts
            seen = getattr(counts, outcome.value) if outcome else sum(counts.model_dump().values())
            if seen >= count:
                runs = await scheduler.get_runs(job_id)
                return [r for r in runs if r.outcome is not None and outcome in (None, r.outcome)]
            await anyio.sleep(0.01)
    what = f"{outcome.value} " if outcome else ""
    raise WaitTimeoutError(
        f"job {job_id!r} finished {seen} {what}run(s) in {timeout} s, expected {count}"
    )


def virtual_time(
    scheduler: TaskScheduler,
    *,
    start: datetime | None = None,
    stall_timeout: float = 30.0,
) -> VirtualClock:
    """Run ``scheduler`` by a virtual clock: ``async with virtual_time(scheduler) as clock:``.

    Entering starts the (stopped) scheduler at the virtual time ``start`` (naive: in the
    scheduler's timezone; default: the real time now); leaving shuts it down, cancelling the
    runs still waiting for virtual time. Inside, time stands still until
    :meth:`VirtualClock.advance` moves it: every fire due meanwhile runs then, in order, each
    at its own virtual instant, and so do the sleeps (:meth:`TaskScheduler.sleep`), retry
    delays and timeouts runs wait for. Memory store only.

    ``stall_timeout``: seconds of *real* time one instant may take - a run that awaits
    something other than the virtual clock (real I/O, ``anyio.sleep``) is waited for in real
    time - before :class:`WaitTimeoutError` names the runs that hold time up.
    """
    if not isinstance(scheduler, TaskScheduler):
        raise InvalidTypeError(f"virtual_time() needs a TaskScheduler, got {scheduler!r}")
    kind = parse_store_url(scheduler.config.store).kind
    if kind != "memory":
        raise UnsupportedError(
            f"virtual time runs on the memory store only; this scheduler's store is "
            f"{kind}:// (test your jobs with SchedulerConfig(store='memory://'))"
        )
    if scheduler.config.event_broker is not None:
        raise UnsupportedError(
            "virtual time runs in one process, with the in-process event broker; "
            "this scheduler has event_broker set (leave it None in tests)"
        )
    if isinstance(stall_timeout, bool) or not isinstance(stall_timeout, (int, float)):
        raise InvalidTypeError(f"stall_timeout must be a number of seconds, got {stall_timeout!r}")
    if not (stall_timeout > 0 and math.isfinite(stall_timeout)):
        raise InvalidValueError(
            f"stall_timeout must be a positive, finite number of seconds, got {stall_timeout!r}"
        )
    tz = scheduler.config.tzinfo
    begin = utcnow() if start is None else as_aware(start, tz, "start")
    return VirtualClock(scheduler, begin, float(stall_timeout))


class VirtualClock:
    """The virtual time a scheduler runs by inside :func:`virtual_time`.

    Jobs that wait should wait by the scheduler's time (``await scheduler.sleep(s)``): under
    virtual time such a wait ends when the clock has been moved past it.
    """

    def __init__(self, scheduler: TaskScheduler, start: datetime, stall_timeout: float) -> None:
        self._scheduler = scheduler
        self._tz = scheduler.config.tzinfo
        self._time = VirtualTime(start, stall_timeout=stall_timeout)
        self._state = "new"

    def __repr__(self) -> str:
        return f"<VirtualClock at {self.now().isoformat()} ({self._state})>"

    async def __aenter__(self) -> VirtualClock:
        if self._state != "new":
            raise SchedulerStateError(
                "this virtual_time() was entered already: call virtual_time(scheduler) again "
                "for a new clock"
            )
        state = self._scheduler.state
        if state != "stopped":
            raise SchedulerStateError(
                f"virtual_time() starts the scheduler itself, but it is already {state} "
                f"(inside `async with scheduler`, its lifespan, or another virtual_time()); "
                f"call it on a stopped scheduler"
            )
        self._state = "running"
        try:
            await self._scheduler._start_under(self._time)
        except BaseException:
            self._state = "ended"
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool:
        self._state = "ended"
        return await self._scheduler.__aexit__(exc_type, exc_val, exc_tb)

    def now(self) -> datetime:
        """The virtual time, in the scheduler's timezone."""
        return self._time.now().astimezone(self._tz)

    async def advance(
        self,
        delta: timedelta | None = None,
        /,
        *,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
    ) -> None:
        """Move the clock on by ``delta`` (or by the ``timedelta`` keywords), running every
        fire due meanwhile in order, each at its own instant, and waking each wait at its
        deadline; returns when those runs (and their retries within the span) have finished
        or wait for a later time, with the clock at the end of the span."""
        step = self._step("advance", delta, weeks, days, hours, minutes, seconds)
        self._check_running()
        await self._time.advance_to(self._time.now() + step)

    async def advance_to(self, when: datetime) -> None:
        """:meth:`advance` up to ``when`` (naive: in the scheduler's timezone)."""
        self._check_running()
        await self._time.advance_to(self._target(when))

    async def jump(
        self,
        delta: timedelta | None = None,
        /,
        *,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
    ) -> None:
        """Move the clock on at once, as if the process had been blocked (or suspended)
        meanwhile: the fires and waits due in between are handled late, all at the end of
        the span, where each job's ``coalesce`` and ``misfire_grace_time`` decide what runs."""
        step = self._step("jump", delta, weeks, days, hours, minutes, seconds)
        self._check_running()
        await self._time.jump_to(self._time.now() + step)

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been moved ``seconds`` on (by another task)."""
        await self._time.sleep(seconds)

    def _check_running(self) -> None:
        if self._state != "running":
            what = "has not started" if self._state == "new" else "has ended"
            raise SchedulerStateError(
                f"this virtual time {what}: move the clock inside "
                f"`async with virtual_time(scheduler) as clock:`"
            )

    def _target(self, when: datetime) -> datetime:
        if not isinstance(when, datetime):
            raise InvalidTypeError(f"advance_to() needs a datetime, got {when!r}")
        return self._time.check_target(as_aware(when, self._tz, "when"))

    @staticmethod
    def _step(
        name: str,
        delta: timedelta | None,
        weeks: float,
        days: float,
        hours: float,
        minutes: float,
        seconds: float,
    ) -> timedelta:
        given = (weeks, days, hours, minutes, seconds)
        if delta is not None:
            if not isinstance(delta, timedelta):
                raise InvalidTypeError(f"{name}() takes a timedelta, got {delta!r}")
            if any(given):
                raise InvalidValueError(
                    f"{name}() takes a timedelta or keywords (days=..., hours=...), not both"
                )
            step = delta
        else:
            try:
                step = timedelta(
                    weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds
                )
            except (TypeError, OverflowError) as exc:
                raise InvalidValueError(f"{name}(): {exc}") from None
        if step < timedelta(0):
            raise InvalidValueError(f"virtual time only moves forward: {name}() got {step}")
        return step
