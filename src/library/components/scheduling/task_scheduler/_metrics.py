"""Prometheus metrics of one scheduler: a collector, in a registry of its own.

Needs ``prometheus_client`` (the ``metrics`` extra): the scheduler imports this module only
when asked for its metrics (:meth:`TaskScheduler.metrics_collector`, ``GET {prefix}/metrics``).

Two kinds of numbers, and what each costs:

- read from the scheduler when scraped, nothing per run: runs per job and outcome (the
  cluster's cumulative counts on a persistent store, the numbers ``JobInfo.counts`` has),
  runs in progress, next run and last success per job, live workers; and this process's
  engine restarts and whether it runs. They need the store, so :meth:`SchedulerMetrics.refresh`
  reads them (awaited by the route before each scrape) and :meth:`SchedulerMetrics.collect`
  serves what it read last.
- observed per run, in this process: each attempt's duration and start lateness (histograms),
  through the executor's :class:`~._runs.RunObserver` seam, from the moment the collector exists.

Every series is labelled by job id at most, and a removed job's series disappear: as many
series as jobs. No label or value holds anything from the store's URL.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ._log import logger
from ._models import JobInfo, Outcome, SchedulerState, WorkerInfo
from ._runs import RunRecord

DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0, 3600.0,
)  # fmt: skip
"""Seconds: from a quick job to an hour-long one."""
LATENESS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Seconds: a healthy scheduler starts runs within milliseconds; seconds mean trouble."""
REFRESH_AFTER = 1.0
"""Seconds: a collect() from another registry asks for fresh numbers at most this often."""

_OUTCOMES = [outcome.value for outcome in Outcome]


@dataclass(frozen=True, slots=True)
class Source:
    """What the metrics read from their scheduler, handed to them when they are made."""

    jobs: Callable[[], Awaitable[list[JobInfo]]]
    """Every job as ``get_jobs()`` reports it (the cluster's counts on a persistent store)."""
    workers: Callable[[], Awaitable[list[WorkerInfo]]]
    job_ids: Callable[[], Collection[str]]
    """The ids of this scheduler's jobs now (no I/O): the histograms keep only these."""
    state: Callable[[], SchedulerState]
    engine_restarts: Callable[[], int]
    spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], bool]
    """Start a task in the scheduler's task group, from any thread (False when stopped)."""
    clock: Callable[[], float]
    """Monotonic seconds."""


@dataclass(frozen=True, slots=True)
class _Snapshot:
    jobs: list[JobInfo]
    workers: int
    at: float


_EMPTY = _Snapshot([], 0, float("-inf"))


class _Histogram:
    """One histogram per job, each a plain list: a count per bucket (the last one +Inf), then
    the sum. An observation is a bisect and two additions in the event loop's thread (no lock:
    a scrape copies a job's list at once, so its buckets always agree with each other)."""

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = bounds
        # repr: the form Prometheus' clients give these bounds ("0.005", "1.0", "3600.0")
        self._les = [*(repr(bound) for bound in bounds), "+Inf"]
        self.by_job: dict[str, list[float]] = {}

    def observe(self, job_id: str, amount: float) -> None:
        counts = self.by_job.get(job_id)
        if counts is None:
            counts = self.by_job[job_id] = [0.0] * (len(self._bounds) + 2)
        counts[bisect_left(self._bounds, amount)] += 1  # the first bucket whose bound >= amount
        counts[-1] += amount

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self._name, self._documentation, labels=["job_id"])
        for job_id, live in list(self.by_job.items()):
            counts = live[:]
            total, buckets = 0.0, []
            for le, count in zip(self._les, counts, strict=False):
                total += count
                buckets.append((le, total))
            family.add_metric([job_id], buckets, counts[-1])
        return family


