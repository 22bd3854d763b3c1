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


# The suite runs on two pytest-xdist workers (noxfile: ``-n 2 --dist loadgroup``). The tests of
# a group run one after another on one worker, in their file's order, never beside each other.
_GROUPS = {
    # several processes, a PostgreSQL cluster of their own (a free port is found by probing),
    # sessions cut on the shared server
    "test_multiprocess.py": "processes",
    "test_cluster_processes.py": "processes",
    "test_blips.py": "processes",
    "test_outage.py": "processes",
    # fixed process identities ("me", "survivor"): PostgreSQL's liveness locks are per
    # database, not per schema, so two of these tests at once would wait on each other
    "test_sqlstore.py": "sqlstore",
    # its last test checks what the module's other tests counted, in the same process
    "test_cron_differential.py": "cron-differential",
}


def pytest_itemcollected(item: pytest.Item) -> None:
    # At collection, before any pytest_collection_modifyitems: pytest-xdist's reads the groups.
    group = _GROUPS.get(item.path.name)
    if group is None and "redis_url" in getattr(item, "fixturenames", ()):
        group = "redis"  # one Redis, one channel
    if group is not None:
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_configure(config: pytest.Config) -> None:
    """pytest-xdist 3.8 marks a grouped test by appending ``@group`` to its id, which pytest
    9.2 ignores (pytest-xdist#1386): the groups would be silently lost. Say so and stop."""
    if config.getoption("dist", "no") == "loadgroup" and pytest.version_tuple >= (9, 2):
        raise pytest.UsageError(
            f"pytest {pytest.__version__}: pytest-xdist's --dist loadgroup does not group tests "
            "on pytest 9.2+ (pytest-xdist#1386); install the test extra (pytest<9.2)"
        )
