"""The exception hierarchy, and the one boundary where APScheduler's errors become ours.

Every error this package raises on purpose is a :class:`TaskSchedulerError`, and also a
builtin users already catch: a lookup failure is a :class:`LookupError`, bad input a
:class:`ValueError`, a call in the wrong state a :class:`RuntimeError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from apscheduler import ConflictingIdError, ScheduleLookupError, SerializationError, TaskLookupError


class TaskSchedulerError(Exception):
    """Base class of every error raised by the task scheduler."""


class JobNotFoundError(TaskSchedulerError, LookupError):
    """No job has the given id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class DuplicateJobError(TaskSchedulerError, ValueError):
    """A job with the given id already exists."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"a job with id {job_id!r} already exists: pass a unique id=..., "
            f"or remove the old job first"
        )
        self.job_id = job_id


class SchedulerStateError(TaskSchedulerError, RuntimeError):
    """The scheduler is not in a state that allows the call (e.g. ``start()`` twice)."""


@contextmanager
def engine_errors(job_id: str) -> Iterator[None]:
    """Translate APScheduler's exceptions about ``job_id`` into ours (the only place that does)."""
    try:
        yield
    except (ScheduleLookupError, TaskLookupError):
        raise JobNotFoundError(job_id) from None
    except ConflictingIdError:
        raise DuplicateJobError(job_id) from None
    except SerializationError as exc:
        # Trap 14: APScheduler's SerializationError has an empty message; the reason is its cause.
        reason = exc.__cause__ or exc
        raise ValueError(f"job {job_id!r} cannot be stored: {reason}") from exc
