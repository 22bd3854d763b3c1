from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def require_server(name: str, port: int) -> None:
    """Skip locally when a server is down, with the reason; under CI, fail instead."""
    if _reachable(port):
        return
    message = f"{name} is not running on 127.0.0.1:{port}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}, and CI needs it")
    pytest.skip(message)


PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A store URL on the real PostgreSQL, in a fresh schema that is dropped afterwards."""
    require_server("PostgreSQL", 5432)
    schema = f"ts_test_{uuid.uuid4().hex[:12]}"
    yield f"{PG_DSN}?schema={schema}"
    import asyncio

    import asyncpg

    async def drop() -> None:
        connection = await asyncpg.connect(PG_DSN)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()

    asyncio.run(drop())


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A persistent store URL: a fresh SQLite file, then a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def redis_url() -> str:
    require_server("Redis", 6379)
    return "redis://127.0.0.1:6379/0"
