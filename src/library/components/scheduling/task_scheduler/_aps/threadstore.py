"""The SQL store on a synchronous SQLAlchemy engine, driven from worker threads (trio).

APScheduler 4.0.0a6's ``SQLAlchemyDataStore`` runs a synchronous ``Engine`` through
``anyio.to_thread``, which works on trio too; what it lacks, closed here:

- its ``start()`` refuses every library but asyncio, although nothing after that check
  needs asyncio with a synchronous engine: :meth:`ThreadedSQLStore._start_base` takes the
  same steps (schema, tables under the advisory lock, schema version, RETURNING support)
  without it;
- its thread calls share anyio's default thread limiter with everything else (sync jobs
  among them), and its transactions check connections out of the pool inside a thread:
  with as many transactions as threads waiting for a connection, the transactions holding
  one could not get a thread for their next statement (a deadlock until the pool's timeout).
  Here a transaction first takes one of ``connections`` slots in the event loop, then runs
  every call in this store's own limiter of as many threads: a call never waits for a
  thread, and a checkout never waits for a connection.

Everything else - the ledger, liveness, sweeps, running counts, history - is
:class:`SQLStore`'s own code, run through the two primitives 4.0.0a6's store already calls
for every statement (``_begin_transaction``, ``_execute``): one implementation of the
guarantees on both libraries.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import attrs
from anyio import CancelScope, CapacityLimiter, Semaphore, to_thread
from apscheduler.abc import EventBroker
from apscheduler.datastores.base import BaseExternalDataStore
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import CompileError, ProgrammingError
from sqlalchemy.schema import CreateSchema
from sqlalchemy.sql import Executable

from .sqlstore import LIVENESS_LOCK_CLASS, LIVENESS_LOCK_SQL, SQLStore

T = TypeVar("T")

CONNECTIONS = 8
"""Transactions one process runs at once on a store on threads (and threads it uses)."""


def pool_size(connections: int = CONNECTIONS) -> int:
    """Connections the engine's pool needs: one per transaction slot, the liveness one, and
    one for the wake-ups' NOTIFY (published one at a time): a checkout never waits."""
    return connections + 2


def _execute_buffered(
    conn: Connection,
    statement: Executable,
    parameters: Sequence[Any] | Mapping[str, Any] | None,
) -> Any:
    """Run ``statement`` and fetch its rows, all in the calling (worker) thread.

    A ``sqlite3`` cursor fetches lazily: rows read later, in the event loop, would run the
    database there, and a statement left unfinished makes the commit fail ("SQL statements
    in progress"). The asyncio drivers hand back rows already fetched, as this does.
    """
    result = conn.execute(statement, parameters)
    if not result.returns_rows:
        return result  # keeps rowcount
    return result.freeze()()


@attrs.define(eq=False, repr=False)
class ThreadedSQLStore(SQLStore):
    """:class:`SQLStore` on a synchronous engine (stdlib ``sqlite3``, psycopg 3), for trio."""

    connections: int = attrs.field(kw_only=True, default=CONNECTIONS)
    """Transactions at once: the engine's pool must hold ``pool_size(connections)``."""
    _threads: CapacityLimiter | None = attrs.field(init=False, default=None)
    _slots: Semaphore | None = attrs.field(init=False, default=None)
    _held: Connection | None = attrs.field(init=False, default=None)
    """The session holding this process's liveness lock (PostgreSQL)."""

    def _runner(self) -> tuple[CapacityLimiter, Semaphore]:
        if self._threads is None or self._slots is None:
            self._threads = CapacityLimiter(self.connections)
            self._slots = Semaphore(self.connections)
        return self._threads, self._slots

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        return await to_thread.run_sync(func, *args, limiter=self._runner()[0])

    @asynccontextmanager
    async def _begin_transaction(self) -> AsyncGenerator[Connection, None]:
        assert isinstance(self._engine, Engine)
        async with self._runner()[1]:
            transaction = self._engine.begin()
            conn = await self._in_thread(transaction.__enter__)
            # As 4.0.0a6's: once begun, a transaction ends (commits or rolls back) even when
            # the task is cancelled.
            with CancelScope(shield=True):
                try:
                    yield conn
                except BaseException as exc:
                    if not await self._in_thread(
                        transaction.__exit__, type(exc), exc, exc.__traceback__
                    ):
                        raise
                else:
                    await self._in_thread(transaction.__exit__, None, None, None)

    async def _execute(
        self,
        conn: Any,
        statement: Executable,
        parameters: Sequence[Any] | Mapping[str, Any] | None = None,
    ) -> Any:
        return await self._in_thread(_execute_buffered, conn, statement, parameters)

    async def _create_metadata(self, conn: Any) -> None:
        await self._lock_schema(conn)
        await self._in_thread(self._metadata.create_all, conn)

    async def _start_base(
        self, exit_stack: AsyncExitStack, event_broker: EventBroker, logger: logging.Logger
    ) -> None:
        # 4.0.0a6's start() without its asyncio-only check (see the module docstring).
        await BaseExternalDataStore.start(self, exit_stack, event_broker, logger)
        metadata = self._t_metadata
        async for attempt in self._retry():
            with attempt:
                async with self._begin_transaction() as conn:
                    if self.schema:
                        # Under the lock: processes starting together on an empty database
                        # create the schema once (what ensure_schema does on asyncio).
                        await self._lock_schema(conn)
                        await self._execute(conn, CreateSchema(self.schema, if_not_exists=True))
                    await self._create_metadata(conn)
                    version = (
                        await self._execute(conn, select(metadata.c.schema_version))
                    ).scalar()
                    if version is None:
                        await self._execute(conn, metadata.insert(), {"schema_version": 1})
                    elif version > 1:
                        raise RuntimeError(
                            f"the store's schema version is {version}; APScheduler 4.0.0a6 "
                            f"knows only version 1"
                        )
        probe = (
            metadata.update()
            .values(schema_version=metadata.c.schema_version)
            .returning(metadata.c.schema_version)
        )
        async with self._begin_transaction() as conn:
            try:
                await self._execute(conn, probe)
            except (CompileError, ProgrammingError):
                pass
            else:
                self._supports_update_returning = True

    async def _announce(self, scheduler_id: str) -> None:
        await super()._announce(scheduler_id)  # names this process (no lock on this engine)
        if self._engine.dialect.name != "postgresql" or self._held is not None:
            return
        self._held = await self._in_thread(self._hold_liveness_lock, scheduler_id)

    def _hold_liveness_lock(self, scheduler_id: str) -> Connection:
        assert isinstance(self._engine, Engine)
        conn = self._engine.connect()
        try:
            conn.execute(
                LIVENESS_LOCK_SQL, {"lock_class": LIVENESS_LOCK_CLASS, "identity": scheduler_id}
            )
            conn.commit()
        except BaseException:
            conn.invalidate()
            raise
        return conn

    async def _drop_liveness(self) -> None:
        await super()._drop_liveness()
        conn, self._held = self._held, None
        if conn is not None:
            with CancelScope(shield=True):
                await self._in_thread(conn.invalidate)  # ends the session, and with it the lock
