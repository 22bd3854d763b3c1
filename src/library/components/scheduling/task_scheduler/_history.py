"""What the scheduler knows about runs and workers, and where it keeps it.

- :class:`LocalHistory`: this process's memory (the memory store is one process by design,
  and a persistent store's scheduler answers from it while it is not running).
- :class:`ClusterHistory`: the store's database, the same answer from every worker, kept
  across restarts. Its :class:`RunRecorder` takes this process's runs from the executor
  (two cheap calls per run: nothing is written on the hot path) and writes them in batches,
  one transaction each; it also beats this worker's heart and prunes old runs now and then.
"""

from __future__ import annotations

import os
import platform
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from ._aps.leases import LEASE_DURATION
from ._aps.rows import JobStats, RunRow, WorkerRow
from ._clock import utcnow
from ._errors import StoreUnavailableError
from ._log import logger
from ._models import JobInfo, Outcome, RunCounts, RunInfo, TriggerInfo, WorkerInfo, WorkerState
from ._registry import JobRegistry, JobRuntime
from ._runs import RunRecord, run_info

if TYPE_CHECKING:  # SQLAlchemy is an optional dependency: only persistent stores load it
    from ._aps.history import RunHistory
    from ._config import JobDefaults

FLUSH_INTERVAL = 0.2
"""Seconds a run record waits for others to share its batch (one transaction) in the store;
an idle worker writes nothing and does not wake up for it."""
HEARTBEAT_INTERVAL = 2.0
"""Seconds between two heartbeats of a worker."""
WORKER_TIMEOUT = LEASE_DURATION
"""Seconds without a heartbeat after which a worker counts as gone (a killed one leaves the
list within this plus a heartbeat)."""
PRUNE_INTERVAL = 30.0
"""Seconds between two prunings of the history (amortised: never a scan per run)."""
FORGET_WORKERS_AFTER = 86400.0
"""Seconds after which a dead worker's row is deleted."""
STORE_TIMEOUT = 5.0
"""Seconds a read of the cluster's history may take before the store counts as unavailable."""
PENDING_LIMIT = 100_000
"""Run records waiting for the store (it is down) beyond which the oldest are dropped."""


@dataclass(frozen=True, slots=True)
class Worker:
    """This process, as the other workers see it."""

    id: str
    host: str
    pid: int

    @classmethod
    def here(cls) -> Worker:
        host, pid = platform.node() or "localhost", os.getpid()
        return cls(f"{host}:{pid}:{secrets.token_hex(3)}", host, pid)


@dataclass(frozen=True, slots=True)
class JobFacts:
    """What is known about one job's runs."""

    counts: RunCounts
    last_run: RunInfo | None
    last_success_at: datetime | None
    running: int

    def job_info(
        self,
        definition: tuple[str, str, str, TriggerInfo],
        options: JobDefaults,
        *,
        next_run_time: datetime | None,
        paused: bool,
    ) -> JobInfo:
        """The public JobInfo of a job: ``definition`` is its id, name, callable name and
        trigger; its options and these facts about its runs complete it."""
        job_id, name, func, trigger = definition
        return JobInfo(
            id=job_id,
            name=name,
            func=func,
            trigger=trigger,
            next_run_time=next_run_time,
            paused=paused,
            timeout=options.timeout,
            max_instances=options.max_instances,
            coalesce=options.coalesce,
            misfire_grace_time=options.misfire_grace_time,
            retries=options.retries,
            retry_delay=options.retry_delay,
            jitter=options.jitter,
            max_staleness=options.max_staleness,
            running=self.running,
            last_run=self.last_run,
            last_success_at=self.last_success_at,
            counts=self.counts,
        )


WorkerStatus = Callable[[], tuple[WorkerState, datetime | None, int]]
"""This worker's state, start time and runs in progress, now."""


class History(Protocol):
    """Where the scheduler's queries about runs and workers are answered."""

    async def facts(self, runtimes: Sequence[JobRuntime]) -> dict[str, JobFacts]:
        """Counts, last run, last success and runs in progress of each job."""

    async def runs(
        self, job_id: str | None, limit: int, outcome: Outcome | None, before: datetime | None
    ) -> list[RunInfo]:
        """Runs, newest first: of one job, or of all."""

    async def workers(self) -> list[WorkerInfo]:
        """The live workers."""


