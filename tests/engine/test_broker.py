"""The lean event broker: sync callbacks inline, nothing built for nobody."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from apscheduler import (
    AsyncScheduler,
    ConflictPolicy,
    Event,
    JobAdded,
    JobReleased,
    ScheduleAdded,
    ScheduleUpdated,
)
from apscheduler.eventbrokers.local import LocalEventBroker
from apscheduler.triggers.interval import IntervalTrigger
from helpers import wait_until

from library.components.scheduling.task_scheduler._aps.broker import LeanEventBroker

pytestmark = pytest.mark.anyio

LOGGER = logging.getLogger("test_broker")


@asynccontextmanager
async def started() -> AsyncIterator[LeanEventBroker]:
    broker = LeanEventBroker()
    async with AsyncExitStack() as stack:
        await broker.start(stack, LOGGER)
        yield broker


def added(schedule_id: str = "s") -> ScheduleAdded:
    return ScheduleAdded(schedule_id=schedule_id, task_id="t", next_fire_time=None)


async def test_sync_callbacks_run_inline_in_order(anyio_backend: str) -> None:
    seen: list[tuple[str, Event]] = []
    async with started() as broker:
        broker.subscribe(lambda event: seen.append(("first", event)), {ScheduleAdded})
        broker.subscribe(lambda event: seen.append(("all", event)))
        event = added()
        await broker.publish(event)
        assert seen == [("first", event), ("all", event)]  # before any checkpoint
        await broker.publish_local(JobAdded(job_id=None, task_id="t", schedule_id=None))  # type: ignore[arg-type]
        assert [name for name, _ in seen] == ["first", "all", "all"]


async def test_only_the_subscribed_types_arrive(anyio_backend: str) -> None:
    seen: list[Event] = []
    async with started() as broker:
        broker.subscribe(seen.append, {ScheduleUpdated})
        await broker.publish(added())
        assert seen == []


async def test_wants_follows_subscriptions(anyio_backend: str) -> None:
    async with started() as broker:
        assert not broker.wants(ScheduleAdded)
        with broker.subscribe(print, {ScheduleAdded, JobAdded}):
            assert broker.wants(ScheduleAdded) and broker.wants(JobAdded)
            assert not broker.wants(JobReleased)
            with broker.subscribe(print):
                assert broker.wants(JobReleased)
            assert not broker.wants(JobReleased)
        assert not broker.wants(ScheduleAdded) and not broker.wants(JobAdded)
        subscription = broker.subscribe(print, {JobAdded})
        subscription.unsubscribe()
        subscription.unsubscribe()  # idempotent
        assert not broker.wants(JobAdded)


async def test_one_shot_fires_once_even_when_publishing_from_the_callback(
    anyio_backend: str,
) -> None:
    calls: list[str] = []
    async with started() as broker:

        def again(event: Event) -> None:
            calls.append("again")
            broker.publish_now(added("inner"))

        broker.subscribe(again, {ScheduleAdded}, one_shot=True)
        await broker.publish(added())
        await broker.publish(added())
        assert calls == ["again"]
        assert not broker.wants(ScheduleAdded)


async def test_coroutine_callbacks_run_in_the_brokers_task_group(anyio_backend: str) -> None:
    done = anyio.Event()
    async with started() as broker:

        async def slow(event: Event) -> None:
            await anyio.lowlevel.checkpoint()
            done.set()

        broker.subscribe(slow, {ScheduleAdded})
        await broker.publish(added())
        assert not done.is_set()
        with anyio.fail_after(5):
            await done.wait()


async def test_thread_callbacks_run_in_a_worker_thread(anyio_backend: str) -> None:
    threads: list[int] = []
    done = anyio.Event()
    async with started() as broker:
        broker.subscribe(lambda event: threads.append(threading.get_ident()), is_async=False)
        broker.subscribe(lambda event: done.set(), {ScheduleUpdated})
        await broker.publish(added())
        await wait_until(lambda: threads != [])
    assert threads != [threading.get_ident()]


async def test_a_failing_callback_is_logged_and_the_others_still_run(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Event] = []
    async with started() as broker:

        def fail(event: Event) -> None:
            raise ValueError("boom")

        async def fail_later(event: Event) -> None:
            raise ValueError("later")

        broker.subscribe(fail)
        broker.subscribe(fail_later)
        broker.subscribe(seen.append)
        with caplog.at_level(logging.ERROR, logger="test_broker"):
            await broker.publish(added())
            await anyio.sleep(0.05)
    assert len(seen) == 1
    assert caplog.text.count("a subscriber to ScheduleAdded events failed") == 2


async def test_publishing_before_start_to_a_coroutine_callback_fails(anyio_backend: str) -> None:
    broker = LeanEventBroker()

    async def callback(event: Event) -> None:
        pass

    broker.subscribe(callback)
    with pytest.raises(RuntimeError, match="not been started"):
        broker.publish_now(added())


class SteppingBroker(LocalEventBroker):
    """The stock broker, but a coroutine callback is stepped once inline: records whether
    any of them suspended (would have needed a task of its own)."""

    suspended: list[str]
    completed: list[str]

    async def _deliver_event(self, subscription: Any, event: Event) -> None:
        result = subscription.callback(event)
        if not isinstance(result, Coroutine):
            return
        name = getattr(subscription.callback, "__qualname__", "?")
        try:
            result.send(None)
        except StopIteration:
            self.completed.append(name)
        else:
            self.suspended.append(name)
            result.close()


async def test_the_stock_engines_own_wakeup_callbacks_never_suspend(anyio_backend: str) -> None:
    # The premise of calling callbacks inline (our engine's wakers are their sync
    # equivalents): in 4.0.0a6 the schedule and job loops' event callbacks only set an
    # anyio.Event. If this fails after an upgrade, re-check _engine.py's wakers.
    broker = SteppingBroker()
    broker.suspended, broker.completed = [], []
    runs: list[int] = []

    async def job() -> None:
        runs.append(1)

    async with AsyncScheduler(event_broker=broker) as engine:
        await engine.configure_task("t", func=job, max_running_jobs=None)
        await engine.start_in_background()
        start = datetime.now(timezone.utc)
        await engine.add_schedule("t", IntervalTrigger(seconds=0.05, start_time=start), id="s")
        await wait_until(lambda: len(runs) >= 5)
        await engine.add_schedule(
            "t",
            IntervalTrigger(seconds=0.05, start_time=start + timedelta(hours=1)),
            id="s",
            conflict_policy=ConflictPolicy.replace,
        )
        await anyio.sleep(0.05)
        await engine.stop()
    assert broker.suspended == []
    names = set(broker.completed)
    assert any(name.endswith("schedule_added_or_modified") for name in names)
    assert any(name.endswith("check_queue_capacity") for name in names)
