"""``Depends`` in jobs, as they run: resolved per attempt by FastAPI's own machinery, cleaned up
however the attempt ends, overridable like an app's dependencies. On asyncio and on trio.

No ``from __future__ import annotations`` here: jobs defined inside tests use local names in
their annotations, which FastAPI (like ``typing.get_type_hints``) could not evaluate as strings.
"""

import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI, Security
from fastapi.security import SecurityScopes
from fastapi.testclient import TestClient
from helpers import wait_until

from library.components.scheduling.task_scheduler import (
    InvalidTypeError,
    Outcome,
    SchedulerConfig,
    TaskScheduler,
)
from library.components.scheduling.task_scheduler.testing import wait_for_runs

pytestmark = pytest.mark.anyio


@dataclass
class Resources:
    """What dependencies did, in order: ``open 1``, ``close 1 (error)``..."""

    log: list[str] = field(default_factory=list)
    opened: int = 0

    async def session(self) -> AsyncIterator[str]:
        self.opened += 1
        number = self.opened
        self.log.append(f"open {number}")
        try:
            yield f"session {number}"
        except Exception as exc:
            self.log.append(f"close {number} ({type(exc).__name__})")
            raise
        finally:
            # Cleanup that awaits: it must run even when the attempt was cancelled.
            await anyio.sleep(0.01)
            self.log.append(f"closed {number}")

    def sync_session(self) -> Iterator[str]:
        self.log.append(f"sync open in {threading.current_thread().name}")
        try:
            yield "sync session"
        finally:
            self.log.append("sync closed")


async def test_sync_async_and_generator_dependencies_with_sub_dependencies(
    anyio_backend: str,
) -> None:
    calls: list[str] = []

    def settings() -> dict[str, str]:  # sync: FastAPI runs it in a worker thread
        calls.append("settings")
        return {"dsn": "memory"}

    async def client(config: dict[str, str] = Depends(settings)) -> str:
        calls.append("client")
        return f"client of {config['dsn']}"

    resources = Resources()
    scheduler = TaskScheduler()
    seen: list[tuple[str, ...]] = []

    @scheduler.interval(hours=1, id="job")
    async def job(
        db: str = Depends(resources.session),
        sync_db: str = Depends(resources.sync_session),
        api: str = Depends(client),
        config: dict[str, str] = Depends(settings),
    ) -> None:
        resources.log.append("job")
        seen.append((db, sync_db, api, config["dsn"]))

    async with scheduler:
        run = await scheduler.run_job("job")
    assert run.outcome is Outcome.success, run.error_message
    assert seen == [("session 1", "sync session", "client of memory", "memory")]
    # settings, needed twice, ran once: FastAPI's per-run cache.
    assert calls == ["settings", "client"]
    # Generator dependencies closed after the job, the last opened first.
    assert resources.log[0] == "open 1" and resources.log[1].startswith("sync open in ")
    assert resources.log[2:] == ["job", "sync closed", "closed 1"]


async def test_the_cache_is_per_run_and_use_cache_false_calls_again(anyio_backend: str) -> None:
    counter = {"n": 0}

    def number() -> int:
        counter["n"] += 1
        return counter["n"]

    def twice(a: int = Depends(number), b: int = Depends(number, use_cache=False)) -> list[int]:
        return [a, b]

    scheduler = TaskScheduler()
    seen: list[list[int]] = []

    @scheduler.interval(hours=1, id="job")
    async def job(pair: list[int] = Depends(twice), again: int = Depends(number)) -> None:
        seen.append([*pair, again])

    async with scheduler:
        await scheduler.run_job("job")
        await scheduler.run_job("job")
    # Per run: number() once cached (a == again), once uncached; a new cache each run.
    assert seen == [[1, 2, 1], [3, 4, 3]]


async def test_annotated_forms(anyio_backend: str) -> None:
    class Settings:
        def __init__(self) -> None:
            self.env = "test"

    def get_name() -> str:
        return "purge"

    scheduler = TaskScheduler()
    seen: list[tuple[str, str]] = []

    @scheduler.interval(hours=1, id="job")
    async def job(
        name: Annotated[str, Depends(get_name)],
        settings: Annotated[Settings, Depends()],  # the class itself is the dependency
    ) -> None:
        seen.append((name, settings.env))

    async with scheduler:
        await scheduler.run_job("job")
    assert seen == [("purge", "test")]


async def test_security_scopes_reach_the_dependency(anyio_backend: str) -> None:
    def allowed(security_scopes: SecurityScopes) -> list[str]:
        return security_scopes.scopes

    scheduler = TaskScheduler()
    seen: list[list[str]] = []

    @scheduler.interval(hours=1, id="job")
    async def job(scopes: list[str] = Security(allowed, scopes=["reports:write"])) -> None:
        seen.append(scopes)

    async with scheduler:
        await scheduler.run_job("job")
    assert seen == [["reports:write"]]


