"""Worker threads for plain ``def`` jobs: bounded, and never keeping the process alive.

A thread cannot be cancelled. When a plain ``def`` job times out (or the scheduler stops
while it runs), its run ends but its thread goes on until the function returns: the thread
is *abandoned*. anyio's worker threads leaked here without bound (a hung job every 0.1 s:
51 threads after 10 s), and on asyncio they are not daemon threads, so after ``shutdown()``
the interpreter waited for them for good (a SIGTERM'd pod hung until SIGKILL).

So jobs get threads of their own:

- daemon threads, reused while busy and retired after :data:`IDLE_TIME` idle seconds: a
  process whose scheduler has stopped exits even with abandoned threads still running;
- an abandoned thread keeps its share of ``max_concurrent_jobs`` (the capacity limiter) and,
  through ``on_abandoned``/``on_ended``, its job's ``max_instances`` slot until it really
  ends, so later fires of a hung job are skipped instead of stacking up threads;
- :attr:`JobThreads.abandoned` counts the abandoned threads still running (status).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio
import anyio.from_thread
from anyio import CapacityLimiter
from anyio.lowlevel import EventLoopToken, current_token

from ._log import logger

IDLE_TIME = 10.0
"""Seconds an idle worker thread waits for work before it ends."""

H = TypeVar("H")


class _Call:
    """One call in a worker thread, and what the waiting task and the thread share."""

    __slots__ = ("abandoned", "exc", "finished", "func", "holder", "limiter", "lock", "result",
                 "token", "woken")  # fmt: skip

    def __init__(
        self, func: Callable[[], Any], token: EventLoopToken, holder: Any, limiter: CapacityLimiter
    ) -> None:
        self.func = func
        self.token = token
        self.holder = holder
        self.limiter = limiter
        self.lock = threading.Lock()
        self.woken = anyio.Event()
        self.finished = False
        self.abandoned = False
        self.result: Any = None
        self.exc: BaseException | None = None


class JobThreads(Generic[H]):
    """Runs plain functions in daemon worker threads, at most ``limit`` at once.

    ``on_abandoned(holder)`` is called (in the event loop) when a call's waiting task is
    cancelled while its thread still runs; ``on_ended(holder)`` when such a thread ends (in
    the event loop, if it still runs; never, if it ended first).
    """

    def __init__(
        self,
        limit: int,
        on_abandoned: Callable[[H], None],
        on_ended: Callable[[H], None],
    ) -> None:
        self._limit = limit
        self._limiter: CapacityLimiter | None = None
        self._on_abandoned = on_abandoned
        self._on_ended = on_ended
        self._idle: list[queue.SimpleQueue[_Call | None]] = []
        self._idle_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._abandoned = 0

    @property
    def abandoned(self) -> int:
        """Threads whose run ended (timed out, cancelled) while they still run."""
        return self._abandoned

    def _count(self, change: int) -> None:
        with self._count_lock:
            self._abandoned += change

    def open(self) -> None:
        """In the event loop, before the first call of each start (a limiter belongs to
        its event loop; a thread abandoned earlier gives back its token to the old one)."""
        self._limiter = CapacityLimiter(self._limit)

    async def run(self, func: Callable[[], Any], holder: H) -> Any:
        """``func()`` in a worker thread: its result, or what it raised."""
        limiter = self._limiter
        assert limiter is not None, "open() first"
        call = _Call(func, current_token(), holder, limiter)
        await limiter.acquire_on_behalf_of(call)
        try:
            self._submit(call)
            await call.woken.wait()
        except BaseException:  # cancelled: a timeout, or the scheduler stopping
            with call.lock:
                if not call.finished:
                    call.abandoned = True
            if call.abandoned:  # its thread keeps the limiter's token until it ends
                self._count(1)
                self._on_abandoned(holder)
            else:
                limiter.release_on_behalf_of(call)
            raise
        limiter.release_on_behalf_of(call)
        if call.exc is not None:
            raise call.exc
        return call.result

    def _ended(self, call: _Call) -> None:
        """In the event loop: an abandoned call's thread has ended."""
        self._count(-1)
        call.limiter.release_on_behalf_of(call)
        self._on_ended(call.holder)

    # -- the threads -------------------------------------------------------------------

    def _submit(self, call: _Call) -> None:
        with self._idle_lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            thread = threading.Thread(
                target=self._work, args=(inbox,), name="task-scheduler job", daemon=True
            )
            inbox.put(call)
            thread.start()
        else:
            inbox.put(call)

    def _work(self, inbox: queue.SimpleQueue[_Call | None]) -> None:
        while True:
            try:
                call = inbox.get(timeout=IDLE_TIME)
            except queue.Empty:
                with self._idle_lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                continue  # handed work just now
            if call is None:
                return
            self._run(call)
            with self._idle_lock:
                self._idle.append(inbox)

    def _run(self, call: _Call) -> None:
        try:
            call.result = call.func()
        except BaseException as exc:  # handed to the waiting task
            call.exc = exc
        with call.lock:
            call.finished = True
            abandoned = call.abandoned
        try:
            if abandoned:
                anyio.from_thread.run_sync(self._ended, call, token=call.token)
            else:
                anyio.from_thread.run_sync(call.woken.set, token=call.token)
        except RuntimeError:  # the event loop has ended: nobody is waiting any more
            if abandoned:
                self._count(-1)
                logger.debug("an abandoned job thread ended after its event loop")
