"""What the cluster knows about runs, in the SQL store's own database: run history, per-job
counters and the live workers (one truth for every process sharing the store).

Three tables beside APScheduler's, created with them (same schema, same advisory lock, so
whichever process starts first creates them, and a store written by an older release gets
them at its next start):

- ``task_scheduler_runs``: one row per attempt; ``outcome`` NULL while it runs. Ordered by
  ``at`` (when it started, or was recorded when it never started).
- ``task_scheduler_job_stats``: cumulative counts per outcome, last success: pruning the
  runs never lowers them.
- ``task_scheduler_workers``: one row per live process, heart-beating.

Times are integer microseconds since the epoch (UTC) on both dialects: one conversion, exact
ordering, the same index on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    Table,
    Unicode,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from .rows import (
    ERROR_MESSAGE_LIMIT,
    OUTCOMES,
    JobStats,
    RunRow,
    WorkerRow,
    from_micros,
    to_micros,
)

if TYPE_CHECKING:
    from .sqlstore import SQLStore

RUNS_TABLE = "task_scheduler_runs"
STATS_TABLE = "task_scheduler_job_stats"
WORKERS_TABLE = "task_scheduler_workers"
HISTORY_TABLES = (RUNS_TABLE, STATS_TABLE, WORKERS_TABLE)


def add_history_tables(metadata: MetaData) -> None:
    """Define the three tables in the store's metadata (created with APScheduler's)."""
    runs = Table(
        RUNS_TABLE,
        metadata,
        Column("run_id", Unicode(64), primary_key=True),
        Column("job_id", Unicode(500), nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("fire_id", Unicode(36)),
        Column("scheduled_at", BigInteger, nullable=False),
        Column("started_at", BigInteger),
        Column("finished_at", BigInteger),
        Column("at", BigInteger, nullable=False),
        Column("outcome", Unicode(16)),
        Column("error_type", Unicode(200)),
        Column("error_message", Unicode(ERROR_MESSAGE_LIMIT)),
        Column("worker", Unicode(500)),
    )
    Index(f"{RUNS_TABLE}_job_at", runs.c.job_id, runs.c.at)
    Index(f"{RUNS_TABLE}_at", runs.c.at)
    Index(f"{RUNS_TABLE}_fire", runs.c.fire_id)
    # Runs in progress (outcome NULL) are few: found through this index, not a scan.
    Index(f"{RUNS_TABLE}_outcome", runs.c.outcome)
    Table(
        STATS_TABLE,
        metadata,
        Column("job_id", Unicode(500), primary_key=True),
        *(Column(name, BigInteger, nullable=False, server_default="0") for name in OUTCOMES),
        Column("last_success_at", BigInteger),
    )
    Table(
        WORKERS_TABLE,
        metadata,
        Column("id", Unicode(500), primary_key=True),
        Column("host", Unicode(255), nullable=False),
        Column("pid", Integer, nullable=False),
        Column("started_at", BigInteger, nullable=False),
        Column("last_seen", BigInteger, nullable=False),
        Column("state", Unicode(16), nullable=False),
        Column("runs_in_progress", Integer, nullable=False),
    )


_RUN_COLUMNS = (
    "run_id", "job_id", "attempt", "fire_id", "scheduled_at", "started_at", "finished_at",
    "at", "outcome", "error_type", "error_message", "worker",
)  # fmt: skip
"""The columns of a run row (:meth:`RunRow.values`), the key first."""
_STATS_COLUMNS = ("job_id", *OUTCOMES, "last_success_at")
"""The columns of a job's counters, the key first."""


def _row_to_run(row: Any) -> RunRow:
    return RunRow(
        run_id=row.run_id,
        job_id=row.job_id,
        attempt=row.attempt,
        scheduled_at=from_micros(row.scheduled_at),  # type: ignore[arg-type]
        started_at=from_micros(row.started_at),
        finished_at=from_micros(row.finished_at),
        outcome=row.outcome,
        error_type=row.error_type,
        error_message=row.error_message,
        worker=row.worker,
        fire_id=row.fire_id,
    )