class SchedulerMetrics(Collector):
    """A Prometheus collector of one scheduler's metrics, in its own :attr:`registry`.

    Serve :attr:`registry` (the router's ``/metrics`` does), or register this collector in
    another registry: ``prometheus_client.REGISTRY.register(scheduler.metrics_collector())``.
    """

    def __init__(self, source: Source) -> None:
        self._source = source
        self._snapshot = _EMPTY
        self._refreshing = False
        self._duration = _Histogram(
            "task_scheduler_run_duration_seconds",
            "Seconds each run attempt of this process took, from start to finish.",
            DURATION_BUCKETS,
        )
        self._lateness = _Histogram(
            "task_scheduler_run_lateness_seconds",
            "Seconds each first attempt of this process started after its scheduled time "
            "(a run-now: after it was asked for).",
            LATENESS_BUCKETS,
        )
        self.registry = CollectorRegistry(auto_describe=True)
        """This scheduler's own registry: only its metrics (not the process's default ones)."""
        self.registry.register(self)

    # -- per run (the executor's RunObserver) ---------------------------------------------

    def started(self, record: RunRecord) -> None:
        """Nothing to do at the start: both histograms are observed at the end."""

    def finished(self, record: RunRecord, exc: BaseException | None) -> None:
        started, finished = record.started_at, record.finished_at
        if started is None or finished is None:
            return  # never started (skipped, missed, abandoned): no duration, no lateness
        self._duration.observe(record.job_id, (finished - started).total_seconds())
        if record.attempt == 1:  # a retry starts late on purpose (its retry delay)
            lateness = (started - record.scheduled_at).total_seconds()
            self._lateness.observe(record.job_id, max(0.0, lateness))

    # -- at scrape time ------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the jobs and workers from the scheduler (on a persistent store, from the
        store: a :class:`StoreUnavailableError` when it does not answer)."""
        jobs = await self._source.jobs()
        workers = await self._source.workers()
        self._snapshot = _Snapshot(jobs, len(workers), self._source.clock())

    def exposition(self) -> tuple[bytes, str]:
        """The text format of :attr:`registry` and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def describe(self) -> Iterator[Metric]:
        """The metric names, for a registry's duplicate check (no I/O, no refresh)."""
        return self._families(_EMPTY)

    def collect(self) -> Iterator[Metric]:
        """Every metric, the scheduler's as last read. Scraped outside the router (registered
        elsewhere), it asks for a refresh: those numbers are then one scrape old."""
        snapshot = self._snapshot
        if not self._refreshing and self._source.clock() - snapshot.at > REFRESH_AFTER:
            self._refreshing, started = True, False
            try:
                started = self._source.spawn(self._refresh_quietly)
            finally:
                if not started:  # stopped (or failed to start): the next scrape asks again
                    self._refreshing = False
        return self._families(snapshot)

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # the next scrape tries again; the route answers 503
            logger.debug("could not refresh the scheduler's metrics: %r", exc)
        finally:
            self._refreshing = False

    def _families(self, snapshot: _Snapshot) -> Iterator[Metric]:
        source = self._source
        runs = CounterMetricFamily(
            "task_scheduler_runs",
            "Finished run attempts per job and outcome: cumulative, and the cluster's on a "
            "persistent store (every worker reports the same numbers).",
            labels=["job_id", "outcome"],
        )
        running = GaugeMetricFamily(
            "task_scheduler_jobs_running",
            "Runs of the job in progress now (on every worker, on a persistent store).",
            labels=["job_id"],
        )
        next_run = GaugeMetricFamily(
            "task_scheduler_job_next_run_timestamp_seconds",
            "Unix time of the job's next run (absent while paused or finished).",
            labels=["job_id"],
        )
        last_success = GaugeMetricFamily(
            "task_scheduler_job_last_success_timestamp_seconds",
            "Unix time the job last finished a run successfully, on any worker.",
            labels=["job_id"],
        )
        known = source.job_ids()
        for job in snapshot.jobs:
            if job.id not in known:
                continue  # removed since the snapshot
            counts = job.counts
            for outcome in _OUTCOMES:
                runs.add_metric([job.id, outcome], getattr(counts, outcome))
            running.add_metric([job.id], job.running)
            if job.next_run_time is not None:
                next_run.add_metric([job.id], job.next_run_time.timestamp())
            if job.last_success_at is not None:
                last_success.add_metric([job.id], job.last_success_at.timestamp())
        yield from (runs, running, next_run, last_success)
        yield GaugeMetricFamily(
            "task_scheduler_workers",
            "Live workers sharing the store (1 on memory://, while it runs).",
            value=snapshot.workers,
        )
        yield CounterMetricFamily(
            "task_scheduler_engine_restarts",
            "Times this process restarted its engine after a crash.",
            value=source.engine_restarts(),
        )
        yield GaugeMetricFamily(
            "task_scheduler_up",
            "1 while this process's scheduler is running, else 0.",
            value=1 if source.state() == "running" else 0,
        )
        for histogram in (self._duration, self._lateness):
            for job_id in [job_id for job_id in histogram.by_job if job_id not in known]:
                histogram.by_job.pop(job_id, None)  # a removed job's histograms go with it
            yield histogram.family()
