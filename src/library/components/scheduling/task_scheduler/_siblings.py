"""Noticing sibling processes that run the same jobs on their own in-memory stores.

``uvicorn --workers 3`` with the default ``memory://`` store runs every job three times,
the most common surprise in this field. Each scheduler with declared jobs holds an advisory
lock on a file named after the app (working directory and declared job ids); a second
process that finds it taken logs a WARNING that says which setting fixes it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, no warning
    fcntl = None  # type: ignore[assignment]

from ._log import logger


class SiblingLock:
    """An advisory lock per app; released by :meth:`release` (or when the process dies)."""

    def __init__(self, job_ids: Iterable[str]) -> None:
        key = "\n".join([os.getcwd(), *sorted(job_ids)])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.path = Path(tempfile.gettempdir()) / f"task-scheduler-{digest}.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> str | None:
        """Take the lock; if another process holds it, return that process's pid (as text)."""
        if fcntl is None:
            return None
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            return holder
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle
        return None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file releases the lock
            self._file = None


def warn_about_siblings(job_ids: list[str]) -> SiblingLock | None:
    """Hold the app's lock, or log a WARNING if a sibling process holds it."""
    if not job_ids:
        return None
    lock = SiblingLock(job_ids)
    try:
        holder = lock.acquire()
    except OSError:  # an unwritable temp dir must never stop the scheduler
        return None
    if holder is not None:
        logger.warning(
            "process %s already runs these %d job(s) with its own in-memory store: each job "
            "will run once per process. To run each job once across processes, give all of "
            "them one store: SchedulerConfig(store='postgresql://user@host:port/db') or the "
            "environment variable TASK_SCHEDULER_STORE",
            holder,
            len(job_ids),
        )
        return None
    return lock
