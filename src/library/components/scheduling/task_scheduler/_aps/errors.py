"""The one boundary where APScheduler's exceptions become ours (like httpx's map_exceptions)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from apscheduler import ConflictingIdError, ScheduleLookupError, SerializationError, TaskLookupError

from .._errors import DuplicateJobError, InvalidValueError, JobNotFoundError


@contextmanager
def engine_errors(job_id: str) -> Iterator[None]:
    """Translate APScheduler's exceptions about ``job_id`` into ours."""
    try:
        yield
    except (ScheduleLookupError, TaskLookupError):
        raise JobNotFoundError(job_id) from None
    except ConflictingIdError:
        raise DuplicateJobError(job_id) from None
    except SerializationError as exc:
        # Trap 14: APScheduler's SerializationError has an empty message; the reason is its cause.
        reason = exc.__cause__ or exc
        raise InvalidValueError(f"job {job_id!r} cannot be stored: {reason}") from exc
