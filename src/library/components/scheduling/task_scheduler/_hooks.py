"""``on_run_finished`` hooks: called one at a time in a task of the scheduler's, never in a job.

The executor hands every finished attempt to :meth:`HookDispatcher.notify` (cheap, never
blocks: a full buffer drops the record and counts it); :meth:`HookDispatcher.serve` turns
records into :class:`RunInfo` and calls each hook. A hook that raises is logged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from ._log import logger
from ._models import RunInfo
from ._runs import RunRecord

RunHook = Callable[[RunInfo], Any]

HOOK_BUFFER = 10_000
"""Finished attempts waiting for the hooks; beyond it, records are dropped (and counted)."""


class HookDispatcher:
    """The hooks of one scheduler, and the buffer that feeds them."""

    def __init__(self, tz: ZoneInfo, worker: str) -> None:
        self._tz = tz
        self._worker = worker
        self._hooks: list[RunHook] = []
        self._send: MemoryObjectSendStream[RunRecord] | None = None
        self._dropped = 0
        self._undelivered = 0

    def add(self, hook: RunHook) -> None:
        self._hooks.append(hook)

    def notify(self, record: RunRecord) -> None:
        """A finished attempt (hot path: returns at once when there is no hook)."""
        send = self._send
        if send is None or not self._hooks:
            return
        try:
            send.send_nowait(record)
            self._undelivered += 1
        except anyio.WouldBlock:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                logger.warning(
                    "on_run_finished hooks are %d runs behind; %d run(s) not delivered so far",
                    HOOK_BUFFER,
                    self._dropped,
                )
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def serve(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Deliver records to the hooks until :meth:`close`, then deliver what is queued."""
        send, receive = anyio.create_memory_object_stream[RunRecord](HOOK_BUFFER)
        self._send = send
        self._undelivered = 0
        task_status.started()
        async with receive:
            async for record in receive:
                info = record.info(self._tz, self._worker)
                for hook in list(self._hooks):
                    try:
                        result = hook(info)
                        if hasattr(result, "__await__"):
                            await result
                    except Exception:
                        logger.exception("on_run_finished hook %r failed", hook)
                self._undelivered -= 1

    def busy(self) -> bool:
        """True while finished attempts wait for the hooks or a hook runs."""
        return self._undelivered > 0

    async def close(self) -> None:
        """No more records: :meth:`serve` ends once the queued ones are delivered."""
        send, self._send = self._send, None
        if send is not None:
            await send.aclose()
