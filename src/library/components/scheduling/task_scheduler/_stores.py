"""Store URL -> APScheduler data store and event broker.

``memory://`` (one process, nothing survives it), ``sqlite:///path/to/jobs.db`` (one process,
survives restarts), ``postgresql://user@host:port/db`` (several processes or hosts). Persistent
stores save JSON, never pickle, and load back only trigger classes (no code runs from what a
database holds). APScheduler's SQL store is asyncio-only.
"""

from __future__ import annotations

import importlib.util
import re
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import SplitResult, parse_qs, urlsplit, urlunsplit

import anyio
import attrs
from apscheduler import DeserializationError
from apscheduler.abc import DataStore, EventBroker
from apscheduler.eventbrokers.local import LocalEventBroker
from apscheduler.serializers.json import JSONSerializer

from ._errors import TaskSchedulerError
from ._memstore import MemoryStore

StoreKind = Literal["memory", "sqlite", "postgresql"]

STORE_FORMS = "memory://, sqlite:///path/to/jobs.db or postgresql://user@host:port/db"

TRIGGER_CLASSES = frozenset(
    {
        "library.components.scheduling.task_scheduler._cron:CronTrigger",
        "apscheduler.triggers.interval:IntervalTrigger",
        "apscheduler.triggers.date:DateTrigger",
    }
)
"""The only classes a persistent store may rebuild from its JSON."""

EXTRA_FOR = {"sqlite": "sqlite", "postgresql": "postgres", "redis": "redis"}
MODULES_FOR = {
    "sqlite": ("sqlalchemy", "aiosqlite", "greenlet", "sniffio"),
    "postgresql": ("sqlalchemy", "asyncpg", "greenlet", "sniffio"),
    "redis": ("redis",),
}


LEASE_DURATION = 10.0
"""Seconds a process holds a claim on a schedule or job without renewing it, on SQL stores.
Recovery after a process dies takes about this long (APScheduler's default: 30 s)."""
CLEANUP_INTERVAL = 5.0
"""Seconds between the engine's clean-ups on SQL stores (APScheduler's default: 15 min)."""


class StoreUnavailableError(TaskSchedulerError, ConnectionError):
    """The store or event broker server did not answer at start."""


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL."""

    kind: StoreKind
    url: str
    sqlalchemy_url: str | None
    """The SQLAlchemy URL with its async driver, for SQL stores."""
    display: str
    """The URL without its password, for messages and logs."""
    schema: str | None = None
    """PostgreSQL schema (``?schema=name``) holding the tables; default: the search path."""

    @property
    def persistent(self) -> bool:
        return self.kind != "memory"


def _without_password(parts: SplitResult) -> str:
    if parts.password is None:
        return urlunsplit(parts)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def parse_store_url(url: str) -> StoreURL:
    """Parse and check a store URL; a ValueError names the URL and the valid forms."""
    if not isinstance(url, str):
        raise ValueError(f"store must be a URL string ({STORE_FORMS}), got {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme == "memory" and not (parts.netloc or parts.path):
        return StoreURL("memory", url, None, url)
    if scheme == "sqlite":
        path = parts.path
        if parts.netloc or not path.startswith("/") or len(path) < 2 or path == "/:memory:":
            raise ValueError(
                f"invalid sqlite store {url!r}: use sqlite:///relative/jobs.db or "
                f"sqlite:////absolute/jobs.db (for no file at all, use memory://)"
            )
        return StoreURL("sqlite", url, f"sqlite+aiosqlite://{path}", url)
    if scheme in ("postgresql", "postgres"):
        if not parts.hostname or not parts.path.strip("/"):
            raise ValueError(
                f"invalid postgresql store {_without_password(parts)!r}: use "
                f"postgresql://user@host:port/database"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"invalid port in store {_without_password(parts)!r}") from None
        query = parse_qs(parts.query)
        unknown = sorted(set(query) - {"schema"})
        if unknown:
            raise ValueError(
                f"unknown option {unknown[0]!r} in store {_without_password(parts)!r}; "
                f"valid: schema"
            )
        schema = query.get("schema", [None])[-1]
        if schema is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
            raise ValueError(f"invalid schema name {schema!r}: use letters, digits and _")
        bare = parts._replace(scheme="postgresql+asyncpg", query="")
        return StoreURL(
            "postgresql",
            url,
            urlunsplit(bare),
            _without_password(parts._replace(query="")),
            schema,
        )
    raise ValueError(f"unknown store {_without_password(parts)!r}: use {STORE_FORMS}")


def parse_broker_url(url: str) -> str:
    """Check an event broker URL (only Redis is configurable); return it."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("redis", "rediss") or not parts.hostname:
        shown = _without_password(parts) if parts is not None else repr(url)
        raise ValueError(f"unknown event broker {shown!r}: use redis://host:port/db")
    return url


