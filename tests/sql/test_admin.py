"""StoreAdmin (what the task-scheduler command stands on) and the command's failures, in one
process: a scheduler on a real SQLite or PostgreSQL store, read and driven from outside it.

Also where a store URL's password must not show: the command's errors, and the scheduler's
own log lines from start to stop.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from library.components.scheduling.task_scheduler import (
    JobNotFoundError,
    Outcome,
    SchedulerConfig,
    StoreUnavailableError,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler._admin import StoreAdmin
from library.components.scheduling.task_scheduler._cli import cli

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The admin store (TaskAdmin, the task-scheduler command) opens on asyncio only."""
    return "asyncio"


PASSWORD = "S3cretPw"
SLOW_CALLS: list[str] = []


async def slow() -> None:
    SLOW_CALLS.append("slow")
    await anyio.sleep(0.5)


async def quick() -> None:
    """Succeeds."""


def scheduler_on(store: str, **options: object) -> TaskScheduler:
    scheduler = TaskScheduler(SchedulerConfig(store=store, shutdown_timeout=2))
    scheduler.interval(hours=1, id="quick", **options)(quick)  # type: ignore[arg-type]
    scheduler.interval(hours=1, id="slow", max_instances=1)(slow)
    return scheduler


def with_password(url: str) -> str:
    """The same PostgreSQL URL with a password (the loopback server does not check it)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


@pytest.fixture
def store(sql_url: str) -> str:
    return with_password(sql_url)


async def test_a_queued_run_waits_for_a_worker_and_runs_when_one_starts(store: str) -> None:
    async with scheduler_on(store):
        pass  # creates the tables and stores the jobs; no worker is live afterwards
    async with StoreAdmin.open(store) as admin:
        assert await admin.workers() == []
        queued = await admin.run("quick")
        waiting = await admin.wait(queued, 1.0)
        assert (waiting.queued, waiting.attempts, waiting.done) == (True, [], False)
        status = await admin.status()
        assert status.queued_runs == 1 and not status.healthy
        assert status.problems == ["no live worker (none has beaten its heart in 10 s)"]
        async with scheduler_on(store) as worker:
            done = await admin.wait(queued, 15)
            here = (await worker.get_status()).worker_id
        assert done.done and done.last is not None
        assert (done.last.outcome, done.last.worker) == (Outcome.success, here)
        assert done.last.scheduled_at == queued.requested_at  # its request time


async def test_without_a_live_worker_run_wait_times_out_and_status_fails(store: str) -> None:
    async with scheduler_on(store):
        pass
    code, out, err = await anyio.to_thread.run_sync(
        invoke, "--store", store, "run", "quick", "--wait", "--timeout", "1"
    )
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "task-scheduler: warning: no live worker: the run of 'quick' waits in the store's "
        "queue until one starts",
        "task-scheduler: error: the run of job 'quick' (fire id "
        + err.split("(fire id ")[1].split(")")[0]
        + ") is still queued after 1 s",
    ]
    code, out, err = await anyio.to_thread.run_sync(invoke, "--store", store, "status")
    assert code == 1 and err == ""
    assert "healthy:    no: no live worker (none has beaten its heart in 10 s)" in out
    assert "queued:     1" in out


async def test_a_queued_run_older_than_the_misfire_grace_time_is_missed(store: str) -> None:
    async with scheduler_on(store, misfire_grace_time=0.5):
        pass
    async with StoreAdmin.open(store) as admin:
        queued = await admin.run("quick")
        await anyio.sleep(1.0)  # no worker: it waits past its grace time
        async with scheduler_on(store, misfire_grace_time=0.5):
            done = await admin.wait(queued, 15)
    assert done.done and done.last is not None and done.last.outcome is Outcome.missed
    assert done.last.started_at is None
    assert "misfire_grace_time is 0.5 s" in (done.last.error_message or "")


async def test_a_paused_job_runs_when_asked_and_stays_paused(store: str) -> None:
    async with scheduler_on(store, paused=True) as worker, StoreAdmin.open(store) as admin:
        assert (await admin.job("quick")).paused
        done = await admin.wait(await admin.run("quick"), 15)
        assert done.last is not None and done.last.outcome is Outcome.success
        assert (await admin.job("quick")).paused
        assert (await worker.get_job("quick")).paused


async def test_a_run_at_max_instances_waits_for_the_slot(store: str) -> None:
    SLOW_CALLS.clear()
    async with scheduler_on(store) as worker, StoreAdmin.open(store) as admin:
        first = await admin.run("slow")
        second = await admin.run("slow")
        runs = [await admin.wait(first, 15), await admin.wait(second, 15)]
        assert SLOW_CALLS == ["slow", "slow"]
        first_run, second_run = (progress.last for progress in runs)
        assert first_run is not None and second_run is not None
        assert first_run.finished_at is not None and second_run.started_at is not None
        assert second_run.started_at >= first_run.finished_at  # one at a time
        assert (await worker.get_job("slow")).counts.success == 2


async def test_pause_and_resume_by_the_admin_reach_the_running_scheduler(store: str) -> None:
    async with scheduler_on(store) as worker, StoreAdmin.open(store) as admin:
        assert (await admin.pause("quick")).paused
        assert (await worker.get_job("quick")).paused
        resumed = await admin.resume("quick")
        assert not resumed.paused and resumed.next_run_time is not None
        assert not (await worker.get_job("quick")).paused


async def test_unknown_jobs_name_close_matches(store: str) -> None:
    async with scheduler_on(store), StoreAdmin.open(store) as admin:
        with pytest.raises(JobNotFoundError) as caught:
            await admin.pause("quik")
        assert caught.value.suggestions == ("quick",)
        with pytest.raises(JobNotFoundError, match=r"no job with id 'nothing-like-it'$"):
            await admin.run("nothing-like-it")


async def test_a_store_without_tables_is_unavailable(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path}/missing.db"
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        async with StoreAdmin.open(missing):
            pass
    assert not (tmp_path / "missing.db").exists()  # not created by looking
    (tmp_path / "empty.db").touch()
    with pytest.raises(StoreUnavailableError, match="holds no task scheduler tables"):
        async with StoreAdmin.open(f"sqlite:///{tmp_path}/empty.db"):
            pass


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("command", [["jobs"], ["run", "x", "--wait"], ["status"]])
def test_an_unreachable_store_exits_3_without_its_password(command: list[str]) -> None:
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{closed_port()}/test"
    code, out, err = invoke("--store", url, "--connect-timeout", "5", *command)
    assert (code, out) == (3, "")
    assert err.startswith("task-scheduler: error: cannot reach the store postgresql://app:***@")
    assert PASSWORD not in err


def test_a_refused_login_exits_3_without_the_password() -> None:
    if socket.socket().connect_ex(("127.0.0.1", 5432)) != 0:
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    url = f"postgresql://nobody:{PASSWORD}@127.0.0.1:5432/test"
    code, out, err = invoke("--store", url, "jobs")
    assert (code, out) == (3, "")
    assert "postgresql://nobody:***@127.0.0.1:5432/test" in err
    assert 'role "nobody" does not exist' in err and PASSWORD not in err


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("memory://", "memory:// keeps a scheduler's jobs inside the process that runs it"),
        (
            f"postgresql://app:{PASSWORD}@host:99999/db",
            "invalid port in store 'postgresql://app:***@",
        ),
        (f"mysql://app:{PASSWORD}@host/db", "unknown store 'mysql://app:***@host/db'"),
    ],
)
def test_stores_the_command_cannot_use_are_usage_errors(url: str, complaint: str) -> None:
    code, out, err = invoke("--store", url, "jobs")
    assert (code, out) == (2, "")
    assert complaint in err and PASSWORD not in err


def test_no_store_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASK_SCHEDULER_STORE", raising=False)
    message = "no store given: pass --store URL or set TASK_SCHEDULER_STORE"
    assert invoke("jobs") == (2, "", f"task-scheduler: error: {message}\n")


def test_without_click_the_command_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['click'] = None\n"
        "from library.components.scheduling.task_scheduler.__main__ import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (
        "task-scheduler: error: the task-scheduler command needs click: "
        'pip install "fastapi-task-scheduler[cli]"\n'
    )


async def test_the_scheduler_logs_no_password_from_start_to_stop(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = with_password(pg_url)
    caplog.set_level(logging.DEBUG)  # every logger: ours, the engine's, SQLAlchemy's, asyncpg's
    scheduler = scheduler_on(store)
    async with scheduler:
        await scheduler.run_job("quick")
        assert repr(scheduler.config).count("***") == 1
    shown = "\n".join(record.getMessage() for record in caplog.records)
    assert "task scheduler started with 2 job(s) on store postgresql://postgres:***@" in shown
    assert PASSWORD not in shown and PASSWORD not in caplog.text


async def test_a_scheduler_that_cannot_reach_its_store_names_it_without_the_password() -> None:
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{closed_port()}/test"
    scheduler = TaskScheduler(SchedulerConfig(store=url, connect_timeout=5))
    with pytest.raises(StoreUnavailableError) as caught:
        await scheduler.start()
    assert "cannot reach the store postgresql://app:***@127.0.0.1:" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_the_env_store_is_used_and_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{closed_port()}/test"
    monkeypatch.setenv("TASK_SCHEDULER_STORE", url)
    code, _, err = invoke("workers")
    assert code == 3 and "postgresql://app:***@127.0.0.1" in err and PASSWORD not in err
    assert os.environ["TASK_SCHEDULER_STORE"] == url


async def test_workers_on_a_redis_broker_hear_the_admin_through_it(
    pg_url: str, redis_url: str
) -> None:
    config = SchedulerConfig(store=pg_url, event_broker=redis_url, shutdown_timeout=2)
    worker = TaskScheduler(config)
    worker.interval(hours=1, id="quick")(quick)
    async with worker, StoreAdmin.open(pg_url, event_broker=redis_url) as admin:
        done = await admin.wait(await admin.run("quick"), 15)
        assert done.last is not None and done.last.outcome is Outcome.success
        with pytest.raises(JobNotFoundError):  # raised as it is, not in an exception group
            await admin.job("quik")


def test_an_unexpected_error_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"postgresql://app:{PASSWORD}@db.internal/myapp"

    @asynccontextmanager
    async def failing(*args: object, **kwargs: object) -> AsyncIterator[StoreAdmin]:
        raise RuntimeError(f"a driver quoting {url}")
        yield  # pragma: no cover

    monkeypatch.setattr(StoreAdmin, "open", failing)
    assert invoke("--store", url, "jobs") == (
        1,
        "",
        "task-scheduler: error: unexpected RuntimeError: a driver quoting "
        "postgresql://app:***@db.internal/myapp\n",
    )
