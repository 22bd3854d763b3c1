"""Store URLs, the JSON-only serializer, and what start() says about unusable stores."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import datetime, timezone

import anyio
import pytest
from apscheduler import DeserializationError
from apscheduler.triggers.interval import IntervalTrigger

from library.components.scheduling.task_scheduler import (
    SchedulerConfig,
    StoreUnavailableError,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler._aps.serializer import SafeJSONSerializer
from library.components.scheduling.task_scheduler._cron import CronTrigger
from library.components.scheduling.task_scheduler._urls import parse_store_url


@pytest.mark.parametrize(
    ("url", "kind", "sqlalchemy_url", "schema"),
    [
        ("memory://", "memory", None, None),
        ("sqlite:///jobs.db", "sqlite", "sqlite+aiosqlite:///jobs.db", None),
        (
            "sqlite:////var/lib/app/jobs.db",
            "sqlite",
            "sqlite+aiosqlite:////var/lib/app/jobs.db",
            None,
        ),
        (
            "postgresql://app:secret@db:5432/app",
            "postgresql",
            "postgresql+asyncpg://app:secret@db:5432/app",
            None,
        ),
        (
            "postgres://app@db/app?schema=jobs",
            "postgresql",
            "postgresql+asyncpg://app@db/app",
            "jobs",
        ),
    ],
)
def test_store_urls(url: str, kind: str, sqlalchemy_url: str | None, schema: str | None) -> None:
    parsed = parse_store_url(url)
    assert (parsed.kind, parsed.sqlalchemy_url, parsed.schema) == (kind, sqlalchemy_url, schema)


def test_passwords_never_show() -> None:
    parsed = parse_store_url("postgresql://app:hunter2@db:5432/app")
    assert "hunter2" not in parsed.display
    with pytest.raises(ValueError) as info:
        SchedulerConfig(store="mysql://app:hunter2@db/app")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/app", "unknown store 'mysql://db/app': use memory://, sqlite:///"),
        ("jobs.db", "unknown store 'jobs.db'"),
        ("sqlite://jobs.db", "invalid sqlite store 'sqlite://jobs.db'"),
        ("sqlite:///:memory:", "for no file at all, use memory://"),
        ("postgresql://db", "invalid postgresql store 'postgresql://db'"),
        ("postgresql://db:port/app", "invalid port"),
        ("postgresql://db/app?sslmode=x", "unknown option 'sslmode'"),
        ("postgresql://db/app?schema=a-b", "invalid schema name 'a-b'"),
    ],
)
def test_bad_store_urls_fail_in_the_config(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        SchedulerConfig(store=url)


def test_bad_event_broker_url() -> None:
    with pytest.raises(ValueError, match="unknown event broker 'amqp://mq': use redis://"):
        SchedulerConfig(event_broker="amqp://mq")


def test_store_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASK_SCHEDULER_STORE", "sqlite:///from-env.db")
    monkeypatch.setenv("TASK_SCHEDULER_EVENT_BROKER", "redis://127.0.0.1:6379/0")
    config = SchedulerConfig()
    assert config.store == "sqlite:///from-env.db"
    assert config.event_broker == "redis://127.0.0.1:6379/0"
    assert SchedulerConfig(store="memory://").store == "memory://"


def test_serializer_round_trips_our_triggers() -> None:
    serializer = SafeJSONSerializer()
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for trigger in (
        CronTrigger("*/5 * * * *", timezone="America/New_York", start_time=start),
        IntervalTrigger(seconds=30, start_time=start),
    ):
        data = serializer.serialize(trigger)
        json.loads(data)  # JSON, never pickle
        again = serializer.deserialize(data)
        assert type(again) is type(trigger)
        assert again.next() == trigger.next()


def test_serializer_refuses_other_classes() -> None:
    # The stock JSON serializer rebuilds any importable class a database row names.
    payload = json.dumps({"_apscheduler_json": ["subprocess:Popen", {"args": ["true"]}]})
    with pytest.raises(DeserializationError):
        SafeJSONSerializer().deserialize(payload.encode())


@pytest.mark.anyio
async def test_unreachable_postgres_is_a_clear_error_not_a_hang(anyio_backend: str) -> None:
    scheduler = TaskScheduler(
        SchedulerConfig(store="postgresql://postgres@127.0.0.1:1/test", connect_timeout=5)
    )
    with anyio.fail_after(15):
        with pytest.raises(StoreUnavailableError, match="cannot reach the store postgresql://"):
            await scheduler.start()
    assert scheduler.state == "stopped"
    assert isinstance(StoreUnavailableError("x"), ConnectionError)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_unreachable_redis_is_a_clear_error(anyio_backend: str) -> None:
    scheduler = TaskScheduler(
        SchedulerConfig(event_broker="redis://127.0.0.1:1/0", connect_timeout=5)
    )
    with anyio.fail_after(15), pytest.raises(StoreUnavailableError, match="event broker"):
        await scheduler.start()


def test_memory_store_in_sibling_processes_warns(tmp_path: os.PathLike[str]) -> None:
    script = """
import sys, anyio, logging
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from library.components.scheduling.task_scheduler import TaskScheduler

scheduler = TaskScheduler()

@scheduler.interval(minutes=5, id="report")
async def report():
    pass

async def main():
    async with scheduler:
        print("started", flush=True)
        await anyio.sleep(float(sys.argv[1]))

anyio.run(main)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.Popen(
        [sys.executable, "-c", script, "5"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "started"
        second = subprocess.run(
            [sys.executable, "-c", script, "0"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        first.kill()
        first.wait()
    assert f"process {first.pid} already runs these 1 job(s)" in second.stderr
    assert "TASK_SCHEDULER_STORE" in second.stderr
    alone = subprocess.run(
        [sys.executable, "-c", script, "0"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert "already runs" not in alone.stderr
    logging.getLogger(__name__).debug(alone.stderr)