async def test_a_generator_dependency_is_closed_when_the_job_raises(anyio_backend: str) -> None:
    resources = Resources()
    scheduler = TaskScheduler()

    @scheduler.interval(hours=1, id="job")
    async def job(db: str = Depends(resources.session)) -> None:
        raise RuntimeError("disk full")

    async with scheduler:
        run = await scheduler.run_job("job")
    assert run.outcome is Outcome.error and run.error_message == "disk full"
    # The dependency saw the job's error, as in an endpoint.
    assert resources.log == ["open 1", "close 1 (RuntimeError)", "closed 1"]


async def test_a_generator_dependency_is_closed_when_the_job_times_out(anyio_backend: str) -> None:
    resources = Resources()
    scheduler = TaskScheduler()

    @scheduler.interval(hours=1, id="job", timeout=0.2)
    async def job(db: str = Depends(resources.session)) -> None:
        await anyio.sleep(30)

    async with scheduler:
        run = await scheduler.run_job("job")
    assert run.outcome is Outcome.timed_out
    assert run.duration is not None and run.duration < 5
    assert resources.log == ["open 1", "closed 1"]


async def test_a_generator_dependency_is_closed_when_shutdown_cancels_the_job(
    anyio_backend: str,
) -> None:
    resources = Resources()
    scheduler = TaskScheduler(SchedulerConfig(shutdown_timeout=0.1))
    started = anyio.Event()

    @scheduler.interval(hours=1, id="job")
    async def job(db: str = Depends(resources.session)) -> None:
        started.set()
        await anyio.sleep(30)

    async with scheduler:
        await scheduler.run_job("job", wait=False)
        await started.wait()
    assert scheduler.state == "stopped"
    assert resources.log == ["open 1", "closed 1"]
    runs = await scheduler.get_runs("job")
    assert [run.outcome for run in runs] == [Outcome.cancelled]


async def test_every_retry_gets_fresh_dependencies(anyio_backend: str) -> None:
    resources = Resources()
    scheduler = TaskScheduler()
    sessions: list[str] = []

    @scheduler.interval(hours=1, id="job", retries=2, retry_delay=0.01)
    async def job(db: str = Depends(resources.session)) -> None:
        sessions.append(db)
        if len(sessions) < 3:
            raise ConnectionError("lost")

    async with scheduler:
        run = await scheduler.run_job("job")
    assert run.outcome is Outcome.success and run.attempt == 3
    assert sessions == ["session 1", "session 2", "session 3"]
    assert resources.log == [
        "open 1", "close 1 (ConnectionError)", "closed 1",
        "open 2", "close 2 (ConnectionError)", "closed 2",
        "open 3", "closed 3",
    ]  # fmt: skip


async def test_scheduled_fires_resolve_them_too(anyio_backend: str) -> None:
    resources = Resources()
    scheduler = TaskScheduler()

    @scheduler.interval(seconds=0.05, id="job")
    async def job(db: str = Depends(resources.session)) -> None:
        pass

    async with scheduler:
        await wait_for_runs(scheduler, "job", 2, outcome=Outcome.success)
    assert resources.log[:4] == ["open 1", "closed 1", "open 2", "closed 2"]


async def test_sync_jobs_run_in_a_worker_thread_with_their_dependencies(
    anyio_backend: str,
) -> None:
    resources = Resources()
    scheduler = TaskScheduler()
    seen: list[tuple[str, str, bool]] = []
    loop_thread = threading.get_ident()

    @scheduler.interval(hours=1, id="job")
    def job(db: str = Depends(resources.session), other: str = Depends(resources.sync_session)):
        seen.append((db, other, threading.get_ident() != loop_thread))

    async with scheduler:
        run = await scheduler.run_job("job")
    assert run.outcome is Outcome.success
    assert seen == [("session 1", "sync session", True)]
    assert resources.log[-2:] == ["sync closed", "closed 1"]


async def test_explicit_arguments_win_over_dependencies(anyio_backend: str) -> None:
    resources = Resources()
    scheduler = TaskScheduler()
    seen: list[tuple[str, str]] = []

    def label() -> str:
        return "from a dependency"

    async def job(db: str = Depends(resources.session), name: str = Depends(label)) -> None:
        seen.append((db, name))

    scheduler.interval(hours=1, id="kwargs", kwargs={"db": "given"})(job)
    scheduler.interval(hours=1, id="args", args=["given by position"])(job)
    async with scheduler:
        await scheduler.run_job("kwargs")
        await scheduler.run_job("args")
        await scheduler.add_interval_job(job, "added", hours=1, kwargs={"name": "given"})
        await scheduler.run_job("added")
    assert seen == [
        ("given", "from a dependency"),
        ("given by position", "from a dependency"),
        ("session 1", "given"),
    ]
    assert resources.log == ["open 1", "closed 1"]  # only the run that was not given db