def require_modules(what: str) -> None:
    """Fail clearly when an optional dependency of a store or broker is missing (trap 16)."""
    missing = [name for name in MODULES_FOR[what] if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"the {what} store needs {', '.join(missing)}: "
            f'pip install "fastapi-task-scheduler[{EXTRA_FOR[what]}]"'
        )


@attrs.define(kw_only=True, eq=False)
class SafeJSONSerializer(JSONSerializer):
    """APScheduler's JSON serializer, loading back only the trigger classes we use.

    The stock one rebuilds *any* importable class named in the stored JSON.
    """

    def _object_hook(self, obj_state: dict[str, Any]) -> Any:
        if self.magic_key in obj_state:
            ref = obj_state[self.magic_key][0]
            if ref not in TRIGGER_CLASSES:
                raise DeserializationError(f"refusing to load {ref!r} from the store")
        return super()._object_hook(obj_state)


def current_async_library() -> str:
    try:
        import sniffio
    except ImportError:  # pragma: no cover - installed with every persistent store's extra
        return "unknown"
    return str(sniffio.current_async_library())


async def open_backend(
    store: StoreURL,
    broker_url: str | None,
    *,
    connect_timeout: float,
    exit_stack: AsyncExitStack,
) -> tuple[DataStore, EventBroker]:
    """The data store and event broker for ``store``; resources close with ``exit_stack``."""
    if store.kind == "memory":
        broker = await _redis_broker(broker_url, connect_timeout) if broker_url else None
        return MemoryStore(), broker or LocalEventBroker()
    library = current_async_library()
    if library != "asyncio":
        raise RuntimeError(
            f"the {store.kind} store needs asyncio (APScheduler's SQL data store is "
            f"asyncio-only), but this is {library}: run on asyncio, or use memory://"
        )
    require_modules(store.kind)
    from sqlalchemy.ext.asyncio import create_async_engine

    from ._sqlstore import SQLStore, ensure_schema

    assert store.sqlalchemy_url is not None
    connect_args: dict[str, Any] = {}
    if store.kind == "postgresql":
        connect_args["timeout"] = connect_timeout
    engine = create_async_engine(store.sqlalchemy_url, connect_args=connect_args)
    exit_stack.push_async_callback(engine.dispose)
    try:
        with anyio.fail_after(connect_timeout):
            async with engine.connect():
                pass
    except Exception as exc:
        raise StoreUnavailableError(
            f"cannot reach the store {store.display} within {connect_timeout} s: {exc}"
        ) from exc
    if store.schema is not None:
        await ensure_schema(engine, store.schema)
    data_store = SQLStore(engine, schema=store.schema, serializer=SafeJSONSerializer())
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

        # One NOTIFY channel per schema: schedulers of other schemas never wake ours.
        channel = "task_scheduler" if store.schema is None else f"task_scheduler_{store.schema}"
        event_broker = AsyncpgEventBroker.from_async_sqla_engine(engine, channel=channel)
    else:
        event_broker = LocalEventBroker()  # SQLite: one process only
    return data_store, event_broker


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
            f"cannot reach the event broker {_without_password(urlsplit(url))} within "
            f"{connect_timeout} s: {exc}"
        ) from exc
    await client.aclose()
    return RedisEventBroker(url)
