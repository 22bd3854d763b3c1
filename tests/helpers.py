"""Helpers that test modules of several layers share: ``from helpers import ...``.

tests/ is on ``sys.path`` because tests/conftest.py is not in a package: pytest's default
(prepend) import mode puts its folder first, as it does each test module's own folder.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from library.components.scheduling.task_scheduler import (
    SchedulerState,
    SchedulerStatus,
    TaskScheduler,
)

LOGGER = "library.components.scheduling.task_scheduler"
"""The package's logger: the one that logs runs, outcomes and the engine's crashes."""


async def noop() -> None:
    """A job that does nothing: importable by reference, so persistent stores can keep it."""


async def wait_until(check: Callable[[], bool], limit: float = 5, poll: float = 0.005) -> None:
    """Poll ``check()`` until it is true; TimeoutError if it is still false after ``limit`` s."""
    with anyio.move_on_after(limit):
        while not check():
            await anyio.sleep(poll)
        return
    raise TimeoutError(f"still not true after {limit} s: {check!r}")


async def wait_for_status(
    scheduler: TaskScheduler,
    check: Callable[[SchedulerStatus], bool],
    limit: float = 10,
    poll: float = 0.01,
) -> SchedulerStatus:
    """Poll ``scheduler.get_status()`` until ``check`` accepts it; return that status.

    TimeoutError, with the last status seen, if that takes over ``limit`` seconds.
    """
    status = await scheduler.get_status()
    with anyio.move_on_after(limit):
        while not check(status):
            await anyio.sleep(poll)
            status = await scheduler.get_status()
        return status
    raise TimeoutError(f"scheduler status not as awaited after {limit} s: {status!r}")


async def wait_for_state(
    scheduler: TaskScheduler, state: SchedulerState, limit: float = 10
) -> SchedulerStatus:
    """Wait until ``get_status()`` reports ``state``; return that status."""
    return await wait_for_status(scheduler, lambda status: status.state == state, limit)