class RunHistory:
    """Reads and writes of the history tables, through the store's engine and transactions."""

    def __init__(self, store: SQLStore) -> None:
        self._store = store
        prefix = f"{store.schema}." if store.schema else ""
        tables = store._metadata.tables
        self._runs: Table = tables[prefix + RUNS_TABLE]
        self._stats: Table = tables[prefix + STATS_TABLE]
        self._workers: Table = tables[prefix + WORKERS_TABLE]
        self._dialect: Any = postgresql if store._engine.dialect.name == "postgresql" else sqlite
        # Built once: a batch only binds its rows (no statement construction per write).
        # PostgreSQL: one statement per batch, its rows as one array per column (a
        # statement per row, as executemany runs them, cost the server more than the rows).
        self._set_based = self._dialect is postgresql
        self._upsert_runs = self._runs_upsert()
        self._upsert_stats = self._stats_upsert()

    def _insert(self, table: Table, names: Sequence[str]) -> Any:
        """INSERT into ``table``: of one row (executemany binds each), or, on PostgreSQL,
        of the rows of arrays bound under the columns' names (see :func:`_columns`)."""
        insert = self._dialect.insert(table)
        if not self._set_based:
            return insert
        arrays = [bindparam(name, type_=postgresql.ARRAY(table.c[name].type)) for name in names]
        rows = func.unnest(*arrays).table_valued(*names).render_derived()
        return insert.from_select(list(names), select(*(rows.c[name] for name in names)))

    def _runs_upsert(self) -> Any:
        """A row per attempt, upserted: a row written in progress gets its end later, never
        the other way round (a batch written late never undoes a newer one)."""
        runs = self._runs
        insert = self._insert(runs, _RUN_COLUMNS)
        keep_end = {
            name: func.coalesce(getattr(insert.excluded, name), runs.c[name])
            for name in ("started_at", "finished_at", "outcome", "error_type", "error_message")
        }
        return insert.on_conflict_do_update(
            index_elements=[runs.c.run_id], set_={**keep_end, "at": insert.excluded.at}
        )

    def _stats_upsert(self) -> Any:
        """Counters added to; the later of two last successes kept."""
        stats = self._stats
        insert = self._insert(stats, _STATS_COLUMNS)
        new, old = insert.excluded.last_success_at, stats.c.last_success_at
        return insert.on_conflict_do_update(
            index_elements=[stats.c.job_id],
            set_={
                **{name: stats.c[name] + getattr(insert.excluded, name) for name in OUTCOMES},
                "last_success_at": case(
                    (new.is_(None), old), (old.is_(None), new), (new > old, new), else_=old
                ),
            },
        )

    # -- writes: one transaction per batch ------------------------------------------------

    async def write(
        self,
        rows: Sequence[RunRow],
        counts: dict[str, dict[str, int]],
        last_success: dict[str, datetime],
    ) -> None:
        """Record a batch in one transaction: its attempts and the counters the finished
        ones add to."""
        store = self._store
        async with store._begin_transaction() as conn:
            if rows:
                values = [row.values() for row in rows]
                await store._execute(conn, self._upsert_runs, self._bind(values, _RUN_COLUMNS))
            if counts:
                await self._count(conn, counts, last_success)

    def _bind(self, rows: list[dict[str, Any]], names: Sequence[str]) -> Any:
        """The parameters of an upsert of ``rows``: as they are (executemany), or on
        PostgreSQL one array per column, the rows in key order (two batches that touch
        the same rows then lock them in the same order)."""
        if not self._set_based:
            return rows
        rows = sorted(rows, key=lambda row: row[names[0]])
        return {name: [row[name] for row in rows] for name in names}

    async def _count(
        self, conn: Any, counts: dict[str, dict[str, int]], last_success: dict[str, datetime]
    ) -> None:
        params = [
            {
                "job_id": job_id,
                **{name: by_outcome.get(name, 0) for name in OUTCOMES},
                "last_success_at": to_micros(last_success.get(job_id)),
            }
            for job_id, by_outcome in counts.items()
        ]
        await self._store._execute(conn, self._upsert_stats, self._bind(params, _STATS_COLUMNS))

    async def finish_abandoned(self, fire_id: str, row: RunRow) -> None:
        """A dead process's run: finish its in-progress row, or record one if it never got
        written; and count it."""
        runs = self._runs
        store = self._store
        async with store._begin_transaction() as conn:
            updated = await store._execute(
                conn,
                runs.update()
                .where(runs.c.fire_id == fire_id, runs.c.outcome.is_(None))
                .values(
                    outcome=row.outcome,
                    finished_at=to_micros(row.finished_at),
                    error_message=row.error_message,
                )
                .returning(runs.c.run_id),
            )
            if updated.first() is None:
                await store._execute(conn, runs.insert().values(**row.values()))
            await self._count(conn, {row.job_id: {str(row.outcome): 1}}, {})

    async def prune(
        self,
        job_ids: Iterable[str],
        *,
        keep: int,
        older_than: datetime,
        gone_before: datetime,
    ) -> None:
        """Forget finished runs beyond ``keep`` per job (of ``job_ids``, the jobs written
        since the last pruning) and older than ``older_than``; finish as ``abandoned`` the
        runs left in progress by workers not seen since ``gone_before`` (the engine's sweep
        finishes scheduled fires at once; this catches run-nows and retries)."""
        runs, workers = self._runs, self._workers
        store = self._store
        async with store._begin_transaction() as conn:
            await store._execute(
                conn,
                runs.delete().where(runs.c.outcome.is_not(None), runs.c.at < to_micros(older_than)),
            )
            for job_id in job_ids:
                oldest_kept = (
                    select(runs.c.at)
                    .where(runs.c.job_id == job_id)
                    .order_by(runs.c.at.desc())
                    .offset(keep - 1)
                    .limit(1)
                    .scalar_subquery()
                )
                await store._execute(
                    conn,
                    runs.delete().where(
                        runs.c.job_id == job_id,
                        runs.c.outcome.is_not(None),
                        runs.c.at < oldest_kept,
                    ),
                )
            live = select(workers.c.id).where(workers.c.last_seen >= to_micros(gone_before))
            left = await store._execute(
                conn,
                runs.update()
                .where(
                    runs.c.outcome.is_(None),
                    runs.c.at < to_micros(gone_before),
                    or_(runs.c.worker.is_(None), runs.c.worker.not_in(live)),
                )
                .values(
                    outcome="abandoned",
                    finished_at=to_micros(gone_before),
                    error_message="its worker stopped before it finished",
                )
                .returning(runs.c.job_id),
            )
            counts: dict[str, dict[str, int]] = {}
            for row in left.all():
                by_outcome = counts.setdefault(row.job_id, {})
                by_outcome["abandoned"] = by_outcome.get("abandoned", 0) + 1
            if counts:
                await self._count(conn, counts, {})

    async def beat(self, worker: WorkerRow) -> None:
        """Register or refresh this worker's row."""
        table = self._workers
        values = {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "started_at": to_micros(worker.started_at),
            "last_seen": to_micros(worker.last_seen),
            "state": worker.state,
            "runs_in_progress": worker.runs_in_progress,
        }
        insert = self._dialect.insert(table).values(**values)
        upsert = insert.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={
                name: getattr(insert.excluded, name)
                for name in ("last_seen", "state", "runs_in_progress")
            },
        )
        store = self._store
        async with store._begin_transaction() as conn:
            await store._execute(conn, upsert)

    async def leave(self, worker_id: str, forget_before: datetime) -> None:
        """This worker stops: its row goes, and so do rows of workers long dead."""
        table = self._workers
        store = self._store
        async with store._begin_transaction() as conn:
            await store._execute(
                conn,
                table.delete().where(
                    or_(table.c.id == worker_id, table.c.last_seen < to_micros(forget_before))
                ),
            )

    # -- reads ----------------------------------------------------------------------------

    async def runs(
        self,
        job_id: str | None,
        limit: int,
        *,
        outcome: str | None = None,
        before: datetime | None = None,
    ) -> list[RunRow]:
        runs = self._runs
        query = select(runs).order_by(runs.c.at.desc(), runs.c.run_id.desc()).limit(limit)
        if job_id is not None:
            query = query.where(runs.c.job_id == job_id)
        if outcome is not None:
            query = query.where(runs.c.outcome == outcome)
        if before is not None:
            query = query.where(runs.c.at < to_micros(before))
        store = self._store
        async with store._begin_transaction() as conn:
            rows = (await store._execute(conn, query)).all()
        return [_row_to_run(row) for row in rows]

    async def fire_runs(self, fire_id: str) -> list[RunRow]:
        """The attempts recorded under one fire id, first attempt first."""
        runs = self._runs
        query = select(runs).where(runs.c.fire_id == fire_id).order_by(runs.c.attempt)
        store = self._store
        async with store._begin_transaction() as conn:
            rows = (await store._execute(conn, query)).all()
        return [_row_to_run(row) for row in rows]

    async def last_runs(self, job_ids: Sequence[str] | None) -> dict[str, RunRow]:
        """Each job's newest run (one query; jobs that never ran are absent)."""
        runs = self._runs
        newest = select(runs.c.job_id, func.max(runs.c.at).label("at")).group_by(runs.c.job_id)
        if job_ids is not None:
            newest = newest.where(runs.c.job_id.in_(job_ids))
        latest = newest.subquery()
        query = select(runs).join(
            latest, and_(runs.c.job_id == latest.c.job_id, runs.c.at == latest.c.at)
        )
        store = self._store
        async with store._begin_transaction() as conn:
            rows = (await store._execute(conn, query)).all()
        found: dict[str, RunRow] = {}
        for row in rows:
            run = _row_to_run(row)
            kept = found.get(run.job_id)
            if kept is None or run.run_id > kept.run_id:
                found[run.job_id] = run
        return found

    async def stats(self, job_ids: Sequence[str] | None) -> dict[str, JobStats]:
        stats = self._stats
        query = select(stats)
        if job_ids is not None:
            query = query.where(stats.c.job_id.in_(job_ids))
        store = self._store
        async with store._begin_transaction() as conn:
            rows = (await store._execute(conn, query)).all()
        return {
            row.job_id: JobStats(
                counts={name: int(getattr(row, name)) for name in OUTCOMES},
                last_success_at=from_micros(row.last_success_at),
            )
            for row in rows
        }

    async def running(self, job_ids: Sequence[str] | None, live_after: datetime) -> dict[str, int]:
        """Runs in progress per job, on live workers."""
        runs, workers = self._runs, self._workers
        live = select(workers.c.id).where(workers.c.last_seen >= to_micros(live_after))
        query = (
            select(runs.c.job_id, func.count().label("n"))
            .where(runs.c.outcome.is_(None), runs.c.worker.in_(live))
            .group_by(runs.c.job_id)
        )
        if job_ids is not None:
            query = query.where(runs.c.job_id.in_(job_ids))
        store = self._store
        async with store._begin_transaction() as conn:
            rows = (await store._execute(conn, query)).all()
        return {row.job_id: int(row.n) for row in rows}

    async def workers(self, live_after: datetime) -> list[WorkerRow]:
        table = self._workers
        query = (
            select(table)
            .where(table.c.last_seen >= to_micros(live_after))
            .order_by(table.c.started_at, table.c.id)
        )
        store = self._store
        async with store._begin_transaction() as conn:
            rows = (await store._execute(conn, query)).all()
        return [
            WorkerRow(
                id=row.id,
                host=row.host,
                pid=row.pid,
                started_at=from_micros(row.started_at),  # type: ignore[arg-type]
                last_seen=from_micros(row.last_seen),  # type: ignore[arg-type]
                state=row.state,
                runs_in_progress=row.runs_in_progress,
            )
            for row in rows
        ]
