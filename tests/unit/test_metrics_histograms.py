"""The run histograms' buckets, read back from the exposition text: an attempt lands in the
first bucket whose bound it does not exceed; retries have no lateness; fires that never
started are in neither histogram; a job that is gone leaves them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from prometheus_client.parser import text_string_to_metric_families

from library.components.scheduling.task_scheduler import Outcome
from library.components.scheduling.task_scheduler._metrics import (
    DURATION_BUCKETS,
    SchedulerMetrics,
    Source,
)
from library.components.scheduling.task_scheduler._runs import RunRecord

T0 = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)


async def no_jobs() -> list:  # type: ignore[type-arg]
    return []


def metrics(job_ids: set[str]) -> SchedulerMetrics:
    return SchedulerMetrics(
        Source(
            jobs=no_jobs,
            workers=no_jobs,
            job_ids=lambda: job_ids,
            state=lambda: "running",
            engine_restarts=lambda: 0,
            spawn=lambda func: False,
            clock=lambda: 0.0,
        )
    )


def attempt(job_id: str, late: float, took: float | None, attempt: int = 1) -> RunRecord:
    record = RunRecord(1, job_id, attempt, T0)
    if took is not None:
        record.started_at = T0 + timedelta(seconds=late)
        record.finished_at = record.started_at + timedelta(seconds=took)
        record.outcome = Outcome.success
    else:
        record.finished_at = T0 + timedelta(seconds=late)
        record.outcome = Outcome.skipped
    return record


def histogram(found: SchedulerMetrics, name: str, job_id: str) -> dict[str, float]:
    """le -> cumulative count, plus 'sum' and 'count'."""
    text = found.exposition()[0].decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("job_id") != job_id or not sample.name.startswith(name):
                continue
            key = sample.labels.get("le") or sample.name.rsplit("_", 1)[1]
            values[key] = sample.value
    return values


def test_buckets_sum_and_count() -> None:
    found = metrics({"a"})
    found.finished(attempt("a", 0.002, 1.0), None)  # exactly on a bound: in that bucket
    found.finished(attempt("a", 0.0, 7200.0), None)  # beyond the last bound: +Inf only
    found.finished(attempt("a", 4.0, 0.2, attempt=2), None)  # a retry: no lateness
    found.finished(attempt("a", 0.5, None), None)  # never started: in neither
    duration = histogram(found, "task_scheduler_run_duration_seconds", "a")
    assert duration["0.1"] == 0 and duration["0.25"] == 1
    assert duration["0.5"] == 1 and duration["1.0"] == 2
    assert duration[repr(DURATION_BUCKETS[-1])] == 2 and duration["+Inf"] == 3
    assert duration["count"] == 3 and duration["sum"] == 7201.2
    lateness = histogram(found, "task_scheduler_run_lateness_seconds", "a")
    assert lateness["count"] == 2 and lateness["0.001"] == 1 and lateness["0.0025"] == 2
    assert lateness["sum"] == 0.002


def test_a_job_that_is_gone_leaves_the_histograms() -> None:
    jobs = {"a", "b"}
    found = metrics(jobs)
    found.finished(attempt("a", 0.0, 0.1), None)
    found.finished(attempt("b", 0.0, 0.1), None)
    assert histogram(found, "task_scheduler_run_duration_seconds", "b")["count"] == 1
    jobs.discard("b")
    assert histogram(found, "task_scheduler_run_duration_seconds", "b") == {}
    assert histogram(found, "task_scheduler_run_duration_seconds", "a")["count"] == 1
