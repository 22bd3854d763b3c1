"""Run records: one per attempt, kept cheap on the hot path, turned into :class:`RunInfo` on demand.

Also the counters per outcome, the one log line per finished attempt, and retry delays.
Run ids are this process's random prefix and a counter: unique in the process without a
uuid per run.
"""

from __future__ import annotations

import logging
import random
import secrets
from dataclasses import dataclass
from datetime import datetime
from itertools import count
from typing import Protocol
from zoneinfo import ZoneInfo

from ._log import logger
from ._models import Outcome, RunCounts, RunInfo

RUN_ID_PREFIX = secrets.token_hex(4)
"""This process's run id prefix."""
next_seq = count(1).__next__
"""The next run number of this process (every scheduler of the process draws from it)."""

QUEUED_RUN_KEY = "task_scheduler_run_now"
"""Metadata key of an engine job that asks the live workers for a run-now (queued in a
persistent store from outside any scheduler, by the ``task-scheduler`` command): its value
says who asked. Such a job has no schedule; the worker that takes it runs the job once."""

RETRY_DELAY_CAP = 300.0
"""Seconds: exponential retry backoff never waits longer than this."""

OUTCOMES = tuple(Outcome)
OUTCOME_INDEX = {outcome: index for index, outcome in enumerate(OUTCOMES)}
NO_COUNTS: tuple[int, ...] = (0,) * len(OUTCOMES)
"""The shared zero counts of every job that has not finished a run yet."""

_LOG_LEVELS = {
    Outcome.success: logging.INFO,
    Outcome.cancelled: logging.INFO,
    Outcome.timed_out: logging.WARNING,
    Outcome.skipped: logging.WARNING,
    Outcome.missed: logging.WARNING,
    Outcome.error: logging.ERROR,
    Outcome.abandoned: logging.ERROR,
}


@dataclass(slots=True, eq=False)
class RunRecord:
    """One attempt, as the executor keeps it (a RunInfo is only built when someone asks)."""

    seq: int
    job_id: str
    attempt: int
    scheduled_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: Outcome | None = None
    error_type: str | None = None
    error_message: str | None = None

    @property
    def run_id(self) -> str:
        return f"{RUN_ID_PREFIX}-{self.seq}"

    @property
    def at(self) -> datetime:
        """When it started, or was recorded if it never started: the history's order."""
        return self.started_at or self.finished_at or self.scheduled_at

    @property
    def duration(self) -> float | None:
        started, finished = self.started_at, self.finished_at
        if started is None or finished is None:
            return None
        return (finished - started).total_seconds()

    def info(self, tz: ZoneInfo, worker: str | None = None) -> RunInfo:
        return run_info(
            tz,
            run_id=self.run_id,
            job_id=self.job_id,
            attempt=self.attempt,
            scheduled_at=self.scheduled_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            outcome=self.outcome,
            error_type=self.error_type,
            error_message=self.error_message,
            worker=worker,
        )

    def row(self) -> HistoryRow:
        """This finished attempt as the history keeps it (:data:`HistoryRow`). (``_value_``:
        the member's value without the ``value`` property's descriptor call, on the hot path.)"""
        outcome = self.outcome
        return (
            self.seq, self.job_id, self.attempt, self.scheduled_at, self.started_at,
            self.finished_at, None if outcome is None else outcome._value_, self.error_type,
            self.error_message,
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: HistoryRow) -> RunRecord:
        seq, job_id, attempt, scheduled, started, finished, outcome, error_type, message = row
        return cls(
            seq, job_id, attempt, scheduled, started, finished,
            None if outcome is None else Outcome(outcome), error_type, message,
        )  # fmt: skip


HistoryRow = tuple[
    int, str, int, datetime, datetime | None, datetime | None, str | None, str | None, str | None
]
"""A finished attempt in a job's in-memory history: a plain tuple of its fields, the outcome
by value. Holding only strings, numbers, datetimes and None, such a tuple is untracked by the
garbage collector at its first pass (CPython): 100 runs kept per job are no objects for every
later pass to walk, where RunRecords (each a container) were - at 3,000 fires a second, a
full history is 300,000 of them, and full passes that walked them took tens of ms."""


class RunObserver(Protocol):
    """Told of each attempt this process runs (metrics, tracing), in the attempt's own task.

    ``started`` when the attempt starts (just before the job is called), ``finished`` when
    it is recorded: also for fires that never started (skipped, missed, abandoned), which
    have no ``started`` call. Both are cheap and never raise.
    """

    def started(self, record: RunRecord) -> None: ...

    def finished(self, record: RunRecord, exc: BaseException | None) -> None: ...


def run_info(
    tz: ZoneInfo,
    *,
    run_id: str,
    job_id: str,
    attempt: int,
    scheduled_at: datetime,
    started_at: datetime | None,
    finished_at: datetime | None,
    outcome: Outcome | None,
    error_type: str | None,
    error_message: str | None,
    worker: str | None,
) -> RunInfo:
    """The public model of one attempt, its times in ``tz`` (from memory or from the store)."""
    duration = None
    if started_at is not None and finished_at is not None:
        duration = (finished_at - started_at).total_seconds()
    return RunInfo.model_construct(
        run_id=run_id,
        job_id=job_id,
        attempt=attempt,
        scheduled_at=scheduled_at.astimezone(tz),
        started_at=None if started_at is None else started_at.astimezone(tz),
        finished_at=None if finished_at is None else finished_at.astimezone(tz),
        duration=duration,
        outcome=outcome,
        error_type=error_type,
        error_message=error_message,
        worker=worker,
    )


def run_counts(counts: list[int] | tuple[int, ...]) -> RunCounts:
    """Counters in ``Outcome`` order as the public model."""
    return RunCounts(**{o.value: n for o, n in zip(OUTCOMES, counts, strict=True)})


def log_run(
    record: RunRecord, exc: BaseException | None, retries: int = 0, retry_in: float | None = None
) -> None:
    """The one log line of a finished attempt; formats nothing no handler wants.

    ``retries``: the job's; with any, the line says ``attempt 2 of 3`` (retries + 1), without,
    ``attempt 1``. ``retry_in``: seconds until the retry that follows this attempt;
    such an attempt logs at WARNING, on one line without its traceback (``...; retrying in
    2.0 s``); the final one at its outcome's level (``error``: ERROR, with the traceback).
    """
    outcome = record.outcome
    assert outcome is not None
    level = _LOG_LEVELS[outcome] if retry_in is None else logging.WARNING
    if not logger.isEnabledFor(level):
        return
    run_id = record.run_id
    extra = {
        "job_id": record.job_id,
        "run_id": run_id,
        "outcome": outcome.value,
        "duration": record.duration,
        "attempt": record.attempt,
        "attempts": retries + 1,
        "retry_in": retry_in,
    }
    detail = f": {record.error_message}" if record.error_message else ""
    of = f" of {retries + 1}" if retries else ""
    if retry_in is not None:
        detail += f"; retrying in {round(retry_in, 3)} s"
        exc = None  # the run goes on: the final failure shows the traceback
    logger.log(
        level,
        "job %r run %s (attempt %d%s) %s%s",
        record.job_id,
        run_id,
        record.attempt,
        of,
        outcome.value,
        detail,
        extra=extra,
        exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
    )


def retry_delay(base: float, retry: int) -> float:
    """Seconds before retry number ``retry`` (1-based): doubling from ``base``, capped, jittered."""
    delay = min(base * 2.0 ** (retry - 1), max(base, RETRY_DELAY_CAP))
    return delay * random.uniform(0.5, 1.0)
