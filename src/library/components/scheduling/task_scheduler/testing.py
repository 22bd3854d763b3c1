"""Helpers for testing code that uses a :class:`TaskScheduler`.

.. code-block:: python

    async with scheduler:
        await scheduler.run_job("my-job")                 # one run now, awaited
        runs = await wait_for_runs(scheduler, "heartbeat", 3)
"""

from __future__ import annotations

import anyio

from ._errors import WaitTimeoutError
from ._models import Outcome, RunInfo
from ._scheduler import TaskScheduler

__all__ = ["wait_for_runs"]


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
