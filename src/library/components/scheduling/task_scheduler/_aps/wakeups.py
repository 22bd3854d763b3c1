"""Wake-ups across processes for the SQL store on threads (trio, PostgreSQL).

On asyncio, peers wake each other through APScheduler's asyncpg broker (NOTIFY). On trio
neither asyncpg nor redis.asyncio runs, so :func:`open_wakeups` picks, once, at open:

- :class:`ThreadedNotifyBroker`: LISTEN on a psycopg connection in a thread of its own,
  NOTIFY through the store's engine; the same channel and payloads as the asyncpg broker,
  so asyncio and trio processes on one store wake each other. Chosen whenever a NOTIFY
  sent from one session reaches another within the connect timeout (checked at open);
- :class:`PollingBroker`: otherwise (a pooler in transaction mode such as PgBouncer drops
  LISTEN): this process's events are delivered at once, and every :data:`POLL_INTERVAL`
  two indexed queries wake its loops for what peers queued or rescheduled.
"""

from __future__ import annotations

import select
import socket
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from logging import Logger
from typing import Any

import attrs
import psycopg
from anyio import TASK_STATUS_IGNORED, CancelScope, CapacityLimiter, from_thread, sleep, to_thread
from anyio.abc import TaskStatus
from apscheduler import Event, JobAdded, ScheduleUpdated, SerializationError
from apscheduler.abc import EventBroker
from apscheduler.eventbrokers.base import BaseExternalEventBroker
from apscheduler.eventbrokers.local import LocalEventBroker
from psycopg import sql
from sqlalchemy import Engine, false, text
from sqlalchemy import select as select_rows
from sqlalchemy.exc import DBAPIError

from .._log import logger as package_logger
from .sqlstore import SQLStore
from .threadstore import SessionCall, call_bounded, session_of

IDLE = 10.0
"""Seconds without a notification before the listening session is checked (``SELECT 1``),
as the asyncpg broker does: a dead connection is found, and replaced, within this time."""
RECONNECT_MAX = 10.0
"""Longest wait between two attempts to reconnect the listening session."""
POLL_INTERVAL = 0.5
"""Seconds between two polls of the store when NOTIFY does not reach peers."""
NOTIFY_LIMIT = 7999
"""PostgreSQL's NOTIFY payload limit (bytes, less one)."""
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def _listen(conninfo: str, channel: str, connect_timeout: float) -> psycopg.Connection[Any]:
    conn = psycopg.connect(
        conninfo,
        autocommit=True,
        connect_timeout=max(2, round(connect_timeout)),
        application_name="task_scheduler_listener",
        # A server gone away is noticed within ~11 s, even while the session only waits.
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
    )
    try:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except BaseException:
        conn.close()
        raise
    return conn


def _notify(
    engine: Engine, channel: str, payload: str, call: SessionCall[None] | None = None
) -> None:
    with engine.begin() as conn:
        if call is not None:
            call.session = session_of(conn)  # for call_bounded, should the server hang
        conn.execute(_NOTIFY, {"channel": channel, "payload": payload})


def notify_reaches_peers(conninfo: str, engine: Engine, timeout: float) -> bool:
    """Whether a NOTIFY sent through ``engine`` reaches a session listening directly
    (blocking: run it in a thread). A private channel: no peer hears the probe."""
    channel = f"task_scheduler_probe_{uuid.uuid4().hex}"
    try:
        listener = _listen(conninfo, channel, timeout)
    except psycopg.Error:
        return False
    with listener:
        try:
            _notify(engine, channel, "probe")
            return any(True for _ in listener.notifies(timeout=timeout, stop_after=1))
        except (psycopg.Error, DBAPIError):
            return False


