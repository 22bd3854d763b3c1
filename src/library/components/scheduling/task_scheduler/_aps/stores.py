"""Store URL -> APScheduler data store and event broker, and the settings they run with.

Persistent stores save JSON, never pickle, and load back only trigger classes (no code runs
from what a database holds). On asyncio the SQL stores use SQLAlchemy's asyncio engines
(aiosqlite, asyncpg); on trio the same store on a synchronous engine (stdlib sqlite3,
psycopg 3) driven from threads (_aps/threadstore.py), with wake-ups from _aps/wakeups.py.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import attrs
from apscheduler import Event
from apscheduler.abc import EventBroker
from apscheduler.eventbrokers.local import LocalEventBroker

from .._clock import utcnow
from .._errors import (
    InvalidValueError,
    MissingDependencyError,
    StoreUnavailableError,
    UnsupportedError,
)
from .._urls import StoreURL, without_password
from .leases import STATEMENT_TIMEOUT
from .memstore import MemoryStore

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .sqlstore import RunNotices, SQLStore

EXTRA_FOR = {"sqlite": "sqlite", "postgresql": "postgres", "redis": "redis"}
MODULES_FOR = {
    "sqlite": ("sqlalchemy", "aiosqlite", "greenlet", "sniffio"),
    "postgresql": ("sqlalchemy", "asyncpg", "greenlet", "sniffio"),
    "redis": ("redis",),
}
MODULES_ON_THREADS = {"sqlite": ("sqlalchemy",), "postgresql": ("sqlalchemy", "psycopg")}
"""What a store needs on trio (a synchronous engine: stdlib sqlite3, psycopg 3)."""


def require_modules(what: str, *, threads: bool = False) -> None:
    """Fail clearly when an optional dependency of a store or broker is missing (trap 16)."""
    needed = MODULES_ON_THREADS[what] if threads else MODULES_FOR[what]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(
            f"the {what} store needs {', '.join(missing)}: "
            f'pip install "fastapi-task-scheduler[{EXTRA_FOR[what]}]"'
        )


def current_async_library() -> str:
    try:
        import sniffio
    except ImportError:  # pragma: no cover - installed with every persistent store's extra
        return "unknown"
    return str(sniffio.current_async_library())


async def open_memory_store(
    broker_url: str | None, *, connect_timeout: float, now: Callable[[], datetime] = utcnow
) -> tuple[MemoryStore, EventBroker]:
    """The in-process store (reading the time from ``now``), and Redis or the in-process
    broker."""
    broker = await _redis_broker(broker_url, connect_timeout) if broker_url else None
    return MemoryStore(now=now), broker or LocalEventBroker()


async def open_sql_store(
    store: StoreURL,
    broker_url: str | None,
    *,
    connect_timeout: float,
    exit_stack: AsyncExitStack,
    notices: RunNotices,
) -> tuple[SQLStore, EventBroker]:
    """The SQL data store and event broker for ``store``; resources close with ``exit_stack``.

    ``notices`` hears of the fires the store records on its own (abandoned by a dead
    process, skipped at max_instances across processes).
    """
    library = current_async_library()
    if library == "trio":
        return await _open_sql_store_on_threads(
            store,
            broker_url,
            connect_timeout=connect_timeout,
            exit_stack=exit_stack,
            notices=notices,
        )
    if library != "asyncio":
        raise UnsupportedError(
            f"the {store.kind} store runs on asyncio or trio, but this is {library}: "
            f"run on asyncio or trio, or use memory://"
        )
    require_modules(store.kind)
    from .serializer import SafeJSONSerializer
    from .sqlstore import SQLStore, ensure_schema

    if store.kind == "sqlite":
        hold_sqlite_file(store, exit_stack)
    engine = await _connect_engine(store, connect_timeout, exit_stack)
    if store.schema is not None:
        await ensure_schema(engine, store.schema)
    data_store = SQLStore(
        engine, schema=store.schema, serializer=SafeJSONSerializer(), notices=notices
    )
    # Its liveness lock outlives engine restarts (SQLStore._keep_liveness): dropped here.
    exit_stack.push_async_callback(data_store._drop_liveness)
    event_broker: EventBroker
    if broker_url:
        event_broker = await _redis_broker(broker_url, connect_timeout)
    elif store.kind == "postgresql":
        import sniffio
        from apscheduler.eventbrokers.asyncpg import AsyncpgEventBroker

        # 4.0.0a6's asyncpg broker spawns a task from asyncpg's notification callback,
        # which runs outside any task: with sniffio installed (the SQL store needs it)
        # anyio then cannot tell the event loop, and under plain asyncio (uvicorn) every
        # notification is dropped - and peers never wake. The callbacks run in the context
        # of the task that connects, which copies ours: name the library there.
        sniffio.current_async_library_cvar.set("asyncio")

        event_broker = AsyncpgEventBroker.from_async_sqla_engine(
            engine, channel=notify_channel(store)
        )
    else:
        event_broker = LocalEventBroker()  # SQLite: one process only
    return data_store, event_broker


def notify_channel(store: StoreURL) -> str:
    """The NOTIFY channel of a PostgreSQL store's workers: one per schema, so that
    schedulers of other schemas never wake ours."""
    return "task_scheduler" if store.schema is None else f"task_scheduler_{store.schema}"


async def _connect_engine(
    store: StoreURL, connect_timeout: float, exit_stack: AsyncExitStack
) -> Any:
    """SQLAlchemy's async engine for ``store``, its server reached once (closed by
    ``exit_stack``); :class:`StoreUnavailableError` naming the store without its password."""
    from sqlalchemy.ext.asyncio import create_async_engine

    assert store.sqlalchemy_url is not None
    connect_args: dict[str, Any] = {}
    if store.kind == "postgresql":
        connect_args["timeout"] = connect_timeout
        connect_args["command_timeout"] = STATEMENT_TIMEOUT  # a frozen server: see there
    try:
        engine = create_async_engine(store.sqlalchemy_url, connect_args=connect_args)
    except Exception as exc:  # SQLAlchemy quotes a URL it cannot use, password and all
        raise InvalidValueError(
            f"cannot use the store {store.display}: {_first_line(exc, store)}"
        ) from None
    exit_stack.push_async_callback(engine.dispose)
    try:
        with anyio.fail_after(connect_timeout):
            async with engine.connect():
                pass
    except Exception as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else _first_line(exc, store)
        raise StoreUnavailableError(
            f"cannot reach the store {store.display} within {connect_timeout} s: {reason}"
        ) from exc
    return engine


def _first_line(exc: BaseException, store: StoreURL) -> str:
    """A driver's error without the SQL and background links SQLAlchemy appends, and
    without the store's password should a driver ever quote it."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    password = urlsplit(store.url).password
    return line.replace(password, "***") if password else line


