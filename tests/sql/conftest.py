"""The SQL layer: APScheduler's SQL store (SQLite and PostgreSQL) is asyncio-only."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Every async test of this folder runs on asyncio only (trio: tests/unit/test_stores.py)."""
    return "asyncio"
