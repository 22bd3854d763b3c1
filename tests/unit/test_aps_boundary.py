"""The adapter layer's boundary: APScheduler's errors become ours, missing extras are named."""

from __future__ import annotations

import importlib.util

import pytest
from apscheduler import ConflictingIdError, ScheduleLookupError, SerializationError

from library.components.scheduling.task_scheduler import (
    DuplicateJobError,
    InvalidValueError,
    JobNotFoundError,
    MissingDependencyError,
)
from library.components.scheduling.task_scheduler._aps import stores
from library.components.scheduling.task_scheduler._aps.errors import engine_errors


def test_a_serialization_error_names_the_job_and_its_reason() -> None:
    """Trap 14: APScheduler's SerializationError has an empty message; the reason is its
    cause."""
    with pytest.raises(InvalidValueError) as info, engine_errors("nightly"):
        try:
            raise TypeError("Object of type Widget is not JSON serializable")
        except TypeError as exc:
            raise SerializationError from exc
    assert str(info.value) == (
        "job 'nightly' cannot be stored: Object of type Widget is not JSON serializable"
    )


@pytest.mark.parametrize(
    ("raised", "expected"),
    [(ScheduleLookupError("x"), JobNotFoundError), (ConflictingIdError("x"), DuplicateJobError)],
)
def test_engine_lookups_and_conflicts_become_ours(
    raised: Exception, expected: type[Exception]
) -> None:
    with pytest.raises(expected, match="'nightly'"), engine_errors("nightly"):
        raise raised


def test_a_missing_store_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trap 16: APScheduler's SQL store needs sniffio and greenlet without declaring them."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "greenlet" else real(name, *args),
    )
    with pytest.raises(MissingDependencyError) as info:
        stores.require_modules("postgresql")
    assert str(info.value) == (
        'the postgresql store needs greenlet: pip install "fastapi-task-scheduler[postgres]"'
    )
    assert isinstance(info.value, ImportError)


def test_a_missing_store_dependency_on_trio_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On trio the PostgreSQL store runs on psycopg 3 (a synchronous engine on threads)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "psycopg" else real(name, *args),
    )
    with pytest.raises(MissingDependencyError) as info:
        stores.require_modules("postgresql", threads=True)
    assert str(info.value) == (
        'the postgresql store needs psycopg: pip install "fastapi-task-scheduler[postgres]"'
    )
    stores.require_modules("sqlite", threads=True)  # the standard library's sqlite3
