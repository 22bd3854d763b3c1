"""Job definitions stored with their schedules: two engine defects closed on the way."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from apscheduler import Schedule
from apscheduler.triggers.interval import IntervalTrigger
from helpers import noop

from library.components.scheduling.task_scheduler import (
    InvalidValueError,
    SchedulerConfig,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler._reconcile import as_metadata, stored_definition

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: this file's store code runs the same on trio (ThreadedSQLStore shares
    SQLStore's and the history's code; test_sqlstore.py and test_persistence.py run on both),
    and the suite's time is kept down."""
    return "asyncio"


def test_a_definition_full_of_none_is_stored_as_one_string() -> None:
    """4.0.0a6's metadata validator rejects any None nested in a dict (it tests only the
    outer value), and a job definition is full of them (timeout, misfire_grace_time...)."""
    scheduler = TaskScheduler()
    scheduler.interval(hours=1, id="j", timeout=None, misfire_grace_time=None)(noop)
    spec = scheduler._registry["j"].spec
    trigger = IntervalTrigger(hours=1, start_time=datetime(2030, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(ValueError, match="not JSON compatible"):  # the trap, as a nested dict
        Schedule(
            id="j",
            task_id="j",
            job_executor="x",
            trigger=trigger,
            metadata={"definition": {"timeout": None}},
        )
    schedule = Schedule(
        id="j", task_id="j", job_executor="x", trigger=trigger, metadata=as_metadata(spec)
    )
    definition = stored_definition(schedule)
    assert definition is not None and definition["options"]["timeout"] is None


@pytest.fixture
def app_module(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("decorated_app", None)


async def test_a_decorated_function_is_checked_by_name_only_at_start(app_module: Path) -> None:
    """A decorator runs before its module has bound the function's name: resolving the
    callable by name at declaration would reject every decorated job of a persistent store."""
    (app_module / "decorated_app.py").write_text(
        textwrap.dedent(f"""
        from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler

        scheduler = TaskScheduler(SchedulerConfig(store="sqlite:///{app_module}/jobs.db"))

        @scheduler.interval(hours=1, id="nightly")
        async def nightly() -> None: ...
        """)
    )
    module = importlib.import_module("decorated_app")  # declaring must not fail
    async with module.scheduler:
        assert [job.func for job in await module.scheduler.get_jobs()] == ["decorated_app:nightly"]
    # At start the name is checked: a job whose name no longer leads to it cannot be stored.
    other = TaskScheduler(SchedulerConfig(store=f"sqlite:///{app_module}/other.db"))
    other.interval(hours=1, id="nightly")(module.nightly)
    module.nightly = noop
    with pytest.raises(ValueError, match="does not import as the same callable"):
        await other.start()


@pytest.mark.parametrize(
    "when",
    [
        datetime(1, 1, 1, tzinfo=timezone.utc),
        datetime(1, 1, 1),  # naive: read in the configured zone
        datetime(9999, 12, 31, tzinfo=timezone.utc),
    ],
)
async def test_a_date_the_store_cannot_hold_is_refused_and_nothing_is_lost(
    pg_url: str, when: datetime
) -> None:
    """datetime(1, 1, 1) raised 'year 0 is out of range' (the value unnamed), the engine
    crash-looped, and every new process on that database failed at start()."""
    scheduler = TaskScheduler(SchedulerConfig(store=pg_url))
    scheduler.interval(hours=1, id="kept")(noop)
    async with scheduler:
        with pytest.raises(InvalidValueError, match=r"run time .* is out of range: it must be"):
            await scheduler.add_date_job(noop, "y1", run_at=when)
        assert scheduler.state == "running"
    again = TaskScheduler(SchedulerConfig(store=pg_url))
    again.interval(hours=1, id="kept")(noop)
    async with again:
        assert [job.id for job in await again.get_jobs()] == ["kept"]
        assert again.state == "running"