async def test_scheduler_dependency_overrides_without_an_app(anyio_backend: str) -> None:
    resources = Resources()
    scheduler = TaskScheduler()
    seen: list[str] = []

    @scheduler.interval(hours=1, id="job")
    async def job(db: str = Depends(resources.session)) -> None:
        seen.append(db)

    async def fake_session() -> AsyncIterator[str]:
        yield "fake session"

    async with scheduler:
        scheduler.dependency_overrides[resources.session] = fake_session
        await scheduler.run_job("job")
        scheduler.dependency_overrides.clear()  # read at every run
        await scheduler.run_job("job")
        scheduler.dependency_overrides = {resources.session: lambda: "replaced"}
        await scheduler.run_job("job")
    assert seen == ["fake session", "session 1", "replaced"]
    with pytest.raises(InvalidTypeError, match="dependency_overrides must be a dict"):
        scheduler.dependency_overrides = [(resources.session, fake_session)]  # type: ignore[assignment]


def test_app_dependency_overrides_in_the_apps_lifespan(anyio_backend: str) -> None:
    """The FastAPI habit: tests override the app's dependencies, and jobs follow."""
    resources = Resources()
    scheduler = TaskScheduler()
    seen: list[str] = []

    @scheduler.interval(hours=1, id="job")
    async def job(db: str = Depends(resources.session)) -> None:
        seen.append(db)

    app = FastAPI(lifespan=scheduler.lifespan)

    @app.post("/purge")
    async def purge() -> dict[str, Any]:
        run = await scheduler.run_job("job")
        return {"outcome": run.outcome}

    app.dependency_overrides[resources.session] = lambda: "from the app's overrides"
    with TestClient(app, backend=anyio_backend) as client:
        assert client.post("/purge").json() == {"outcome": "success"}
        # Where both replace one dependency, the scheduler's own override wins.
        scheduler.dependency_overrides[resources.session] = lambda: "from the scheduler's"
        assert client.post("/purge").json() == {"outcome": "success"}
        scheduler.dependency_overrides.clear()
        app.dependency_overrides.clear()
        assert client.post("/purge").json() == {"outcome": "success"}
    assert seen == ["from the app's overrides", "from the scheduler's", "session 1"]


async def test_the_apps_overrides_apply_only_in_its_lifespan(anyio_backend: str) -> None:
    resources = Resources()
    scheduler = TaskScheduler()
    seen: list[str] = []

    @scheduler.interval(hours=1, id="job")
    async def job(db: str = Depends(resources.session)) -> None:
        seen.append(db)

    app = FastAPI()
    app.dependency_overrides[resources.session] = lambda: "app"
    async with scheduler.lifespan(app):
        await scheduler.run_job("job")
    async with scheduler:  # not that app's lifespan: its overrides do not apply
        await scheduler.run_job("job")
    assert seen == ["app", "session 1"]


async def test_a_run_now_waits_for_its_cleanup(anyio_backend: str) -> None:
    """run_job(wait=True) returns after the dependencies were closed: a test can check them."""
    resources = Resources()
    scheduler = TaskScheduler()

    @scheduler.interval(hours=1, id="job")
    async def job(db: str = Depends(resources.session)) -> None:
        pass

    async with scheduler:
        await scheduler.run_job("job")
        assert resources.log == ["open 1", "closed 1"]
        await scheduler.run_job("job", wait=False)
        await wait_until(lambda: resources.log[-1] == "closed 2")


async def test_dependencies_open_and_close_in_the_task_that_runs_the_job(
    anyio_backend: str,
) -> None:
    tasks: list[tuple[str, int]] = []

    async def tracked() -> AsyncIterator[None]:
        tasks.append(("open", anyio.get_current_task().id))
        try:
            yield
        finally:
            tasks.append(("close", anyio.get_current_task().id))

    scheduler = TaskScheduler()

    @scheduler.interval(hours=1, id="job", timeout=5)
    async def job(_: None = Depends(tracked)) -> None:
        tasks.append(("job", anyio.get_current_task().id))

    async with scheduler:
        await scheduler.run_job("job")
    assert [what for what, _ in tasks] == ["open", "job", "close"]
    assert len({task for _, task in tasks}) == 1, tasks