async def open_admin_store(
    store: StoreURL,
    broker_url: str | None,
    *,
    connect_timeout: float,
    exit_stack: AsyncExitStack,
) -> SQLStore | None:
    """A SQL store opened to read and manage it from outside (the ``task-scheduler``
    command): no engine, no claims, no tables created, the SQLite file's lock left to the
    worker holding it. Events it publishes reach the live workers (NOTIFY on PostgreSQL,
    or the Redis broker they share); SQLite workers look for changes every second.
    None if no scheduler ever created its tables there."""
    library = current_async_library()
    if library != "asyncio":
        raise UnsupportedError(f"the {store.kind} store needs asyncio, but this is {library}")
    require_modules(store.kind)
    from .._log import logger
    from .serializer import SafeJSONSerializer
    from .sqlstore import SQLStore

    if store.kind == "sqlite" and not await anyio.Path(urlsplit(store.url).path[1:]).is_file():
        # Connecting would create an empty database there.
        raise StoreUnavailableError(f"the SQLite store {store.display} does not exist")
    engine = await _connect_engine(store, connect_timeout, exit_stack)
    event_broker: EventBroker
    if broker_url:
        event_broker = await _redis_broker(broker_url, connect_timeout)
        await event_broker.start(exit_stack, logger)
    elif store.kind == "postgresql":
        # Neither is started: with nobody subscribed here, publishing needs no task group.
        event_broker = NotifyPublisher(engine=engine, channel=notify_channel(store))
    else:
        event_broker = LocalEventBroker()  # SQLite: the workers poll
    data_store = SQLStore(engine, schema=store.schema, serializer=SafeJSONSerializer())
    try:
        with anyio.fail_after(connect_timeout):
            found = await data_store.open_admin(event_broker, logger)
    except Exception as exc:
        raise StoreUnavailableError(
            f"cannot read the store {store.display}: {_first_line(exc, store)}"
        ) from exc
    return data_store if found else None


@attrs.define(eq=False)
class NotifyPublisher(LocalEventBroker):
    """Publishes events to a PostgreSQL store's workers by NOTIFY, in their format; hears
    none (the ``task-scheduler`` command only tells the workers)."""

    engine: Any = attrs.field(kw_only=True)
    channel: str = attrs.field(kw_only=True)

    async def publish(self, event: Event) -> None:
        from apscheduler.eventbrokers.asyncpg import AsyncpgEventBroker
        from sqlalchemy import text

        encoder = AsyncpgEventBroker(dsn="postgresql://unused", channel=self.channel)
        payload = encoder.generate_notification_str(event)
        async with self.engine.begin() as conn:
            await conn.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": self.channel, "payload": payload},
            )


