"""The garbage-collector freeze a running scheduler holds (``SchedulerConfig.gc_freeze``).

What an app sees: while a scheduler runs, the objects alive when it started are frozen
(``gc.get_freeze_count()``); after its stop, nothing is. An app that manages the collector
itself (disabled it, or froze its own heap) is left as it was.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from helpers import noop

from library.components.scheduling.task_scheduler import SchedulerConfig, TaskScheduler, _gcfreeze

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def collector_as_found() -> Iterator[None]:
    """Each test starts with nothing frozen and the collector on, and leaves it so."""
    gc.unfreeze()
    gc.enable()
    assert _gcfreeze._holders == 0
    yield
    gc.unfreeze()
    gc.enable()


def scheduler(**config: object) -> TaskScheduler:
    made = TaskScheduler(SchedulerConfig(**config))  # type: ignore[arg-type]
    made.interval(seconds=60, id="tick")(noop)
    return made


def is_frozen(obj: object) -> bool:
    """True if ``obj`` is in the permanent generation (no generation lists it)."""
    return gc.is_tracked(obj) and all(other is not obj for other in gc.get_objects())


class Cycle:
    """An object in a reference cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


async def test_start_freezes_the_heap_and_stop_unfreezes_it(anyio_backend: str) -> None:
    assert gc.get_freeze_count() == 0
    before = [[index] for index in range(10)]
    async with scheduler():
        assert gc.get_freeze_count() > 0
        assert is_frozen(before)
    assert gc.get_freeze_count() == 0
    assert not is_frozen(before)


async def test_a_cycle_that_was_alive_at_start_is_collected_after_stop(anyio_backend: str) -> None:
    cycle = Cycle()
    gone = weakref.ref(cycle)
    running = scheduler()
    async with running:
        del cycle
        gc.collect()
        assert gone() is not None  # frozen: no collection looks at it while running
    gc.collect()
    assert gone() is None


async def test_gc_freeze_false_freezes_nothing(anyio_backend: str) -> None:
    async with scheduler(gc_freeze=False):
        assert gc.get_freeze_count() == 0
    assert gc.get_freeze_count() == 0


async def test_an_app_that_disabled_the_collector_is_left_alone(anyio_backend: str) -> None:
    gc.disable()
    async with scheduler():
        assert gc.get_freeze_count() == 0
    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0


async def test_an_app_that_froze_its_heap_keeps_it_frozen(anyio_backend: str) -> None:
    apps = [[index] for index in range(10)]
    gc.freeze()  # e.g. a server that freezes before forking its workers
    frozen = gc.get_freeze_count()
    async with scheduler():
        assert gc.get_freeze_count() <= frozen  # not ours: nothing added (some freed)
    assert is_frozen(apps)


async def test_what_the_app_froze_while_running_stays_frozen(anyio_backend: str) -> None:
    async with scheduler():
        made_later = [[index] for index in range(10)]
        gc.freeze()
    assert is_frozen(made_later)


async def test_what_the_app_froze_stays_frozen_when_frozen_objects_were_freed_meanwhile(
    anyio_backend: str,
) -> None:
    """The frozen count drops as frozen objects are freed: it cannot tell that the app froze
    objects since (the test above failed so in a long test session)."""
    alive_at_start = [[index] for index in range(10_000)]
    async with scheduler():
        alive_at_start.clear()  # 10,000 frozen lists freed
        made_later = [[index] for index in range(10)]
        gc.freeze()
    assert is_frozen(made_later)


async def test_two_schedulers_share_the_freeze_until_the_last_stops(anyio_backend: str) -> None:
    first, second = scheduler(), scheduler()
    async with first:
        async with second:
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() > 0  # the first still runs
    assert gc.get_freeze_count() == 0


async def test_a_restarted_scheduler_freezes_again(anyio_backend: str) -> None:
    running = scheduler()
    for _ in range(2):
        await running.start()
        assert gc.get_freeze_count() > 0
        await running.shutdown()
        assert gc.get_freeze_count() == 0


async def test_the_run_history_is_no_work_for_the_collector(anyio_backend: str) -> None:
    """Finished runs kept in memory (100 per job by default, 300,000 for 3,000 jobs) are not
    containers the collector walks: after one pass, none of them is tracked."""
    async with scheduler() as running:
        for _ in range(5):
            await running.run_job("tick")
        runs = await running.get_runs("tick")
        history = running._registry.by_id["tick"].history
        assert history is not None and len(history) == 5
        gc.collect()
        assert not any(gc.is_tracked(row) for row in history)
    assert [run.outcome for run in runs] == ["success"] * 5
    assert len({run.run_id for run in runs}) == 5