@attrs.define(eq=False, repr=False)
class ThreadedNotifyBroker(BaseExternalEventBroker):
    """PostgreSQL LISTEN on a dedicated thread, NOTIFY through the store's engine."""

    conninfo: str
    """libpq connection string of the listening session (never shown: it may hold a password)."""
    channel: str
    engine: Engine
    """The store's engine: its pool keeps a connection for the publishes (one at a time)."""
    connect_timeout: float
    _stop: socket.socket | None = attrs.field(init=False, default=None)
    _publishing: CapacityLimiter | None = attrs.field(init=False, default=None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channel={self.channel!r})"

    async def start(self, exit_stack: AsyncExitStack, logger: Logger) -> None:
        stop_receiver, stop_sender = socket.socketpair()
        exit_stack.callback(stop_receiver.close)  # closed last, once the listener is done
        exit_stack.callback(stop_sender.close)
        await super().start(exit_stack, logger)
        self._stop = stop_sender
        self._publishing = CapacityLimiter(1)
        # Runs before the task group closes (last in, first out): the listener then returns.
        exit_stack.callback(self._request_stop)
        await self._task_group.start(self._run_listener, stop_receiver)

    def _request_stop(self) -> None:
        if self._stop is not None:
            try:
                self._stop.send(b"x")
            except OSError:  # pragma: no cover - the pair is closed only after this
                pass

    async def _run_listener(
        self, stop: socket.socket, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        await to_thread.run_sync(
            self._listen_in_thread, stop, task_status.started, limiter=CapacityLimiter(1)
        )

    def _listen_in_thread(self, stop: socket.socket, started: Callable[[], None]) -> None:
        conn: psycopg.Connection[Any] | None = _listen(
            self.conninfo, self.channel, self.connect_timeout
        )  # the first attempt fails the start
        from_thread.run_sync(started)
        delay = 0.5
        try:
            while True:
                try:
                    if conn is None:
                        conn = _listen(self.conninfo, self.channel, self.connect_timeout)
                        self._logger.info("listening for peers' events again")
                        delay = 0.5
                    if self._serve(conn, stop):
                        return
                except psycopg.Error as exc:
                    self._logger.warning(
                        "lost the session that listens for peers' events (%s); reconnecting", exc
                    )
                    if conn is not None:
                        conn.close()
                        conn = None
                    if select.select([stop], [], [], delay)[0]:
                        return
                    delay = min(delay * 2, RECONNECT_MAX)
        finally:
            if conn is not None:
                conn.close()

    def _serve(self, conn: psycopg.Connection[Any], stop: socket.socket) -> bool:
        """Deliver notifications until asked to stop (True) or the session fails (raises)."""
        while True:
            readable = select.select([conn.fileno(), stop.fileno()], [], [], IDLE)[0]
            if stop.fileno() in readable:
                return True
            if not readable:
                conn.execute("SELECT 1")  # notifications arriving meanwhile are kept
                continue
            for notification in conn.notifies(timeout=0):
                from_thread.run_sync(self._deliver, notification.payload)

    def _deliver(self, payload: str) -> None:
        event = self.reconstitute_event_str(payload)
        if event is not None:
            self._task_group.start_soon(self.publish_local, event)

    async def publish(self, event: Event) -> None:
        payload = self.generate_notification_str(event)
        if len(payload) > NOTIFY_LIMIT:
            raise SerializationError(f"serialized event exceeds {NOTIFY_LIMIT} bytes")
        call: SessionCall[None] = SessionCall(
            lambda: _notify(self.engine, self.channel, payload, call), ()
        )
        try:
            await call_bounded(call, self._publishing)  # a hung server: as a store statement
        except (DBAPIError, TimeoutError) as exc:
            # As the asyncpg broker: a wake-up lost while the server is away is not an error
            # of the caller's (peers still wake at their next claim or sweep).
            self._logger.warning("could not wake peers (%s): %s", type(event).__name__, exc)


@attrs.define(eq=False, repr=False)
class PollingBroker(LocalEventBroker):
    """This process's events at once; peers' work found by polling the store."""

    store: SQLStore
    interval: float = POLL_INTERVAL
    _poller: CancelScope | None = attrs.field(init=False, default=None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(interval={self.interval})"

    async def start(self, exit_stack: AsyncExitStack, logger: Logger) -> None:
        await super().start(exit_stack, logger)
        self._poller = CancelScope()
        exit_stack.callback(self._poller.cancel)  # before the task group waits for it
        self._task_group.start_soon(self._poll, self._poller)

    async def _poll(self, scope: CancelScope) -> None:
        with scope:
            while True:
                await sleep(self.interval)
                try:
                    await self._wake_loops()
                except Exception as exc:  # the store is away, or not started yet
                    package_logger.debug("polling the store for peers' work failed: %s", exc)

    async def _wake_loops(self) -> None:
        """Tell the engine's loops about a job waiting and the earliest due schedule."""
        store = self.store
        jobs, schedules = store._t_jobs, store._t_schedules
        waiting = (
            select_rows(jobs.c.id, jobs.c.task_id, jobs.c.schedule_id)
            .where(jobs.c.acquired_by.is_(None))
            .limit(1)
        )
        earliest = (
            select_rows(schedules.c.id, schedules.c.task_id, schedules.c.next_fire_time)
            .where(
                schedules.c.acquired_by.is_(None),
                schedules.c.paused == false(),
                schedules.c.next_fire_time.is_not(None),
            )
            .order_by(schedules.c.next_fire_time)
            .limit(1)
        )
        async with store._begin_transaction() as conn:
            job = (await store._execute(conn, waiting)).first()
            due = (await store._execute(conn, earliest)).first()
        if job is not None:
            await self.publish_local(
                JobAdded(job_id=job.id, task_id=job.task_id, schedule_id=job.schedule_id)
            )
        if due is not None:
            await self.publish_local(
                ScheduleUpdated(
                    schedule_id=due.id, task_id=due.task_id, next_fire_time=due.next_fire_time
                )
            )


async def open_wakeups(
    store: SQLStore, engine: Engine, conninfo: str, channel: str, connect_timeout: float
) -> EventBroker:
    """The broker for a PostgreSQL store on threads: NOTIFY when it reaches peers, else a poll."""
    if await to_thread.run_sync(notify_reaches_peers, conninfo, engine, connect_timeout):
        return ThreadedNotifyBroker(
            conninfo=conninfo, channel=channel, engine=engine, connect_timeout=connect_timeout
        )
    package_logger.warning(
        "NOTIFY does not reach other sessions on this server (a pooler in transaction mode?): "
        "peers are found by polling the store every %s s",
        POLL_INTERVAL,
    )
    return PollingBroker(store=store)
