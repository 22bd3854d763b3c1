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
  thread, and a checkout never waits for a connection;
- a server that stops answering on an open connection (a hung host) blocks a thread's
  statement for good: psycopg has no client-side statement timeout, and the server's kernel
  still acknowledges, so keepalives never fire. asyncpg's ``command_timeout`` bounds every
  statement on asyncio (leases.STATEMENT_TIMEOUT); here :func:`call_bounded` (every
  statement of the store, and the wake-ups' NOTIFY) stops waiting after as long and shuts
  the connection's socket down - the thread's statement fails at once, handing back its
  thread, slot and pool connection, and SQLAlchemy invalidates the connection - and raises
  the ``TimeoutError`` asyncio raises.

Everything else - the ledger, liveness, sweeps, running counts, history - is
:class:`SQLStore`'s own code, run through the two primitives 4.0.0a6's store already calls
for every statement (``_begin_transaction``, ``_execute``), and the one that tells whether
this process's liveness session was cut (``_liveness_lost``): one implementation of the
guarantees on both libraries.
"""

from __future__ import annotations

import logging
import os
import select as io_select
import socket
import threading
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import attrs
from anyio import (
    CancelScope,
    CapacityLimiter,
    Semaphore,
    fail_after,
    to_thread,
)
from apscheduler.abc import EventBroker
from apscheduler.datastores.base import BaseExternalDataStore
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import CompileError, ProgrammingError
from sqlalchemy.schema import CreateSchema
from sqlalchemy.sql import Executable

from .leases import STATEMENT_TIMEOUT
from .sqlstore import LIVENESS_LOCK_CLASS, LIVENESS_LOCK_SQL, SQLStore

if TYPE_CHECKING:  # the postgres extra: SQLite on trio runs without psycopg
    import psycopg

T = TypeVar("T")

CONNECTIONS = 8
"""Transactions one process runs at once on a store on threads (and threads it uses)."""


CUT_GRACE = 2.0
"""Seconds a thread whose connection was shut down has to give up its statement, before the
store stops waiting for it (it then holds a thread of the store's until it ends)."""


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


class SessionCall(Generic[T]):
    """A call that talks to PostgreSQL on one session, to run in a worker thread by
    :func:`call_bounded`: its session is known to the event loop (given, or set by the call
    once it has checked a connection out), and so is its end."""

    __slots__ = ("args", "done", "func", "session")

    def __init__(
        self,
        func: Callable[..., T],
        args: tuple[Any, ...],
        session: psycopg.Connection[Any] | None = None,
    ) -> None:
        self.func, self.args, self.session = func, args, session
        self.done = threading.Event()

    def __call__(self) -> T:
        try:
            return self.func(*self.args)
        finally:
            self.done.set()


async def call_bounded(call: SessionCall[T], limiter: CapacityLimiter | None) -> T:
    """Run ``call`` in a thread of ``limiter``'s, waiting for it at most STATEMENT_TIMEOUT.

    Past that (or when cancelled) its session's socket is shut down: the thread's statement
    fails at once as a lost connection, handing back its thread and its pool connection,
    which SQLAlchemy invalidates (never reused); then the ``TimeoutError`` asyncpg's
    ``command_timeout`` raises on asyncio is raised.
    """
    try:
        with fail_after(STATEMENT_TIMEOUT):
            return await to_thread.run_sync(call, limiter=limiter, abandon_on_cancel=True)
    except BaseException as exc:  # timed out, or cancelled (outside a transaction)
        if not call.done.is_set():
            if call.session is not None:
                _shut_down(call.session)
            with CancelScope(shield=True):  # a thread of anyio's: ``limiter`` may be full
                await to_thread.run_sync(call.done.wait, CUT_GRACE)
        if isinstance(exc, TimeoutError):
            raise TimeoutError(
                f"the store did not answer a statement within {STATEMENT_TIMEOUT} s"
            ) from None
        raise


def session_of(conn: Connection) -> psycopg.Connection[Any] | None:
    """The psycopg connection under ``conn``, if it has a live one (no reconnect)."""
    if conn.closed or conn.invalidated or conn.dialect.name != "postgresql":
        return None
    # PostgreSQL on threads is psycopg's (open_sql_store); not imported here, as SQLite
    # on trio needs no psycopg.
    return cast("psycopg.Connection[Any]", conn.connection.driver_connection)


def _shut_down(driver: psycopg.Connection[Any]) -> None:
    """End the session's socket under the thread using it: its wait returns, its statement
    fails as a lost connection (safe across threads, unlike closing the connection)."""
    import psycopg

    try:
        fd = driver.pgconn.socket
    except psycopg.Error:
        return  # already lost
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:  # the dup only is closed
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed meanwhile


def _readable(fd: int) -> bool:
    if hasattr(io_select, "poll"):  # any fd number (select() only below FD_SETSIZE)
        poller = io_select.poll()
        poller.register(fd, io_select.POLLIN)
        return bool(poller.poll(0))
    return bool(io_select.select([fd], [], [], 0)[0])  # pragma: no cover - Windows


def _session_ended(driver: psycopg.Connection[Any]) -> bool:
    """Whether an idle session was closed by its server: a terminated backend says so and
    closes the socket; anything else an idle session may receive (a parameter's new value)
    is consumed. Never blocks: libpq's socket is non-blocking."""
    import psycopg

    if driver.closed or driver.broken:
        return True
    try:
        if not _readable(driver.pgconn.socket):
            return False
        driver.pgconn.consume_input()
    except psycopg.Error:
        return True
    return driver.pgconn.status != psycopg.pq.ConnStatus.OK


def _take_liveness_lock(conn: Connection, scheduler_id: str) -> None:
    conn.execute(LIVENESS_LOCK_SQL, {"lock_class": LIVENESS_LOCK_CLASS, "identity": scheduler_id})
    conn.commit()


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

    async def _in_thread(
        self, func: Callable[..., T], *args: Any, conn: Connection | None = None
    ) -> T:
        """``func(*args)`` in one of this store's threads; if it talks to PostgreSQL on
        ``conn``, for at most STATEMENT_TIMEOUT (see the module docstring)."""
        limiter = self._runner()[0]
        session = session_of(conn) if conn is not None else None
        if session is None:
            return await to_thread.run_sync(func, *args, limiter=limiter)
        return await call_bounded(SessionCall(func, args, session), limiter)

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
                        transaction.__exit__, type(exc), exc, exc.__traceback__, conn=conn
                    ):
                        raise
                else:
                    await self._in_thread(transaction.__exit__, None, None, None, conn=conn)

    async def _execute(
        self,
        conn: Any,
        statement: Executable,
        parameters: Sequence[Any] | Mapping[str, Any] | None = None,
    ) -> Any:
        return await self._in_thread(_execute_buffered, conn, statement, parameters, conn=conn)

    async def _create_metadata(self, conn: Any) -> None:
        await self._lock_schema(conn)
        await self._in_thread(self._metadata.create_all, conn, conn=conn)

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

    async def _outside_transaction(self, sql: str) -> None:
        assert isinstance(self._engine, Engine)
        async with self._runner()[1]:  # a slot, as a transaction takes (see the module)
            conn = await self._in_thread(self._engine.connect)
            try:
                await self._in_thread(_execute_autocommit, conn, sql, conn=conn)
            finally:
                with CancelScope(shield=True):
                    await self._in_thread(conn.close)

    async def _announce(self, scheduler_id: str) -> None:
        await super()._announce(scheduler_id)  # names this process (no lock on this engine)
        if self._engine.dialect.name != "postgresql" or self._held is not None:
            return
        assert isinstance(self._engine, Engine)
        conn = await self._in_thread(self._engine.connect)
        try:
            await self._in_thread(_take_liveness_lock, conn, scheduler_id, conn=conn)
        except BaseException:
            with CancelScope(shield=True):
                await self._in_thread(conn.invalidate)
            raise
        self._held = conn

    async def _liveness_lost(self) -> bool:
        conn = self._held
        session = session_of(conn) if conn is not None else None
        if session is not None and not _session_ended(session):
            return False
        self._held = None
        if conn is not None:
            with CancelScope(shield=True):
                await self._in_thread(conn.invalidate)
        return True

    async def _drop_liveness(self) -> None:
        await super()._drop_liveness()
        conn, self._held = self._held, None
        if conn is not None:
            with CancelScope(shield=True):
                await self._in_thread(conn.invalidate)  # ends the session, and with it the lock


def _execute_autocommit(conn: Connection, sql: str) -> None:
    conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(sql))
