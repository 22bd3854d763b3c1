"""The scheduler's jobs: each job's immutable definition and its runtime state, by id.

The scheduler owns the registry and hands it to the executor (which finds each fire's job
here and keeps its run state) and to the backend (which places the jobs in the engine).
Pause state is runtime state: a job's definition never changes after it is made.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import anyio

from ._errors import DuplicateJobError, JobNotFoundError
from ._jobs import JobSpec
from ._models import RunCounts
from ._runs import NO_COUNTS, RunRecord, run_counts

_NO_RECORDS: tuple[RunRecord, ...] = ()


@dataclass(slots=True, eq=False)
class JobRuntime:
    """One job: its definition, whether it is paused, its runs in progress, history, counters.

    An idle job costs this object only: its history, runs in progress and counters start as
    shared immutable empties and get their own containers at their first write (memory per
    idle schedule: bench/README.md).
    """

    spec: JobSpec
    paused: bool = False
    history: deque[RunRecord] | None = None
    """Finished attempts, newest first; made at the first one (an idle job costs no deque)."""
    running: int = 0
    """Fires in progress, including one waiting for its retry: they hold max_instances slots."""
    active: list[RunRecord] | tuple[RunRecord, ...] = _NO_RECORDS
    """Attempts in progress, oldest first: the shared empty tuple until the first one."""
    counts: list[int] | tuple[int, ...] = NO_COUNTS
    """Finished attempts per outcome (in ``Outcome`` order): shared zeros until the first."""
    last: RunRecord | None = None
    last_success: datetime | None = None
    slot_freed: anyio.Event | None = None
    """Set when a run ends: backlog fires waiting for a max_instances slot check again."""

    def run_counts(self) -> RunCounts:
        return run_counts(self.counts)

    def add_active(self, record: RunRecord) -> None:
        active = self.active
        if type(active) is list:
            active.append(record)
        else:  # still the shared empty tuple: never mutated, replaced
            self.active = [record]

    def drop_active(self, record: RunRecord) -> None:
        """Forget an attempt in progress (no error if it is not there)."""
        active = self.active
        if type(active) is list:
            try:
                active.remove(record)
            except ValueError:
                pass


class JobRegistry:
    """Every job by id, in the order they were added, and which ones have finished."""

    def __init__(self) -> None:
        self.by_id: dict[str, JobRuntime] = {}
        """The table itself: the executor reads it on the hot path (one dict lookup a fire)."""
        self.finished: set[str] = set()
        """Jobs whose trigger has nothing left to fire (not in the engine)."""

    def add(self, spec: JobSpec, *, paused: bool) -> JobRuntime:
        """A new job; :class:`DuplicateJobError` if the id is taken."""
        if spec.id in self.by_id:
            raise DuplicateJobError(spec.id)
        runtime = self.by_id[spec.id] = JobRuntime(spec, paused)
        return runtime

    def put(self, spec: JobSpec, *, paused: bool) -> JobRuntime:
        """Add the job, or give a known one this definition (its run state stays)."""
        runtime = self.by_id.get(spec.id)
        if runtime is None:
            runtime = self.by_id[spec.id] = JobRuntime(spec, paused)
        else:
            runtime.spec = spec
            runtime.paused = paused
        return runtime

    def remove(self, job_id: str) -> None:
        self.by_id.pop(job_id, None)
        self.finished.discard(job_id)

    def __getitem__(self, job_id: str) -> JobRuntime:
        try:
            return self.by_id[job_id]
        except KeyError:
            raise JobNotFoundError(job_id) from None

    def get(self, job_id: str) -> JobRuntime | None:
        return self.by_id.get(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.by_id

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self) -> Iterator[JobRuntime]:
        return iter(list(self.by_id.values()))

    def specs(self) -> list[JobSpec]:
        return [runtime.spec for runtime in self.by_id.values()]
