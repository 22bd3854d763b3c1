"""The scheduler's jobs: each job's immutable definition and its runtime state, by id.

The scheduler owns the registry and hands it to the executor (which finds each fire's job
here and keeps its run state) and to the backend (which places the jobs in the engine).
Pause state is runtime state: a job's definition never changes after it is made.
"""

from __future__ import annotations

import difflib
from collections import deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime

import anyio

from ._errors import DuplicateJobError, JobNotFoundError
from ._jobs import JOB_ID_MAX_LENGTH, JobSpec
from ._models import RunCounts
from ._runs import NO_COUNTS, HistoryRow, RunRecord, run_counts

_NO_RECORDS: tuple[RunRecord, ...] = ()

SUGGESTIONS_MAX = 3
"""At most this many ids a :class:`JobNotFoundError` suggests."""
FUZZY_MATCH_MAX_JOBS = 2000
"""With more jobs than this, only exact names are suggested (no fuzzy matching): an unknown
id stays cheap to answer, a 404 of the router included."""


def _name(job_id: str) -> str:
    """The part of a ``module:qualname`` id after the ``:`` (an id without one: all of it)."""
    return job_id.partition(":")[2] or job_id


def close_ids(job_id: str, known: Collection[str]) -> list[str]:
    """Up to :data:`SUGGESTIONS_MAX` of the ``known`` ids that ``job_id`` may have meant.

    First the ids with the same name (the part after ``:``, any case): ``heartbeat`` and
    ``other.module:heartbeat`` mean ``__main__:heartbeat``; ``method`` means
    ``pkg.mod:Class.method``. Then ids close to it (:func:`difflib.get_close_matches`), whole
    and by name. Nothing for an id longer than any valid one.
    """
    if not job_id or len(job_id) > JOB_ID_MAX_LENGTH or not known:
        return []
    name = _name(job_id).casefold()
    dotted = "." + name
    found: dict[str, None] = {}  # ordered, without duplicates
    for other in known:
        other_name = _name(other).casefold()
        if other_name == name or other_name.endswith(dotted) or other.casefold() == name:
            found[other] = None
            if len(found) == SUGGESTIONS_MAX:
                return list(found)
    if len(known) <= FUZZY_MATCH_MAX_JOBS:
        for match in difflib.get_close_matches(job_id, known, n=SUGGESTIONS_MAX):
            found[match] = None
        by_name: dict[str, list[str]] = {}
        for other in known:
            by_name.setdefault(_name(other), []).append(other)
        for match in difflib.get_close_matches(_name(job_id), by_name, n=SUGGESTIONS_MAX):
            found.update(dict.fromkeys(by_name[match]))
    return list(found)[:SUGGESTIONS_MAX]


@dataclass(slots=True, eq=False)
class JobRuntime:
    """One job: its definition, whether it is paused, its runs in progress, history, counters.

    An idle job costs this object only: its history, runs in progress and counters start as
    shared immutable empties and get their own containers at their first write (memory per
    idle schedule: bench/README.md).
    """

    spec: JobSpec
    paused: bool = False
    history: deque[HistoryRow] | None = None
    """Finished attempts, newest first, as rows (``RunRecord.from_row`` makes them records
    again); made at the first one (an idle job costs no deque)."""
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
        """The job; :class:`JobNotFoundError`, with the ids it may have meant, if none."""
        try:
            return self.by_id[job_id]
        except KeyError:
            raise JobNotFoundError(job_id, close_ids(job_id, self.by_id.keys())) from None

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