async def _open_sql_store_on_threads(
    store: StoreURL,
    broker_url: str | None,
    *,
    connect_timeout: float,
    exit_stack: AsyncExitStack,
    notices: RunNotices,
) -> tuple[SQLStore, EventBroker]:
    """trio: the same store on a synchronous engine (stdlib sqlite3, psycopg 3) driven from
    threads with a bounded pool; peers woken by LISTEN/NOTIFY on a thread (or a poll)."""
    if broker_url:
        raise UnsupportedError(
            f"the event broker {without_password(urlsplit(broker_url))} needs asyncio "
            f"(redis.asyncio), but this is trio: leave event_broker unset (a PostgreSQL "
            f"store wakes its peers by LISTEN/NOTIFY on trio), or run on asyncio"
        )
    require_modules(store.kind, threads=True)
    from sqlalchemy import create_engine, make_url

    from .serializer import SafeJSONSerializer
    from .threadstore import ThreadedSQLStore, pool_size

    assert store.sqlalchemy_url is not None
    if store.kind == "sqlite":
        hold_sqlite_file(store, exit_stack)
    driver = "postgresql+psycopg" if store.kind == "postgresql" else "sqlite"
    url = make_url(store.sqlalchemy_url).set(drivername=driver)
    connect_args: dict[str, Any] = {}
    if store.kind == "postgresql":
        connect_args.update(
            connect_timeout=max(2, round(connect_timeout)), application_name="task_scheduler"
        )
        # A statement on a connection whose server went away fails within ~10 s instead of
        # hanging its thread (and its transaction slot) until the kernel gives up.
        connect_args.update(keepalives=1, keepalives_idle=5, keepalives_interval=2)
        connect_args.update(keepalives_count=3)
    # Bounded: the store's transaction slots, its liveness session and the broker's publishes.
    engine = create_engine(url, pool_size=pool_size(), max_overflow=0, connect_args=connect_args)
    exit_stack.callback(engine.dispose)

    def connect() -> None:
        with engine.connect():
            pass

    try:
        with anyio.fail_after(connect_timeout + 1):
            await anyio.to_thread.run_sync(connect, abandon_on_cancel=True)
    except Exception as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else _first_line(exc, store)
        raise StoreUnavailableError(
            f"cannot reach the store {store.display} within {connect_timeout} s: {reason}"
        ) from exc
    data_store = ThreadedSQLStore(
        engine, schema=store.schema, serializer=SafeJSONSerializer(), notices=notices
    )
    exit_stack.push_async_callback(data_store._drop_liveness)  # as on asyncio: at close
    if store.kind != "postgresql":
        return data_store, LocalEventBroker()  # SQLite: one process only
    from .wakeups import open_wakeups

    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    event_broker = await open_wakeups(
        data_store, engine, conninfo, notify_channel(store), connect_timeout
    )
    return data_store, event_broker


def hold_sqlite_file(store: StoreURL, exit_stack: AsyncExitStack) -> None:
    """Hold an exclusive advisory lock beside a SQLite store's file while it is open.

    SQLite must never be shared between processes (upstream #959, #1032): two processes on
    one file (``uvicorn --workers 4``) fired jobs twice, stalled most of them and left
    running counts in the file that throttled every later start - without a word. The
    second process now fails at start, naming the first.
    """
    if fcntl is None:  # pragma: no cover - Windows: no advisory locks
        return
    path = Path(urlsplit(store.url).path[1:])
    lock_path = path.with_name(path.name + ".lock")
    handle = lock_path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StoreUnavailableError(
            f"the SQLite store {store.display} is in use by process {holder}: a SQLite store "
            f"is for one process; for several workers use PostgreSQL "
            f"(postgresql://user@host:port/db)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    exit_stack.callback(handle.close)  # closing the file releases the lock


async def _redis_broker(url: str, connect_timeout: float) -> EventBroker:
    require_modules("redis")
    from apscheduler.eventbrokers.redis import RedisEventBroker
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=connect_timeout)
    try:
        with anyio.fail_after(connect_timeout):
            await client.ping()
    except Exception as exc:
        await client.aclose()
        raise StoreUnavailableError(
            f"cannot reach the event broker {without_password(urlsplit(url))} within "
            f"{connect_timeout} s: {exc}"
        ) from exc
    await client.aclose()
    return RedisEventBroker(url)
