"""The exception hierarchy: every error this package raises on purpose, documented in one place.

Each is a :class:`TaskSchedulerError`, and also the builtin users already catch:

==========================  ==================  ============================================
error                       also a              raised when
==========================  ==================  ============================================
:class:`JobNotFoundError`   ``LookupError``     no job has the given id
:class:`DuplicateJobError`  ``ValueError``      a job with the id exists already
:class:`InvalidValueError`  ``ValueError``      bad input: a cron field, a timezone, an option,
                                                a store URL, a job a store cannot hold
:class:`InvalidTypeError`   ``TypeError``       a value of the wrong kind (not a callable...)
:class:`SchedulerStateError`  ``RuntimeError``  a call the scheduler's state does not allow
:class:`UnsupportedError`   ``RuntimeError``    a feature this event loop cannot run
:class:`StoreUnavailableError`  ``ConnectionError``  the store or broker server did not answer
:class:`MissingDependencyError`  ``ImportError``  an optional extra is not installed
:class:`WaitTimeoutError`   ``TimeoutError``    a test helper waited too long (``testing``)
==========================  ==================  ============================================

APScheduler's own exceptions become these at one boundary (``_aps.errors``): users never
catch an engine exception.
"""

from __future__ import annotations

from collections.abc import Sequence

SHOWN_ID_MAX = 200
"""Characters of an id a message shows: a huge one (from a URL, say) is cut."""


def shown_id(job_id: object) -> str:
    """``repr(job_id)``; a longer string is cut to its first 200 characters and its length."""
    if isinstance(job_id, str) and len(job_id) > SHOWN_ID_MAX:
        return f"{job_id[:SHOWN_ID_MAX]!r}... ({len(job_id)} characters)"
    return repr(job_id)


class TaskSchedulerError(Exception):
    """Base class of every error raised by the task scheduler."""


class JobNotFoundError(TaskSchedulerError, LookupError):
    """No job has the given id; ``suggestions`` are ids of existing jobs close to it.

    ``no job with id 'heartbeat'; did you mean '__main__:heartbeat'?``
    """

    def __init__(self, job_id: str, suggestions: Sequence[str] = ()) -> None:
        message = f"no job with id {shown_id(job_id)}"
        if suggestions:
            shown = [repr(suggestion) for suggestion in suggestions]
            if len(shown) == 1:
                message += f"; did you mean {shown[0]}?"
            else:
                message += f"; did you mean {', '.join(shown[:-1])} or {shown[-1]}?"
        super().__init__(message)
        self.job_id = job_id
        self.suggestions: tuple[str, ...] = tuple(suggestions)

    def __reduce__(self) -> tuple[type[JobNotFoundError], tuple[str, tuple[str, ...]]]:
        return type(self), (self.job_id, self.suggestions)  # pickles as it was made


class DuplicateJobError(TaskSchedulerError, ValueError):
    """A job with the given id already exists."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"a job with id {job_id!r} already exists: pass a unique id=..., "
            f"or remove the old job first"
        )
        self.job_id = job_id


class InvalidValueError(TaskSchedulerError, ValueError):
    """A value given to the scheduler is not valid; the message names it and what is."""


class InvalidTypeError(TaskSchedulerError, TypeError):
    """A value given to the scheduler is of the wrong kind; the message says which is right."""


class SchedulerStateError(TaskSchedulerError, RuntimeError):
    """The scheduler is not in a state that allows the call (e.g. ``start()`` twice)."""


class UnsupportedError(TaskSchedulerError, RuntimeError):
    """The feature cannot run here (e.g. a SQL store on trio); the message says what can."""


class StoreUnavailableError(TaskSchedulerError, ConnectionError):
    """The store or event broker server did not answer."""


class MissingDependencyError(TaskSchedulerError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class WaitTimeoutError(TaskSchedulerError, TimeoutError):
    """A helper of ``testing`` waited longer than its timeout; the message says what it saw."""
