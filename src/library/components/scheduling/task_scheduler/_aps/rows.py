"""Plain rows of the run history, shared by the SQL layer and the layer above it (no
SQLAlchemy here: the memory store never imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

ERROR_MESSAGE_LIMIT = 2000
"""Characters of an error message kept in the history (the traceback is in the log)."""
OUTCOMES = ("success", "error", "timed_out", "cancelled", "skipped", "missed", "abandoned")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_micros(value: datetime | None) -> int | None:
    if value is None:
        return None
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int | None) -> datetime | None:
    if value is None:
        return None
    return _EPOCH + timedelta(microseconds=value)


@dataclass(slots=True)
class RunRow:
    """One attempt as the history stores it."""

    run_id: str
    job_id: str
    attempt: int
    scheduled_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    worker: str | None = None
    fire_id: str | None = None

    def values(self) -> dict[str, Any]:
        message = self.error_message
        if message is not None and len(message) > ERROR_MESSAGE_LIMIT:
            message = message[: ERROR_MESSAGE_LIMIT - 1] + "…"
        at = self.started_at or self.finished_at or self.scheduled_at
        return {
            "run_id": self.run_id,
            "job_id": self.job_id,
            "attempt": self.attempt,
            "fire_id": self.fire_id,
            "scheduled_at": to_micros(self.scheduled_at),
            "started_at": to_micros(self.started_at),
            "finished_at": to_micros(self.finished_at),
            "at": to_micros(at),
            "outcome": self.outcome,
            "error_type": self.error_type,
            "error_message": message,
            "worker": self.worker,
        }


@dataclass(slots=True)
class JobStats:
    """A job's cumulative counts per outcome, and its last success, across the cluster."""

    counts: dict[str, int]
    last_success_at: datetime | None


@dataclass(slots=True)
class WorkerRow:
    id: str
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime
    state: str
    runs_in_progress: int
