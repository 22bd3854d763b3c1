"""The package's clock: aware UTC datetimes (converted to the configured zone at the edge),
and the waits that go with them.

Every collaborator that reads the time or waits for it is handed a :class:`Clock` when a
scheduler starts and binds its methods once: :data:`REAL_CLOCK` is plain ``datetime.now`` and
anyio's sleeps (the same calls as before, nothing added per run); the virtual clock of
``testing.virtual_time`` is a subclass (``_virtual``) whose extra hooks only code that found
``clock.virtual`` true at start ever calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any, Protocol

import anyio

UTC = timezone.utc


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


class Clock:
    """Real time: ``now`` reads the system clock; ``sleep`` and ``move_on_after`` are anyio's.

    Each is an attribute holding the function itself (no method in between): what a
    collaborator binds is exactly the call it made before there was a clock.
    """

    virtual = False
    """True for the virtual clock of ``testing.virtual_time``."""

    def __init__(self) -> None:
        self.now: Callable[[], datetime] = partial(datetime.now, UTC)
        """Now, as an aware UTC datetime."""
        self.sleep: Callable[[float], Awaitable[None]] = anyio.sleep
        """Wait this many seconds."""
        self.move_on_after: Callable[[float | None], AbstractContextManager[anyio.CancelScope]]
        self.move_on_after = anyio.move_on_after
        """A cancel scope that cancels what it holds after this many seconds (None: never)."""


REAL_CLOCK = Clock()


@dataclass(frozen=True)
class EngineProbe:
    """What the virtual clock asks of a running engine (the memory engine builds it)."""

    next_fire_time: Callable[[], datetime | None]
    """The earliest fire time of a schedule that can fire (None: none)."""
    fire: Callable[[], Awaitable[None]]
    """Fire the due schedules and start the queued jobs the engine has room for (what the
    loops would do when woken, done by the caller: no task switch per instant)."""
    pending: Callable[[], bool]
    """True while a loop of the engine has been woken and has not looked yet."""


class TimeKeeper(Protocol):
    """The hooks of the virtual clock: called only where ``clock.virtual`` was true at start."""

    def attach_engine(self, probe: EngineProbe) -> Callable[[], None]:
        """Follow a running engine; returns the function that lets it go."""

    def watch(self, pending: Callable[[], bool]) -> Callable[[], None]:
        """Count ``pending()`` as work still to do; returns the function that stops it."""

    def begin(self, label: str) -> object:
        """A run about to start, as a unit of work the clock waits for (counted at once)."""

    async def drain(self) -> None:
        """The scheduler shuts down: wait for the runs that do not wait for virtual time."""

    async def run(self, unit: object, func: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``func(*args)`` as ``unit`` (in the task that runs it), then count it done."""

    def enter(self, unit: object) -> int:
        """The running task begins to run ``unit``; returns the key :meth:`leave` takes (what
        :meth:`run` does around its call, for a caller that awaits the work itself)."""

    def leave(self, unit: object, task: int) -> None:
        """The run of ``unit`` that :meth:`enter` began has ended: count it done."""
