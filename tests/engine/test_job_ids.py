"""Job ids: checked wherever one enters, on every store; an unknown id suggests close ones."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from helpers import noop

from library.components.scheduling.task_scheduler import (
    InvalidTypeError,
    InvalidValueError,
    JobNotFoundError,
    SchedulerConfig,
    TaskScheduler,
)

pytestmark = pytest.mark.anyio

RULE = "ids are 1-200 printable characters without '/' (and not '.' or '..')"
LATER = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(params=["memory", "sqlite"])
def scheduler(request: pytest.FixtureRequest, tmp_path: Path) -> TaskScheduler:
    """A stopped scheduler on each kind of store (declaring needs no running engine)."""
    if request.param == "memory":
        return TaskScheduler()
    return TaskScheduler(SchedulerConfig(store=f"sqlite:///{tmp_path}/jobs.db"))


Declare = Callable[[TaskScheduler, object], Awaitable[Any]]


async def by_interval_decorator(scheduler: TaskScheduler, job_id: object) -> None:
    scheduler.interval(hours=1, id=job_id)(noop)  # type: ignore[arg-type]


async def by_cron_decorator(scheduler: TaskScheduler, job_id: object) -> None:
    scheduler.cron("0 2 * * *", id=job_id)(noop)  # type: ignore[arg-type]


async def by_at_decorator(scheduler: TaskScheduler, job_id: object) -> None:
    scheduler.at(LATER, id=job_id)(noop)  # type: ignore[arg-type]


async def by_add_interval_job(scheduler: TaskScheduler, job_id: object) -> None:
    await scheduler.add_interval_job(noop, job_id, hours=1)  # type: ignore[arg-type]


async def by_add_cron_job(scheduler: TaskScheduler, job_id: object) -> None:
    await scheduler.add_cron_job(noop, job_id, "0 2 * * *")  # type: ignore[arg-type]


async def by_add_date_job(scheduler: TaskScheduler, job_id: object) -> None:
    await scheduler.add_date_job(noop, job_id, LATER)  # type: ignore[arg-type]


async def by_add_job_with_id_option(scheduler: TaskScheduler, job_id: object) -> None:
    await scheduler.add_interval_job(noop, job_id, hours=1, id=job_id)  # type: ignore[arg-type]


WAYS = [
    by_interval_decorator,
    by_cron_decorator,
    by_at_decorator,
    by_add_interval_job,
    by_add_cron_job,
    by_add_date_job,
    by_add_job_with_id_option,
]


@pytest.mark.parametrize("declare", WAYS)
@pytest.mark.parametrize(
    ("job_id", "shown"),
    [
        ("reports/daily", "'reports/daily'"),
        ("", "''"),
        ("..", "'..'"),
        ("nul\x00", "'nul\\x00'"),
        ("two\nlines", "'two\\nlines'"),
        ("x" * 201, repr("x" * 200) + "... (201 characters)"),
    ],
)
async def test_invalid_ids_fail_at_declaration_everywhere(
    anyio_backend: str, scheduler: TaskScheduler, declare: Declare, job_id: str, shown: str
) -> None:
    with pytest.raises(InvalidValueError) as info:
        await declare(scheduler, job_id)
    assert str(info.value) == f"invalid job id {shown}: {RULE}"
    assert await scheduler.get_jobs() == []


@pytest.mark.parametrize("declare", WAYS)
async def test_an_id_that_is_not_a_string_is_a_type_error(
    anyio_backend: str, scheduler: TaskScheduler, declare: Declare
) -> None:
    with pytest.raises(
        InvalidTypeError, match=re.escape(f"job id must be a string, got 42; {RULE}")
    ):
        await declare(scheduler, 42)


@pytest.mark.parametrize("declare", WAYS)
@pytest.mark.parametrize(
    "job_id", ["nightly report (v2)", "a:b.c<d>", "ünïcödé 日本語", "x" * 200, "50% off?#"]
)
async def test_valid_ids_are_accepted_everywhere(
    anyio_backend: str, scheduler: TaskScheduler, declare: Declare, job_id: str
) -> None:
    await declare(scheduler, job_id)
    assert (await scheduler.get_job(job_id)).id == job_id


def heartbeat() -> None:
    pass


class Report:
    def method(self) -> None:
        pass


def factory() -> Callable[[], None]:
    def inner() -> None:
        pass

    return inner


async def test_default_ids_stay_valid(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    main_heartbeat = type(heartbeat)(heartbeat.__code__, {}, "heartbeat")
    main_heartbeat.__module__ = "__main__"
    scheduler.interval(hours=1)(main_heartbeat)
    scheduler.interval(hours=1)(Report().method)
    scheduler.interval(hours=1)(factory())
    scheduler.interval(hours=1)(lambda: None)
    assert [job.id for job in await scheduler.get_jobs()] == [
        "__main__:heartbeat",
        f"{__name__}:Report.method",
        f"{__name__}:factory.<locals>.inner",
        f"{__name__}:test_default_ids_stay_valid.<locals>.<lambda>",
    ]


async def test_an_invalid_default_id_says_to_pass_an_id(anyio_backend: str) -> None:
    def job() -> None:
        pass

    job.__qualname__ = "very_" * 50 + "long"
    with pytest.raises(InvalidValueError) as info:
        TaskScheduler().interval(hours=1)(job)
    assert str(info.value).startswith(f"invalid job id '{__name__}:very_very_")
    assert str(info.value).endswith(
        "(the default id, from the function's module and name): pass id=...; " + RULE
    )
    TaskScheduler().interval(hours=1, id="short")(job)  # and id= makes it work


# ---------------------------------------------------------------------------- unknown ids

Lookup = Callable[[TaskScheduler, str], Awaitable[Any]]

LOOKUPS: list[Lookup] = [
    lambda scheduler, job_id: scheduler.get_job(job_id),
    lambda scheduler, job_id: scheduler.pause_job(job_id),
    lambda scheduler, job_id: scheduler.resume_job(job_id),
    lambda scheduler, job_id: scheduler.remove_job(job_id),
    lambda scheduler, job_id: scheduler.run_job(job_id),
    lambda scheduler, job_id: scheduler.get_runs(job_id),
    lambda scheduler, job_id: scheduler.preview(job_id),
]


@pytest.mark.parametrize("lookup", LOOKUPS)
async def test_an_unknown_id_suggests_the_default_id_it_meant(
    anyio_backend: str, lookup: Lookup
) -> None:
    scheduler = TaskScheduler()
    main_heartbeat = type(heartbeat)(heartbeat.__code__, {}, "heartbeat")
    main_heartbeat.__module__ = "__main__"
    scheduler.interval(seconds=30)(main_heartbeat)
    scheduler.interval(hours=1, id="nightly")(noop)
    async with scheduler:
        with pytest.raises(JobNotFoundError) as info:
            await lookup(scheduler, "heartbeat")
        assert str(info.value) == "no job with id 'heartbeat'; did you mean '__main__:heartbeat'?"
        assert info.value.job_id == "heartbeat"
        assert info.value.suggestions == ("__main__:heartbeat",)
        with pytest.raises(JobNotFoundError) as info:
            await lookup(scheduler, "zzz")
        assert str(info.value) == "no job with id 'zzz'"
        assert info.value.suggestions == ()


async def test_at_most_three_suggestions(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    for index in range(5):
        await scheduler.add_interval_job(noop, f"worker{index}:sync", hours=1)
    with pytest.raises(JobNotFoundError) as info:
        await scheduler.get_job("sync")
    assert str(info.value) == (
        "no job with id 'sync'; did you mean 'worker0:sync', 'worker1:sync' or 'worker2:sync'?"
    )


async def test_a_removed_job_is_not_suggested(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    await scheduler.add_interval_job(noop, "app:cleanup", minutes=5)
    await scheduler.remove_job("app:cleanup")
    with pytest.raises(JobNotFoundError, match=r"^no job with id 'cleanup'$"):
        await scheduler.get_job("cleanup")


async def test_preview_before_start_for_an_unknown_id(anyio_backend: str) -> None:
    scheduler = TaskScheduler()
    await scheduler.add_interval_job(noop, "reports:daily", hours=24)
    with pytest.raises(JobNotFoundError, match="did you mean 'reports:daily'"):
        await scheduler.preview("daily", 3)
    first, second = await scheduler.preview("reports:daily", 2)
    assert second - first == timedelta(hours=24)