class LocalHistory:
    """This process's runs, from the executor's memory."""

    def __init__(
        self,
        registry: JobRegistry,
        tz: ZoneInfo,
        worker: Worker,
        status: WorkerStatus,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._registry = registry
        self._tz = tz
        self._worker = worker
        self._status = status
        self._now = now
        """The scheduler's time (virtual under ``testing.virtual_time``)."""

    async def facts(self, runtimes: Sequence[JobRuntime]) -> dict[str, JobFacts]:
        tz, worker = self._tz, self._worker.id
        return {
            runtime.spec.id: JobFacts(
                counts=runtime.run_counts(),
                last_run=None if runtime.last is None else runtime.last.info(tz, worker),
                last_success_at=(
                    None if runtime.last_success is None else runtime.last_success.astimezone(tz)
                ),
                running=runtime.running,
            )
            for runtime in runtimes
        }

    async def runs(
        self, job_id: str | None, limit: int, outcome: Outcome | None, before: datetime | None
    ) -> list[RunInfo]:
        runtimes = [self._registry[job_id]] if job_id is not None else list(self._registry)
        records: list[RunRecord] = []
        for runtime in runtimes:
            records.extend(reversed(runtime.active))
            if runtime.history:
                records.extend(map(RunRecord.from_row, runtime.history))
        if outcome is not None:
            records = [record for record in records if record.outcome is outcome]
        if before is not None:
            records = [record for record in records if record.at < before]
        if job_id is None or outcome is not None or before is not None:
            records.sort(key=lambda record: (record.at, record.seq), reverse=True)
        tz, worker = self._tz, self._worker.id
        return [record.info(tz, worker) for record in records[:limit]]

    async def workers(self) -> list[WorkerInfo]:
        state, started_at, in_progress = self._status()
        if started_at is None:
            return []
        worker = self._worker
        return [
            WorkerInfo(
                id=worker.id,
                host=worker.host,
                pid=worker.pid,
                started_at=started_at.astimezone(self._tz),
                last_seen=self._now().astimezone(self._tz),
                state=state,
                runs_in_progress=in_progress,
            )
        ]


class RunRecorder:
    """Takes this process's runs from the executor; writes them to the store in batches."""

    def __init__(self, worker: Worker, *, keep: int, max_age: float) -> None:
        self._worker = worker
        self._keep = keep
        self._max_age = timedelta(seconds=max_age)
        self._pending: dict[int, RunRecord] = {}
        self._fire_ids: dict[int, str] = {}
        self._finished: list[RunRecord] = []
        self._abandoned: list[tuple[str, RunRecord]] = []
        self._touched: set[str] = set()
        self._lock = anyio.Lock()
        self._history: RunHistory | None = None
        self._stop: anyio.Event | None = None
        self._wake: anyio.Event | None = None
        """Set when a batch has begun (records are waiting), or to stop."""
        self._failures = 0

    # -- the executor's calls (sync, cheap) -----------------------------------------------

    def started(self, record: RunRecord, fire_id: str | None) -> None:
        if not self._pending and self._wake is not None:
            self._wake.set()  # the first record of a batch wakes the writer
        self._pending[record.seq] = record
        if fire_id is not None:
            self._fire_ids[record.seq] = fire_id

    def finished(self, record: RunRecord, fire_id: str | None = None) -> None:
        if not self._pending and self._wake is not None:
            self._wake.set()
        self._pending[record.seq] = record
        if fire_id is not None:  # a queued run-now that never started
            self._fire_ids[record.seq] = fire_id
        self._finished.append(record)

    def abandoned(self, record: RunRecord, fire_id: str) -> None:
        """A dead process's run, found by this one: its row is finished (or written)."""
        if self._wake is not None:
            self._wake.set()
        self._abandoned.append((fire_id, record))

    # -- the writer -----------------------------------------------------------------------

    async def serve(
        self,
        history: RunHistory,
        status: WorkerStatus,
        *,
        task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
    ) -> None:
        """Write batches, beat, prune; until :meth:`stop` (:meth:`close` writes the rest)."""
        self._history = history
        stop = self._stop = anyio.Event()
        await self._beat(status)
        task_status.started()
        clock = anyio.current_time
        next_beat = clock() + HEARTBEAT_INTERVAL
        next_prune = clock() + PRUNE_INTERVAL
        self._wake = anyio.Event()
        while not stop.is_set():
            with anyio.move_on_after(max(0.0, next_beat - clock())):
                await self._wake.wait()
            if self._pending or self._abandoned:
                with anyio.move_on_after(FLUSH_INTERVAL):  # let the batch gather
                    await stop.wait()
                self._wake = anyio.Event()  # before the flush: records added during it wake
                await self.flush()
            elif self._wake.is_set():
                self._wake = anyio.Event()  # woken to stop, or by a read's flush
            now = clock()
            if now >= next_beat:
                next_beat = now + HEARTBEAT_INTERVAL
                await self._beat(status)
            if now >= next_prune:
                next_prune = now + PRUNE_INTERVAL
                await self._prune()

    async def flush(self) -> None:
        """Write what is pending, in one transaction (reads call it: read your own runs)."""
        history = self._history
        if history is None or not (self._pending or self._abandoned):
            return
        async with self._lock:
            pending, self._pending = self._pending, {}
            finished, self._finished = self._finished, []
            abandoned, self._abandoned = self._abandoned, []
            fire_ids = self._fire_ids
            rows = [self._row(record, fire_ids.get(seq)) for seq, record in pending.items()]
            for record in finished:
                fire_ids.pop(record.seq, None)
            counts: dict[str, dict[str, int]] = {}
            last_success: dict[str, datetime] = {}
            for record in finished:
                outcome = record.outcome
                assert outcome is not None
                by_outcome = counts.setdefault(record.job_id, {})
                by_outcome[outcome.value] = by_outcome.get(outcome.value, 0) + 1
                if outcome is Outcome.success and record.finished_at is not None:
                    seen = last_success.get(record.job_id)
                    if seen is None or record.finished_at > seen:
                        last_success[record.job_id] = record.finished_at
            try:
                await history.write(rows, counts, last_success)
                for fire_id, record in abandoned:
                    await history.finish_abandoned(fire_id, self._row(record, fire_id))
            except Exception as exc:
                self._requeue(pending, finished, abandoned)
                self._failures += 1
                if self._failures == 1 or self._failures % 100 == 0:
                    logger.warning(
                        "could not record %d run(s) in the store (kept to retry): %s",
                        len(pending) + len(abandoned),
                        exc,
                    )
                return
            self._failures = 0
            self._touched.update(counts)

    def _requeue(
        self,
        pending: dict[int, RunRecord],
        finished: list[RunRecord],
        abandoned: list[tuple[str, RunRecord]],
    ) -> None:
        pending.update(self._pending)  # newer states win
        self._pending = pending
        self._finished[:0] = finished
        self._abandoned[:0] = abandoned
        while len(self._pending) > PENDING_LIMIT:
            seq = next(iter(self._pending))
            record = self._pending.pop(seq)
            self._fire_ids.pop(seq, None)
            if record.outcome is not None:
                self._finished.remove(record)

    def _row(self, record: RunRecord, fire_id: str | None) -> RunRow:
        outcome = record.outcome
        # An abandoned run was recorded here but run by the dead process (the message names it).
        worker = None if outcome is Outcome.abandoned else self._worker.id
        return RunRow(
            run_id=record.run_id,
            job_id=record.job_id,
            attempt=record.attempt,
            scheduled_at=record.scheduled_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            outcome=None if outcome is None else outcome.value,
            error_type=record.error_type,
            error_message=record.error_message,
            worker=worker,
            fire_id=fire_id,
        )

    async def _beat(self, status: WorkerStatus) -> None:
        history = self._history
        assert history is not None
        state, started_at, in_progress = status()
        worker = self._worker
        now = utcnow()
        try:
            await history.beat(
                WorkerRow(
                    id=worker.id,
                    host=worker.host,
                    pid=worker.pid,
                    started_at=started_at or now,
                    last_seen=now,
                    state=state,
                    runs_in_progress=in_progress,
                )
            )
        except Exception as exc:
            logger.warning("could not record this worker's heartbeat in the store: %s", exc)

    async def _prune(self) -> None:
        history = self._history
        assert history is not None
        touched, self._touched = self._touched, set()
        try:
            now = utcnow()
            await history.prune(
                touched,
                keep=self._keep,
                older_than=now - self._max_age,
                gone_before=now - timedelta(seconds=WORKER_TIMEOUT),
            )
        except Exception as exc:
            self._touched.update(touched)
            logger.warning("could not prune the run history: %s", exc)

    def stop(self) -> None:
        """End :meth:`serve` (the drain is over)."""
        if self._stop is not None:
            self._stop.set()
        if self._wake is not None:
            self._wake.set()

    async def close(self) -> None:
        """Write the rest and leave the list of workers (at the end of the drain)."""
        history = self._history
        if history is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(STORE_TIMEOUT):
            await self.flush()
            try:
                forget = utcnow() - timedelta(seconds=FORGET_WORKERS_AFTER)
                await history.leave(self._worker.id, forget)
            except Exception as exc:
                logger.warning("could not leave the store's list of workers: %s", exc)
        self._history = self._wake = None


class ClusterHistory:
    """The store's history: every worker's runs, the cluster's counts, the live workers."""

    def __init__(self, history: RunHistory, recorder: RunRecorder | None, tz: ZoneInfo) -> None:
        self._history = history
        self._recorder = recorder
        """This worker's (None: a reader that runs nothing, the task-scheduler command)."""
        self._tz = tz

    async def _read(self) -> None:
        if self._recorder is not None:
            await self._recorder.flush()  # this process's own runs are in the answer

    def _info(self, row: RunRow) -> RunInfo:
        return run_info(
            self._tz,
            run_id=row.run_id,
            job_id=row.job_id,
            attempt=row.attempt,
            scheduled_at=row.scheduled_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            outcome=None if row.outcome is None else Outcome(row.outcome),
            error_type=row.error_type,
            error_message=row.error_message,
            worker=row.worker,
        )

    async def facts(self, runtimes: Sequence[JobRuntime]) -> dict[str, JobFacts]:
        return await self.facts_of([runtime.spec.id for runtime in runtimes])

    async def facts_of(self, ids: Sequence[str]) -> dict[str, JobFacts]:
        """Counts, last run, last success and runs in progress of the jobs of ``ids``."""
        live_after = utcnow() - timedelta(seconds=WORKER_TIMEOUT)
        with store_timeout():
            await self._read()
            stats = await self._history.stats(ids)
            last = await self._history.last_runs(ids)
            running = await self._history.running(ids, live_after)
        empty = JobStats(counts={}, last_success_at=None)
        facts = {}
        for job_id in ids:
            job_stats = stats.get(job_id, empty)
            last_run = last.get(job_id)
            success = job_stats.last_success_at
            facts[job_id] = JobFacts(
                counts=RunCounts(**job_stats.counts),
                last_run=None if last_run is None else self._info(last_run),
                last_success_at=None if success is None else success.astimezone(self._tz),
                running=running.get(job_id, 0),
            )
        return facts

    async def runs(
        self, job_id: str | None, limit: int, outcome: Outcome | None, before: datetime | None
    ) -> list[RunInfo]:
        with store_timeout():
            await self._read()
            rows = await self._history.runs(
                job_id, limit, outcome=None if outcome is None else outcome.value, before=before
            )
        return [self._info(row) for row in rows]

    async def fire_runs(self, fire_id: str) -> list[RunInfo]:
        """The attempts of one fire (a queued run-now's), first attempt first."""
        with store_timeout():
            rows = await self._history.fire_runs(fire_id)
        return [self._info(row) for row in rows]

    async def workers(self) -> list[WorkerInfo]:
        with store_timeout():
            rows = await self._history.workers(utcnow() - timedelta(seconds=WORKER_TIMEOUT))
        tz = self._tz
        return [
            WorkerInfo(
                id=row.id,
                host=row.host,
                pid=row.pid,
                started_at=row.started_at.astimezone(tz),
                last_seen=row.last_seen.astimezone(tz),
                state=row.state,
                runs_in_progress=row.runs_in_progress,
            )
            for row in rows
        ]


@contextmanager
def store_timeout() -> Iterator[None]:
    """A read of the store that does not answer within STORE_TIMEOUT, or cannot connect,
    raises :class:`StoreUnavailableError` (the router answers 503) instead of hanging."""
    try:
        with anyio.fail_after(STORE_TIMEOUT):
            yield
    except TimeoutError:
        raise StoreUnavailableError(f"the store did not answer within {STORE_TIMEOUT} s") from None
    except Exception as exc:
        if _unreachable(exc):
            raise StoreUnavailableError(f"the store is unavailable: {exc}") from exc
        raise


def _unreachable(exc: Exception) -> bool:
    """A connection failure (not a bug in a query): also a pooled connection the server
    closed meanwhile, which SQLAlchemy reports as a plain DBAPIError it has invalidated."""
    if isinstance(exc, OSError):
        return True
    try:
        from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    except ImportError:  # the memory store: SQLAlchemy need not be installed
        return False
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (InterfaceError, OperationalError))
